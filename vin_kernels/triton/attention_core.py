"""Building blocks shared by the Triton attention kernels (chunk and global attention).

Every kernel works on a block of query rows against blocks of key rows whose row offsets (in
elements) are given as a vector, so contiguous windows, shared global tokens and keyframe tokens
scattered through a video all use the same code. Scores are computed in base 2: ``qk_scale`` is
``softmax_scale * log2(e)`` and the log-sum-exp ``lse2`` is kept in base 2 inside the kernels; the
launchers convert to and from the natural-log LSE of the public API.

Head dims that are not a power of two are split into two column tiles, ``BLOCK_D1`` (a power of two)
and ``BLOCK_D2`` (>= 16, masked to the rest): D = 72 runs as 64 + 16 and D = 96 as 64 + 32 instead of
a padded 128-wide tile.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# The same constants for use inside @triton.jit code (plain globals are not visible there).
LOG2E_C = tl.constexpr(LOG2E)
LN2_C = tl.constexpr(LN2)

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized contiguous output buffer. Every launcher allocates through this one function,
    so the tests can swap in NaN-filled buffers and check that the kernels write every element."""
    return torch.empty(shape, dtype=dtype, device=device)


def head_dim_tiles(head_dim: int) -> tuple[int, int]:
    """``(BLOCK_D1, BLOCK_D2)``: a power-of-two tile plus a masked tail tile (0 when not needed)."""
    d1 = 1 << (head_dim.bit_length() - 1)
    rest = head_dim - d1
    return d1, (0 if rest == 0 else max(16, triton.next_power_of_2(rest)))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use tf32 dots only when torch allows tf32 matmuls (off by default); else exact."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


_TILE_16BIT = 64 * 64


def autotune_configs(options: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """``triton.Config`` per ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``; one small config in the interpreter.

    List tiles for 16-bit inputs (``BLOCK_M * BLOCK_N >= 64 * 64``) and smaller ones for fp32; the
    autotuner sees only those matching the inputs (:func:`prune_by_element_size`).
    ``VIN_KERNELS_AUTOTUNE=0`` keeps the first option of each kind (no tuning: for test runs).
    """
    if INTERPRETED:
        options = [(16, 16, 1, 1)]
    elif os.environ.get("VIN_KERNELS_AUTOTUNE", "1") == "0":
        wide = next(o for o in options if o[0] * o[1] >= _TILE_16BIT)
        narrow = next(o for o in options if o[0] * o[1] < _TILE_16BIT)
        options = list(dict.fromkeys([wide, narrow]))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in options]


def prune_by_element_size(configs, named_args, **kwargs):
    """Keep the tiles meant for the inputs' element size (``early_config_prune`` hook).

    fp32 operands with exact (ieee) dots need about twice the shared memory of 16-bit ones: compiled
    for sm_90 without a GPU, the fp32 D=128 forward with 128x64 tiles and 3 stages asks for 230 KB and
    the dq kernel 295 KB, over the 227 KB an H100 block can have (64x64 tiles: 180 KB).
    """
    if len(configs) == 1:
        return configs
    tensor = next(v for v in named_args.values() if isinstance(v, torch.Tensor))
    wide = tensor.element_size() >= 4

    def fits(config) -> bool:
        area = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
        return area <= _TILE_16BIT if wide else area >= _TILE_16BIT

    return [c for c in configs if fits(c)] or configs


PRUNE = {"early_config_prune": prune_by_element_size}


def bnh_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """``(batch, token, head)`` element strides of a ``[B, N, H, D]`` tensor (D has stride 1)."""
    return t.stride(0), t.stride(1), t.stride(2)


def head_meta(t: torch.Tensor) -> dict:
    """Constexpr kernel arguments fixed by the head dim and dtype of ``t``."""
    d1, d2 = head_dim_tiles(t.shape[-1])
    return dict(
        HEAD_DIM=t.shape[-1], BLOCK_D1=d1, BLOCK_D2=max(d2, 16), HAS_D2=d2 > 0, PRECISION=dot_precision(t.dtype)
    )


def shape_bucket(*sizes: int) -> int:
    """One int naming the power-of-two bucket of each size: the autotune key, so nearby shapes share a tuning."""
    bucket = 0
    for size in sizes:
        bucket = (bucket << 6) | max(int(size), 1).bit_length()
    return bucket


def num_splits(work_blocks: int, programs: int, target_programs: int = 512) -> int:
    """How many pieces to cut a loop of ``work_blocks`` into so ``programs * pieces`` fills the GPU."""
    if programs >= target_programs or work_blocks <= 1:
        return 1
    return max(1, min(work_blocks, math.ceil(target_programs / programs)))


# ------------------------------------------------------------------------------------ tiles
@triton.jit
def load_rows(base, row_off, row_mask, HEAD_DIM: tl.constexpr, D_START: tl.constexpr, BLOCK_D: tl.constexpr):
    """``[len(row_off), BLOCK_D]`` tile of columns ``D_START..`` of the rows at ``base + row_off``; zero outside."""
    cols = D_START + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols[None, :] < HEAD_DIM)
    return tl.load(base + row_off[:, None] + cols[None, :], mask=mask, other=0.0)


