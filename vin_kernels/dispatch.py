"""Backend discovery and selection: which implementation of an op runs for given tensors.

Backends: ``"reference"`` (pure PyTorch, always there), ``"triton"`` (CUDA tensors, or CPU tensors
under ``TRITON_INTERPRET=1``), ``"cuda"`` (the compiled ``vin_kernels._C`` extension, CUDA tensors).

Selection for ``backend="auto"``: the environment variable ``VIN_KERNELS_BACKEND`` if set, else the
first backend in the op's priority list (:data:`OP_BACKENDS`) that can run on the tensors' device;
CPU and meta tensors use the reference. A backend asked for by name (argument or environment) must
implement the op and be usable for the tensors, or the call raises.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

__all__ = ["BACKENDS", "OP_BACKENDS", "BackendStatus", "backends", "select_backend"]

BACKENDS = ("reference", "triton", "cuda")
ENV_VAR = "VIN_KERNELS_BACKEND"

# Per op, the backends that implement it in the order "auto" tries them on a GPU. Triton leads until
# a benchmark run shows the CUDA kernel faster (bench/, kernels suite); reorder on measurements only.
OP_BACKENDS: dict[str, tuple[str, ...]] = {
    "chunk_attention": ("triton", "reference"),
    "global_attention": ("triton", "reference"),
    "merge_attention": ("triton", "reference"),
    "overlap_fuse": ("triton", "cuda", "reference"),
}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, why not, and which ops it implements."""

    name: str
    available: bool
    reason: str
    ops: tuple[str, ...]

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"{self.name}: {state} ({self.reason}); ops: {', '.join(self.ops) or 'none'}"


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    if torch.cuda.is_available():
        return True, "triton installed, CUDA device present"
    if triton_interpreted():
        return True, "triton installed, running in the CPU interpreter (TRITON_INTERPRET=1)"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on the CPU, slowly)"


def _cuda_status() -> tuple[bool, str]:
    from . import cuda

    if not cuda.is_built():
        return False, cuda.build_problem()
    if not torch.cuda.is_available():
        return False, "the extension is built but torch sees no CUDA device"
    if cuda.extension().device_count() == 0:
        return False, (
            "torch sees a CUDA device but the extension's CUDA runtime does not "
            "(is the driver older than the CUDA toolkit the extension was built with?)"
        )
    return True, f"extension built for sm {cuda.compiled_archs()}, CUDA device present"


def _constant_to_compile(fn):
    """Mark ``fn`` as returning a constant to torch.compile, which calls it eagerly instead of tracing
    the import machinery inside. What ``torch.compiler.assume_constant_result`` does, without its
    import of ``torch._dynamo`` (1.8 s added to ``import vin_kernels``); guarded by
    ``test_backend_selection_is_traceable_by_dynamo``."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_to_compile
def _status(name: str) -> tuple[bool, str]:
    """``(available, reason)`` of backend ``name`` on this machine."""
    if name == "triton":
        return _triton_status()
    if name == "cuda":
        return _cuda_status()
    return True, "pure PyTorch, always available"


def backends() -> dict[str, BackendStatus]:
    """Every backend with its availability on this machine, the reason, and the ops it implements."""
    return {
        name: BackendStatus(name, *_status(name), tuple(op for op, impls in OP_BACKENDS.items() if name in impls))
        for name in BACKENDS
    }


def _problem(name: str, device: torch.device) -> Exception | None:
    """Why backend ``name`` cannot run on tensors of ``device`` (None if it can)."""
    if name == "reference" or device.type == "meta":  # meta tensors only need the fake kernels
        return None
    if device.type != "cuda" and not (name == "triton" and triton_interpreted()):
        return ValueError(f"the {name} backend needs CUDA tensors, got tensors on {device}")
    ok, why = _status(name)
    if not ok:
        return RuntimeError(f"the {name} backend is unavailable: {why}")
    return None


def select_backend(op: str, requested: str, device: torch.device) -> str:
    """The backend that runs ``op`` for tensors on ``device``.

    Args:
        op: a key of :data:`OP_BACKENDS`.
        requested: ``"auto"`` or a backend name.
    Raises:
        TypeError: ``requested`` is not a string.
        ValueError: unknown name, the op lacks that backend, or the tensors' device does not suit it.
        RuntimeError: the backend is not available on this machine.
    """
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a str, got {type(requested).__name__}")
    source = "backend"
    if requested == "auto" and os.environ.get(ENV_VAR):
        requested, source = os.environ[ENV_VAR], ENV_VAR
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"{source} must be 'auto' or one of {BACKENDS}, got {requested!r}")
    implemented = OP_BACKENDS[op]
    if requested == "auto":
        if device.type != "cuda":
            return "reference"
        return next(name for name in implemented if _problem(name, device) is None)
    if requested not in implemented:
        raise ValueError(f"{op} has no {requested!r} backend ({source}={requested!r}); it has: {', '.join(implemented)}")
    problem = _problem(requested, device)
    if problem is not None:
        raise type(problem)(f"{op}: {source}={requested!r}: {problem}")
    return requested
