"""Numerical edge cases of the attention backends (issues 13.11-14 and 19.14), against the reference.

The contract is docs/design.md, Edge cases; every backend (reference, sdpa, Triton) is held to it.

* A non-finite key reaches only the gradients of the queries that see it, as in the reference.
* ``merge_attention`` with both sides empty: finite (zero) gradients in every backend.
* A row whose logits all overflow to ``-inf`` is a row without keys: ``o = 0``, ``lse = -inf``,
  no gradient through it.
* A row with a NaN or ``+inf`` logit (a NaN query, ``q.k`` overflowing to ``inf - inf``, a NaN
  among ``-inf`` logits) is NaN in ``o`` and ``lse`` and in exactly the gradients the reference has
  NaN, on windows shorter and longer than the CPU flash kernel's vector lanes; a split of the keys
  (global_attention's split-key merge) cannot drop it. ``merge_attention`` and ``overlap_fuse``
  propagate NaN as the reference does. (Empty inputs: tests/kernels/test_validation.py.)
* Huge logits: the backward stays finite, exact for saturated rows (fp16 inputs near 6e4), and
  within the documented bound below them.

Triton runs in the CPU interpreter here (tests/conftest.py), fp32 and fp16 only (bf16 ``tl.dot`` is
wrong in the Triton 3.9 interpreter). Shapes are tiny: the interpreter is slow.
"""

import functools
import math

import pytest
import torch

import vin_kernels as vk
from vin_kernels import ChunkLayout
from vin_kernels import reference as ref
from vin_kernels.testing import assert_close, tolerance
from vin_kernels.triton import global_attention as global_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D = 32  # the smallest head dim the Triton backend takes


def _leaves(*tensors):
    return [t.detach().clone().to(DEVICE).requires_grad_() for t in tensors]


def _chunk(q, k, v, backend, **kwargs):
    if backend == "reference":
        return ref.chunk_attention(q, k, v, return_lse=True, **kwargs)
    return vk.chunk_attention(q, k, v, return_lse=True, backend=backend, **kwargs)


# ------------------------------------------------------------------------------------ point 11
@pytest.mark.parametrize("context_grad", [True, False])
@pytest.mark.parametrize("N, chunk, context", [(32, 16, 8), (40, 12, 5)])
def test_nan_key_reaches_only_the_gradients_of_queries_that_see_it(N, chunk, context, context_grad):
    """``k[20] = NaN``: NaN exactly where the reference has it, in o, dq, dk and dv, the rest equal.

    The loss ``sum(o * g) + sum(o^2) / 2`` makes the upstream gradient NaN in the rows that see the
    NaN key too, so a key block mixing keys those rows see and keys they don't would leak NaN into
    the latter through ``P^T dO`` even with ``P = 0`` there (issue 13.11: dk rows 0-7 were NaN).
    """
    gen = torch.Generator().manual_seed(11)
    q, k, v, g = (torch.randn(1, N, 2, D, generator=gen) for _ in range(4))
    k[0, 20, 1] = float("nan")
    results = {}
    for backend in ("reference", "triton", "sdpa"):
        leaves = _leaves(q, k, v)
        o, _ = _chunk(*leaves, backend, chunk_size=chunk, context_size=context, context_grad=context_grad)
        loss = (o * g.to(DEVICE)).sum() + 0.5 * (o * o).sum()
        results[backend] = [o, *torch.autograd.grad(loss, leaves)]
    for backend in ("triton", "sdpa"):
        for name, got, want in zip(["o", "dq", "dk", "dv"], results[backend], results["reference"]):
            assert_same_nan_rows(f"{backend} {name}", got, want)


