"""The benchmark harness: the flops suite equals vin.flops, result files validate, the CPU quick run
finishes in under 2 minutes, the report renders into a README, and the CLI rejects bad options."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vin
from bench import cli, report
from bench.schema import validate
from bench.suites import Context, latent_frames
from bench.suites import flops as flops_suite

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m bench --quick`` once, as a user runs it from the repository root."""
    out = tmp_path_factory.mktemp("results")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result_file,) = out.glob("*.json")
    return out, json.loads(result_file.read_text()), elapsed, done.stdout


def test_flops_suite_equals_vin_flops():
    result = flops_suite.run(Context(device=torch.device("cpu"), quick=True, video_frames=(64, 256, 1024)))
    preset = vin.presets.paper()
    assert len(result["rows"]) == 9
    for row in result["rows"]:
        frames = latent_frames(row["video_frames"])
        layout = flops_suite._layout(preset, row["mode"], frames)
        expected = vin.flops.step_flops(preset, frames, layout)
        full = vin.flops.step_flops(preset, frames, None)
        assert row["step_flops"] == expected.total == row["counted_step_flops"]
        assert row["sample_flops"] == 50 * expected.total
        assert row["ratio_to_full"] == expected.total / full.total
        assert (row["attention_flops"], row["linear_flops"], row["vin_flops"]) == (expected.attention, expected.linear, expected.vin)


@pytest.mark.skipif(torch.cuda.is_available(), reason="times the CPU quick run")
def test_quick_run_finishes_in_under_two_minutes(quick_run):
    _, result, elapsed, _ = quick_run
    assert elapsed < 120, f"python -m bench --quick took {elapsed:.0f} s"
    assert set(result["suites"]) == {"flops", "kernels", "model"}


def test_result_file_validates_and_records_the_environment(quick_run):
    out, result, _, stdout = quick_run
    assert validate(result) == []
    env = result["environment"]
    assert env["command"].endswith(f"-m bench --quick --out {out}")
    assert env["torch"] == torch.__version__ and env["commit"]
    stems = {p.name for p in out.iterdir()}
    stem = next(iter(stems)).split(".")[0].removesuffix("-flops").removesuffix("-kernels").removesuffix("-model")
    assert f"{stem}.json" in stems and f"{stem}.md" in stems
    kernel_rows = result["suites"]["kernels"]["rows"]
    assert all(len(r["times_ms"]) >= 3 for r in kernel_rows if "error" not in r)
    assert "| chunk_attention |" in stdout


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: r["environment"].pop("commit"), "environment.commit: missing"),
        (lambda r: r.update(schema="other/9"), "schema"),
        (lambda r: r["suites"]["flops"]["rows"][0].update(step_flops="many"), "step_flops"),
        (lambda r: r["suites"]["kernels"]["rows"][0].pop("times_ms"), "times_ms: missing"),
        (lambda r: r.pop("ceilings"), "ceilings: missing"),
        (lambda r: r["suites"].update(weird={"rows": []}), "unknown suite"),
    ],
)
def test_schema_names_what_is_wrong(quick_run, damage, message):
    broken = copy.deepcopy(quick_run[1])
    damage(broken)
    assert any(message in problem for problem in validate(broken))


def test_report_renders_the_flops_table_into_a_readme(quick_run, tmp_path):
    out = quick_run[0]
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{report.BEGIN}\nold\n{report.END}\n\n## After\n")
    assert report.update_readme(readme, out)
    text = readme.read_text()
    assert "### FLOPs: VIN vs full attention" in text and "| 1024 | 320 | vin_context |" in text
    assert "old" not in text and text.endswith("## After\n")
    assert "### Kernels" not in text  # CPU runs of the timed suites are smoke runs, not results


def test_project_readme_has_the_results_section():
    text = (ROOT / "README.md").read_text()
    assert report.BEGIN in text and report.END in text


@pytest.mark.parametrize(
    "argv, message",
    [(["--suite", "bogus"], "unknown suite"), (["--frames", "abc"], "comma-separated integers"), (["--frames", "8"], "at least 16")],
)
def test_cli_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_gpu_suite_on_a_cpu_without_quick_says_why(capsys, tmp_path):
    assert cli.main(["--suite", "kernels", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
