"""The benchmark harness: the flops suite equals vin.flops, result files validate, the CPU quick run
finishes in under 2 minutes under its own file name and prints a short summary, the report skips quick
runs and writes a README only when asked, the plots are readable, and the CLI fails fast with one-line
errors. Runs, names, locations and the report's choice of files: tests/bench/test_runs.py."""

import copy
import json
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import vin
import vin_kernels
from vin_bench import cli, plots, report
from vin_bench.environment import result_stem
from vin_bench.schema import validate
from vin_bench.suites import Context, latent_frames
from vin_bench.suites import flops as flops_suite
from vin_bench.suites import static

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
    return out, json.loads(result_file.read_text()), elapsed, done.stdout, result_file.with_suffix(".md").read_text()


def _as_full_run(result: dict, timestamp: str, device_kind: str = "cpu") -> dict:
    """A copy of ``result`` posing as a full (not --quick) run made at ``timestamp``."""
    full = copy.deepcopy(result)
    full["quick"] = False
    full["environment"].update(timestamp=timestamp, device_kind=device_kind)
    if device_kind == "cuda":
        full["environment"]["device"] = "NVIDIA H100 80GB HBM3"
    return full


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ suites and results
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
    _, result, elapsed, _, _ = quick_run
    assert elapsed < 120, f"python -m bench --quick took {elapsed:.0f} s"
    runnable = {name for name in cli.SUITES if cli.unsupported_reason(name, torch.device("cpu")) is None}
    opt_in = {name for name in cli.SUITES if getattr(cli.SUITES[name], "OPT_IN", None)}
    assert opt_in <= {"quality", "diffusers"} and set(result["suites"]) == runnable - opt_in


def test_result_file_validates_and_records_the_environment_and_the_load(quick_run):
    out, result, _, _, table = quick_run
    assert validate(result) == []
    env = result["environment"]
    assert env["command"] == f"python -m bench --quick --out {out}"
    assert env["torch"] == torch.__version__ and env["commit"]
    assert env["cpu_model"] and env["threads"] == torch.get_num_threads() and isinstance(env["nice"], int)
    assert set(result["suite_runs"]) == set(result["suites"])
    for run in result["suite_runs"].values():
        assert run["seconds"] >= 0 and len(run["load_average_before"]) == len(run["load_average_after"]) == 3
    stem = result_stem(env, "quick")
    names = {p.name for p in out.iterdir()}
    assert f"{stem}.json" in names and f"{stem}.md" in names
    kernel_rows = result["suites"]["kernels"]["rows"]
    assert all(len(r["times_ms"]) >= 3 for r in kernel_rows if "error" not in r)
    assert "| chunk_attention |" in table and "load average" in table and "CPU: " in table


def test_the_run_prints_a_short_summary_not_the_tables(quick_run):
    """Issue 19.3: the end of a run is the headline ratios and the paths, not the whole markdown."""
    out, result, _, stdout, _ = quick_run
    assert "| chunk_attention |" not in stdout and len(stdout.splitlines()) < 25, stdout
    assert "full attention's time" in stdout and "FLOPs of full attention's" in stdout
    (json_path,) = out.glob("*.json")
    assert f"results: {json_path}" in stdout and f"tables:  {json_path.with_suffix('.md')}" in stdout


def test_quick_results_are_named_apart_from_other_runs(quick_run):
    out, result, _, _, _ = quick_run
    env = result["environment"]
    assert result["quick"] is True and result["full"] is False
    assert result_stem(env, "quick").endswith("-quick") and result_stem(env, "quick") != result_stem(env)
    assert all(p.name.startswith(result_stem(env, "quick")) for p in out.iterdir()), sorted(out.iterdir())


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


