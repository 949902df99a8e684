"""Backend registry and selection: which implementation of an op runs for given tensors.

Backends:

* ``"reference"``: :mod:`vin_kernels.reference`, the pure-PyTorch specification (any dtype, float64
  included, any device; slow).
* ``"sdpa"``: :mod:`vin_kernels.sdpa`, compositions of PyTorch's fused attention
  (``scaled_dot_product_attention``: the flash kernel on a CPU, flash / cuDNN / efficient on CUDA),
  differentiable through autograd; any device, any head dim. The default on a CPU.
* ``"triton"``: the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
* ``"cuda"``: the compiled extension ``vin_kernels._C`` (CUDA tensors).

One pattern for every op: each ``vin_kernels/ops/<op>.py`` registers one callable per backend with
:func:`register` (same keyword signature as the public function, minus ``backend``), and its public
function validates the arguments, then calls :func:`implementation`. A backend plugs in by
registering a callable; no op schema names a backend.

``backend="auto"`` takes ``VIN_KERNELS_BACKEND`` if set, else the first backend of
:data:`AUTO_ORDER` for the tensors' device type that implements the op and can run the inputs
(device, availability, head dim, and for Triton on a GPU whether every kernel the op launches has a
tile option that fits the device for the dtype and head dim). A backend asked for by name (argument
or environment) must implement the op and be able to run the inputs, or the call raises saying why.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BackendStatus",
    "Implementation",
    "TRITON_MIN_VERSION",
    "backends",
    "implementation",
    "register",
    "select_backend",
    "triton_interpreted",
    "triton_version_problem",
]

BACKENDS = ("reference", "sdpa", "triton", "cuda")
ENV_VAR = "VIN_KERNELS_BACKEND"

# The order "auto" tries backends in, by device type. On a GPU the kernels lead (Triton before the
# CUDA extension until a benchmark run shows the CUDA overlap_fuse faster; reorder on measurements
# only); everywhere else PyTorch's fused attention (sdpa), with the reference as the last resort.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "sdpa", "reference"),
    "other": ("sdpa", "reference"),
}


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    Attributes:
        op, backend: names.
        fn: the callable, with the public function's keyword signature minus ``backend``.
        head_dims: the head dims it supports, or None for any.
    """

    op: str
    backend: str
    fn: Callable
    head_dims: tuple[int, ...] | None = None


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, backend: str, fn: Callable, *, head_dims: tuple[int, ...] | None = None) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (called once per pair, at import)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(op, backend, fn, head_dims)


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


# The oldest Triton the kernels import and compile with (torch 2.8 pins 3.4); python -m bench --suite
# static --triton-versions checks every version from it to the newest (3.9).
TRITON_MIN_VERSION = (3, 4)


def triton_version_problem() -> str | None:
    """Why the installed triton cannot run the kernels (too old), or None (also when it is absent)."""
    try:
        version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
    if parts >= TRITON_MIN_VERSION:
        return None
    want = ".".join(map(str, TRITON_MIN_VERSION))
    return (f"vin_kernels' Triton kernels need triton >= {want} (torch >= 2.8 brings it); triton {version} is "
            f"installed: upgrade triton, or use the sdpa backend")


def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    if (problem := triton_version_problem()) is not None:
        return False, problem
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
    if name == "sdpa":
        return True, "PyTorch scaled_dot_product_attention, always available"
    return True, "pure PyTorch, always available"


def backends() -> dict[str, BackendStatus]:
    """Every backend with its availability on this machine, the reason, and the ops it implements."""
    return {
        name: BackendStatus(name, *_status(name), tuple(op for op, impls in _REGISTRY.items() if name in impls))
        for name in BACKENDS
    }


@_constant_to_compile
def _tile_problem(op: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why some Triton kernel of ``op`` has no tile option that fits ``device`` (see
    :mod:`vin_kernels.triton.tiles`), or None."""
    from .triton import tiles

    return tiles.unfit_reason(op, device, dtype, head_dim)


def _problem(impl: Implementation, device: torch.device, head_dim: int | None,
             dtype: torch.dtype | None = None) -> Exception | None:
    """Why ``impl`` cannot run inputs of ``dtype`` on ``device`` with ``head_dim`` (None if it can)."""
    if impl.head_dims is not None and head_dim is not None and head_dim not in impl.head_dims:
        return ValueError(
            f"head_dim {head_dim} (last dim of the inputs) is not supported by the {impl.backend} backend, "
            f"which takes head dims {impl.head_dims}; the sdpa and reference backends take any"
        )
    if impl.backend in ("reference", "sdpa") or device.type == "meta":  # meta tensors only need the fake kernels
        return None
    if device.type != "cuda" and not (impl.backend == "triton" and triton_interpreted()):
        return ValueError(f"the {impl.backend} backend needs CUDA tensors, got tensors on {device}")
    ok, why = _status(impl.backend)
    if not ok:
        return RuntimeError(f"the {impl.backend} backend is unavailable: {why}")
    if impl.backend == "triton" and device.type == "cuda" and dtype is not None and head_dim is not None:
        if (why := _tile_problem(impl.op, device, dtype, head_dim)) is not None:
            return ValueError(why)
    return None


def implementation(op: str, requested: str, device: torch.device, head_dim: int | None = None,
                   dtype: torch.dtype | None = None) -> Implementation:
    """The implementation that runs ``op`` for inputs on ``device`` (with ``head_dim`` and ``dtype``, attention ops).

    Args:
        op: a registered op name.
        requested: ``"auto"`` or a backend name.
    Raises:
        TypeError: ``requested`` is not a string.
        ValueError: unknown name, the op lacks that backend, or the inputs do not suit it (device, head dim,
            no tile option that fits the device for the dtype and head dim).
        RuntimeError: the backend is not available on this machine.
    """
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a str, got {type(requested).__name__}")
    source = "backend"
    if requested == "auto" and os.environ.get(ENV_VAR):
        requested, source = os.environ[ENV_VAR], ENV_VAR
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"{source} must be 'auto' or one of {BACKENDS}, got {requested!r}")
    impls = _REGISTRY[op]
    if requested == "auto":
        order = AUTO_ORDER["cuda" if device.type == "cuda" else "other"]
        return next(impls[name] for name in order if name in impls and _problem(impls[name], device, head_dim, dtype) is None)
    if requested not in impls:
        raise ValueError(f"{op} has no {requested!r} backend ({source}={requested!r}); it has: {', '.join(impls)}")
    problem = _problem(impls[requested], device, head_dim, dtype)
    if problem is not None:
        raise type(problem)(f"{op}: {source}={requested!r}: {problem}")
    return impls[requested]


def select_backend(op: str, requested: str, device: torch.device, head_dim: int | None = None,
                   dtype: torch.dtype | None = None) -> str:
    """The name of the backend :func:`implementation` picks."""
    return implementation(op, requested, device, head_dim, dtype).backend