def assert_same_nan_rows(name, got, want, mixed=True):
    """NaN in exactly the rows (vectors over the last dim) where the reference has NaN, the rest close.

    ``mixed``: the case must have both NaN rows and finite rows, so it cannot pass vacuously.
    """
    got, want = got.detach().cpu(), want.detach().cpu()
    nan_got, nan_want = torch.isnan(got).any(-1), torch.isnan(want).any(-1)
    assert torch.equal(nan_got, nan_want), (
        f"{name}: NaN at {nan_got.nonzero().tolist()[:8]}, reference at {nan_want.nonzero().tolist()[:8]}"
    )
    assert not mixed or (nan_want.any() and not nan_want.all()), f"{name}: the case must have NaN rows and finite rows"
    finite = ~nan_want
    assert_close(got[finite], want[finite], tolerance(torch.float32), name)


# ------------------------------------------------------------------------------------ point 12
@pytest.mark.parametrize("backend", ["reference", "triton", "sdpa"])
def test_merge_of_two_empty_sides_has_zero_gradients(backend):
    """Rows with ``lse_a = lse_b = -inf`` give o = 0, lse = -inf and zero (not NaN) gradients (issue 13.12)."""
    gen = torch.Generator().manual_seed(12)
    B, N, H = 1, 6, 2
    o_a, o_b = torch.randn(B, N, H, D, generator=gen), torch.randn(B, N, H, D, generator=gen)
    lse_a, lse_b = torch.randn(B, H, N, generator=gen), torch.randn(B, H, N, generator=gen)
    lse_a[:, :, 2] = lse_b[:, :, 2] = float("-inf")  # both empty
    lse_a[:, :, 4] = float("-inf")  # one side empty
    g_o, g_lse = torch.randn(B, N, H, D, generator=gen), torch.randn(B, H, N, generator=gen)
    leaves = _leaves(o_a, lse_a, o_b, lse_b)
    o, lse = vk.merge_attention(*leaves, backend=backend)
    finite_lse = torch.where(torch.isneginf(lse), 0.0, lse)
    grads = torch.autograd.grad((o * g_o.to(DEVICE)).sum() + (finite_lse * g_lse.to(DEVICE)).sum(), leaves)
    assert torch.equal(o[:, 2].cpu(), torch.zeros(B, H, D)) and torch.isneginf(lse[:, :, 2]).all()
    for name, grad in zip(["do_a", "dlse_a", "do_b", "dlse_b"], grads):
        assert torch.isfinite(grad).all(), f"{name}: not finite at {(~torch.isfinite(grad)).nonzero().tolist()[:4]}"
    assert (grads[0][:, 2] == 0).all() and (grads[2][:, 2] == 0).all()
    assert (grads[1][:, :, 2] == 0).all() and (grads[3][:, :, 2] == 0).all()
    if backend != "reference":  # and equal to the reference's
        ref_leaves = _leaves(o_a, lse_a, o_b, lse_b)
        o_r, lse_r = vk.merge_attention(*ref_leaves, backend="reference")
        lse_r = torch.where(torch.isneginf(lse_r), 0.0, lse_r)
        ref_grads = torch.autograd.grad((o_r * g_o.to(DEVICE)).sum() + (lse_r * g_lse.to(DEVICE)).sum(), ref_leaves)
        for name, got, want in zip(["do_a", "dlse_a", "do_b", "dlse_b"], grads, ref_grads):
            assert_close(got, want, tolerance(torch.float32), name)


# ------------------------------------------------------------------------------------ point 13
def _overflowing_row(N, row, gen):
    """q, k, v where every logit of query ``row`` is -inf in fp32 (q.k = -1e60) and all others are finite."""
    q, k, v = (torch.randn(1, N, 2, D, generator=gen) for _ in range(3))
    q[..., 0] = 0.0
    k[..., 0] = -1e30
    q[0, row, :, 0] = 1e30
    return q, k, v


