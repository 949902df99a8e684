"""What a result was measured on: device, driver, versions, commit, command, time."""

from __future__ import annotations

import datetime as _dt
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short commit of the source tree (``unknown`` outside a git checkout), ``+dirty`` if modified."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None


def _driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001
        return None


def describe(command: list[str] | None = None) -> dict:
    """The environment record every result file carries."""
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})"
    import vin_kernels

    return {
        "device": device,
        "device_kind": "cuda" if cuda else "cpu",
        "driver": _driver() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "vin_kernels": vin_kernels.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "command": shlex.join(command if command is not None else [Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def device_slug(env: dict) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``; CPUs -> ``cpu``."""
    if env["device_kind"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")


def result_stem(env: dict, quick: bool = False) -> str:
    """``<device>-<YYYYMMDD>-<commit>``, the name of a run's files; ``...-quick`` for a ``--quick`` run,
    so a fast pass never overwrites the full run of the same day and commit."""
    day = env["timestamp"][:10].replace("-", "")
    return f"{device_slug(env)}-{day}-{env['commit'].replace('+', '-')}{'-quick' if quick else ''}"
