"""Argument validation for every public op, run before any backend is chosen or kernel launched.

Every failure is a ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape,
size or value) whose message names the argument, says what was expected and what was given.
Only what the kernels really need is demanded (e.g. stride 1 in the last dimension); nothing is
copied here.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = [
    "FLOAT_DTYPES",
    "TRITON_HEAD_DIMS",
    "validate_chunk_attention",
    "validate_global_attention",
    "validate_merge_attention",
    "validate_overlap_fuse",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims the Triton attention kernels are built for (a power-of-two tile plus a 16/32-wide tail
# for 72/80/96); the sdpa and reference backends take any head dim >= 1.
TRITON_HEAD_DIMS = (32, 64, 72, 80, 96, 128)

_QKV = "[batch, seqlen, heads, head_dim]"
_GLOBAL_KV = "[global_batch, num_global, heads, head_dim]"
_GQ = "[batch, num_global, heads, head_dim]"
_LSE = "[batch, heads, seqlen]"


# ---------------------------------------------------------------------------------------- scalars
def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def check_finite(name: str, value, positive: bool = False) -> float:
    """``value`` as a finite float (and ``> 0`` with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a {'positive ' if positive else ''}finite number, got {value}")
    return value


def check_softmax_scale(value) -> float | None:
    return None if value is None else check_finite("softmax_scale", value, positive=True)


# ---------------------------------------------------------------------------------------- tensors
def check_tensor(name: str, t, rank: int | None = None, shape_desc: str = "", dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """A tensor of one of ``dtypes`` with ``rank`` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}; got {str(t.dtype).replace('torch.', '')}")
    if rank is not None and t.dim() != rank:
        raise ValueError(f"{name} must have shape {shape_desc} ({rank} dims), got {tuple(t.shape)}")
    return t


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, same_shape: bool = True) -> None:
    """``t`` has the dtype, device (and shape) of ``ref``."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")
    if same_shape and t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")


def check_head_dim(name: str, t: torch.Tensor) -> None:
    """A head dim of at least 1 (which dims a backend supports is the dispatcher's check)."""
    if t.shape[-1] < 1:
        raise ValueError(f"{name} has head_dim 0 (last dim); it must be at least 1")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} must have stride 1 in its last dimension, got strides {t.stride()}; pass {name}.contiguous()"
        )


def check_packed_from(name: str, t: torch.Tensor, first_dim: int) -> None:
    """Dims ``first_dim..`` of ``t`` must be packed (flattenable into one stride-1 dim)."""
    if t.numel() == 0:  # nothing is read; torch's strides of empty tensors need not be packed
        return
    expected = 1
    for size, stride in reversed(list(zip(t.shape[first_dim:], t.stride()[first_dim:]))):
        if size != 1 and stride != expected:
            raise ValueError(
                f"{name} must be contiguous in its feature dims (dims {first_dim} and up), got shape "
                f"{tuple(t.shape)} with strides {t.stride()}; pass {name}.contiguous()"
            )
        expected *= size


def _check_attention_operand(name: str, t, ref_name: str | None = None, ref: torch.Tensor | None = None, shape_desc=_QKV):
    check_tensor(name, t, 4, shape_desc)
    if ref is not None:
        check_like(name, t, ref_name, ref)
    check_head_dim(name, t)
    check_last_dim_contiguous(name, t)


# ---------------------------------------------------------------------------------------- ops
def validate_chunk_attention(
    q, k, v, global_k, global_v, chunk_size, context_size, context_grad, softmax_scale, return_lse
) -> None:
    """Checks of :func:`vin_kernels.chunk_attention`."""
    _check_attention_operand("q", q)
    _check_attention_operand("k", k, "q", q)
    _check_attention_operand("v", v, "q", q)
    check_int("chunk_size", chunk_size, 1)
    check_int("context_size", context_size, 0)
    check_bool("context_grad", context_grad)
    check_bool("return_lse", return_lse)
    check_softmax_scale(softmax_scale)
    if (global_k is None) != (global_v is None):
        missing = "global_v" if global_v is None else "global_k"
        raise ValueError(f"global_k and global_v must be given together; {missing} is None")
    if global_k is None:
        return
    B, _, H, D = q.shape
    check_tensor("global_k", global_k, 4, _GLOBAL_KV)
    check_like("global_k", global_k, "q", q, same_shape=False)
    check_last_dim_contiguous("global_k", global_k)
    if global_k.shape[2:] != (H, D):
        raise ValueError(
            f"global_k must have shape {_GLOBAL_KV} with heads={H}, head_dim={D} like q, got {tuple(global_k.shape)}"
        )
    Bg = global_k.shape[0]
    if Bg < 1 or B % Bg != 0:
        raise ValueError(
            f"global_k's batch {Bg} must divide q's batch {B} (row b of q uses global row b // (B // Bg))"
        )
    _check_attention_operand("global_v", global_v, "global_k", global_k, _GLOBAL_KV)