def test_cpu_tables_claim_no_l2_flush_and_print_no_zero_rates(quick_run):
    """Issue 13.6: a CPU run's tables claimed an L2 flush and printed 0.0 TFLOP/s."""
    stdout = quick_run[4]
    if torch.cuda.is_available():
        pytest.skip("CPU tables")
    assert "L2 flushed" not in stdout
    zero_rates, header = [], None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None or set(line) <= set("|-: "):
            header = header if cells is not None else None
            continue
        if header is None:
            header = cells
            continue
        zero_rates += [line for name, cell in zip(header, cells) if "/s" in name and re.fullmatch(r"0\.0+", cell)]
    assert not zero_rates, f"rate columns (per second) print 0: {zero_rates[:3]}"


# ------------------------------------------------------------------------------------ report
def test_report_skips_quick_runs_and_prefers_gpu_runs(quick_run, tmp_path):
    result = quick_run[1]
    (tmp_path / "new-quick.json").write_text(json.dumps(result | {"environment": result["environment"] | {"timestamp": "2030-01-03T00:00:00+00:00"}}))
    assert report.newest_results(tmp_path) == {}, "a --quick run is not a result to show"
    (tmp_path / "cpu.json").write_text(json.dumps(_as_full_run(result, "2030-01-02T00:00:00+00:00")))
    chosen = report.newest_results(tmp_path)
    assert {path.name for path, _ in chosen.values()} == {"cpu.json"} and set(chosen) == set(result["suites"])
    (tmp_path / "gpu.json").write_text(json.dumps(_as_full_run(result, "2030-01-01T00:00:00+00:00", "cuda")))
    assert {path.name for path, _ in report.newest_results(tmp_path).values()} == {"gpu.json"}


def test_report_shows_the_static_suites_widest_matrix_over_a_newer_slice(quick_run, tmp_path):
    """A later ``--suite static`` slice must not hide the committed full-matrix run in README's table."""
    result = _as_full_run(quick_run[1], "2030-01-01T00:00:00+00:00")
    wide = result | {"suites": {"static": result["suites"]["static"] | {"matrix": "full"}}}
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    (tmp_path / "newer-slice.json").write_text(json.dumps(_as_full_run(quick_run[1], "2030-01-02T00:00:00+00:00")))
    chosen = {suite: path.name for suite, (path, _) in report.newest_results(tmp_path).items()}
    assert chosen["static"] == "wide.json" and chosen["flops"] == "newer-slice.json"


def test_static_headline_counts_problems_per_triton_version():
    """Pruned options do not count; 16-bit per Triton version; fp32 apart."""
    row = {"pickable": True, "arch": "sm_86", "dtype": "bf16", "triton": "3.9.0", "problems": [], "uses_dot": True,
           "shared_bytes": 1024 * 64, "spill_bytes": 0}
    rows = [row, row | {"problems": ["spills 8 B"]}, row | {"pickable": False, "problems": ["x"]},
            row | {"dtype": "fp32", "spill_bytes": 16, "shared_bytes": 1024 * 84}, row | {"triton": "3.6.0", "arch": "sm_90"}]
    assert static.headline({"rows": rows}) == [
        "16-bit options with problems on sm_86, sm_90: Triton 3.6.0 0 of 1, Triton 3.9.0 1 of 2; "
        "fp32: 0 of 1 with problems, shared <= 84 KB, spills <= 16 B"
    ]


