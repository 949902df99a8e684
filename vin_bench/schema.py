"""The layout of a result file, and a validator that says what is wrong with one."""

from __future__ import annotations

SCHEMA_VERSION = "vin-kernels-bench/1"

ENVIRONMENT_FIELDS = {
    "device": str,
    "device_kind": str,
    "driver": (str, type(None)),
    "cuda": (str, type(None)),
    "torch": str,
    "triton": (str, type(None)),
    "vin_kernels": str,
    "python": str,
    "commit": (str, type(None)),  # None: not run from a git checkout (an installed package)
    "command": str,
    "timestamp": str,
}
# Recorded since issue 19 (checked when present; older results lack them).
OPTIONAL_ENVIRONMENT_FIELDS = {
    "cpu_model": str,
    "cpus": int,
    "threads": int,
    "nice": (int, type(None)),
    "load_average": (list, type(None)),
}
SUITE_RUN_FIELDS = {"seconds": float, "load_average_before": (list, type(None)), "load_average_after": (list, type(None))}
# Per suite: fields every row has (rows with an "error" need only the identifying ones).
ROW_FIELDS = {
    "flops": {"video_frames": int, "latent_frames": int, "mode": str, "step_flops": int, "sample_flops": int,
              "ratio_to_full": float, "attention_flops": int, "linear_flops": int, "vin_flops": int,
              "counted_step_flops": int},
    "kernels": {"op": str, "shape": str, "pass": str, "impl": str, "kind": str, "times_ms": list, "median_ms": float},
    "model": {"mode": str, "video_frames": int, "step_times_ms": list, "step_median_ms": float},
    "parallel": {"kind": str, "layout": str, "ranks": int, "latent_frames": int},
    "quality": {"variant": str, "description": str, "layout": str},
    "static": {"kernel": str, "head_dim": int, "dtype": str, "arch": str, "config": str, "registers": int,
               "spill_bytes": int, "shared_bytes": int, "tensor_core": str, "async_copy": str, "resident_warps": int,
               "problems": list},
    "diffusers": {"mode": str, "multiple": int, "video_frames": int, "latent_frames": int, "flops": int,
                  "counted_flops": int, "step_times_ms": list, "step_median_ms": float},
}
ERROR_ROW_FIELDS = {"flops": (), "kernels": ("op", "shape", "pass", "impl"), "model": ("mode", "video_frames"),
                    "parallel": ("kind", "layout", "ranks"), "quality": ("variant",), "static": ("kernel", "head_dim", "dtype", "arch", "config"),
                    "diffusers": ("mode", "video_frames")}


def _check(errors: list[str], where: str, value, kind) -> None:
    if kind is float:
        kind = (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        errors.append(f"{where}: expected {kind}, got {type(value).__name__} ({value!r:.60})")


def validate(result: dict) -> list[str]:
    """Every problem with ``result`` (empty when it is a valid result file)."""
    errors: list[str] = []
    if not isinstance(result, dict):
        return ["result: expected an object"]
    if result.get("schema") != SCHEMA_VERSION:
        errors.append(f"schema: expected {SCHEMA_VERSION!r}, got {result.get('schema')!r}")
    env = result.get("environment")
    if not isinstance(env, dict):
        errors.append("environment: missing")
    else:
        for name, kind in ENVIRONMENT_FIELDS.items():
            if name not in env:
                errors.append(f"environment.{name}: missing")
            else:
                _check(errors, f"environment.{name}", env[name], kind)
        for name, kind in OPTIONAL_ENVIRONMENT_FIELDS.items():
            if name in env:
                _check(errors, f"environment.{name}", env[name], kind)
    for name in ("quick", "full"):
        if name in result and not isinstance(result[name], bool):
            errors.append(f"{name}: expected a bool, got {result[name]!r:.60}")
    if result.get("quick") and result.get("full"):
        errors.append("quick and full: a run is one or the other")
    runs = result.get("suite_runs", {})
    if not isinstance(runs, dict):
        errors.append("suite_runs: expected an object")
        runs = {}
    for suite, run in runs.items():
        for name, kind in SUITE_RUN_FIELDS.items():
            if not isinstance(run, dict) or name not in run:
                errors.append(f"suite_runs.{suite}.{name}: missing")
            else:
                _check(errors, f"suite_runs.{suite}.{name}", run[name], kind)
    ceilings = result.get("ceilings", "missing")
    if ceilings == "missing":
        errors.append("ceilings: missing (null on a CPU)")
    elif ceilings is not None:
        for name in ("bf16_matmul_tflops", "copy_gbps", "matmul_times_ms", "copy_times_ms"):
            if name not in ceilings:
                errors.append(f"ceilings.{name}: missing")
    suites = result.get("suites")
    if not isinstance(suites, dict) or not suites:
        return errors + ["suites: expected at least one suite"]
    for suite, body in suites.items():
        if suite not in ROW_FIELDS:
            errors.append(f"suites.{suite}: unknown suite")
            continue
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            errors.append(f"suites.{suite}.rows: missing")
            continue
        for i, row in enumerate(rows):
            fields = ERROR_ROW_FIELDS[suite] if "error" in row else ROW_FIELDS[suite]
            for name in fields:
                kind = ROW_FIELDS[suite][name]
                if name not in row:
                    errors.append(f"suites.{suite}.rows[{i}].{name}: missing")
                else:
                    _check(errors, f"suites.{suite}.rows[{i}].{name}", row[name], kind)
    return errors
