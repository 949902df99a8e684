"""Triton overlap_fuse: the same contract and CSR blend table as the CUDA kernel (csrc/include/vin/overlap_fuse.cuh)."""

from __future__ import annotations

import math

import triton
import triton.language as tl

from .attention_core import INTERPRETED


@triton.jit
def _overlap_fuse_kernel(
    EPS, X, OUT, FRAME_PTR, WINDOW, POSITION, WEIGHT,
    se_b, se_w, se_p, sx_b, sx_1, sx_2, so_b, so_1, so_2,
    F, C, coef_a, coef_b,
    HAS_X: tl.constexpr, X_WINDOWS: tl.constexpr, OUT_WINDOWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program (batch*frame, feature block): blend the windows covering the frame, update, store.

    ``x`` is frames (row ``f`` at ``sx_1``) or, with ``X_WINDOWS``, windows read at the frame's first
    entry (window ``WINDOW[e_begin]`` at ``sx_1``, position ``POSITION[e_begin]`` at ``sx_2``).
    """
    row = tl.program_id(0)
    f = row % F
    b = (row // F).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    e_begin = tl.load(FRAME_PTR + f)
    e_end = tl.load(FRAME_PTR + f + 1)
    acc = tl.zeros([BLOCK_C], tl.float32)
    for e in range(e_begin, e_end):
        w = tl.load(WEIGHT + e)
        src = EPS + b * se_b + tl.load(WINDOW + e).to(tl.int64) * se_w + tl.load(POSITION + e).to(tl.int64) * se_p
        acc += w * tl.load(src + c, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_X:
        if X_WINDOWS:
            x_row = tl.load(WINDOW + e_begin).to(tl.int64) * sx_1 + tl.load(POSITION + e_begin).to(tl.int64) * sx_2
        else:
            x_row = f.to(tl.int64) * sx_1
        x = tl.load(X + b * sx_b + x_row + c, mask=c_mask, other=0.0)
        acc = coef_a * x.to(tl.float32) + coef_b * acc
    value = acc.to(OUT.dtype.element_ty)
    if OUT_WINDOWS:
        for e in range(e_begin, e_end):
            dst = OUT + b * so_b + tl.load(WINDOW + e).to(tl.int64) * so_1 + tl.load(POSITION + e).to(tl.int64) * so_2
            tl.store(dst + c, value, mask=c_mask)
    else:
        tl.store(OUT + b * so_b + f.to(tl.int64) * so_1 + c, value, mask=c_mask)


def overlap_fuse(eps, table, x, coeffs, out, out_windows: bool):
    """Run the Triton ``overlap_fuse`` into ``out``; arguments as :func:`vin_kernels.cuda.overlap_fuse`."""
    frame_ptr, window, position, weight = table
    B, F = eps.shape[0], frame_ptr.numel() - 1
    C = math.prod(eps.shape[3:])
    block_c = min(triton.next_power_of_2(max(C, 1)), 64 if INTERPRETED else 1024)
    x_windows = x is not None and x.dim() == eps.dim()
    x_arg, x_strides = (x, (x.stride(0), x.stride(1), x.stride(2) if x_windows else 0)) if x is not None else (eps, (0, 0, 0))
    out_strides = (out.stride(0), out.stride(1), out.stride(2) if out_windows else 0)
    _overlap_fuse_kernel[(B * F, triton.cdiv(C, block_c))](
        eps, x_arg, out, frame_ptr, window, position, weight,
        eps.stride(0), eps.stride(1), eps.stride(2), *x_strides, *out_strides,
        F, C, float(coeffs[0]), float(coeffs[1]),
        HAS_X=x is not None, X_WINDOWS=x_windows, OUT_WINDOWS=out_windows, BLOCK_C=block_c,
    )
    return out
