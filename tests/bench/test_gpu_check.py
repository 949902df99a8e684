"""``bash bench/gpu_check.sh`` on the CPU: the dry run reaches every step and writes every field of the
one JSON (which validates), the checks fail on a wrong kernel, a step is stopped at its time box
with its results so far kept, a spent budget skips the rest, a machine without a GPU fails cleanly,
and bad command lines are one-line errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vin_kernels
from vin_kernels import cuda as vcuda
from vin_bench import gpu_check

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _gpu_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole dry run once: ``(result, completed process, seconds, out dir)``."""
    out = tmp_path_factory.mktemp("gpu_check")
    start = time.perf_counter()
    done = _gpu_check(str(out), "--dry-run")
    seconds = time.perf_counter() - start
    result = json.loads((out / gpu_check.JSON_NAME).read_text())
    return result, done, seconds, out


def test_dry_run_passes_and_validates(dry_run):
    result, done, seconds, out = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert gpu_check.validate(result) == []
    assert result["dry_run"] and result["finished"] is not None
    assert done.stdout.strip().splitlines()[-1].startswith("PASSED"), done.stdout[-2000:]
    # What the device tool returns: at most 8 files; the run leaves exactly the JSON and the log.
    assert sorted(p.name for p in out.iterdir()) == [gpu_check.JSON_NAME, gpu_check.LOG_NAME]
    print(f"dry run: {seconds:.1f} s")


def test_dry_run_reaches_every_step(dry_run):
    result = dry_run[0]
    steps = result["steps"]
    assert list(steps) == list(gpu_check.DEFAULT_STEPS)
    for name in ("correct_paper", "perf", "correct_awkward"):
        assert steps[name]["status"] == "ok", steps[name]
    for name in ("build", "memcheck"):  # not possible on a CPU: skipped, saying why
        assert steps[name]["status"] == "skipped" and steps[name]["reason"].startswith("dry run"), steps[name]
    assert all(e["exit_code"] == 0 for n, e in steps.items() if n != "build")
    env = result["environment"]
    assert env["device_kind"] == "cpu" and env["gpu"] is None
    assert env["extension"] == ("built" if vcuda.is_built() else vcuda.build_problem())


def test_dry_run_writes_every_correctness_row(dry_run):
    result = dry_run[0]
    rows = result["correctness"]["rows"]
    for step in ("correct_paper", "correct_awkward"):
        expected = sorted(u.label for u in gpu_check.units(step))
        assert sorted(f"{r['case']} {r['dtype']} {r['backend']}" for r in rows if r["step"] == step) == expected
    ran = {(r["op"], r["backend"], r["dtype"]) for r in rows if "skipped" not in r}
    for op in ("chunk_attention", "global_attention"):  # bf16 attention needs a GPU (the interpreter's bf16 dots)
        assert {(op, "triton", dt) for dt in ("float16", "float32")} <= ran
    for op in ("merge_attention", "overlap_fuse"):
        assert {(op, "triton", dt) for dt in ("bfloat16", "float16", "float32")} <= ran
    for r in rows:
        assert "error" not in r, r
        if "skipped" in r:
            assert r["backend"] == "cuda" or (r["dtype"] == "bfloat16" and r["op"] in ("chunk_attention", "global_attention")), r
            continue
        assert r["passed"], r
        assert list(r["errors"]) == _checked_names(r), r
        assert all(isinstance(e, float) and e <= r["tolerance"] for e in r["errors"].values()), r
    summary = result["summary"]
    assert summary["passed"] and summary["failed_checks"] == [] and summary["not_reached"] == 0
    assert summary["checks"] + summary["skipped_checks"] == len(rows)


def _checked_names(row: dict) -> list[str]:
    """The outputs and input gradients a correctness row must report, from its op and shape."""
    s = row["shape"]
    if row["op"] == "chunk_attention":
        outputs, inputs = ["o", "lse"][: 1 + s["return_lse"]], ["q", "k", "v"] + (["global_k", "global_v"] if s["G"] else [])
    elif row["op"] == "global_attention":
        outputs, inputs = ["o", "lse"][: 1 + s["return_lse"]], ["gq", "k", "v"]
    elif row["op"] == "merge_attention":
        outputs, inputs = ["o", "lse"], ["o_a", "lse_a", "o_b", "lse_b"]
    else:
        outputs, inputs = ["out"], ["eps"] + (["x"] if s["x"] else [])
    return outputs + [f"d{n}" for n in inputs]


def test_dry_run_writes_every_performance_row(dry_run):
    result = dry_run[0]
    rows = result["performance"]["rows"]
    assert result["performance"]["ceilings"] is None  # no ceiling is claimed on a CPU
    assert [(r["head_dim"], r["impl"], r["pass"]) for r in rows] == [
        (D, impl, p) for D in gpu_check.PERF_HEAD_DIMS for impl, _ in gpu_check.PERF_IMPLS for p in gpu_check.PASSES
    ]
    for r in rows:
        if "error" in r:  # on a CPU: no cuDNN, and FlexAttention has no backward
            assert "cudnn" in r["impl"] or (r["impl"] == "flex_compiled" and r["pass"] == "fwd+bwd"), r
            continue
        assert r["tflops"] > 0 and r["median_ms"] > 0 and len(r["times_ms"]) == 2, r
        assert r["pct_of_dense"] > 0 and r["pct_of_ceiling"] is None, r
    triton = [r for r in rows if r["impl"] == "vin_triton"]
    assert len(triton) == 4 and all(r["check"]["passed"] for r in triton)
    assert {"dq", "dk", "dv", "dglobal_k", "dglobal_v"} == set(next(r for r in triton if r["pass"] == "fwd+bwd")["check"]["errors"])
    dense = [r for r in rows if r["impl"] == "dense_flash"]
    assert all(r["pct_of_dense"] == pytest.approx(100) for r in dense)
    assert len(result["summary"]["headline"]) == 4


