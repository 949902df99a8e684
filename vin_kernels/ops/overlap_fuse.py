"""overlap_fuse: public function, torch.library op (fake kernel, autograd) and backend dispatch."""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import reference
from ..checks import validate_overlap_fuse
from ..dispatch import select_backend
from ..layout import ChunkLayout

__all__ = ["overlap_fuse"]


def overlap_fuse(
    eps: torch.Tensor,
    layout: ChunkLayout,
    *,
    x: torch.Tensor | None = None,
    coeffs: tuple[float, float] | None = None,
    out_windows: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """``fused[f] = sum_i w_i(f) * eps[:, i, f - start_i]``, optionally ``a * x + b * fused``, in one pass.

    Blends the overlapping per-window noise predictions of a window-mode layout with the paper's
    linear ramp (``w_i`` = :attr:`ChunkLayout.normalized_blend_weights`; for two windows sharing
    ``O`` frames, ``((O - W(k)) eps_i[k] + W(k) eps_{i+1}[k]) / O`` with ``W(k) = j + 1/2``).
    With ``x`` and ``coeffs = (a, b)`` the sampler update ``x_next = a * x + b * fused`` is fused in;
    with ``out_windows`` the result is written straight back as windows for the next step.

    Args:
        eps: ``[B, n, L, *feat]`` per-window predictions, fp16/bf16/fp32, feature dims contiguous;
            ``n = layout.num_chunks``, ``L = layout.chunk_len``.
        layout: window-mode :class:`ChunkLayout` (``ChunkLayout.windows(F, window, overlap)``).
        x: optional ``[B, F, *feat]`` current sample, dtype and device of ``eps``.
        coeffs: ``(a, b)`` floats, required exactly when ``x`` is given.
        out_windows: return ``[B, n, L, *feat]`` (each window's frames) instead of ``[B, F, *feat]``.
        backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see :func:`vin_kernels.backends`).
    Returns:
        ``[B, F, *feat]`` or ``[B, n, L, *feat]`` in ``eps.dtype`` (fp32 accumulation).

    Example::

        layout = ChunkLayout.windows(num_frames=44, window=20, overlap=12)
        video = overlap_fuse(eps, layout)  # eps: [B, 4, 20, C, h, w] -> [B, 44, C, h, w]
    """
    validate_overlap_fuse(eps, layout, x, coeffs, out_windows)
    chosen = select_backend("overlap_fuse", backend, eps.device)
    if chosen == "reference":
        return reference.overlap_fuse(eps, layout, x=x, coeffs=coeffs, out_windows=out_windows)
    a, b = (float(coeffs[0]), float(coeffs[1])) if x is not None else (0.0, 1.0)
    return _overlap_fuse_op(
        eps, layout.num_frames, layout.chunk_frames, layout.overlap_frames, x, a, b, out_windows, chosen
    )


# ------------------------------------------------------------------------------------ layout tables
@lru_cache(maxsize=64)
def layout_tensors(layout: ChunkLayout, device: torch.device) -> dict[str, torch.Tensor]:
    """The layout's CSR blend table (:attr:`ChunkLayout.fusion_table`) as tensors on ``device``.

    ``frame_ptr`` int32 ``[F+1]``, ``window`` / ``position`` int32 ``[E]``, ``weight`` fp32 ``[E]``.
    Cached per layout and device; only for the kernels' eager launches (never traced code).
    """
    frame_ptr, window, position, weight = layout.fusion_table
    i32 = dict(dtype=torch.int32, device=device)
    return {
        "frame_ptr": torch.tensor(frame_ptr, **i32),
        "window": torch.tensor(window, **i32),
        "position": torch.tensor(position, **i32),
        "weight": torch.tensor(weight, dtype=torch.float32, device=device),
    }


def _output_shape(eps: torch.Tensor, num_frames: int, out_windows: bool) -> tuple[int, ...]:
    return tuple(eps.shape) if out_windows else (eps.shape[0], num_frames, *eps.shape[3:])


# ------------------------------------------------------------------------------------ torch.library op
@torch.library.custom_op("vin_kernels::overlap_fuse", mutates_args=())
def _overlap_fuse_op(
    eps: torch.Tensor,
    num_frames: int,
    window: int,
    overlap: int,
    x: torch.Tensor | None,
    a: float,
    b: float,
    out_windows: bool,
    backend: str,
) -> torch.Tensor:
    layout = ChunkLayout.windows(num_frames, window, overlap)
    if backend == "reference":  # lets opcheck exercise the registration on any device
        coeffs = (a, b) if x is not None else None
        return reference.overlap_fuse(eps, layout, x=x, coeffs=coeffs, out_windows=out_windows)
    out = eps.new_empty(_output_shape(eps, num_frames, out_windows))
    if out.numel() == 0:
        return out
    tables = layout_tensors(layout, eps.device)
    table = (tables["frame_ptr"], tables["window"], tables["position"], tables["weight"])
    if backend == "cuda":
        from .. import cuda as kernels
    elif backend == "triton":
        from ..triton import overlap_fuse as kernels
    else:
        raise ValueError(f"overlap_fuse has no {backend!r} kernel")
    kernels.overlap_fuse(eps, table, x, (a, b), out, out_windows)
    return out


@_overlap_fuse_op.register_fake
def _(eps, num_frames, window, overlap, x, a, b, out_windows, backend):
    return eps.new_empty(_output_shape(eps, num_frames, out_windows))


def _setup_context(ctx, inputs, output):
    eps, num_frames, window, overlap, x, a, b, out_windows, _ = inputs
    ctx.layout = ChunkLayout.windows(num_frames, window, overlap)
    ctx.has_x, ctx.a, ctx.b, ctx.out_windows = x is not None, a, b, out_windows
    ctx.eps_dtype = eps.dtype


def _backward(ctx, grad_out):
    """Adjoint of the blend: gather the frame gradient back into windows with the same weights.

    The index and weight tensors are made here, not taken from the cache: under torch.compile this
    code is traced and must create its own (fake) tensors.
    """
    index = torch.tensor(ctx.layout.window_frame_index, dtype=torch.long, device=grad_out.device)
    weight = torch.tensor(ctx.layout.normalized_blend_weights, dtype=torch.float32, device=grad_out.device)
    grad = grad_out.float()
    if ctx.out_windows:  # windows -> frames: every window position adds into its frame
        frames = grad.new_zeros((grad.shape[0], ctx.layout.num_frames, *grad.shape[3:]))
        grad = frames.index_add(1, index.reshape(-1), grad.flatten(1, 2))
    feat_dims = grad.dim() - 2
    grad_fused = grad * ctx.b if ctx.has_x else grad
    grad_eps = grad_fused[:, index] * weight.reshape(*weight.shape, *([1] * feat_dims))
    grad_x = (grad * ctx.a).to(ctx.eps_dtype) if ctx.has_x else None
    return grad_eps.to(ctx.eps_dtype), None, None, None, grad_x, None, None, None, None


_overlap_fuse_op.register_autograd(_backward, setup_context=_setup_context)