def test_chunk_row_with_all_logits_overflowing_has_no_keys():
    """o = 0, lse = -inf (the reference's lse too), dq = 0 there, and nothing flows from it into dk/dv (issue 13.13).

    Oracle for the other rows and for dk/dv: the reference with that query zeroed and its upstream
    gradient 0, which is a row that contributes nothing.
    """
    N, row = 32, 3
    q, k, v = _overflowing_row(N, row, torch.Generator().manual_seed(13))
    g = torch.randn(1, N, 2, D, generator=torch.Generator().manual_seed(14))
    leaves = _leaves(q, k, v)
    o, lse = _chunk(*leaves, "triton", chunk_size=16, context_size=8)
    dq, dk, dv = torch.autograd.grad((o * g.to(DEVICE)).sum(), leaves)
    assert torch.equal(o[0, row].cpu(), torch.zeros(2, D)) and torch.isneginf(lse[0, :, row]).all()
    assert torch.equal(dq[0, row].cpu(), torch.zeros(2, D))
    for backend in ("reference", "sdpa"):  # o = 0, lse = -inf everywhere
        ref_leaves = _leaves(q, k, v)
        o_b, lse_b = _chunk(*ref_leaves, backend, chunk_size=16, context_size=8)
        dq_b = torch.autograd.grad((o_b * g.to(DEVICE)).sum(), ref_leaves)[0]
        assert torch.equal(o_b[0, row].cpu(), torch.zeros(2, D)), backend
        assert torch.equal(dq_b[0, row].cpu(), torch.zeros(2, D)), backend
        assert torch.isfinite(dq_b).all(), backend
        assert torch.isneginf(lse_b[0, :, row]).all(), backend

    q0, g0 = q.clone(), g.clone()
    q0[0, row] = 0.0
    g0[0, row] = 0.0
    oracle = _leaves(q0, k, v)
    o_r, lse_r = _chunk(*oracle, "reference", chunk_size=16, context_size=8)
    dq_r, dk_r, dv_r = torch.autograd.grad((o_r * g0.to(DEVICE)).sum(), oracle)
    others = torch.arange(N) != row
    assert_close(o[:, others], o_r[:, others], tolerance(torch.float32), "o")
    assert_close(lse[:, :, others], lse_r[:, :, others], tolerance(torch.float32), "lse")
    # dq[..., 0] = -1e30 * sum_j dS_ij is 0 up to rounding noise times 1e30 in both: compared without it.
    assert_close(dq[:, others, :, 1:], dq_r[:, others, :, 1:], tolerance(torch.float32), "dq")
    assert_close(dk, dk_r, tolerance(torch.float32), "dk")
    assert_close(dv, dv_r, tolerance(torch.float32), "dv")


@pytest.mark.parametrize("splits", [1, 2])
def test_global_query_with_all_logits_overflowing_has_no_keys(splits):
    """The same for a global query, with and without the split-key merge of the forward."""
    N, T, row = 32, 4, 2
    gen = torch.Generator().manual_seed(15)
    gq, _, _ = _overflowing_row(8, row, gen)
    _, k, v = _overflowing_row(N, 0, gen)
    o, lse = global_kernels.forward(gq.to(DEVICE), k.to(DEVICE), v.to(DEVICE), T, 2, 0, D**-0.5, splits=splits)
    assert torch.equal(o[0, row].cpu(), torch.zeros(2, D)) and torch.isneginf(lse[0, :, row]).all()
    _, lse_ref = ref.global_attention(gq, k, v, tokens_per_frame=T, keyframe_stride=2, return_lse=True)
    assert torch.isneginf(lse_ref[0, :, row]).all()
    gq0 = gq.clone()
    gq0[0, row] = 0.0
    o_r, lse_r = ref.global_attention(gq0, k, v, tokens_per_frame=T, keyframe_stride=2, return_lse=True)
    others = torch.arange(8) != row
    assert_close(o[:, others].cpu(), o_r[:, others], tolerance(torch.float32), "o")
    assert_close(lse[:, :, others].cpu(), lse_r[:, :, others], tolerance(torch.float32), "lse")


# ------------------------------------------------------------------------------------ issue 19.14
ROW, HEAD = 3, 1  # the edge row


def _no_keys(q, k, v):
    """Every logit of the edge row is -inf (q.k = 3e38 * -10 overflows fp32); the other rows are ordinary
    (their q is 0 in the first coordinate, and k's is only 10: no gradient is huge)."""
    q[..., HEAD, 0] = 0.0
    q[0, ROW, HEAD] = 0.0
    q[0, ROW, HEAD, 0] = 3e38
    k[..., HEAD, 0] = -10.0


