"""The anchor: a plain dense FlashAttention-2 forward in Triton, the yardstick of the static suite.

``o = softmax(q k^T * scale) v`` over every key, with the online softmax of FlashAttention-2 (Dao,
2023) written the way Triton's fused-attention tutorial writes it: one program per block of
``BLOCK_M`` queries and one (batch, head), the query tile loaded once, a loop over ``BLOCK_N``-key
blocks of K and V, base-2 exponentials, the head dim padded to a power of two. It has none of
vin_kernels' chunk windows, global tokens or split head dims, so compiling it beside
``vin_kernels.triton.chunk_attention._fwd_kernel`` with the same tile options shows what those
features cost in registers and shared memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, so_b, so_n, so_h,
    N, H, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < HEAD_DIM
    q = tl.load(
        Q + b * sq_b + h * sq_h + rows[:, None].to(tl.int64) * sq_n + cols[None, :],
        mask=(rows < N)[:, None] & col_mask[None, :], other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start in range(0, N, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        mask = (keys < N)[:, None] & col_mask[None, :]
        k = tl.load(k_base + keys[:, None].to(tl.int64) * sk_n + cols[None, :], mask=mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where((keys < N)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + keys[:, None].to(tl.int64) * sv_n + cols[None, :], mask=mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    o_ptr = O + b * so_b + h * so_h + rows[:, None].to(tl.int64) * so_n + cols[None, :]
    tl.store(o_ptr, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=(rows < N)[:, None] & col_mask[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * N + rows, m_i + tl.log2(l_i), mask=rows < N)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, block_m: int = 128,
            block_n: int = 64, num_warps: int = 8, num_stages: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, N, H, D], lse [B, H, N] fp32, base 2)`` of dense attention over ``q, k, v [B, N, H, D]``.

    The default tile (128 x 64, 8 warps, 3 stages) is the one the issue's numbers use.
    """
    B, N, H, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    _fwd_kernel[(triton.cdiv(N, block_m), B * H)](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        N, H, softmax_scale * LOG2E,
        HEAD_DIM=D, BLOCK_D=triton.next_power_of_2(D), BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps, num_stages=num_stages,
    )
    return o, lse
