"""Triton global_attention (the VIN read): G global queries over the keyframe tokens of a video.

Keyframe token ``t`` of the ``K*T`` keys (``K`` keyframes of ``T`` tokens) is row
``(offset + (t // T) * stride) * T + t % T`` of ``k, v [B, N, H, D]``: read in place, nothing is
gathered. Few queries and long keys leave most of the GPU idle, so when ``B * H * ceil(G / BLOCK_M)``
programs are too few the keys are cut into ``S`` splits whose partial results are merged by their
log-sum-exp (flash-decoding); ``dq`` uses the same splits with fp32 partial sums. ``dk/dv`` are
computed per block of keyframe tokens over all queries and scattered back to their rows (all other
rows of dk/dv are zero).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import ChunkLayout
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

# {element bytes: [(BLOCK_M, BLOCK_N, num_warps, num_stages), ...]}, pruned to the device and checked as
# in chunk_attention.py (static numbers only, bf16). The forward's 64x64/4/2 and dq's 64x32/4/3 are what
# fits a 99 KB part (dq's 64x64/4/3 compiles to 104 KB there). dk/dv runs on 8 warps: every 4-warp
# option spilled somewhere with Triton 3.6 (16x64/3 stages: 8-16 B on sm_80 D=96, sm_100 D=128,
# sm_120 D=72; 32x64/2: 8 B on sm_80/86/120 D=96; 32x64/3: up to 40 B on sm_80/86 D=128) or 3.9
# (32x64/3: 40-56 B on sm_120 D=72/96). Left out earlier (sm_80/sm_90): forward 64x128 on 4 warps
# (sm_90 D=72: 8 B) and 64x32/4/3 (sm_86 D=96: 8 B), dq 64x128 on 8 warps (sm_80 D=72/96: 40-104 B).
_FWD_OPTIONS = {2: [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2)], 4: [(64, 32, 8, 2)]}
_BWD_DQ_OPTIONS = {2: [(64, 64, 4, 3), (64, 32, 4, 3)], 4: [(32, 32, 8, 2)]}
_BWD_DKDV_OPTIONS = {2: [(32, 64, 8, 2)], 4: [(16, 64, 8, 2)]}
_AUTOTUNE_KEY = ["HEAD_DIM", "PRECISION", "SPLITS", "TUNE_BUCKET"]


@triton.jit
def keyframe_rows(t, tokens_per_frame, stride, offset):
    """Sequence row of keyframe token ``t``."""
    return (offset + (t // tokens_per_frame) * stride) * tokens_per_frame + t % tokens_per_frame


@triton.jit
def _split_range(num_keys, SPLITS, BLOCK_N: tl.constexpr):
    """Key range ``[start, stop)`` of split ``program_id(2)`` (whole key blocks)."""
    per_split = tl.cdiv(tl.cdiv(num_keys, BLOCK_N), SPLITS) * BLOCK_N
    start = tl.program_id(2) * per_split
    return start, tl.minimum(start + per_split, num_keys)


@autotune("global fwd", "global_attention", _FWD_OPTIONS, shared_fwd, _AUTOTUNE_KEY)
@triton.jit
def _fwd_kernel(
    GQ, K, V, O, LSE,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, so_s, so_b, so_n, so_h, sl_s, sl_b, sl_h,
    G, H, num_keys, tokens_per_frame, stride, offset, qk_scale, SPLITS, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """O / LSE: the output (``so_s = 0``) or fp32 per-split partials ``[S, ...]``; LSE natural log."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2).to(tl.int64)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < G
    q_off = row_offsets(b, h, rows, sq_b, sq_h, sq_n, ALIGN)
    q1, q2 = load_split(GQ, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)
    k_base = head_base(K, b, h, sk_b, sk_h, ALIGN)
    v_base = head_base(V, b, h, sv_b, sv_h, ALIGN)
    start, stop = _split_range(num_keys, SPLITS, BLOCK_N)
    for t0 in range(start, stop, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        seq = keyframe_rows(t, tokens_per_frame, stride, offset).to(tl.int64)
        m_i, l_i, acc1, acc2 = attend_keys(
            q1, q2, m_i, l_i, acc1, acc2, k_base, v_base, rows_at(seq, sk_n, ALIGN), rows_at(seq, sv_n, ALIGN),
            t < stop, qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )
    o1, o2, lse = finish_rows(m_i, l_i, acc1, acc2)  # a split without keys stores o = 0, lse = -inf
    o_off = pid_s * so_s + row_offsets(b, h, rows, so_b, so_h, so_n, ALIGN)
    store_split(O, o_off, row_mask, o1, o2, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    tl.store(LSE + pid_s * sl_s + b * sl_b + h * sl_h + rows, lse, mask=row_mask)


@autotune("global bwd dq", "global_attention", _BWD_DQ_OPTIONS, shared_dq, _AUTOTUNE_KEY)
@triton.jit
def _bwd_dq_kernel(
    GQ, K, V, DO, LSE, DELTA, DQ,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, sdo_b, sdo_n, sdo_h, sdq_s, sdq_b, sdq_n, sdq_h,
    G, H, num_keys, tokens_per_frame, stride, offset, qk_scale, sm_scale, SPLITS, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """DQ: the gradient (``sdq_s = 0``) or fp32 per-split partials ``[S, B, G, H, D]``."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2).to(tl.int64)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < G
    q_off = row_offsets(b, h, rows, sq_b, sq_h, sq_n, ALIGN)
    do_off = row_offsets(b, h, rows, sdo_b, sdo_h, sdo_n, ALIGN)
    q1, q2 = load_split(GQ, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    do1, do2 = load_split(DO, do_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    stat_off = (b * H + h) * G + rows
    lse2 = load_lse2(LSE, stat_off, row_mask)
    delta = tl.load(DELTA + stat_off, mask=row_mask, other=0.0)
    dq1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)
    k_base = head_base(K, b, h, sk_b, sk_h, ALIGN)
    v_base = head_base(V, b, h, sv_b, sv_h, ALIGN)
    start, stop = _split_range(num_keys, SPLITS, BLOCK_N)
    for t0 in range(start, stop, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        seq = keyframe_rows(t, tokens_per_frame, stride, offset).to(tl.int64)
        dq1, dq2 = dq_keys(
            q1, q2, do1, do2, lse2, delta, dq1, dq2, k_base, v_base, rows_at(seq, sk_n, ALIGN),
            rows_at(seq, sv_n, ALIGN), t < stop,
            qk_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )
    dq_off = pid_s * sdq_s + row_offsets(b, h, rows, sdq_b, sdq_h, sdq_n, ALIGN)
    store_split(DQ, dq_off, row_mask, dq1 * sm_scale, dq2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


@autotune("global bwd dk/dv", "global_attention", _BWD_DKDV_OPTIONS, shared_dkdv, _AUTOTUNE_KEY)
@triton.jit
def _bwd_dkdv_kernel(
    GQ, K, V, DO, LSE, DELTA, DK, DV,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, sdo_b, sdo_n, sdo_h,
    sdk_b, sdk_n, sdk_h, sdv_b, sdv_n, sdv_h,
    G, H, num_keys, tokens_per_frame, stride, offset, qk_scale, sm_scale, SPLITS, TUNE_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    ALIGN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    t = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_mask = t < num_keys
    seq = keyframe_rows(t, tokens_per_frame, stride, offset).to(tl.int64)
    k_off = row_offsets(b, h, seq, sk_b, sk_h, sk_n, ALIGN)
    v_off = row_offsets(b, h, seq, sv_b, sv_h, sv_n, ALIGN)
    k1, k2 = load_split(K, k_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    v1, v2 = load_split(V, v_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    dk1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
    dv1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    dv2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
    q_base = head_base(GQ, b, h, sq_b, sq_h, ALIGN)
    do_base = head_base(DO, b, h, sdo_b, sdo_h, ALIGN)
    stat_base = (b * H + h) * G
    for m0 in range(0, G, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        dk1, dk2, dv1, dv2 = dkdv_queries(
            k1, k2, v1, v2, dk1, dk2, dv1, dv2, q_base, do_base,
            rows_at(rows, sq_n, ALIGN), rows_at(rows, sdo_n, ALIGN),
            LSE + stat_base, DELTA + stat_base, rows, rows < G, qk_scale,
            HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2, PRECISION,
        )
    dk_off = row_offsets(b, h, seq, sdk_b, sdk_h, sdk_n, ALIGN)
    dv_off = row_offsets(b, h, seq, sdv_b, sdv_h, sdv_n, ALIGN)
    store_split(DK, dk_off, key_mask, dk1 * sm_scale, dk2 * sm_scale, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    store_split(DV, dv_off, key_mask, dv1, dv2, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)


# ------------------------------------------------------------------------------------ launchers
def _keyframe_args(num_tokens: int, tokens_per_frame: int, keyframe_stride: int, keyframe_offset: int):
    """``(num_keys, T, stride, offset)``: ``num_keys`` keyframe tokens of a ``num_tokens`` video."""
    frames = ChunkLayout.keyframes_of(num_tokens // tokens_per_frame, keyframe_stride, keyframe_offset)
    return len(frames) * tokens_per_frame, tokens_per_frame, keyframe_stride, keyframe_offset


def _splits(gq: torch.Tensor, num_keys: int) -> int:
    B, G, H, _ = gq.shape
    return num_splits(triton.cdiv(num_keys, 128), B * H * triton.cdiv(G, 64))


def forward(gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, splits=None):
    """``(o [B, G, H, D], lse [B, H, G] fp32)``; see :func:`vin_kernels.global_attention`.

    ``splits`` overrides the number of key splits (tests).
    """
    B, G, H, D = gq.shape
    kf = _keyframe_args(k.shape[1], tokens_per_frame, keyframe_stride, keyframe_offset)
    S = splits or _splits(gq, kf[0])
    if S == 1:
        o = core.new_output(gq.shape, gq.dtype, gq.device)
        lse = core.new_output((B, H, G), torch.float32, gq.device)
        o_s, lse_s = o.unsqueeze(0), lse.unsqueeze(0)
    else:
        o_s = core.new_output((S, B, G, H, D), torch.float32, gq.device)
        lse_s = core.new_output((S, B, H, G), torch.float32, gq.device)
    _fwd_kernel[lambda m: (triton.cdiv(G, m["BLOCK_M"]), B * H, S)](
        gq, k, v, o_s, lse_s,
        *bnh_strides(gq), *bnh_strides(k), *bnh_strides(v), *o_s.stride()[:4], *lse_s.stride()[:3],
        G, H, *kf, softmax_scale * LOG2E, S, shape_bucket(G, kf[0]), **head_meta(gq, k, v, o_s),
    )
    if S == 1:
        return o, lse
    # Merge the splits by their log-sum-exp (a split may hold no key: lse = -inf, weight 0; a row
    # without any key of finite logit keeps o = 0, lse = -inf).
    lse = torch.logsumexp(lse_s, dim=0)
    weight = torch.exp(lse_s - torch.where(torch.isneginf(lse), 0.0, lse))  # [S, B, H, G]
    o = (o_s * weight.permute(0, 1, 3, 2).unsqueeze(-1)).sum(0)
    return o.to(gq.dtype), lse


def backward(do, dlse, gq, k, v, o, lse, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, splits=None):
    """``(dgq, dk, dv)``; rows of dk/dv outside the keyframes are zero."""
    B, G, H, D = gq.shape
    if do.stride(-1) != 1:
        do = do.contiguous()
    kf = _keyframe_args(k.shape[1], tokens_per_frame, keyframe_stride, keyframe_offset)
    num_keys = kf[0]
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2)
    if dlse is not None:
        delta = delta - dlse
    delta = delta.contiguous()
    qk_scale = softmax_scale * LOG2E
    S = splits or _splits(gq, num_keys)
    if S == 1:
        dq = core.new_output(gq.shape, gq.dtype, gq.device)
        dq_s = dq.unsqueeze(0)
    else:
        dq_s = core.new_output((S, B, G, H, D), torch.float32, gq.device)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    meta = head_meta(gq, k, v, do, dq_s, dk, dv)
    _bwd_dq_kernel[lambda m: (triton.cdiv(G, m["BLOCK_M"]), B * H, S)](
        gq, k, v, do, lse, delta, dq_s,
        *bnh_strides(gq), *bnh_strides(k), *bnh_strides(v), *bnh_strides(do), *dq_s.stride()[:4],
        G, H, *kf, qk_scale, softmax_scale, S, shape_bucket(G, num_keys), **meta,
    )
    if S > 1:
        dq = dq_s.sum(0).to(gq.dtype)
    _bwd_dkdv_kernel[lambda m: (triton.cdiv(num_keys, m["BLOCK_N"]), B * H)](
        gq, k, v, do, lse, delta, dk, dv,
        *bnh_strides(gq), *bnh_strides(k), *bnh_strides(v), *bnh_strides(do), *bnh_strides(dk), *bnh_strides(dv),
        G, H, *kf, qk_scale, softmax_scale, 1, shape_bucket(G, num_keys), **meta,
    )
    return dq, dk, dv