def _nan_among_no_keys(q, k, v):
    """As :func:`_no_keys`, and key 2 is NaN: the edge row's logits are -inf and one NaN."""
    _no_keys(q, k, v)
    k[0, 2, HEAD, 1] = float("nan")


def _nan_query(q, k, v):
    q[0, ROW, HEAD, 5] = float("nan")


def _overflow_to_nan(q, k, v):
    """The edge row's logits are 3e39 - 3e39 = inf - inf = NaN in fp32; the other rows are ordinary."""
    q[..., HEAD, :2] = 0.0
    q[0, ROW, HEAD, :2] = 3e38
    k[..., HEAD, 0], k[..., HEAD, 1] = 10.0, -10.0


def _posinf_logit(q, k, v):
    """One logit of the edge row is +inf (3e38 * 10), its others finite; the other rows are ordinary."""
    _no_keys(q, k, v)
    k[..., HEAD, 0] = torch.rand(k.shape[1]) - 0.5
    k[0, 2, HEAD, 0] = 10.0


EDGE_ROWS = {
    "no-keys": _no_keys,
    "nan-among-no-keys": _nan_among_no_keys,
    "nan-query": _nan_query,
    "overflow-to-nan": _overflow_to_nan,
    "posinf-logit": _posinf_logit,
}


def _edge_inputs(case, N, seed=19):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn(1, N, 2, D, generator=gen) for _ in range(4))
    EDGE_ROWS[case](q, k, v)
    return q, k, v, g


def _compare_edge_case(run, inputs, g, return_lse):
    """``run(backend, *leaves) -> (o, lse)`` on every backend against the reference: NaN in the same rows of
    ``o``, ``lse`` and every gradient (loss ``sum(o g)``, plus the finite part of ``lse`` times a weight with
    ``return_lse``), equal values elsewhere; ``lse`` -inf in the same rows."""
    results = {}
    for backend in ("reference", "sdpa", "triton"):
        leaves = _leaves(*inputs)
        o, lse = run(backend, *leaves)
        loss = (o * g.to(DEVICE)).sum()
        if return_lse:
            loss = loss + torch.where(torch.isfinite(lse), lse, 0.0).sum()
        results[backend] = (o, lse, torch.autograd.grad(loss, leaves))
    o_r, lse_r, grads_r = results["reference"]
    edge = torch.isnan(o_r).any(-1) | (o_r == 0).all(-1)
    assert edge.sum() >= 1 and not edge.all(), "the case must have edge rows and ordinary rows"
    for backend in ("sdpa", "triton"):
        o, lse, grads = results[backend]
        assert_same_nan_rows(f"{backend} o", o, o_r, mixed=False)
        assert torch.equal((o == 0).all(-1), (o_r == 0).all(-1)), f"{backend}: rows of o = 0 differ from the reference's"
        lse, lse_ref = lse.detach().cpu(), lse_r.detach().cpu()
        assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref)), f"{backend}: lse = -inf rows"
        bad, bad_ref = torch.isnan(lse) | torch.isposinf(lse), torch.isnan(lse_ref) | torch.isposinf(lse_ref)
        assert torch.equal(bad, bad_ref), f"{backend}: NaN/+inf lse at {bad.nonzero().tolist()}, reference {bad_ref.nonzero().tolist()}"
        assert_close(lse[torch.isfinite(lse_ref)], lse_ref[torch.isfinite(lse_ref)], tolerance(torch.float32), f"{backend} lse")
        assert_same_nan_rows(f"{backend} dq", grads[0], grads_r[0], mixed=False)
        assert_same_nan_rows(f"{backend} dk", grads[1], grads_r[1], mixed=False)
        # dv of a row with a +inf logit: the reference's P is 0 beside that key, so only its dv is NaN; a
        # kernel that recomputes P from a NaN lse (CPU flash with few keys, Triton) makes the dv of every
        # key the row sees NaN (the keys whose dk is NaN). Either is the contract; the rest is equal.
        got, want = grads[2].detach().cpu(), grads_r[2].detach().cpu()
        nan_got, least = torch.isnan(got).any(-1), torch.isnan(want).any(-1)
        most = least | torch.isnan(grads_r[1].detach().cpu()).any(-1)
        assert torch.equal(nan_got & least, least) and torch.equal(nan_got | most, most), (
            f"{backend} dv: NaN at {nan_got.nonzero().tolist()}, reference {least.nonzero().tolist()}"
        )
        assert_close(got[~nan_got], want[~nan_got], tolerance(torch.float32), f"{backend} dv")


