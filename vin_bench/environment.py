"""What a result was measured on (device, versions, commit, command, time, CPU, threads, nice level,
load average), where results go by default, and the name of a run's files."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the source tree vin_bench was imported from


def is_checkout(path: Path) -> bool:
    """True for the root of a vin-kernels source checkout (it holds ``vin_bench/`` and ``bench/``)."""
    try:
        pyproject = (path / "pyproject.toml").read_text()
    except OSError:
        return False
    return 'name = "vin-kernels"' in pyproject and (path / "vin_bench").is_dir() and (path / "bench").is_dir()


def checkout_root() -> Path | None:
    """The vin-kernels checkout the harness runs from: the source tree it was imported from (``python
    -m bench`` in a checkout, an editable install), else the checkout around the current folder; None
    for an installed package run outside any checkout."""
    for path in (ROOT, Path.cwd(), *Path.cwd().parents):
        if is_checkout(path):
            return path
    return None


def user_results_dir() -> Path:
    """Results outside a checkout: ``$XDG_DATA_HOME/vin-kernels/bench-results`` (``~/.local/share``
    by default; ``%LOCALAPPDATA%`` on Windows, ``~/Library/Application Support`` on macOS)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "vin-kernels" / "bench-results"


def default_results_dir() -> Path:
    """``VIN_BENCH_RESULTS`` if set; in a checkout its ``bench/results/``; else :func:`user_results_dir`."""
    if os.environ.get("VIN_BENCH_RESULTS"):
        return Path(os.environ["VIN_BENCH_RESULTS"])
    root = checkout_root()
    return root / "bench" / "results" if root is not None else user_results_dir()


def git_commit() -> str | None:
    """Short commit of the source tree the harness runs from, ``+dirty`` if tracked files are modified;
    None when that tree is not a git checkout (an installed package: the result names its version)."""
    if not is_checkout(ROOT):
        return None
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != ROOT:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _nice() -> int | None:
    try:
        return os.nice(0)
    except (AttributeError, OSError):
        return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
        "cpu_model": cpu_model(),
        "cpus": _cpus(),
        "threads": torch.get_num_threads(),
        "nice": _nice(),
        "load_average": load_average(),
    }


def device_slug(env: dict) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``; CPUs -> ``cpu``."""
    if env["device_kind"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")


def source_label(env: dict) -> str:
    """The commit (``+dirty`` as ``-dirty``), or ``v<version>`` for an installed package without one."""
    commit = env.get("commit")
    if not commit or commit == "unknown":
        return f"v{env['vin_kernels']}"
    return commit.replace("+", "-")


def result_stem(env: dict, kind: str = "default", suites: list[str] | None = None) -> str:
    """``<device>-<YYYYMMDD>-<HHMMSS>-<commit>[-<suites>]-<kind>``: the name of a run's files.

    ``kind`` is ``default``, ``full`` or ``quick``; ``suites`` (joined by ``+``) is given for a run of
    named suites, so no run's name is another's. The CLI also never overwrites a file (see
    :func:`vin_bench.cli.write`): a run in the same second gets ``-2``, ``-3``, ...
    """
    stamp = _dt.datetime.fromisoformat(env["timestamp"]).strftime("%Y%m%d-%H%M%S")
    named = f"-{'+'.join(suites)}" if suites else ""
    return f"{device_slug(env)}-{stamp}-{source_label(env)}{named}-{kind}"
