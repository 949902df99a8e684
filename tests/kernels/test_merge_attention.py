"""merge_attention's fast backends (the Triton kernel and the op's autograd; sdpa, the vectorized torch
formula) against the reference in float64.

Every test runs once per backend (the module-scoped ``backend`` fixture). On a machine without CUDA
the Triton kernel runs in the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest.py), so
shapes stay tiny; on a GPU the same tests run natively and add bf16.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vin_kernels
import vin_kernels.reference as ref
import vin_kernels.triton.attention_core as core
from vin_kernels.testing import assert_close, tolerance

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 tl.dot is wrong in the Triton 3.9 interpreter; the bf16 kernels are checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])
f64 = torch.float64
NEG_INF = float("-inf")

# Rows with no keys on either side take log(0) = -inf on purpose; the interpreter's numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")


def tol(dtype):
    return tolerance(dtype, tf32=torch.backends.cuda.matmul.allow_tf32)


def make(B, N, H, D, dtype, lse_scale=2.0, lse_shift=0.0, requires_grad=False):
    """``(o_a, lse_a, o_b, lse_b)``: outputs in ``dtype``, float32 LSEs."""
    o_a, o_b = (torch.randn(B, N, H, D, device=DEVICE).to(dtype) for _ in range(2))
    lse_a, lse_b = (lse_shift + lse_scale * torch.randn(B, H, N, device=DEVICE) for _ in range(2))
    return tuple(t.requires_grad_(requires_grad) for t in (o_a, lse_a, o_b, lse_b))


BACKEND = "triton"


@pytest.fixture(scope="module", params=["triton", "sdpa"], autouse=True)
def backend(request):
    """Runs every test of this module with each backend (``merge`` reads it)."""
    global BACKEND
    BACKEND = request.param
    yield request.param
    BACKEND = "triton"


def merge(o_a, lse_a, o_b, lse_b):
    return vin_kernels.merge_attention(o_a, lse_a, o_b, lse_b, backend=BACKEND)


def upcast(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


def check_lse(lse, expected, name="lse"):
    """Same -inf positions, no NaN, and the finite values within the fp32 tolerance."""
    assert lse.dtype == torch.float32
    assert not lse.isnan().any(), f"{name} has NaN"
    neg = torch.isneginf(expected)
    assert torch.equal(torch.isneginf(lse), neg), f"{name}: -inf at the wrong places"
    assert not torch.isposinf(lse).any(), f"{name} has +inf"
    assert_close(lse[~neg], expected[~neg], tol(torch.float32), name)


def check_forward(o_a, lse_a, o_b, lse_b):
    o, lse = merge(o_a, lse_a, o_b, lse_b)
    o_ref, lse_ref = ref.merge_attention(*upcast(o_a, lse_a, o_b, lse_b))
    assert o.shape == o_a.shape and o.dtype == o_a.dtype and o.device == o_a.device
    assert lse.shape == lse_a.shape and lse.dtype == torch.float32
    assert not o.isnan().any(), "o has NaN"
    assert_close(o, o_ref, tol(o_a.dtype), "o")
    check_lse(lse, lse_ref)
    return o, lse


def upstream(o, lse):
    """Random upstream gradients: g_o representable in o's dtype, g_lse in float32."""
    return torch.randn(o.shape, device=DEVICE).to(o.dtype), torch.randn(lse.shape, device=DEVICE)


def loss_grads(o, lse, g_o, g_lse, leaves):
    loss = (o * g_o.to(o.dtype)).sum() + (lse * g_lse.to(lse.dtype)).sum()
    return torch.autograd.grad(loss, leaves)


NAMES = ["do_a", "dlse_a", "do_b", "dlse_b"]


def check_gradients(leaves, build=None):
    """Gradients w.r.t. ``leaves`` through the Triton op against the reference's autograd in float64.

    ``build`` maps the leaves (or their float64 copies) to ``(o_a, lse_a, o_b, lse_b)`` (default: identity).
    """
    build = build or (lambda *t: t)
    o, lse = merge(*build(*leaves))
    ref_leaves = upcast(*leaves)
    o_ref, lse_ref = ref.merge_attention(*build(*ref_leaves))
    g_o, g_lse = upstream(o, lse)
    got = loss_grads(o, lse, g_o, g_lse, leaves)
    expected = loss_grads(o_ref, lse_ref, g_o.double(), g_lse.double(), ref_leaves)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == leaves[i].dtype and a.shape == leaves[i].shape
        assert_close(a, e, tol(leaves[0].dtype), f"grad[{i}]")
    return got


