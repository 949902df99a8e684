"""Building blocks shared by the Triton attention kernels (chunk and global attention).

Every kernel works on a block of query rows against blocks of key rows whose row offsets (in
elements) are given as a vector, so contiguous windows, shared global tokens and keyframe tokens
scattered through a video all use the same code. Scores are computed in base 2: ``qk_scale`` is
``softmax_scale * log2(e)`` and the log-sum-exp ``lse2`` is kept in base 2 inside the kernels; the
launchers convert to and from the natural-log LSE of the public API.

Head dims that are not a power of two are split into two column tiles, ``BLOCK_D1`` (a power of two)
and ``BLOCK_D2`` (>= 16, masked to the rest): D = 72 runs as 64 + 16 and D = 96 as 64 + 32 instead of
a padded 128-wide tile.

Numerics. A key whose logit is ``-inf`` (masked, or ``q.k`` overflowing fp32 downwards) has weight 0;
a row with no key of finite logit gets ``o = 0``, ``lse = -inf`` and passes no gradient, like an empty
side of ``merge_attention``. A ``+inf`` or NaN logit makes its row NaN. The backward recomputes
``P = exp2(s * scale * log2(e) - lse * log2(e))`` from the forward's fp32 natural-log LSE, as
FlashAttention-2 does: the exponent is off by up to about two fp32 ulps of the largest base-2 logit
``L``, so each ``P`` (and ``dV = P^T dO``) carries a relative error up to ``2 * 2^-23 * ln(2) * L``,
about ``1.7e-7 * L`` (``tests/kernels/test_numerics.py`` checks this bound elementwise). ``P`` is clamped
to 1, and where ``L >= 2^24`` (fp16 inputs near 6e4 give ``L`` ~ 1e10) the LSE is lowered by 4 ulps, so
saturated rows, the only kind at such logits, keep their exact gradient instead of inf/NaN.
"""

from __future__ import annotations

import math

import torch

from ..dispatch import triton_interpreted, triton_version_problem

if (_problem := triton_version_problem()) is not None:  # before Triton 3.2/3.3 fail with "0 active drivers"
    raise ImportError(_problem)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# The same constants for use inside @triton.jit code (plain globals are not visible there).
LOG2E_C = tl.constexpr(LOG2E)
LN2_C = tl.constexpr(LN2)

# Triton reads TRITON_INTERPRET when a kernel is decorated, so the kernels' mode is fixed at import.
INTERPRETED = triton_interpreted()


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


def bnh_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """``(batch, token, head)`` element strides of a ``[B, N, H, D]`` tensor (D has stride 1)."""
    return t.stride(0), t.stride(1), t.stride(2)


def row_align(*tensors: torch.Tensor) -> int:
    """``ALIGN``: 16 bytes in elements of ``tensors[0]`` if all their strides but the last are multiples of it, else 1.

    A launch specializes integer arguments divisible by 16, so a head stride of 72 (D = 72) leaves the
    compiler unable to prove that rows start 16-byte aligned: scalar loads and no ``cp.async``
    (measured, bf16: no loop of the D = 72 kernels pipelined on sm_90, and the dk/dv kernel at 255
    registers with 144-504 B of spills on sm_80). The kernels mark their row offsets as multiples of
    ``ALIGN`` (:func:`head_base`, :func:`row_offsets`, :func:`rows_at`); a base pointer that is not
    16-byte aligned still turns the vector loads off, as Triton specializes pointers on their own.
    """
    align = 16 // tensors[0].element_size()
    if all(s % align == 0 for t in tensors for s in t.stride()[:-1]):
        return align
    return 1