@pytest.mark.parametrize("return_lse", [False, True], ids=["o", "o-lse"])
@pytest.mark.parametrize("case", list(EDGE_ROWS))
@pytest.mark.parametrize("chunk, context", [(6, 3), (16, 8)], ids=["9-keys", "24-keys"])
def test_chunk_edge_rows_follow_the_contract_on_every_backend(chunk, context, case, return_lse):
    """Windows of at most 9 keys (fewer than the CPU flash kernel's vector lanes, where it dropped NaN
    logits and returned 0) and of 24. Issue 19.14: sdpa gave 0 for a NaN query and for overflowing NaN rows."""
    q, k, v, g = _edge_inputs(case, 24)

    def run(backend, q, k, v):
        if backend == "reference":
            return ref.chunk_attention(q, k, v, chunk_size=chunk, context_size=context, return_lse=True)
        out = vk.chunk_attention(q, k, v, chunk_size=chunk, context_size=context, return_lse=return_lse, backend=backend)
        return out if return_lse else (out, ref.chunk_attention(q, k, v, chunk_size=chunk, context_size=context, return_lse=True)[1].detach())

    _compare_edge_case(run, (q, k, v), g, return_lse)


@pytest.mark.parametrize("case", list(EDGE_ROWS))
@pytest.mark.parametrize("stride", [3, 1], ids=["12-keys", "32-keys"])
def test_global_edge_rows_follow_the_contract_on_every_backend(stride, case):
    """The same for a global query over the keyframes (4 tokens per frame, every ``stride``-th of 8 frames)."""
    gq, k, v, g = _edge_inputs(case, 32)
    gq, g = gq[:, :8].clone(), g[:, :8].clone()  # token 2, the edge cases' key, is in keyframe 0

    def run(backend, gq, k, v):
        impl = ref.global_attention if backend == "reference" else functools.partial(vk.global_attention, backend=backend)
        return impl(gq, k, v, tokens_per_frame=4, keyframe_stride=stride, return_lse=True)

    _compare_edge_case(run, (gq, k, v), g, True)