# ------------------------------------------------------------------------------------ forward
SHAPES = [
    # B, N, H, D
    pytest.param(2, 7, 3, 32, id="D32"),
    pytest.param(1, 19, 2, 40, id="D40-rows-past-a-block"),
    pytest.param(2, 5, 1, 72, id="D72"),
    pytest.param(1, 3, 2, 128, id="D128"),
    pytest.param(1, 1, 1, 96, id="one-row-D96"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, N, H, D", SHAPES)
def test_forward_matches_reference(B, N, H, D, dtype):
    check_forward(*make(B, N, H, D, dtype))


@pytest.mark.parametrize("lse_scale, lse_shift", [(30.0, 0.0), (200.0, 0.0), (1.0, 1e4), (3.0, -1e4)])
def test_forward_extreme_lse(lse_scale, lse_shift):
    """Weights far from 1 (one side underflows to 0) and LSEs far from 0 keep full accuracy."""
    check_forward(*make(2, 9, 2, 32, torch.float32, lse_scale=lse_scale, lse_shift=lse_shift))


def test_forward_is_symmetric_in_the_two_sides():
    o_a, lse_a, o_b, lse_b = make(1, 13, 2, 40, torch.float32)
    o_ab, lse_ab = merge(o_a, lse_a, o_b, lse_b)
    o_ba, lse_ba = merge(o_b, lse_b, o_a, lse_a)
    torch.testing.assert_close(o_ab, o_ba, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse_ab, lse_ba, rtol=1e-6, atol=1e-6)


def attention(q, k, v):
    """Plain float64 softmax attention: ``o [B, N, H, D]``, ``lse [B, H, N]``."""
    s = torch.einsum("bnhd,bkhd->bhnk", q, k) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(s, dim=-1)
    o = torch.einsum("bhnk,bkhd->bnhd", torch.softmax(s, dim=-1), v)
    return o, lse


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("split", ["interleaved", "one-key-vs-rest"])
def test_union_of_two_disjoint_key_sets(dtype, split):
    """Merging attentions over two disjoint key sets gives the attention over their union."""
    B, N, H, D, K = 2, 11, 2, 40, 23
    q, k, v = (torch.randn(B, n, H, D, dtype=f64, device=DEVICE) for n in (N, K, K))
    side_a = torch.zeros(K, dtype=torch.bool, device=DEVICE)
    if split == "interleaved":
        side_a[::2] = True
    else:
        side_a[5] = True
    o_a, lse_a = attention(q, k[:, side_a], v[:, side_a])
    o_b, lse_b = attention(q, k[:, ~side_a], v[:, ~side_a])
    o_full, lse_full = attention(q, k, v)
    o, lse = merge(o_a.to(dtype), lse_a.float(), o_b.to(dtype), lse_b.float())
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert_close(o, o_full, tol(dtype), "o")
    assert_close(lse, lse_full, tol(torch.float32), "lse")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_merge_of_two_keyframe_reads_is_the_read_of_their_union(dtype):
    """Triton global_attention over the even and the odd frames, merged = the read over every frame."""
    B, G, F, T, H, D = 1, 6, 6, 3, 2, 32
    gq = torch.randn(B, G, H, D, device=DEVICE).to(dtype)
    k, v = (torch.randn(B, F * T, H, D, device=DEVICE).to(dtype) for _ in range(2))
    kw = dict(tokens_per_frame=T, keyframe_stride=2, return_lse=True, backend="triton")
    o_even, lse_even = vin_kernels.global_attention(gq, k, v, keyframe_offset=0, **kw)
    o_odd, lse_odd = vin_kernels.global_attention(gq, k, v, keyframe_offset=1, **kw)
    o, lse = merge(o_even, lse_even, o_odd, lse_odd)
    o_full, lse_full = ref.global_attention(
        gq.double(), k.double(), v.double(), tokens_per_frame=T, keyframe_stride=1, return_lse=True
    )
    assert_close(o, o_full, tol(dtype), "o")
    assert_close(lse, lse_full, tol(torch.float32), "lse")


# ------------------------------------------------------------------------------------ empty sides
def empty_pattern(B, H, N):
    """Boolean ``[B, H, N]`` masks of rows where side a / side b had no key (some rows both, some none)."""
    idx = torch.arange(B * H * N, device=DEVICE).reshape(B, H, N)
    return idx % 4 == 1, (idx % 4 == 2) | (idx % 4 == 3), (idx % 4 == 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_sides(dtype):
    """lse = -inf marks a side without keys: it contributes nothing; both empty gives o = 0, lse = -inf."""
    B, N, H, D = 2, 9, 2, 40
    o_a, lse_a, o_b, lse_b = make(B, N, H, D, dtype)
    empty_a, empty_b, both = empty_pattern(B, H, N)
    empty_a = empty_a | both
    lse_a = lse_a.masked_fill(empty_a, NEG_INF)
    lse_b = lse_b.masked_fill(empty_b, NEG_INF)
    o, lse = check_forward(o_a, lse_a, o_b, lse_b)
    rows_a = (empty_a & ~empty_b).transpose(1, 2)  # [B, N, H]: only side b has keys
    rows_b = (empty_b & ~empty_a).transpose(1, 2)
    rows_both = both.transpose(1, 2)
    assert torch.equal(o[rows_a], o_b[rows_a]) and torch.equal(o[rows_b], o_a[rows_b])
    assert torch.all(o[rows_both] == 0)
    assert torch.equal(lse[empty_a & ~empty_b], lse_b[empty_a & ~empty_b])
    assert torch.equal(lse[empty_b & ~empty_a], lse_a[empty_b & ~empty_a])
    assert torch.isneginf(lse[both]).all()


def test_everything_empty():
    o_a, _, o_b, _ = make(1, 5, 2, 32, torch.float32)
    lse_empty = torch.full((1, 2, 5), NEG_INF, device=DEVICE)
    o, lse = merge(o_a, lse_empty, o_b, lse_empty.clone())
    assert torch.equal(o, torch.zeros_like(o)) and torch.isneginf(lse).all()


def test_gradients_with_empty_sides():
    """A side without keys gets zero gradient, the other side passes the upstream gradient through, rows
    empty on both sides give zero gradient everywhere; nothing is NaN. Other rows match the reference."""
    B, N, H, D = 1, 12, 2, 32
    o_a, lse_a, o_b, lse_b = make(B, N, H, D, torch.float32)
    empty_a, empty_b, both = empty_pattern(B, H, N)
    empty_a = empty_a | both
    lse_a = lse_a.masked_fill(empty_a, NEG_INF).requires_grad_()
    lse_b = lse_b.masked_fill(empty_b, NEG_INF).requires_grad_()
    leaves = (o_a.requires_grad_(), lse_a, o_b.requires_grad_(), lse_b)
    o, lse = merge(*leaves)
    g_o, g_lse = upstream(o, lse)
    do_a, dlse_a, do_b, dlse_b = loss_grads(o, lse, g_o, g_lse, leaves)
    for name, g in zip(NAMES, (do_a, dlse_a, do_b, dlse_b)):
        assert torch.isfinite(g).all(), f"{name} is not finite"
    only_b, only_a = empty_a & ~empty_b, empty_b & ~empty_a
    assert torch.all(do_a[only_b.transpose(1, 2)] == 0) and torch.all(dlse_a[only_b] == 0)
    torch.testing.assert_close(do_b[only_b.transpose(1, 2)], g_o[only_b.transpose(1, 2)])
    torch.testing.assert_close(dlse_b[only_b], g_lse[only_b])
    assert torch.all(do_b[only_a.transpose(1, 2)] == 0) and torch.all(dlse_b[only_a] == 0)
    torch.testing.assert_close(do_a[only_a.transpose(1, 2)], g_o[only_a.transpose(1, 2)])
    torch.testing.assert_close(dlse_a[only_a], g_lse[only_a])
    for g in (do_a, do_b):
        assert torch.all(g[both.transpose(1, 2)] == 0)
    for g in (dlse_a, dlse_b):
        assert torch.all(g[both] == 0)
    # Rows where both sides have keys: the reference in float64.
    full = ~(empty_a | empty_b)
    ref_leaves = upcast(*leaves)
    o_ref, lse_ref = ref.merge_attention(*ref_leaves)
    expected = loss_grads(o_ref, lse_ref, g_o.double(), g_lse.double(), ref_leaves)
    for name, a, e in zip(NAMES, (do_a, dlse_a, do_b, dlse_b), expected):
        mask = full.transpose(1, 2) if a.dim() == 4 else full
        assert_close(a[mask], e[mask], tol(torch.float32), name)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, N, H, D", [(2, 7, 2, 32), (1, 17, 1, 72)])
def test_gradients_match_reference(B, N, H, D, dtype):
    check_gradients(make(B, N, H, D, dtype, requires_grad=True))


def test_gradients_with_large_lse():
    check_gradients(make(2, 8, 2, 32, torch.float32, lse_shift=2000.0, requires_grad=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_of_o_alone(dtype):
    """Only o is used: ``o.sum()`` hands the backward a stride-0 expanded gradient and no lse gradient."""
    leaves = make(2, 6, 2, 40, dtype, requires_grad=True)
    o, _ = merge(*leaves)
    got = torch.autograd.grad(o.sum(), leaves)
    ref_leaves = upcast(*leaves)
    o_ref, _ = ref.merge_attention(*ref_leaves)
    expected = torch.autograd.grad(o_ref.sum(), ref_leaves)
    for name, a, e in zip(NAMES, got, expected):
        assert_close(a, e, tol(dtype), name)


# ------------------------------------------------------------------------------------ memory layouts
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(dtype):
    """o_a a slice of a wider tensor, o_b a transposed ``[B, H, N, D]``, lse_a a transposed ``[B, N, H]``,
    lse_b every other element of a longer row."""
    B, N, H, D = 2, 9, 2, 40
    o_a_wide = torch.randn(B, N, H, 2 * D, device=DEVICE).to(dtype).requires_grad_()
    o_b_hf = torch.randn(B, H, N, D, device=DEVICE).to(dtype).requires_grad_()
    lse_a_nh = (2 * torch.randn(B, N, H, device=DEVICE)).requires_grad_()
    lse_b_wide = (2 * torch.randn(B, H, 2 * N, device=DEVICE)).requires_grad_()

    def build(o_a_wide, lse_a_nh, o_b_hf, lse_b_wide):
        return o_a_wide[..., D:], lse_a_nh.transpose(1, 2), o_b_hf.transpose(1, 2), lse_b_wide[..., ::2]

    views = build(o_a_wide, lse_a_nh, o_b_hf, lse_b_wide)
    assert not any(t.is_contiguous() for t in views)
    check_forward(*(t.detach() for t in views))
    check_gradients((o_a_wide, lse_a_nh, o_b_hf, lse_b_wide), build=build)


# ------------------------------------------------------------------------------------ poisoned outputs
def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, N, H, D", [(2, 9, 3, 40), (1, 16, 1, 32), (1, 5, 2, 128)])
def test_poisoned_outputs_are_fully_written(monkeypatch, B, N, H, D, dtype):
    if BACKEND != "triton":
        pytest.skip("kernel output buffers: Triton only")
    monkeypatch.setattr(core, "new_output", poisoned)
    o_a, lse_a, o_b, lse_b = make(B, N, H, D, dtype)
    _, empty_b, both = empty_pattern(B, H, N)
    lse_a = lse_a.masked_fill(both, NEG_INF)
    lse_b = lse_b.masked_fill(empty_b, NEG_INF)
    o, lse = check_forward(o_a, lse_a, o_b, lse_b)  # checks: no NaN in o or lse
    assert torch.isfinite(o).all()


# ------------------------------------------------------------------------------------ property test
@settings(max_examples=100)
@given(
    B=st.integers(1, 2),
    N=st.integers(1, 20),
    H=st.integers(1, 3),
    D=st.sampled_from([3, 16, 32, 40, 64, 72, 96, 128]),
    dtype=st.sampled_from(DTYPES),
    lse_scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
    lse_shift=st.sampled_from([0.0, 30.0, -30.0, 2000.0]),
    empty_a=st.sampled_from([0.0, 0.3, 1.0]),
    empty_b=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, N, H, D, dtype, lse_scale, lse_shift, empty_a, empty_b, seed):
    torch.manual_seed(seed)
    o_a, lse_a, o_b, lse_b = make(B, N, H, D, dtype, lse_scale=lse_scale, lse_shift=lse_shift)
    lse_a = lse_a.masked_fill(torch.rand(B, H, N, device=DEVICE) < empty_a, NEG_INF)
    lse_b = lse_b.masked_fill(torch.rand(B, H, N, device=DEVICE) < empty_b, NEG_INF)
    check_forward(o_a, lse_a, o_b, lse_b)
    if empty_a == 0.0 and empty_b == 0.0:
        check_gradients(tuple(t.requires_grad_() for t in (o_a, lse_a, o_b, lse_b)))
