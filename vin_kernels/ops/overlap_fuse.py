"""overlap_fuse: public function, backend registrations, and the kernel ops (Triton, CUDA) as
torch.library custom ops sharing one schema, fake kernel and autograd."""

from __future__ import annotations

import torch

from .. import reference, sdpa
from ..checks import validate_overlap_fuse
from ..dispatch import implementation, register
from ..layout import ChunkLayout

__all__ = ["overlap_fuse", "fusion_tensors"]


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
    with ``out_windows`` the result is written straight back as windows for the next step. A sampler
    that keeps its state as windows passes ``x`` as windows too and advances it in one call:
    ``x_windows = overlap_fuse(eps, layout, x=x_windows, coeffs=(a, b), out_windows=True)``.

    Args:
        eps: ``[B, n, L, *feat]`` per-window predictions, fp16/bf16/fp32, feature dims contiguous;
            ``n = layout.num_chunks``, ``L = layout.chunk_len``.
        layout: window-mode :class:`ChunkLayout` (``ChunkLayout.windows(F, window, overlap)``).
        x: optional current sample, dtype and device of ``eps``: frames ``[B, F, *feat]``, or windows
            ``[B, n, L, *feat]`` whose overlapping frames are copies (frame ``f`` is read from
            :attr:`ChunkLayout.frame_source`, the first window covering it).
        coeffs: ``(a, b)`` floats, required exactly when ``x`` is given.
        out_windows: return ``[B, n, L, *feat]`` (each window's frames) instead of ``[B, F, *feat]``.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"sdpa"`` or ``"reference"`` (see
            :func:`vin_kernels.backends`).
    Returns:
        ``[B, F, *feat]`` or ``[B, n, L, *feat]`` in ``eps.dtype`` (fp32 accumulation).

    Example::

        layout = ChunkLayout.windows(num_frames=44, window=20, overlap=12)
        video = overlap_fuse(eps, layout)  # eps: [B, 4, 20, C, h, w] -> [B, 44, C, h, w]
    """
    validate_overlap_fuse(eps, layout, x, coeffs, out_windows)
    impl = implementation("overlap_fuse", backend, eps.device)
    return impl.fn(eps, layout, x=x, coeffs=coeffs, out_windows=out_windows)


# ------------------------------------------------------------------------------------ layout tables
def fusion_tensors(layout: ChunkLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The layout's CSR blend table (:attr:`ChunkLayout.fusion_table`) as tensors on ``device``.

    ``(frame_ptr int32 [F+1], window int32 [E], position int32 [E], weight fp32 [E])``. Kept on the
    layout object per device (freed with the layout), so a sampler that reuses its layout uploads
    the table once; built afresh inside ``torch.compile``, which records them as constants.
    """
    compiling = torch.compiler.is_compiling()
    cache = {} if compiling else layout.__dict__.setdefault("_device_tables", {})
    key = str(device)
    if key not in cache:
        frame_ptr, window, position, weight = layout.fusion_table
        i32 = dict(dtype=torch.int32, device=device)
        cache[key] = (
            torch.tensor(frame_ptr, **i32),
            torch.tensor(window, **i32),
            torch.tensor(position, **i32),
            torch.tensor(weight, dtype=torch.float32, device=device),
        )
    return cache[key]


def _output_shape(eps: torch.Tensor, num_frames: int, out_windows: bool) -> tuple[int, ...]:
    return tuple(eps.shape) if out_windows else (eps.shape[0], num_frames, *eps.shape[3:])