def test_report_prints_by_default_and_writes_tables_and_headline_only_with_write(quick_run, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu.json").write_text(json.dumps(_as_full_run(quick_run[1], "2030-01-02T00:00:00+00:00")))
    project = {path: path.read_bytes() for path in (ROOT / "README.md", ROOT / "docs" / "results.md")}
    assert report.main(["--results", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "### FLOPs: VIN vs full attention" in printed and "| 1024 | 320 | vin_context |" in printed
    assert all(path.read_bytes() == text for path, text in project.items()), "python -m bench.report must not write unasked"

    docs = tmp_path / "docs"
    docs.mkdir()
    tables, readme = docs / "results.md", tmp_path / "README.md"
    tables.write_text(f"# Results\n\n{report.BEGIN}\nold\n{report.END}\n\nAfter\n")
    readme.write_text(f"# x\n\n{report.HEADLINE_BEGIN}\nold\n{report.HEADLINE_END}\n\n## After\n")
    without_markers = tmp_path / "plain.md"
    without_markers.write_text("# no markers\n")
    write = ["--results", str(results), "--write", "--tables", str(tables)]
    with pytest.raises(SystemExit) as refused:
        report.main([*write, "--readme", str(without_markers)])
    assert refused.value.code == 2 and "plain.md has no <!-- bench-headline:begin -->" in capsys.readouterr().err
    assert "old" in tables.read_text(), "nothing is written when one of the two files lacks its markers"
    assert report.main([*write, "--readme", str(readme)]) == 0
    text = tables.read_text()
    assert "### FLOPs: VIN vs full attention" in text and "| 1024 | 320 | vin_context |" in text
    assert "\nold\n" not in text and text.endswith("After\n")
    assert "(../results/cpu.json)" in text  # links relative to the tables' folder
    head = readme.read_text()
    assert "\nold\n" not in head and head.endswith("## After\n")
    assert "**FLOPs: VIN vs full attention** (" in head and "[tables](docs/results.md#flops-vin-vs-full-attention)" in head
    assert max(map(len, head.splitlines())) <= 160


def test_project_pages_have_their_markers():
    assert report.BEGIN in (ROOT / "docs" / "results.md").read_text()
    text = (ROOT / "README.md").read_text()
    assert report.HEADLINE_BEGIN in text and report.HEADLINE_END in text


# ------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "bogus"], "--suite: unknown suite"),
        (["--suite", ""], "--suite: unknown suite"),
        (["--frames", "abc"], "--frames takes comma-separated integers"),
        (["--frames", "8"], "at least 16"),
        (["--quick", "--full"], "argument --full: not allowed with argument --quick"),
        # Issue 19.12: this once ran without bound.
        (["--suite", "flops", "--frames", "100000000"], "--frames 100000000: the flops suite takes at most 65536 video frames"),
        (["--suite", "model", "--frames", "64,2048"], "--frames 2048: the model suite takes at most 1024 video frames"),
        (["--frames", "4096"], "--frames 4096: the kernels suite takes at most 2048 video frames"),
        (["--nonsense"], "unrecognized arguments: --nonsense"),
    ],
)
def test_cli_rejects_bad_options_in_one_line_before_any_work(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for suite in cli.SUITES.values():
        monkeypatch.setattr(suite, "run", lambda ctx: pytest.fail("a suite ran before the flags were checked"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv, prog="vin-bench")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("vin-bench: error: ")
    assert message in err, err


def _unwritable_targets(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    targets = {"an existing file": a_file, "a folder below a file": a_file / "results"}
    if Path("/sys").is_dir() and sys.platform.startswith("linux"):
        targets["a read-only filesystem"] = Path("/sys/vin-bench-results")  # sysfs: no mkdir, even as root
    return targets


@pytest.mark.parametrize("which", ["an existing file", "a folder below a file", "a read-only filesystem"])
def test_out_that_cannot_hold_results_is_a_one_line_error_before_anything_runs(which, tmp_path, monkeypatch, capsys):
    targets = _unwritable_targets(tmp_path)
    if which not in targets:
        pytest.skip("no read-only filesystem known here")
    ran = []
    fake = types.SimpleNamespace(run=lambda ctx: ran.append(ctx), markdown=lambda body: "")
    monkeypatch.setattr(cli, "SUITES", {"flops": fake})
    assert cli.main(["--out", str(targets[which])], prog="vin-bench") == 2
    err = capsys.readouterr().err
    assert not ran, "a suite ran before --out was checked"
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"vin-bench: error: --out {targets[which]}: "), err


def test_help_and_version_name_the_program_as_it_was_started():
    for module_name in ("bench", "vin_bench"):
        module = _run(sys.executable, "-m", module_name, "--help")
        assert module.returncode == 0 and module.stdout.startswith(f"usage: python -m {module_name} "), module.stdout[:200]
        assert f"python -m {module_name} --full" in module.stdout
        for markup in ("``", ":func:", ":data:", "::"):
            assert markup not in module.stdout, f"raw RST {markup!r} in --help"
    version = _run(sys.executable, "-m", "bench", "--version")
    assert version.stdout.strip() == f"python -m bench {vin_kernels.__version__}"
    report_help = _run(sys.executable, "-m", "vin_bench.report", "--help")
    assert report_help.stdout.startswith("usage: python -m vin_bench.report ")
    assert _run(sys.executable, "-m", "bench.report", "--help").stdout.startswith("usage: python -m bench.report ")
    assert cli.program_name("/usr/local/bin/vin-bench") == "vin-bench"
    assert cli.program_name(str(ROOT / "bench" / "__main__.py")) == "python -m bench"
    assert cli.program_name(str(ROOT / "vin_bench" / "__main__.py")) == "python -m vin_bench"
    script = Path(sys.executable).with_name("vin-bench")
    if script.exists():  # the console script pip installed next to this Python
        console = _run(str(script), "--help")
        assert console.stdout.startswith("usage: vin-bench "), console.stdout[:200]
        assert "vin-bench --quick" in console.stdout


def test_no_plots_reports_only_the_files_it_wrote(tmp_path, capsys):
    assert cli.main(["--suite", "flops", "--frames", "64", "--no-plots", "--out", str(tmp_path)], prog="vin-bench") == 0
    out = capsys.readouterr().out
    assert "results: " in out and "plots:" not in out and ".png" not in out, out
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]


def test_a_suite_that_cannot_run_here_is_skipped_with_its_reason(tmp_path, monkeypatch, capsys):
    def refuse(device):
        return "needs a CUDA GPU"

    gpu_only = types.SimpleNamespace(supported=refuse, run=lambda ctx: pytest.fail("ran an unsupported suite"), markdown=str)
    says_no = types.SimpleNamespace(supported=lambda device: False, run=gpu_only.run, markdown=str)
    monkeypatch.setattr(cli, "SUITES", {"flops": flops_suite, "gpu_only": gpu_only, "says_no": says_no})
    cpu = torch.device("cpu")
    assert cli.unsupported_reason("flops", cpu) is None  # no supported(): runs anywhere
    assert cli.unsupported_reason("gpu_only", cpu) == "needs a CUDA GPU"
    assert cli.unsupported_reason("says_no", cpu) == "not supported on cpu"

    assert cli.main(["--suite", "gpu_only", "--out", str(tmp_path)], prog="vin-bench") == 2
    assert "the gpu_only suite cannot run on this" in capsys.readouterr().err

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["--frames", "64", "--no-plots", "--out", str(tmp_path)], prog="vin-bench") == 0
    err = capsys.readouterr().err
    assert "skipping the gpu_only suite: needs a CUDA GPU" in err and "skipping the says_no suite" in err
    (result_file,) = tmp_path.glob("*.json")
    assert list(json.loads(result_file.read_text())["suites"]) == ["flops"]


# ------------------------------------------------------------------------------------ plots
def _drawn(fig):
    fig.canvas.draw()
    return fig.axes[0]


def test_flops_plot_labels_the_measured_frame_counts(quick_run):
    pytest.importorskip("matplotlib")
    flops = quick_run[1]["suites"]["flops"]
    ax = _drawn(plots.flops_figure(flops))
    measured = sorted({r["video_frames"] for r in flops["rows"]})
    assert list(ax.get_xticks()) == measured
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [f"{f}\n{latent_frames(f)}" for f in measured]
    assert "video frames" in ax.get_xlabel() and "latent frames" in ax.get_xlabel()
    y_labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert y_labels and all(re.fullmatch(r"[0-9.e+-]+", text) for text in y_labels), y_labels  # not 10^2 or 4x10^0


def test_model_plot_keeps_every_point_and_labels_that_do_not_overlap():
    pytest.importorskip("matplotlib")
    lengths = list(range(16, 2049, 32))  # 64 lengths
    rows = [
        {"mode": mode, "video_frames": f, "latent_frames": latent_frames(f), "step_median_ms": f * (i + 1.0)}
        for f in lengths for i, mode in enumerate(("full", "vin_context", "vin_windows"))
    ] + [{"mode": "full", "video_frames": 4096, "error": "out of memory"}]  # fmt: skip
    fig = plots.model_figure({"preset": "cpu", "rows": rows})
    ax = _drawn(fig)
    assert [len(bars.lines[0].get_xdata()) for bars in ax.containers] == [len(lengths)] * 3  # one errorbar line per mode
    major = list(ax.get_xticks())
    assert major[0] == lengths[0] and major[-1] == lengths[-1] and len(major) <= plots.MAX_TICK_LABELS
    assert sorted(major + list(ax.get_xticks(minor=True))) == lengths  # every length is a tick
    boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), "x tick labels overlap"