@triton.jit
def store_rows(base, row_off, row_mask, tile, HEAD_DIM: tl.constexpr, D_START: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = D_START + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols[None, :] < HEAD_DIM)
    tl.store(base + row_off[:, None] + cols[None, :], tile.to(base.dtype.element_ty), mask=mask)


@triton.jit
def load_split(base, row_off, row_mask, HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr):
    """Rows as the two head-dim tiles ``(t1 [rows, BLOCK_D1], t2 [rows, BLOCK_D2])``; ``t2`` is ``t1`` without a tail."""
    t1 = load_rows(base, row_off, row_mask, HEAD_DIM, 0, BLOCK_D1)
    t2 = t1
    if HAS_D2:
        t2 = load_rows(base, row_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2)
    return t1, t2


@triton.jit
def store_split(base, row_off, row_mask, t1, t2, HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr):
    """Store the two head-dim tiles of :func:`load_split`."""
    store_rows(base, row_off, row_mask, t1, HEAD_DIM, 0, BLOCK_D1)
    if HAS_D2:
        store_rows(base, row_off, row_mask, t2, HEAD_DIM, BLOCK_D1, BLOCK_D2)


@triton.jit
def scores(a1, a2, b1, b2, HAS_D2: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b^T`` over the split head dim: ``[rows(a), rows(b)]`` fp32."""
    s = tl.dot(a1, tl.trans(b1), input_precision=PRECISION)
    if HAS_D2:
        s += tl.dot(a2, tl.trans(b2), input_precision=PRECISION)
    return s


# ------------------------------------------------------------------------------------ forward
@triton.jit
def attend_keys(
    q1, q2, m_i, l_i, acc1, acc2,
    K, V, k_off, v_off, key_mask,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One online-softmax step of a query block over one block of keys (rows ``k_off`` / ``v_off``)."""
    k1, k2 = load_split(K, k_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    s = scores(q1, q2, k1, k2, HAS_D2, PRECISION) * qk_scale
    s = tl.where(key_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v1, v2 = load_split(V, v_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=PRECISION)
    if HAS_D2:
        acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v2.dtype), v2, input_precision=PRECISION)
    return m_new, l_i, acc1, acc2


# ------------------------------------------------------------------------------------ backward
@triton.jit
def dq_keys(
    q1, q2, do1, do2, lse2, delta, dq1, dq2,
    K, V, k_off, v_off, key_mask,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Accumulate ``dS @ K`` of a query block over one block of keys (``dq`` before the softmax scale)."""
    k1, k2 = load_split(K, k_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    v1, v2 = load_split(V, v_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    s = scores(q1, q2, k1, k2, HAS_D2, PRECISION) * qk_scale
    p = tl.where(key_mask[None, :], tl.exp2(s - lse2[:, None]), 0.0)
    dp = scores(do1, do2, v1, v2, HAS_D2, PRECISION)
    ds = (p * (dp - delta[:, None])).to(k1.dtype)
    dq1 += tl.dot(ds, k1, input_precision=PRECISION)
    if HAS_D2:
        dq2 += tl.dot(ds, k2, input_precision=PRECISION)
    return dq1, dq2


@triton.jit
def dkdv_queries(
    k1, k2, v1, v2, dk1, dk2, dv1, dv2,
    Q, DO, q_off, do_off, LSE, DELTA, stat_off, visible,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Accumulate ``P^T dO`` and ``dS^T Q`` of a key block over one block of queries.

    ``visible`` is ``[BLOCK_N, BLOCK_M]`` (key, query): which pairs contribute. ``stat_off`` are the
    offsets of the queries' (natural-log) LSE and ``delta = rowsum(dO * O) - dLSE``.
    """
    q_mask = tl.max(visible.to(tl.int32), 0) > 0
    q1, q2 = load_split(Q, q_off, q_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    do1, do2 = load_split(DO, do_off, q_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    lse2 = tl.load(LSE + stat_off, mask=q_mask, other=0.0) * LOG2E_C
    delta = tl.load(DELTA + stat_off, mask=q_mask, other=0.0)
    s_t = scores(k1, k2, q1, q2, HAS_D2, PRECISION) * qk_scale
    p_t = tl.where(visible, tl.exp2(s_t - lse2[None, :]), 0.0)
    dv1 += tl.dot(p_t.to(do1.dtype), do1, input_precision=PRECISION)
    if HAS_D2:
        dv2 += tl.dot(p_t.to(do2.dtype), do2, input_precision=PRECISION)
    dp_t = scores(v1, v2, do1, do2, HAS_D2, PRECISION)
    ds_t = (p_t * (dp_t - delta[None, :])).to(q1.dtype)
    dk1 += tl.dot(ds_t, q1, input_precision=PRECISION)
    if HAS_D2:
        dk2 += tl.dot(ds_t, q2, input_precision=PRECISION)
    return dk1, dk2, dv1, dv2