# ------------------------------------------------------------------------------------ kernel ops
def _define_kernel_op(name: str, launch):
    """``vin_kernels::<name>``: one kernel backend of overlap_fuse as a custom op over the CSR table.

    ``launch(eps, table, x, (a, b), out, out_windows)`` writes ``out``. Every kernel op shares this
    schema, fake kernel and autograd; ``x`` is frames ``[B, F, *feat]`` or windows (shaped like ``eps``).
    """

    @torch.library.custom_op(f"vin_kernels::{name}", mutates_args=())
    def op(
        eps: torch.Tensor,
        frame_ptr: torch.Tensor,
        window: torch.Tensor,
        position: torch.Tensor,
        weight: torch.Tensor,
        x: torch.Tensor | None,
        a: float,
        b: float,
        out_windows: bool,
    ) -> torch.Tensor:
        out = eps.new_empty(_output_shape(eps, frame_ptr.numel() - 1, out_windows))
        if out.numel():
            launch(eps, (frame_ptr, window, position, weight), x, (a, b), out, out_windows)
        return out

    @op.register_fake
    def _(eps, frame_ptr, window, position, weight, x, a, b, out_windows):
        return eps.new_empty(_output_shape(eps, frame_ptr.numel() - 1, out_windows))

    op.register_autograd(_backward, setup_context=_setup_context)
    return op


def _setup_context(ctx, inputs, output):
    eps, frame_ptr, window, position, weight, x, a, b, out_windows = inputs
    ctx.save_for_backward(frame_ptr, window, position, weight)
    ctx.eps_shape, ctx.eps_dtype = eps.shape, eps.dtype
    ctx.x_windows = x is not None and x.dim() == eps.dim()
    ctx.has_x, ctx.a, ctx.b, ctx.out_windows = x is not None, a, b, out_windows


def _backward(ctx, grad_out):
    """Adjoint of the blend, from the CSR table: entry ``e`` (frame ``f(e)``, window position
    ``(window[e], position[e])``, weight ``w[e]``) gives ``d eps[window, position] = w[e] * b * d fused[f(e)]``."""
    frame_ptr, window, position, weight = ctx.saved_tensors
    B, n, L = ctx.eps_shape[:3]
    num_frames = frame_ptr.numel() - 1
    window, position = window.long(), position.long()
    entry_frame = torch.repeat_interleave(
        torch.arange(num_frames, device=grad_out.device), frame_ptr.diff().long(), output_size=window.numel()
    )
    grad = grad_out.float()
    if ctx.out_windows:  # every window copy of a frame adds into the frame
        grad = grad.new_zeros((B, num_frames, *grad.shape[3:])).index_add(1, entry_frame, grad[:, window, position])
    feat_dims = grad.dim() - 2
    grad_fused = grad * ctx.b if ctx.has_x else grad
    per_entry = grad_fused[:, entry_frame] * weight.reshape(-1, *([1] * feat_dims))
    grad_eps = per_entry.new_zeros((B, n * L, *per_entry.shape[2:])).index_copy(1, window * L + position, per_entry)
    grad_x = None
    if ctx.has_x:
        grad_x = grad * ctx.a
        if ctx.x_windows:  # frame f was read from its first entry's window position
            first = frame_ptr[:-1].long()
            index = window[first] * L + position[first]
            grad_x = grad_x.new_zeros((B, n * L, *grad_x.shape[2:])).index_copy(1, index, grad_x).unflatten(1, (n, L))
        grad_x = grad_x.to(ctx.eps_dtype)
    return grad_eps.unflatten(1, (n, L)).to(ctx.eps_dtype), None, None, None, None, grad_x, None, None, None


def _launch_triton(*args):
    from ..triton import overlap_fuse as kernels

    kernels.overlap_fuse(*args)


def _launch_cuda(*args):
    from .. import cuda as kernels

    kernels.overlap_fuse(*args)


_triton_op = _define_kernel_op("overlap_fuse_triton", _launch_triton)
_cuda_op = _define_kernel_op("overlap_fuse_cuda", _launch_cuda)


def _kernel_backend(op):
    def run(eps, layout, *, x, coeffs, out_windows):
        a, b = (float(coeffs[0]), float(coeffs[1])) if x is not None else (0.0, 1.0)
        return op(eps, *fusion_tensors(layout, eps.device), x, a, b, out_windows)

    return run


register("overlap_fuse", "reference", reference.overlap_fuse)
register("overlap_fuse", "sdpa", sdpa.overlap_fuse)
register("overlap_fuse", "triton", _kernel_backend(_triton_op))
register("overlap_fuse", "cuda", _kernel_backend(_cuda_op))
