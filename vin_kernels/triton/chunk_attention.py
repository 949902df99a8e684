"""Triton chunk_attention: chunked flash attention with local context and shared global tokens.

Forward: one program per (query block inside a chunk, batch*head). A query block never straddles
two chunks, so all its rows share one key window ``[max(0, c0 - context), c1)`` and no mask beyond
the bounds is needed; the global keys of row ``b // group`` follow in the same online softmax, read
in place. Backward, deterministic and without atomics: ``dq`` per query block (same loop as the
forward), ``dk/dv`` per block of sequence keys over the query blocks that see it (per-element chunk
mask; ``context_grad=False`` narrows it to the key's own chunk), and ``dglobal_k/v`` per block of
global keys over every query of its group, cut into ``S`` splits whose fp32 partial sums are added
in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import attention_core as core
from .attention_core import (
    LN2_C,
    LOG2E,
    LOG2E_C,
    PRUNE,
    attend_keys,
    autotune_configs,
    bnh_strides,
    dkdv_queries,
    dq_keys,
    head_meta,
    load_split,
    num_splits,
    shape_bucket,
    store_split,
)

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried on a GPU, not yet tuned on an H100/H200; tiles
# below 64x64 are for fp32 inputs (see attention_core.prune_by_element_size).
_FWD_OPTIONS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)]
_BWD_DQ_OPTIONS = [(128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)]
_BWD_DKDV_OPTIONS = [(64, 128, 8, 2), (64, 64, 4, 3), (32, 64, 4, 2)]
_AUTOTUNE_KEY = ["HEAD_DIM", "PRECISION", "TUNE_BUCKET"]


@triton.jit
def _query_block(pid_m, chunk_size, N, BLOCK_M: tl.constexpr):
    """``(c0, c1, m0)``: the rows ``[c0, c1)`` of the chunk of query block ``pid_m`` and the block's first row."""
    blocks_per_chunk = tl.cdiv(chunk_size, BLOCK_M)
    c0 = (pid_m // blocks_per_chunk) * chunk_size
    c1 = tl.minimum(c0 + chunk_size, N)
    return c0, c1, c0 + (pid_m % blocks_per_chunk) * BLOCK_M


@triton.autotune(configs=autotune_configs(_FWD_OPTIONS), key=_AUTOTUNE_KEY, prune_configs_by=PRUNE)
@triton.jit
def _fwd_kernel(
    Q, K, V, GK, GV, O, LSE,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h,
    sgk_b, sgk_n, sgk_h, sgv_b, sgv_n, sgv_h, so_b, so_n, so_h,
    N, H, G, group, chunk_size, context_size, qk_scale, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    HAS_GLOBALS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    c0, c1, m0 = _query_block(pid_m, chunk_size, N, BLOCK_M)
    if m0 >= c1:  # past the end of a short last chunk
        return
    rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < c1
    q_off = b * sq_b + h * sq_h + rows * sq_n
    q1, q2 = load_split(Q, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)

    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start in range(tl.maximum(c0 - context_size, 0), c1, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        m_i, l_i, acc1, acc2 = attend_keys(
            q1, q2, m_i, l_i, acc1, acc2, k_base, v_base, cols * sk_n, cols * sv_n, cols < c1, qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )
    if HAS_GLOBALS:
        gb = b // group
        gk_base = GK + gb * sgk_b + h * sgk_h
        gv_base = GV + gb * sgv_b + h * sgv_h
        for start in range(0, G, BLOCK_N):
            cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            m_i, l_i, acc1, acc2 = attend_keys(
                q1, q2, m_i, l_i, acc1, acc2, gk_base, gv_base, cols * sgk_n, cols * sgv_n, cols < G, qk_scale,
                HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
            )

    o_off = b * so_b + h * so_h + rows * so_n
    store_split(O, o_off, row_mask, acc1 / l_i[:, None], acc2 / l_i[:, None], HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    tl.store(LSE + (b * H + h) * N + rows, (m_i + tl.log2(l_i)) * LN2_C, mask=row_mask)


@triton.autotune(configs=autotune_configs(_BWD_DQ_OPTIONS), key=_AUTOTUNE_KEY, prune_configs_by=PRUNE)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, GK, GV, DO, LSE, DELTA, DQ,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h,
    sgk_b, sgk_n, sgk_h, sgv_b, sgv_n, sgv_h, sdo_b, sdo_n, sdo_h, sdq_b, sdq_n, sdq_h,
    N, H, G, group, chunk_size, context_size, qk_scale, sm_scale, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    HAS_GLOBALS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    c0, c1, m0 = _query_block(pid_m, chunk_size, N, BLOCK_M)
    if m0 >= c1:  # past the end of a short last chunk
        return
    rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < c1
    q_off = b * sq_b + h * sq_h + rows * sq_n
    do_off = b * sdo_b + h * sdo_h + rows * sdo_n
    q1, q2 = load_split(Q, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    do1, do2 = load_split(DO, do_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    stat_off = (b * H + h) * N + rows
    lse2 = tl.load(LSE + stat_off, mask=row_mask, other=0.0) * LOG2E_C
    delta = tl.load(DELTA + stat_off, mask=row_mask, other=0.0)
    dq1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)

    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start in range(tl.maximum(c0 - context_size, 0), c1, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        dq1, dq2 = dq_keys(
            q1, q2, do1, do2, lse2, delta, dq1, dq2, k_base, v_base, cols * sk_n, cols * sv_n, cols < c1,
            qk_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )
    if HAS_GLOBALS:
        gb = b // group
        gk_base = GK + gb * sgk_b + h * sgk_h
        gv_base = GV + gb * sgv_b + h * sgv_h
        for start in range(0, G, BLOCK_N):
            cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            dq1, dq2 = dq_keys(
                q1, q2, do1, do2, lse2, delta, dq1, dq2, gk_base, gv_base, cols * sgk_n, cols * sgv_n, cols < G,
                qk_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
            )

    dq_off = b * sdq_b + h * sdq_h + rows * sdq_n
    store_split(DQ, dq_off, row_mask, dq1 * sm_scale, dq2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


@triton.autotune(configs=autotune_configs(_BWD_DKDV_OPTIONS), key=_AUTOTUNE_KEY + ["CONTEXT_GRAD"], prune_configs_by=PRUNE)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, sdo_b, sdo_n, sdo_h,
    sdk_b, sdk_n, sdk_h, sdv_b, sdv_n, sdv_h,
    N, H, G, chunk_size, context_size, qk_scale, sm_scale, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    CONTEXT_GRAD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    j0 = pid_n * BLOCK_N
    cols = (j0 + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_mask = cols < N
    k_off = b * sk_b + h * sk_h + cols * sk_n
    v_off = b * sv_b + h * sv_h + cols * sv_n
    k1, k2 = load_split(K, k_off, col_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    v1, v2 = load_split(V, v_off, col_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    dk1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
    dv1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dv2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)

    # Chunk i sees keys [i*cs - reach, (i+1)*cs): the key block is seen by chunks j0 // cs .. (j_last + reach) // cs.
    reach = 0
    if CONTEXT_GRAD:
        reach = context_size
    j_last = tl.minimum(j0 + BLOCK_N, N) - 1
    row_lo = (j0 // chunk_size) * chunk_size
    row_hi = tl.minimum(((j_last + reach) // chunk_size + 1) * chunk_size, N)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    stat_base = (b * H + h) * N
    for m0 in range(row_lo, row_hi, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        chunk_start = (rows // chunk_size) * chunk_size
        visible = (
            col_mask[:, None]
            & (rows < N)[None, :]
            & (cols[:, None] >= chunk_start[None, :] - reach)
            & (cols[:, None] < chunk_start[None, :] + chunk_size)
        )
        dk1, dk2, dv1, dv2 = dkdv_queries(
            k1, k2, v1, v2, dk1, dk2, dv1, dv2, q_base, do_base, rows * sq_n, rows * sdo_n,
            LSE + stat_base, DELTA + stat_base, rows, visible, qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )

    dk_off = b * sdk_b + h * sdk_h + cols * sdk_n
    dv_off = b * sdv_b + h * sdv_h + cols * sdv_n
    store_split(DK, dk_off, col_mask, dk1 * sm_scale, dk2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    store_split(DV, dv_off, col_mask, dv1, dv2, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


@triton.autotune(configs=autotune_configs(_BWD_DKDV_OPTIONS), key=_AUTOTUNE_KEY + ["SPLITS"], prune_configs_by=PRUNE)
@triton.jit
def _bwd_dglobal_kernel(
    Q, GK, GV, DO, LSE, DELTA, DGK, DGV,
    sq_b, sq_n, sq_h, sgk_b, sgk_n, sgk_h, sgv_b, sgv_n, sgv_h, sdo_b, sdo_n, sdo_h,
    N, H, G, group, qk_scale, sm_scale, SPLITS, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Partial dglobal_k/v of one global key block from split ``program_id(2)`` of its group's queries.

    DGK / DGV: fp32 ``[SPLITS, Bg, G, H, HEAD_DIM]`` contiguous.
    """
    pid_g = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    bg = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    cols = (pid_g * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_mask = cols < G
    k_off = bg * sgk_b + h * sgk_h + cols * sgk_n
    v_off = bg * sgv_b + h * sgv_h + cols * sgv_n
    k1, k2 = load_split(GK, k_off, col_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    v1, v2 = load_split(GV, v_off, col_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    dk1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
    dv1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dv2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)

    # Work items: (batch row of the group, query block); this program takes one contiguous split.
    q_blocks = tl.cdiv(N, BLOCK_M)
    per_split = tl.cdiv(group * q_blocks, SPLITS)
    first = pid_s * per_split
    last = tl.minimum(first + per_split, group * q_blocks)
    for item in range(first, last):
        b = bg * group + item // q_blocks
        rows = ((item % q_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        visible = col_mask[:, None] & (rows < N)[None, :]
        stat_base = (b * H + h) * N
        dk1, dk2, dv1, dv2 = dkdv_queries(
            k1, k2, v1, v2, dk1, dk2, dv1, dv2,
            Q + b * sq_b + h * sq_h, DO + b * sdo_b + h * sdo_h, rows * sq_n, rows * sdo_n,
            LSE + stat_base, DELTA + stat_base, rows, visible, qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )

    Bg = tl.num_programs(1) // H
    out_off = (((pid_s * Bg + bg) * G + cols) * H + h) * HEAD_DIM
    store_split(DGK, out_off, col_mask, dk1 * sm_scale, dk2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    store_split(DGV, out_off, col_mask, dv1, dv2, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


# ------------------------------------------------------------------------------------ launchers
def _globals_or_dummy(q, global_k, global_v):
    """Global tensors (or ``q`` as an unread stand-in), their count and batch group size."""
    if global_k is None or global_k.shape[1] == 0:
        return q, q, 0, 1
    return global_k, global_v, global_k.shape[1], q.shape[0] // global_k.shape[0]


def forward(q, k, v, global_k, global_v, chunk_size: int, context_size: int, softmax_scale: float):
    """``(o [B, N, H, D], lse [B, H, N] fp32)``; see :func:`vin_kernels.chunk_attention`."""
    B, N, H, _ = q.shape
    chunk_size, context_size = min(chunk_size, N), min(context_size, N)
    gk, gv, G, group = _globals_or_dummy(q, global_k, global_v)
    o = core.new_output(q.shape, q.dtype, q.device)
    lse = core.new_output((B, H, N), torch.float32, q.device)

    def grid(meta):
        return (triton.cdiv(N, chunk_size) * triton.cdiv(chunk_size, meta["BLOCK_M"]), B * H)

    _fwd_kernel[grid](
        q, k, v, gk, gv, o, lse,
        *bnh_strides(q), *bnh_strides(k), *bnh_strides(v), *bnh_strides(gk), *bnh_strides(gv), *bnh_strides(o),
        N, H, G, group, chunk_size, context_size, softmax_scale * LOG2E, shape_bucket(chunk_size, context_size, G),
        HAS_GLOBALS=G > 0, **head_meta(q),
    )
    return o, lse


def backward(
    do, dlse, q, k, v, global_k, global_v, o, lse, chunk_size: int, context_size: int, context_grad: bool,
    softmax_scale: float, splits: int | None = None,
):
    """``(dq, dk, dv, dglobal_k, dglobal_v)``; the global gradients are None without globals.

    ``splits`` overrides how many pieces the global-gradient reduction is cut into (tests).
    """
    B, N, H, D = q.shape
    chunk_size, context_size = min(chunk_size, N), min(context_size, N)
    if do.stride(-1) != 1:
        do = do.contiguous()
    gk, gv, G, group = _globals_or_dummy(q, global_k, global_v)
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2)  # [B, H, N]
    if dlse is not None:
        delta = delta - dlse
    delta = delta.contiguous()
    meta = head_meta(q)
    dq, dk, dv = (core.new_output(t.shape, t.dtype, t.device) for t in (q, k, v))
    qk_scale = softmax_scale * LOG2E
    bucket = shape_bucket(chunk_size, context_size, G)

    def dq_grid(m):
        return (triton.cdiv(N, chunk_size) * triton.cdiv(chunk_size, m["BLOCK_M"]), B * H)

    _bwd_dq_kernel[dq_grid](
        q, k, v, gk, gv, do, lse, delta, dq,
        *bnh_strides(q), *bnh_strides(k), *bnh_strides(v), *bnh_strides(gk), *bnh_strides(gv), *bnh_strides(do), *bnh_strides(dq),
        N, H, G, group, chunk_size, context_size, qk_scale, softmax_scale, bucket,
        HAS_GLOBALS=G > 0, **meta,
    )
    _bwd_dkdv_kernel[lambda m: (triton.cdiv(N, m["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, dk, dv,
        *bnh_strides(q), *bnh_strides(k), *bnh_strides(v), *bnh_strides(do), *bnh_strides(dk), *bnh_strides(dv),
        N, H, G, chunk_size, context_size, qk_scale, softmax_scale, bucket,
        CONTEXT_GRAD=context_grad, **meta,
    )
    if global_k is None:
        return dq, dk, dv, None, None
    Bg = global_k.shape[0]
    if G == 0:
        contiguous = torch.contiguous_format
        return dq, dk, dv, torch.zeros_like(global_k, memory_format=contiguous), torch.zeros_like(global_v, memory_format=contiguous)
    if splits is None:
        splits = num_splits(group * triton.cdiv(N, 64), triton.cdiv(G, 64) * Bg * H)
    partial = core.new_output((2, splits, Bg, G, H, D), torch.float32, q.device)
    _bwd_dglobal_kernel[lambda m: (triton.cdiv(G, m["BLOCK_N"]), Bg * H, splits)](
        q, gk, gv, do, lse, delta, partial[0], partial[1],
        *bnh_strides(q), *bnh_strides(gk), *bnh_strides(gv), *bnh_strides(do),
        N, H, G, group, qk_scale, softmax_scale, splits, bucket, **meta,
    )
    dgk, dgv = (partial[i].sum(dim=0).to(q.dtype) for i in range(2))  # fixed order: deterministic
    return dq, dk, dv, dgk, dgv