def head_meta(t: torch.Tensor, *others: torch.Tensor) -> dict:
    """Constexpr kernel arguments fixed by the head dim and dtype of ``t`` and the strides of ``t, *others``."""
    d1, d2 = head_dim_tiles(t.shape[-1])
    return dict(
        HEAD_DIM=t.shape[-1], BLOCK_D1=d1, BLOCK_D2=max(d2, 16), HAS_D2=d2 > 0, PRECISION=dot_precision(t.dtype),
        ALIGN=row_align(t, *others),
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
def head_base(T, b, h, s_b, s_h, ALIGN: tl.constexpr):
    """Pointer to token 0 of batch row ``b``, head ``h`` of ``T``; the offset is a multiple of ``ALIGN`` elements."""
    return T + tl.multiple_of(b * s_b + h * s_h, ALIGN)


@triton.jit
def row_offsets(b, h, rows, s_b, s_h, s_n, ALIGN: tl.constexpr):
    """Element offsets of tokens ``rows`` of batch row ``b``, head ``h``, marked as multiples of ``ALIGN``."""
    return tl.multiple_of(b * s_b + h * s_h + rows * s_n, ALIGN)


@triton.jit
def rows_at(rows, s_n, ALIGN: tl.constexpr):
    """``rows * s_n``, offsets from a :func:`head_base` pointer, marked as multiples of ``ALIGN``."""
    return tl.multiple_of(rows * s_n, ALIGN)


@triton.jit
def load_rows(base, row_off, row_mask, HEAD_DIM: tl.constexpr, D_START: tl.constexpr, BLOCK_D: tl.constexpr):
    """``[len(row_off), BLOCK_D]`` tile of columns ``D_START..`` of the rows at ``base + row_off``; zero outside.

    Callers mark ``row_off`` with ``tl.multiple_of(..., ALIGN)`` where they compute it: a hint on an
    argument of this (inlined) function would be lost.
    """
    cols = D_START + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols[None, :] < HEAD_DIM)
    return tl.load(base + row_off[:, None] + cols[None, :], mask=mask, other=0.0)


@triton.jit
def store_rows(base, row_off, row_mask, tile, HEAD_DIM: tl.constexpr, D_START: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = D_START + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols[None, :] < HEAD_DIM)
    tl.store(base + row_off[:, None] + cols[None, :], tile.to(base.dtype.element_ty), mask=mask)


@triton.jit
def load_split(base, row_off, row_mask, HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr,
               HAS_D2: tl.constexpr):
    """Rows as the two head-dim tiles ``(t1 [rows, BLOCK_D1], t2 [rows, BLOCK_D2])``; ``t2`` is ``t1`` without a tail."""
    t1 = load_rows(base, row_off, row_mask, HEAD_DIM, 0, BLOCK_D1)
    t2 = t1
    if HAS_D2:
        t2 = load_rows(base, row_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2)
    return t1, t2


@triton.jit
def store_split(base, row_off, row_mask, t1, t2, HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr,
                BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr):
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
    """One online-softmax step of a query block over one block of keys (rows ``k_off`` / ``v_off``).

    A key whose logit is ``-inf`` (masked, or ``q.k`` overflowing fp32 downwards) has weight 0. While
    a row has seen no finite logit its running max stays ``-inf`` and is used as 0 in the
    exponentials, so the row keeps ``l = 0`` instead of ``exp2(-inf - -inf) = NaN``.
    """
    k1, k2 = load_split(K, k_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    s = scores(q1, q2, k1, k2, HAS_D2, PRECISION) * qk_scale
    s = tl.where(key_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v1, v2 = load_split(V, v_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=PRECISION)
    if HAS_D2:
        acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v2.dtype), v2, input_precision=PRECISION)
    return m_new, l_i, acc1, acc2


@triton.jit
def finish_rows(m_i, l_i, acc1, acc2):
    """``(o1, o2, lse)`` of the online softmax: ``o = acc / l``, natural-log ``lse = (m + log2 l) ln 2``.

    A row without a key of finite logit (``l = 0``) gets ``o = 0`` and ``lse = -inf``, the same as an
    empty side of :func:`vin_kernels.merge_attention`. A row with a NaN or ``+inf`` logit has ``l = NaN``
    and gets NaN in both, so no merge (nor the split-key merge of global_attention) takes it for empty.
    """
    l_safe = tl.where(l_i == 0, 1.0, l_i)
    lse = tl.where(l_i == 0, float("-inf"), (m_i + tl.log2(l_safe)) * LN2_C)
    return acc1 / l_safe[:, None], acc2 / l_safe[:, None], lse