def validate_global_attention(
    gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, return_lse
) -> None:
    """Checks of :func:`vin_kernels.global_attention`."""
    _check_attention_operand("gq", gq, shape_desc=_GQ)
    check_tensor("k", k, 4, _QKV)
    check_like("k", k, "gq", gq, same_shape=False)
    B, _, H, D = gq.shape
    if k.shape[0] != B or k.shape[2:] != (H, D):
        raise ValueError(
            f"k must have shape {_QKV} with batch={B}, heads={H}, head_dim={D} like gq, got {tuple(k.shape)}"
        )
    _check_attention_operand("k", k)
    _check_attention_operand("v", v, "k", k)
    T = check_int("tokens_per_frame", tokens_per_frame, 1)
    check_int("keyframe_stride", keyframe_stride, 1)
    offset = check_int("keyframe_offset", keyframe_offset, 0)
    check_softmax_scale(softmax_scale)
    check_bool("return_lse", return_lse)
    N = k.shape[1]
    if N % T != 0:
        raise ValueError(f"k's seqlen {N} must be a multiple of tokens_per_frame={T}")
    if B * gq.shape[1] > 0:
        if N == 0:
            raise ValueError("k and v hold no tokens; global_attention needs at least one keyframe")
        if offset >= N // T:
            raise ValueError(f"keyframe_offset must be < the number of frames {N // T}, got {offset}")


def validate_merge_attention(o_a, lse_a, o_b, lse_b) -> None:
    """Checks of :func:`vin_kernels.merge_attention`."""
    check_tensor("o_a", o_a, 4, _QKV)
    check_last_dim_contiguous("o_a", o_a)
    check_tensor("o_b", o_b, 4, _QKV)
    check_like("o_b", o_b, "o_a", o_a)
    check_last_dim_contiguous("o_b", o_b)
    B, N, H, _ = o_a.shape
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        check_tensor(name, lse, 3, _LSE, dtypes=(torch.float32,))
        if lse.device != o_a.device:
            raise ValueError(f"{name} must be on the device of o_a ({o_a.device}), got {lse.device}")
        if lse.shape != (B, H, N):
            raise ValueError(f"{name} must have shape {_LSE} = {(B, H, N)} to match o_a, got {tuple(lse.shape)}")


def validate_overlap_fuse(eps, layout, x, coeffs, out_windows) -> None:
    """Checks of :func:`vin_kernels.overlap_fuse`."""
    from .layout import ChunkLayout  # layout.py uses this module's scalar checks

    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a vin_kernels.ChunkLayout, got {type(layout).__name__}")
    if not layout.is_windows:
        raise ValueError("layout must be a window-mode ChunkLayout (ChunkLayout.windows); got a context-mode one")
    check_tensor("eps", eps)
    n, L = layout.num_chunks, layout.chunk_len
    if eps.dim() < 3 or eps.shape[1:3] != (n, L):
        raise ValueError(
            f"eps must have shape [batch, num_windows={n}, window={L}, *features] for this layout, "
            f"got {tuple(eps.shape)}"
        )
    check_packed_from("eps", eps, 3)
    check_bool("out_windows", out_windows)
    if x is None:
        if coeffs is not None:
            raise ValueError("coeffs is given without x; pass x to fuse the update a*x + b*eps_fused")
        return
    check_tensor("x", x)
    check_like("x", x, "eps", eps, same_shape=False)
    frames = (eps.shape[0], layout.num_frames, *eps.shape[3:])
    if tuple(x.shape) not in (frames, tuple(eps.shape)):
        raise ValueError(
            f"x must have shape [batch, num_frames, *features] = {frames} (frames) or the shape of eps "
            f"{tuple(eps.shape)} (windows), got {tuple(x.shape)}"
        )
    check_packed_from("x", x, 2 if x.dim() < eps.dim() else 3)
    if coeffs is None:
        raise ValueError("x is given without coeffs; pass coeffs=(a, b) for x_next = a*x + b*eps_fused")
    if not isinstance(coeffs, (tuple, list)) or len(coeffs) != 2:
        raise TypeError(f"coeffs must be a pair (a, b) of floats, got {coeffs!r}")
    check_finite("coeffs[0]", coeffs[0])
    check_finite("coeffs[1]", coeffs[1])