def test_dry_run_runs_the_sanitizer_cases(dry_run):
    result = dry_run[0]
    memcheck = result["sanitizer"]["memcheck"]
    assert memcheck["status"] == "skipped" and memcheck["errors"] is None
    assert len(memcheck["cases"]) >= 6 and set(memcheck["cases"].values()) == {"ok"}, memcheck


def test_validate_names_what_is_wrong(dry_run, tmp_path):
    result = dry_run[0]
    broken = copy.deepcopy(result)
    row = next(r for r in broken["correctness"]["rows"] if "passed" in r)
    del row["max_error"]
    next(r for r in broken["performance"]["rows"] if "tflops" in r)["tflops"] = "fast"
    broken["steps"]["perf"]["status"] = "done"
    problems = gpu_check.validate(broken)
    assert any(p.endswith(".max_error: missing") for p in problems), problems
    assert any(".tflops: expected float" in p for p in problems), problems
    assert any(p.startswith("steps.perf.status") for p in problems), problems
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    done = subprocess.run([sys.executable, "-m", "vin_bench.gpu_check", "--validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "max_error: missing" in done.stdout


def _merge_unit() -> gpu_check.Unit:
    case = next(c for c in gpu_check.AWKWARD_CASES if c.op == "merge_attention")
    return gpu_check.Unit("correct_awkward", case, "float32", "triton")


@pytest.mark.parametrize("fault", ["scaled", "nan"])
def test_the_check_fails_on_a_wrong_kernel(monkeypatch, fault):
    """A kernel whose output is 1% off, or NaN in one element, fails its check."""
    real = vin_kernels.merge_attention

    def wrong(*args, backend, **kwargs):
        o, lse = real(*args, backend=backend, **kwargs)
        if backend == "triton":
            o = o * 1.01 if fault == "scaled" else o.index_put((torch.tensor([0]),), torch.tensor(float("nan")))
        return o, lse

    monkeypatch.setattr(vin_kernels, "merge_attention", wrong)
    gpu = torch.cuda.is_available()  # else the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET)
    row = gpu_check.check_unit(_merge_unit(), torch.device("cuda" if gpu else "cpu"), dry_run=not gpu, seed=0)
    assert row["passed"] is False, row
    assert row["errors"]["o"] == ("non-finite" if fault == "nan" else pytest.approx(0.01, rel=1e-3))
    assert row["errors"]["lse"] < 1e-6


def test_a_step_is_stopped_at_its_time_box(tmp_path):
    """The awkward checks (about 20 s in the interpreter) in a 6 s box: stopped, the rows so far kept."""
    done = _gpu_check(str(tmp_path), "correct_awkward", "--dry-run", "--step-timeout", "6")
    assert done.returncode == 1
    result = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert gpu_check.validate(result) == []
    entry = result["steps"]["correct_awkward"]
    assert entry["status"] == "timeout" and entry["timeout_s"] == 6 and entry["seconds"] < 20, entry
    assert result["summary"]["not_reached"] > 0 and not result["summary"]["passed"]
    assert "timeout" in done.stdout


def test_a_spent_budget_skips_the_remaining_steps(tmp_path):
    done = _gpu_check(str(tmp_path), "--dry-run", "--budget", "0", timeout=60)
    assert done.returncode == 1
    result = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert gpu_check.validate(result) == []
    assert {e["status"] for e in result["steps"].values()} == {"skipped"}
    assert all("time budget spent" in e["reason"] for e in result["steps"].values())
    assert result["environment"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine without a GPU")
def test_without_a_gpu_the_gpu_steps_fail_at_once(tmp_path):
    done = _gpu_check(str(tmp_path), "correct_paper", "perf", timeout=120)
    assert done.returncode == 1
    steps = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())["steps"]
    assert steps["correct_paper"]["status"] == "failed" and steps["correct_paper"]["exit_code"] == gpu_check.NO_GPU_EXIT
    assert steps["perf"]["status"] == "skipped" and "no CUDA device" in steps["perf"]["reason"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["OUT", "bogus"], "STEP: unknown step 'bogus'"),
        (["--workers", "0"], "--workers: must be >= 1"),
        (["--budget", "soon"], "--budget"),
        (["--validate", "/nonexistent/gpu_check.json"], "--validate"),
    ],
)
def test_bad_command_lines_are_one_line_errors(args, message):
    done = _gpu_check(*args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_an_unwritable_out_dir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = _gpu_check(str(blocker), "--dry-run", timeout=60)
    assert done.returncode == 2 and "OUT_DIR" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_sanitizer_output_is_parsed():
    text = (
        "========= COMPUTE-SANITIZER\nchunk_attention bfloat16 context_grad=True: ok\n"
        "merge_attention float32: NON-FINITE\n========= Invalid __global__ read of size 2 bytes\n"
        "========= ERROR SUMMARY: 3 errors\n"
    )
    cases, errors = gpu_check.parse_sanitizer_output(text)
    assert cases == {"chunk_attention bfloat16 context_grad=True": "ok", "merge_attention float32": "NON-FINITE"}
    assert errors == 3
    assert gpu_check.parse_sanitizer_output("no summary here")[1] is None