# ------------------------------------------------------------------------------------ backward
@triton.jit
def load_lse2(LSE, off, mask):
    """Base-2 LSE for recomputing ``p = exp2(s - lse2)`` (:func:`probabilities`) from the natural-log LSE.

    ``+inf`` for rows without keys (``lse = -inf``), so their ``p`` is 0. From ``|lse2| >= 2^24`` on,
    one fp32 ulp of it is 2 or more and the exponents ``s - lse2`` are off by whole units either
    way: there it is lowered by 4 ulps, so the largest logit of a saturated row (all logits that far
    apart are) gets ``p = 1`` after the clamp instead of ``2^-ulps``.
    """
    lse = tl.load(LSE + off, mask=mask, other=0.0)
    lse2 = lse * LOG2E_C
    lse2 = tl.where(tl.abs(lse2) >= 16777216.0, lse2 - tl.abs(lse2) * 4.76837158203125e-07, lse2)  # 2^24, 2^-21
    return tl.where(lse == float("-inf"), float("inf"), lse2)


@triton.jit
def probabilities(s, lse2):
    """``p = exp2(min(s - lse2, 0))`` for base-2 logits ``s`` and LSE ``lse2`` (broadcast).

    ``p <= 1`` holds exactly, but ``s`` is recomputed and ``lse2`` was rounded to fp32 twice (stored
    in natural log): with base-2 logits up to ``L`` their difference is off by up to about two fp32
    ulps of ``L``. For fp16 inputs near 6e4 that is thousands and ``exp2`` returned inf; the clamp keeps
    ``p <= 1``.
    """
    return tl.exp2(tl.minimum(s - lse2, 0.0, propagate_nan=tl.PropagateNan.ALL))


@triton.jit
def dq_keys(
    q1, q2, do1, do2, lse2, delta, dq1, dq2,
    K, V, k_off, v_off, key_mask,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Accumulate ``dS @ K`` of a query block over one block of keys (``dq`` before the softmax scale).

    ``lse2`` from :func:`load_lse2`; keys outside ``key_mask`` are loaded as zeros and get ``p = dS = 0``.
    """
    k1, k2 = load_split(K, k_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    v1, v2 = load_split(V, v_off, key_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    s = scores(q1, q2, k1, k2, HAS_D2, PRECISION) * qk_scale
    p = tl.where(key_mask[None, :], probabilities(s, lse2[:, None]), 0.0)
    dp = scores(do1, do2, v1, v2, HAS_D2, PRECISION)
    ds = (p * (dp - delta[:, None])).to(k1.dtype)
    dq1 += tl.dot(ds, k1, input_precision=PRECISION)
    if HAS_D2:
        dq2 += tl.dot(ds, k2, input_precision=PRECISION)
    return dq1, dq2


@triton.jit
def dkdv_queries(
    k1, k2, v1, v2, dk1, dk2, dv1, dv2,
    Q, DO, q_off, do_off, LSE, DELTA, stat_off, row_mask,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, HAS_D2: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Accumulate ``P^T dO`` and ``dS^T Q`` of a key block over one block of queries.

    Every query row in ``row_mask`` sees every key of the block (the callers cut key blocks so that
    this holds); the other rows are loaded as zeros and give ``P = dS = 0`` even where a key or value
    is not finite. ``stat_off`` are the offsets of the queries' natural-log LSE and of
    ``delta = rowsum(dO * O) - dLSE``.
    """
    q1, q2 = load_split(Q, q_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    do1, do2 = load_split(DO, do_off, row_mask, HEAD_DIM, BLOCK_D1, BLOCK_D2, HAS_D2)
    lse2 = load_lse2(LSE, stat_off, row_mask)
    delta = tl.load(DELTA + stat_off, mask=row_mask, other=0.0)
    s_t = scores(k1, k2, q1, q2, HAS_D2, PRECISION) * qk_scale
    p_t = tl.where(row_mask[None, :], probabilities(s_t, lse2[None, :]), 0.0)
    dv1 += tl.dot(p_t.to(do1.dtype), do1, input_precision=PRECISION)
    if HAS_D2:
        dv2 += tl.dot(p_t.to(do2.dtype), do2, input_precision=PRECISION)
    dp_t = scores(v1, v2, do1, do2, HAS_D2, PRECISION)
    ds_t = tl.where(row_mask[None, :], p_t * (dp_t - delta[None, :]), 0.0).to(q1.dtype)
    dk1 += tl.dot(ds_t, q1, input_precision=PRECISION)
    if HAS_D2:
        dk2 += tl.dot(ds_t, q2, input_precision=PRECISION)
    return dk1, dk2, dv1, dv2
