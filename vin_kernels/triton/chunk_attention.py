"""Triton chunk_attention: chunked flash attention with local context and shared global tokens.

Forward: one program per (query block inside a chunk, batch*head). A query block never straddles
two chunks, so all its rows share one key window ``[max(0, c0 - context), c1)`` and no mask beyond
the bounds is needed; the global keys of row ``b // group`` follow in the same loop and online
softmax, read in place. Backward, deterministic and without atomics: ``dq`` per query block (the
forward's keys), ``dk/dv`` per block of sequence keys over the query chunks that see it (key blocks
are cut so that all their keys are seen by the same chunks; ``context_grad=False`` narrows them to
the key's own chunk), and ``dglobal_k/v`` per block of global keys over every query of its group,
cut into ``S`` splits whose fp32 partial sums are added in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import attention_core as core
from .attention_core import (
    LOG2E,
    attend_keys,
    bnh_strides,
    dkdv_queries,
    dq_keys,
    finish_rows,
    head_base,
    head_meta,
    row_offsets,
    rows_at,
    load_lse2,
    load_split,
    num_splits,
    shape_bucket,
    store_split,
)
from .tiles import autotune, shared_dkdv, shared_dq, shared_fwd

# {element bytes: [(BLOCK_M, BLOCK_N, num_warps, num_stages), ...]}, most preferred first; a launch
# autotunes over the options whose shared memory fits the device (vin_kernels/triton/tiles.py) and
# VIN_KERNELS_AUTOTUNE=0 takes the first of them: on a 99 KB part (RTX 3090/4090/5090, A6000, L40S)
# the forward and dq run 64x64 on 4 warps. Nothing here is timed on a GPU yet; the choices are static
# (python -m bench --suite static, paper shapes, bf16): every 16-bit option compiles, wherever it fits,
# for sm_80/86/89/90/100/120 with Triton 3.6 and 3.9 at D = 32..128 without spills, within shared
# memory, with the arch's tensor-core instruction and every loop cp.async-pipelined
# (tests/build/test_triton_compile.py enforces sm_86 + sm_90). Left out after measuring that way: dq
# 128x32/8 warps/3 stages (Triton 3.9 sm_100 D=96: 8 B of spills) and 128x32/8/2 (3.6 sm_100 D=72:
# 8 B); dk/dv 32x64/4/3 (3.9 sm_120 D=96: 8 B) and 32x32 tiles (mma.sync instead of wgmma/tcgen05:
# 32 keys are less than a warpgroup's 64 rows); earlier (sm_80/sm_90 only): forward 128x64 on 4 warps
# (sm_90 D=128: 112 B), 128x128 on 8 warps (sm_80 D=128: 24 B), dk/dv 64x128 on 8 warps (sm_80 D=128:
# 64 B) and 64x64 on 4 warps (sm_80 D=72..128: 16-64 B). fp32 (exact dots on FMA units): one option
# each that fits 99 KB at D = 128; with 4 warps the same tiles spilled 0.1-13 KB (Triton 3.9, D=128:
# forward 64x32 up to 6.9 KB on sm_90; dk/dv 32x64 1.7 KB on sm_80 and 13 KB on sm_90), with 8 warps
# they spill nothing on sm_80 and sm_90.
_FWD_OPTIONS = {2: [(128, 64, 8, 3), (64, 64, 4, 2)], 4: [(64, 32, 8, 2)]}
_BWD_DQ_OPTIONS = {2: [(128, 64, 8, 2), (64, 64, 4, 2)], 4: [(32, 32, 8, 2)]}
# dk/dv and dglobal: BLOCK_N keys stay resident (dk and dv accumulate in registers) while BLOCK_M queries
# stream by.
_BWD_DKDV_OPTIONS = {2: [(32, 64, 4, 2), (16, 64, 4, 3)], 4: [(16, 64, 8, 2)]}
_BWD_DGLOBAL_OPTIONS = _BWD_DKDV_OPTIONS
_AUTOTUNE_KEY = ["HEAD_DIM", "PRECISION", "TUNE_BUCKET"]


@triton.jit
def _query_block(pid_m, chunk_size, N, BLOCK_M: tl.constexpr):
    """``(c0, c1, m0)``: the rows ``[c0, c1)`` of the chunk of query block ``pid_m`` and the block's first row."""
    blocks_per_chunk = tl.cdiv(chunk_size, BLOCK_M)
    c0 = (pid_m // blocks_per_chunk) * chunk_size
    c1 = tl.minimum(c0 + chunk_size, N)
    return c0, c1, c0 + (pid_m % blocks_per_chunk) * BLOCK_M


def key_blocks_per_chunk(chunk_size: int, reach: int, block_n: int) -> int:
    """Key blocks of one chunk in the dk/dv kernel (see :func:`_key_block`)."""
    tail = reach % chunk_size
    return triton.cdiv(chunk_size - tail, block_n) + triton.cdiv(tail, block_n)


@triton.jit
def _key_block(pid_n, N, chunk_size, reach, BLOCK_N: tl.constexpr):
    """``(j0, j1, c_first, c_last)``: the keys ``[j0, j1)`` of dk/dv block ``pid_n`` and the query chunks that see them.

    Chunk ``c`` sees keys ``[c*cs - reach, (c+1)*cs)``, so key ``j`` is seen by chunks
    ``j // cs .. (j + reach) // cs``, which changes where ``j`` or ``j + reach`` crosses a multiple of
    ``cs``. Each chunk's own keys are therefore cut at ``(c+1)*cs - reach % cs`` into two segments, and
    each segment into blocks of ``BLOCK_N``: every key of a block is seen by exactly the same queries,
    so no per-element mask is needed and a non-finite value reaches only the gradients it should.
    """
    tail = reach % chunk_size
    head_blocks = tl.cdiv(chunk_size - tail, BLOCK_N)
    per_chunk = head_blocks + tl.cdiv(tail, BLOCK_N)
    c = pid_n // per_chunk
    i = pid_n % per_chunk
    c0 = c * chunk_size
    split = c0 + chunk_size - tail
    in_head = i < head_blocks
    j0 = tl.where(in_head, c0 + i * BLOCK_N, split + (i - head_blocks) * BLOCK_N)
    segment_end = tl.where(in_head, split, c0 + chunk_size)
    j1 = tl.minimum(tl.minimum(j0 + BLOCK_N, segment_end), N)
    c_last = tl.minimum((j0 + reach) // chunk_size, (N - 1) // chunk_size)
    return j0, j1, c, c_last


@autotune("chunk fwd", "chunk_attention", _FWD_OPTIONS, shared_fwd, _AUTOTUNE_KEY)
@triton.jit
def _fwd_kernel(
    Q, K, V, GK, GV, O, LSE,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h,
    sgk_b, sgk_n, sgk_h, sgv_b, sgv_n, sgv_h, so_b, so_n, so_h,
    N, H, G, group, chunk_size, context_size, qk_scale, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, HAS_GLOBALS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    q_off = row_offsets(b, h, rows, sq_b, sq_h, sq_n, ALIGN)
    q1, q2 = load_split(Q, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)

    # One loop over the key window's blocks, then the global keys' blocks. Two loops, each with its own
    # pipeline, took more registers: sm_80 D = 128, 64x64 tiles: 211 instead of 168; sm_90 D = 72,
    # 128x64: 141 instead of 114.
    lo = tl.maximum(c0 - context_size, 0)
    window_blocks = tl.cdiv(c1 - lo, BLOCK_N)
    blocks = window_blocks
    if HAS_GLOBALS:
        blocks += tl.cdiv(G, BLOCK_N)
    gb = b // group
    for i in range(0, blocks):
        in_window = i < window_blocks
        start = tl.where(in_window, lo + i * BLOCK_N, (i - window_blocks) * BLOCK_N)
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        k_base = tl.where(in_window, head_base(K, b, h, sk_b, sk_h, ALIGN), head_base(GK, gb, h, sgk_b, sgk_h, ALIGN))
        v_base = tl.where(in_window, head_base(V, b, h, sv_b, sv_h, ALIGN), head_base(GV, gb, h, sgv_b, sgv_h, ALIGN))
        k_off = rows_at(cols, tl.where(in_window, sk_n, sgk_n), ALIGN)
        v_off = rows_at(cols, tl.where(in_window, sv_n, sgv_n), ALIGN)
        m_i, l_i, acc1, acc2 = attend_keys(
            q1, q2, m_i, l_i, acc1, acc2, k_base, v_base, k_off, v_off, cols < tl.where(in_window, c1, G), qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )

    o1, o2, lse = finish_rows(m_i, l_i, acc1, acc2)
    o_off = row_offsets(b, h, rows, so_b, so_h, so_n, ALIGN)
    store_split(O, o_off, row_mask, o1, o2, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    tl.store(LSE + (b * H + h) * N + rows, lse, mask=row_mask)


@autotune("chunk bwd dq", "chunk_attention", _BWD_DQ_OPTIONS, shared_dq, _AUTOTUNE_KEY)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, GK, GV, DO, LSE, DELTA, DQ,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h,
    sgk_b, sgk_n, sgk_h, sgv_b, sgv_n, sgv_h, sdo_b, sdo_n, sdo_h, sdq_b, sdq_n, sdq_h,
    N, H, G, group, chunk_size, context_size, qk_scale, sm_scale, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, HAS_GLOBALS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    q_off = row_offsets(b, h, rows, sq_b, sq_h, sq_n, ALIGN)
    do_off = row_offsets(b, h, rows, sdo_b, sdo_h, sdo_n, ALIGN)
    q1, q2 = load_split(Q, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    do1, do2 = load_split(DO, do_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    stat_off = (b * H + h) * N + rows
    lse2 = load_lse2(LSE, stat_off, row_mask)
    delta = tl.load(DELTA + stat_off, mask=row_mask, other=0.0)
    dq1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)

    k_base = head_base(K, b, h, sk_b, sk_h, ALIGN)
    v_base = head_base(V, b, h, sv_b, sv_h, ALIGN)
    for start in range(tl.maximum(c0 - context_size, 0), c1, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        dq1, dq2 = dq_keys(
            q1, q2, do1, do2, lse2, delta, dq1, dq2, k_base, v_base, rows_at(cols, sk_n, ALIGN),
            rows_at(cols, sv_n, ALIGN), cols < c1,
            qk_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )
    if HAS_GLOBALS:
        gb = b // group
        gk_base = head_base(GK, gb, h, sgk_b, sgk_h, ALIGN)
        gv_base = head_base(GV, gb, h, sgv_b, sgv_h, ALIGN)
        for start in range(0, G, BLOCK_N):
            cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            dq1, dq2 = dq_keys(
                q1, q2, do1, do2, lse2, delta, dq1, dq2, gk_base, gv_base, rows_at(cols, sgk_n, ALIGN),
                rows_at(cols, sgv_n, ALIGN), cols < G,
                qk_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
            )

    dq_off = row_offsets(b, h, rows, sdq_b, sdq_h, sdq_n, ALIGN)
    store_split(DQ, dq_off, row_mask, dq1 * sm_scale, dq2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


@autotune("chunk bwd dk/dv", "chunk_attention", _BWD_DKDV_OPTIONS, shared_dkdv, _AUTOTUNE_KEY + ["CONTEXT_GRAD"])
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, sdo_b, sdo_n, sdo_h,
    sdk_b, sdk_n, sdk_h, sdv_b, sdv_n, sdv_h,
    N, H, G, chunk_size, context_size, qk_scale, sm_scale, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, CONTEXT_GRAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    reach = 0
    if CONTEXT_GRAD:
        reach = context_size
    j0, j1, c_first, c_last = _key_block(pid_n, N, chunk_size, reach, BLOCK_N)
    if j0 >= N:  # past the end of a short last chunk
        return
    cols = (j0 + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_mask = cols < j1
    k_off = row_offsets(b, h, cols, sk_b, sk_h, sk_n, ALIGN)
    v_off = row_offsets(b, h, cols, sv_b, sv_h, sv_n, ALIGN)
    k1, k2 = load_split(K, k_off, col_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    v1, v2 = load_split(V, v_off, col_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    dk1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
    dv1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dv2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)

    row_hi = tl.minimum((c_last + 1) * chunk_size, N)
    q_base = head_base(Q, b, h, sq_b, sq_h, ALIGN)
    do_base = head_base(DO, b, h, sdo_b, sdo_h, ALIGN)
    stat_base = (b * H + h) * N
    for m0 in range(c_first * chunk_size, row_hi, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        dk1, dk2, dv1, dv2 = dkdv_queries(
            k1, k2, v1, v2, dk1, dk2, dv1, dv2, q_base, do_base,
            rows_at(rows, sq_n, ALIGN), rows_at(rows, sdo_n, ALIGN),
            LSE + stat_base, DELTA + stat_base, rows, rows < row_hi, qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )

    dk_off = row_offsets(b, h, cols, sdk_b, sdk_h, sdk_n, ALIGN)
    dv_off = row_offsets(b, h, cols, sdv_b, sdv_h, sdv_n, ALIGN)
    store_split(DK, dk_off, col_mask, dk1 * sm_scale, dk2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    store_split(DV, dv_off, col_mask, dv1, dv2, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


@autotune("chunk bwd dglobal", "chunk_attention", _BWD_DGLOBAL_OPTIONS, shared_dkdv, _AUTOTUNE_KEY + ["SPLITS"])
@triton.jit
def _bwd_dglobal_kernel(
    Q, GK, GV, DO, LSE, DELTA, DGK, DGV,
    sq_b, sq_n, sq_h, sgk_b, sgk_n, sgk_h, sgv_b, sgv_n, sgv_h, sdo_b, sdo_n, sdo_h,
    N, H, G, group, qk_scale, sm_scale, SPLITS, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    k_off = row_offsets(bg, h, cols, sgk_b, sgk_h, sgk_n, ALIGN)
    v_off = row_offsets(bg, h, cols, sgv_b, sgv_h, sgv_n, ALIGN)
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
        stat_base = (b * H + h) * N
        dk1, dk2, dv1, dv2 = dkdv_queries(
            k1, k2, v1, v2, dk1, dk2, dv1, dv2,
            head_base(Q, b, h, sq_b, sq_h, ALIGN), head_base(DO, b, h, sdo_b, sdo_h, ALIGN),
            rows_at(rows, sq_n, ALIGN), rows_at(rows, sdo_n, ALIGN),
            LSE + stat_base, DELTA + stat_base, rows, rows < N, qk_scale,
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
        HAS_GLOBALS=G > 0, **head_meta(q, k, v, gk, gv, o),
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
    dq, dk, dv = (core.new_output(t.shape, t.dtype, t.device) for t in (q, k, v))
    meta = head_meta(q, k, v, gk, gv, do, dq, dk, dv)
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
    reach = context_size if context_grad else 0

    def dkdv_grid(m):
        return (triton.cdiv(N, chunk_size) * key_blocks_per_chunk(chunk_size, reach, m["BLOCK_N"]), B * H)

    _bwd_dkdv_kernel[dkdv_grid](
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
        N, H, G, group, qk_scale, softmax_scale, splits, bucket, **head_meta(q, gk, gv, do, partial[0]),
    )
    dgk, dgv = (partial[i].sum(dim=0).to(q.dtype) for i in range(2))  # fixed order: deterministic
    return dq, dk, dv, dgk, dgv
