"""Triton merge_attention: combine two partial attentions over disjoint key sets by their LSE."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import attention_core as core
from .attention_core import INTERPRETED


@triton.jit
def _merge_kernel(
    OA, LA, OB, LB, O, L,
    soa_b, soa_n, soa_h, sob_b, sob_n, sob_h, sla_b, sla_h, sla_n, slb_b, slb_h, slb_n,
    N, H, num_rows,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One program per BLOCK_R (batch, token, head) rows. O: contiguous ``[B, N, H, D]``; L: ``[B, H, N]``."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    row_mask = r < num_rows
    b = r // (N * H)
    n = (r // H) % N
    h = r % H
    la = tl.load(LA + b * sla_b + h * sla_h + n * sla_n, mask=row_mask, other=float("-inf"))
    lb = tl.load(LB + b * slb_b + h * slb_h + n * slb_n, mask=row_mask, other=float("-inf"))
    m = tl.maximum(la, lb)
    m = tl.where(m == float("-inf"), 0.0, m)  # both sides empty: weights 0, lse = -inf
    wa = tl.exp(la - m)
    wb = tl.exp(lb - m)
    total = wa + wb
    safe_total = tl.where(total > 0, total, 1.0)
    cols = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols[None, :] < HEAD_DIM)
    oa = tl.load(OA + (b * soa_b + n * soa_n + h * soa_h)[:, None] + cols[None, :], mask=mask, other=0.0)
    ob = tl.load(OB + (b * sob_b + n * sob_n + h * sob_h)[:, None] + cols[None, :], mask=mask, other=0.0)
    o = (wa / safe_total)[:, None] * oa.to(tl.float32) + (wb / safe_total)[:, None] * ob.to(tl.float32)
    tl.store(O + r[:, None] * HEAD_DIM + cols[None, :], o.to(O.dtype.element_ty), mask=mask)
    tl.store(L + (b * H + h) * N + n, m + tl.log(total), mask=row_mask)


def forward(o_a, lse_a, o_b, lse_b):
    """``(o [B, N, H, D] in o_a.dtype, lse [B, H, N] fp32)``; see :func:`vin_kernels.merge_attention`."""
    B, N, H, D = o_a.shape
    o = core.new_output((B, N, H, D), o_a.dtype, o_a.device)
    lse = core.new_output((B, H, N), torch.float32, o_a.device)
    num_rows = B * N * H
    block_d = triton.next_power_of_2(D)
    block_r = 16 if INTERPRETED else max(1, min(128, 4096 // block_d))
    _merge_kernel[(triton.cdiv(num_rows, block_r),)](
        o_a, lse_a, o_b, lse_b, o, lse,
        o_a.stride(0), o_a.stride(1), o_a.stride(2), o_b.stride(0), o_b.stride(1), o_b.stride(2),
        *lse_a.stride(), *lse_b.stride(), N, H, num_rows,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_R=block_r,
    )
    return o, lse