def test_global_nan_in_one_key_split_reaches_the_merged_row():
    """Triton's split-key forward merges the splits by their LSE: a split with a NaN logit has lse = NaN
    (it was -inf, an empty split, so the merge dropped it and the row came out finite)."""
    gq, k, v, _ = _edge_inputs("nan-query", 32)
    gq = gq[:, :8].clone()
    gq[0, ROW, HEAD, 5] = 0.0
    k[0, 20, HEAD, 0] = float("nan")  # a key of the second split only
    o_r, lse_r = ref.global_attention(gq, k, v, tokens_per_frame=4, keyframe_stride=1, return_lse=True)
    o, lse = global_kernels.forward(gq.to(DEVICE), k.to(DEVICE), v.to(DEVICE), 4, 1, 0, D**-0.5, splits=2)
    assert_same_nan_rows("o", o, o_r)
    assert torch.equal(torch.isnan(lse.cpu()), torch.isnan(lse_r))


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_merge_propagates_nan_as_the_reference(backend):
    """NaN in ``o_a``, NaN or +inf in ``lse_a`` or ``lse_b``, next to an empty side: NaN rows, lse and
    gradients where the reference has them."""
    gen = torch.Generator().manual_seed(20)
    o_a, o_b = (torch.randn(1, 6, 2, D, generator=gen) for _ in range(2))
    lse_a, lse_b = (torch.randn(1, 2, 6, generator=gen) for _ in range(2))
    o_a[0, 1, 0, 3] = float("nan")
    lse_a[0, 0, 2] = float("nan")
    lse_a[0, 1, 3] = float("inf")
    lse_a[0, 0, 4], lse_b[0, 0, 4] = float("-inf"), float("nan")
    g_o, g_lse = torch.randn(1, 6, 2, D, generator=gen), torch.randn(1, 2, 6, generator=gen)
    results = {}
    for name in ("reference", backend):
        leaves = _leaves(o_a, lse_a, o_b, lse_b)
        o, lse = vk.merge_attention(*leaves, backend=name)
        loss = (o * g_o.to(DEVICE)).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * g_lse.to(DEVICE)).sum()
        results[name] = (o, lse.unsqueeze(-1), *torch.autograd.grad(loss, leaves))
    names = ["o", "lse", "do_a", "dlse_a", "do_b", "dlse_b"]
    for name, got, want in zip(names, results[backend], results["reference"]):
        if name.startswith("dlse"):
            got, want = got.unsqueeze(-1), want.unsqueeze(-1)
        assert_same_nan_rows(f"{backend} {name}", got, want)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_overlap_fuse_propagates_nan_as_the_reference(backend, out_windows):
    """A NaN in one window's prediction and one in the sample: NaN in exactly the frames (and window
    copies) the reference has; the blend is linear, so the gradients stay finite and equal."""
    layout = ChunkLayout.windows(30, 20, 12)
    gen = torch.Generator().manual_seed(21)
    eps = torch.randn(2, layout.num_chunks, layout.chunk_len, 3, generator=gen)
    x, g = torch.randn(2, 30, 3, generator=gen), torch.randn(2, 30, 3, generator=gen)
    eps[0, 1, 2, 1] = float("nan")  # window 1, position 2: a frame two windows cover
    x[1, 7, 0] = float("nan")
    results = {}
    for name in ("reference", backend):
        leaves = _leaves(eps, x)
        out = vk.overlap_fuse(*leaves[:1], layout, x=leaves[1], coeffs=(0.9, -0.3), out_windows=out_windows, backend=name)
        weight = layout.cut_windows(g) if out_windows else g
        results[name] = (out, *torch.autograd.grad((torch.nan_to_num(out) * weight.to(DEVICE)).sum(), leaves))
    for name, got, want in zip(["out", "d eps", "d x"], results[backend], results["reference"]):
        assert_same_nan_rows(f"{backend} {name}", got, want, mixed=name == "out")


# ------------------------------------------------------------------------------------ issue 13.14
def test_fp16_inputs_near_their_maximum_give_the_reference_gradients():
    """|q|, |k| in [3e4, 6e4] fp16: logits ~1e10, one key per row. Was inf/NaN in Triton (issue 13.14)."""
    gen = torch.Generator().manual_seed(16)
    N = 32

    def big(*shape):
        return (torch.randn(*shape, generator=gen).sign() * (3e4 + 3e4 * torch.rand(*shape, generator=gen))).half()

    q, k = big(1, N, 1, D), big(1, N, 1, D)
    v, g = torch.randn(1, N, 1, D, generator=gen).half(), torch.randn(1, N, 1, D, generator=gen).half()
    results = {}
    for backend in ("reference", "triton"):
        leaves = _leaves(q, k, v)
        o, _ = _chunk(*leaves, backend, chunk_size=N)
        results[backend] = torch.autograd.grad((o.float() * g.float().to(DEVICE)).sum(), leaves)
    got, want = results["triton"], results["reference"]
    for name, grad in zip(["dq", "dk", "dv"], got):
        assert torch.isfinite(grad).all(), f"{name}: not finite"
    assert_close(got[2], want[2], tolerance(torch.float16), "dv")
    # dS = P (dP - delta) is 0 for one-hot rows; delta = rowsum(O dO) is summed in another order than
    # dP = dO V^T, so dS is ~2^-24 |dP| instead and dq = dS K scale is that times |K| scale.
    dp_scale = g.float().abs().max() * v.float().abs().max() * D
    for name, grad, ref_grad, other in (("dq", got[0], want[0], k), ("dk", got[1], want[1], q)):
        allowed = 1e-6 * dp_scale * other.float().abs().max() * D**-0.5
        assert (grad.float() - ref_grad.float()).abs().max().cpu() <= allowed, name