def test_kernels_plot_has_a_title_a_colour_legend_and_readable_labels(quick_run):
    pytest.importorskip("matplotlib")
    kernels = quick_run[1]["suites"]["kernels"]
    ax = _drawn(plots.kernels_figure(kernels))
    assert ax.get_title()
    impls = {r["impl"] for r in kernels["rows"] if "median_ms" in r}
    assert {t.get_text() for t in ax.get_legend().get_texts()} == impls
    colours = {p.get_facecolor() for p in ax.patches}
    assert len(colours) == len(impls), "one colour per implementation"
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8


def test_a_suite_without_a_plot_gets_none(tmp_path):
    assert plots.plot("no-such-suite", {"rows": [{"x": 1}]}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    assert plots.labelled_ticks([64, 128, 256]) == [64, 128, 256]


def test_quick_static_report_compiles_cleanly_under_the_interpreter_env(quick_run):
    """pytest sets TRITON_INTERPRET=1 (conftest.py) and the quick run inherits it: the static suite's
    compile workers must still compile (they once all failed with an empty AssertionError)."""
    rows = quick_run[1]["suites"]["static"]["rows"]
    assert rows and not [(r["kernel"], r.get("config"), r["problems"]) for r in rows if r["problems"]]


def test_parallel_speed_table_shows_the_two_process_ceiling():
    """The speed rows as the parallel suite writes them: vin.parallel's row carries its share of the
    ceiling row (two processes sampling half the video alone), which has no equality to claim."""
    from vin_bench.suites import parallel as parallel_suite

    def speed(ranks, halves, step_ms, **extra):
        return {
            "kind": "speed", "layout": "context", "ranks": ranks, "halves_alone": halves, "latent_frames": 640,
            "threads_per_process": 1, "steps": 16, "sample_seconds": [1.0] * 5, "step_ms_median": step_ms,
            "step_ms_best": step_ms, "step_speedup_median": 120 / step_ms, "step_speedup_best": 120 / step_ms,
            "sample_seconds_median": 1.0, "sample_seconds_best": 1.0, "sample_speedup_median": 1.0,
            "sample_speedup_best": 1.0, "bitwise_equal": None if halves else True, "load_average_before": 0.5,
            "load_average_after": 0.5, **extra,
        }  # fmt: skip

    rows = [speed(1, False, 120.0), speed(2, False, 75.0, step_speedup_share_of_ceiling=0.8), speed(2, True, 60.0)]
    table = parallel_suite.markdown({"rows": rows, "cpu_count": 2})
    lines = {line.split("|")[2].strip(): line for line in table.splitlines() if line.startswith("| context")}
    assert set(lines) == {"1", "2", "2, halves alone"}
    assert "| 1.60x / 1.60x | 80% |" in lines["2"] and "| yes |" in lines["2"]
    assert "| 2.00x / 2.00x |  |" in lines["2, halves alone"] and "| - |" in lines["2, halves alone"]
