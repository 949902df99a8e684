"""Lazy loader of the compiled extension ``vin_kernels._C`` and its raw-pointer call wrappers.

``_C`` does not link libtorch: this module turns tensors into pointers, element strides, a dtype code
and the current stream. Importing vin_kernels never imports ``_C``; the first use does, and a
missing or broken build is reported by :func:`build_problem` instead of raising at import.
"""

from __future__ import annotations

import importlib
import math
from functools import cache

import torch

__all__ = ["is_built", "build_problem", "compiled_archs", "extension", "overlap_fuse"]

# Must match vin::DType in csrc/include/vin/launchers.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@cache
def _load():
    """``(module, None)`` or ``(None, reason it could not be imported)``."""
    try:
        return importlib.import_module("vin_kernels._C"), None
    except ImportError as err:
        if "No module named" in str(err):
            return None, (
                "the CUDA extension vin_kernels._C is not built (nvcc was not found at install time, "
                "or VIN_KERNELS_CUDA=0)"
            )
        return None, f"vin_kernels._C failed to import: {err}"


def is_built() -> bool:
    """True when ``vin_kernels._C`` imports."""
    return _load()[0] is not None


def build_problem() -> str:
    """Why ``_C`` is unavailable ('' when it imports)."""
    return _load()[1] or ""


def extension():
    """The ``_C`` module; RuntimeError saying why if it is unavailable."""
    module, why = _load()
    if module is None:
        raise RuntimeError(why)
    return module


def compiled_archs() -> str:
    """The CUDA architectures ``_C`` was compiled for, e.g. ``'80,90'``."""
    return extension().compiled_archs


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def overlap_fuse(
    eps: torch.Tensor,
    table: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    x: torch.Tensor | None,
    coeffs: tuple[float, float],
    out: torch.Tensor,
    out_windows: bool,
) -> torch.Tensor:
    """Run the CUDA ``overlap_fuse`` into ``out``.

    Args:
        eps: ``[B, n, L, *feat]`` CUDA tensor, feature dims packed.
        table: ``(frame_ptr int32 [F+1], window int32 [E], position int32 [E], weight fp32 [E])`` on
            ``eps.device`` (from ``ChunkLayout.fusion_table``).
        x: frames ``[B, F, *feat]``, windows ``[B, n, L, *feat]`` (read at each frame's first entry), or None.
        coeffs: ``(a, b)`` of ``out = a * x + b * fused`` (ignored without ``x``).
        out: ``[B, F, *feat]`` or, with ``out_windows``, ``[B, n, L, *feat]``; feature dims packed.
    """
    frame_ptr, window, position, weight = table
    B, F = eps.shape[0], frame_ptr.numel() - 1
    features = math.prod(eps.shape[3:])
    x_windows = x is not None and x.dim() == eps.dim()
    x_strides = (x.stride(0), x.stride(1), x.stride(2) if x_windows else 0) if x is not None else (0, 0, 0)
    out_strides = (out.stride(0), out.stride(1), out.stride(2) if out_windows else 0)
    with torch.cuda.device(eps.device):
        extension().overlap_fuse(
            eps=eps.data_ptr(),
            eps_stride_batch=eps.stride(0),
            eps_stride_window=eps.stride(1),
            eps_stride_pos=eps.stride(2),
            x=x.data_ptr() if x is not None else 0,
            x_stride_batch=x_strides[0],
            x_stride_1=x_strides[1],
            x_stride_2=x_strides[2],
            x_windows=x_windows,
            out=out.data_ptr(),
            out_stride_batch=out_strides[0],
            out_stride_1=out_strides[1],
            out_stride_2=out_strides[2],
            frame_ptr=frame_ptr.data_ptr(),
            entry_window=window.data_ptr(),
            entry_pos=position.data_ptr(),
            entry_weight=weight.data_ptr(),
            batch=B,
            num_frames=F,
            features=features,
            coef_a=float(coeffs[0]),
            coef_b=float(coeffs[1]),
            out_windows=out_windows,
            dtype=DTYPE_CODES[eps.dtype],
            stream=_stream(eps.device),
        )
    return out