# The backward recomputes P = exp2(s * scale * log2(e) - lse * log2(e)) from the fp32 natural-log
# LSE of the forward, as FlashAttention-2 does: the exponent is off by up to about two fp32 ulps of
# the largest base-2 logit L, so each P has a relative error up to EPS_P(L) = 2 * 2^-23 * ln(2) * L.
def eps_p(base2_logit: float) -> float:
    return 2 * 2**-23 * math.log(2) * base2_logit


def backward_bounds(q, k, v, g, scale):
    """Elementwise bounds on |dq|, |dk|, |dv| - reference (float64 ``[N, D]`` inputs of one head).

    ``dV = P^T dO`` inherits the error of P; ``dS = P (dP - delta)`` has it times ``|dP - delta|`` plus
    the fp32 rounding of the D-term dot ``dP = dO V^T`` and of ``delta = rowsum(O dO)``; ``dQ = dS K
    scale``, ``dK = dS^T Q scale``. 2^-20 of each gradient's largest value covers the rest of fp32.
    """
    s = q @ k.T * scale
    p = torch.softmax(s, -1)
    dp = g @ v.T
    delta = (p * dp).sum(-1, keepdim=True)
    err_p = eps_p(s.abs().max().item() * math.log2(math.e)) * p
    dot = 2 * q.shape[-1] * 2**-24 * (g.abs() @ v.abs().T + (p * (g.abs() @ v.abs().T)).sum(-1, keepdim=True))
    err_ds = err_p * (dp - delta).abs() + p * dot
    grads = (p * (dp - delta) @ k * scale, (p * (dp - delta)).T @ q * scale, p.T @ g)
    bounds = (err_ds @ k.abs() * scale, err_ds.T @ q.abs() * scale, err_p.T @ g.abs())
    return [b + 2**-20 * grad.abs().max() for b, grad in zip(bounds, grads)]


@pytest.mark.parametrize("max_logit", [50.0, 3.5e3])
def test_backward_error_at_huge_logits_is_within_the_documented_bound(max_logit):
    """dq, dk, dv against float64 on the same fp32 inputs, elementwise within :func:`backward_bounds`."""
    gen = torch.Generator().manual_seed(17)
    N = 32
    q, k, v, g = (torch.randn(N, D, generator=gen, dtype=torch.float64) for _ in range(4))
    radius = math.sqrt(max_logit * math.sqrt(D))  # |q.k| / sqrt(D) <= max_logit
    q, k = (t / t.norm(dim=-1, keepdim=True) * radius for t in (q, k))
    q, k, v, g = (t.float().double() for t in (q, k, v, g))  # the fp32 inputs, exactly
    leaves64 = _leaves(*(t[None, :, None] for t in (q, k, v)))
    o64, _ = _chunk(*leaves64, "reference", chunk_size=N)
    want = torch.autograd.grad((o64 * g[None, :, None].to(DEVICE)).sum(), leaves64)
    leaves = _leaves(*(t[None, :, None].float() for t in (q, k, v)))
    o, _ = _chunk(*leaves, "triton", chunk_size=N)
    got = torch.autograd.grad((o * g[None, :, None].float().to(DEVICE)).sum(), leaves)
    for name, a, b, bound in zip(["dq", "dk", "dv"], got, want, backward_bounds(q, k, v, g, D**-0.5)):
        err = (a.double().cpu() - b.cpu())[0, :, 0]
        assert torch.isfinite(err).all(), name
        worst = (err.abs() / bound).max().item()
        assert worst <= 1, f"{name}: error {worst:.2f} x the bound"
