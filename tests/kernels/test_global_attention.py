"""global_attention's fast backends (the VIN read: Triton, sdpa) against the reference in float64.

The shared tests take the backend as a fixture. On a machine without CUDA the Triton kernels run in
the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest.py), so shapes stay tiny; on a GPU
the same tests run natively and add bf16. sdpa runs everywhere (bf16 included) with any head dim.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import vin_kernels
import vin_kernels.reference as ref
import vin_kernels.triton.attention_core as core
import vin_kernels.triton.global_attention as kernels
from vin_kernels.testing import assert_close, tolerance

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 tl.dot is wrong in the Triton 3.9 interpreter: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BF16_IN_TRITON = torch.cuda.is_available()
TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if BF16_IN_TRITON else [])  # Triton-only tests
f64 = torch.float64


@pytest.fixture(scope="module", params=["triton", "sdpa"])
def backend(request):
    return request.param


def skip_unchecked(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not BF16_IN_TRITON:
        pytest.skip("bf16 Triton is checked on a GPU only (tl.dot on bf16 is wrong in the interpreter)")


def tol(dtype):
    return tolerance(dtype, tf32=torch.backends.cuda.matmul.allow_tf32)


def rand(*shape, dtype=torch.float32, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=DEVICE).requires_grad_(requires_grad)


def inputs(B, G, F, T, H, D, dtype, requires_grad=True):
    return (
        rand(B, G, H, D, dtype=dtype, requires_grad=requires_grad),
        rand(B, F * T, H, D, dtype=dtype, requires_grad=requires_grad),
        rand(B, F * T, H, D, dtype=dtype, requires_grad=requires_grad),
    )


def upcast(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


def run(gq, k, v, T, stride, offset, backend="triton", **kw):
    return vin_kernels.global_attention(
        gq, k, v, tokens_per_frame=T, keyframe_stride=stride, keyframe_offset=offset, return_lse=True,
        backend=backend, **kw,
    )


def reference(gq, k, v, T, stride, offset, **kw):
    return ref.global_attention(
        gq, k, v, tokens_per_frame=T, keyframe_stride=stride, keyframe_offset=offset, return_lse=True, **kw
    )


def grads(o, lse, g_o, g_lse, leaves):
    """Gradients of ``<o, g_o> + <lse, g_lse>`` (random upstream gradients for both outputs)."""
    loss = (o * g_o.to(o.dtype)).sum() + (lse * g_lse.to(lse.dtype)).sum()
    return torch.autograd.grad(loss, leaves, retain_graph=True)


def check_against_reference(gq, k, v, T, stride, offset, dtype, leaves=None, build=None, backend="triton", **kw):
    """Forward, lse and every gradient of ``backend``'s op against the reference on float64 copies.

    ``leaves`` are the tensors to differentiate (default gq, k, v); ``build`` maps the float64 copies of
    ``leaves`` to the float64 ``(gq, k, v)`` (default: identity), for views of packed tensors.
    """
    leaves = leaves if leaves is not None else (gq, k, v)
    o, lse = run(gq, k, v, T, stride, offset, backend=backend, **kw)
    ref_leaves = upcast(*leaves)
    gq64, k64, v64 = build(*ref_leaves) if build else ref_leaves
    o_ref, lse_ref = reference(gq64, k64, v64, T, stride, offset, **kw)
    B, G, H, D = gq.shape
    assert o.shape == (B, G, H, D) and o.dtype == dtype and o.device == gq.device
    assert lse.shape == (B, H, G) and lse.dtype == torch.float32
    assert_close(o, o_ref, tol(dtype), "o")
    assert_close(lse, lse_ref, tol(torch.float32), "lse")
    g_o = torch.randn(o.shape, device=DEVICE).to(dtype).double()  # representable in the op's dtype
    g_lse = torch.randn(lse.shape, dtype=f64, device=DEVICE)
    got = grads(o, lse, g_o, g_lse, leaves)
    expected = grads(o_ref, lse_ref, g_o, g_lse, ref_leaves)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == leaves[i].dtype
        assert_close(a, e, tol(dtype), f"grad[{i}]")
    return got


# ------------------------------------------------------------------------------------ shapes and layouts
CASES = [
    # B, G, F, T, H, D, stride, offset
    pytest.param(2, 20, 14, 5, 2, 32, 5, 0, id="paper-stride-5"),
    pytest.param(1, 7, 6, 4, 2, 32, 1, 0, id="stride-1-every-frame"),
    pytest.param(2, 5, 9, 3, 1, 32, 20, 0, id="stride-past-end-single-keyframe"),
    pytest.param(1, 4, 9, 3, 2, 32, 50, 7, id="single-keyframe-at-offset"),
    pytest.param(1, 17, 11, 3, 2, 32, 3, 2, id="offset-G-17"),
    pytest.param(2, 1, 8, 5, 2, 32, 2, 1, id="G-1"),
    pytest.param(1, 16, 13, 1, 1, 32, 4, 3, id="T-1-G-16"),
    pytest.param(1, 5, 6, 3, 2, 72, 2, 1, id="D-72"),
    pytest.param(1, 3, 4, 5, 1, 96, 1, 0, id="D-96"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, G, F, T, H, D, stride, offset", CASES)
def test_forward_lse_and_gradients_match_reference(backend, B, G, F, T, H, D, stride, offset, dtype):
    skip_unchecked(backend, dtype)
    gq, k, v = inputs(B, G, F, T, H, D, dtype)
    check_against_reference(gq, k, v, T, stride, offset, dtype, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_scale(backend, dtype):
    skip_unchecked(backend, dtype)
    gq, k, v = inputs(1, 6, 7, 3, 2, 32, dtype)
    check_against_reference(gq, k, v, 3, 2, 1, dtype, backend=backend, softmax_scale=0.37)


@pytest.mark.parametrize("D", [8, 12, 16, 20, 48])
def test_sdpa_any_head_dim(D):
    gq, k, v = inputs(2, 5, 7, 3, 2, D, torch.float32)
    check_against_reference(gq, k, v, 3, 2, 1, torch.float32, backend="sdpa")


def test_head_dims_64_80_128():
    for D in (64, 80, 128):
        gq, k, v = inputs(1, 3, 4, 2, 1, D, torch.float32)
        check_against_reference(gq, k, v, 2, 2, 0, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_of_o_alone(backend, dtype):
    """Only o is used (no lse gradient); ``o.sum()`` hands the backward a stride-0 expanded gradient."""
    skip_unchecked(backend, dtype)
    gq, k, v = inputs(2, 5, 6, 3, 2, 32, dtype)
    o = vin_kernels.global_attention(gq, k, v, tokens_per_frame=3, keyframe_stride=2, backend=backend)
    got = torch.autograd.grad(o.sum(), (gq, k, v))
    leaves = upcast(gq, k, v)
    o_ref = ref.global_attention(*leaves, tokens_per_frame=3, keyframe_stride=2)
    expected = torch.autograd.grad(o_ref.sum(), leaves)
    assert_close(o, o_ref, tol(dtype), "o")
    for name, a, e in zip(["dgq", "dk", "dv"], got, expected):
        assert_close(a, e, tol(dtype), name)


@pytest.mark.parametrize("stride, offset", [(3, 0), (4, 2), (1, 0)])
def test_rows_outside_keyframes_get_exactly_zero_gradient(backend, stride, offset):
    B, G, F, T, H, D = 2, 5, 10, 3, 2, 32
    gq, k, v = inputs(B, G, F, T, H, D, torch.float32)
    _, dk, dv = check_against_reference(gq, k, v, T, stride, offset, torch.float32, backend=backend)
    keyframe = torch.zeros(F * T, dtype=torch.bool, device=DEVICE)
    keyframe[ref.keyframe_token_index(F * T, T, stride, offset, DEVICE)] = True
    for name, d in (("dk", dk), ("dv", dv)):
        assert torch.all(d[:, ~keyframe] == 0), f"{name} has nonzero rows outside the keyframes"
        assert torch.all(d[:, keyframe].abs().amax(dim=-1) > 0), f"{name} has an all-zero keyframe row"


def test_single_key_fp32_gradients_are_at_rounding_level():
    """One key token: the exact softmax part of dS = P*(dP - delta) is 0, so dgq/dk are only the
    small dlse part. delta = rowsum(dO*O) (torch, outside the kernel) and dP = dO.V (tl.dot) round
    differently and do not cancel, so the relative error can exceed 1e-5 (known limitation, as in
    FlashAttention's backward); the absolute error stays at fp32 rounding of dO.V: checked here."""
    B, G, F, T, H, D, stride = 2, 3, 4, 1, 2, 32, 5
    gq, k, v = inputs(B, G, F, T, H, D, torch.float32)
    o, lse = run(gq, k, v, T, stride, 0)
    leaves = upcast(gq, k, v)
    o_ref, lse_ref = reference(*leaves, T, stride, 0)
    g_o = torch.randn(o.shape, dtype=f64, device=DEVICE)
    g_lse = 0.01 * torch.randn(lse.shape, dtype=f64, device=DEVICE)
    got = grads(o, lse, g_o, g_lse, (gq, k, v))
    expected = grads(o_ref, lse_ref, g_o, g_lse, leaves)
    assert_close(got[2], expected[2], tol(torch.float32), "dv")
    # |error of dS| <= c * eps32 * |dO| |V| per row; times |K| (dgq) or |Q| (dk) and the softmax scale.
    row = lambda t: t.detach().double().norm(dim=-1).max().item()  # noqa: E731
    ds_bound = 64 * 2.0**-24 * row(g_o) * row(v) * D**-0.5
    for name, a, e, other in (("dgq", got[0], expected[0], k), ("dk", got[1], expected[1], gq)):
        err = (a.double() - e).abs().max().item()
        assert err <= ds_bound * row(other), f"{name}: max abs error {err:.3e} > bound {ds_bound * row(other):.3e}"


# ------------------------------------------------------------------------------------ key splits
SPLIT_SHAPE = dict(B=1, G=10, F=14, T=5, H=1, D=32)  # stride 1: 70 keys = 5 blocks of 16 in the interpreter


SPLIT_CASES = [
    # splits, stride, offset; 8 splits is more than the key blocks (5 or fewer), so some are empty
    pytest.param(1, 1, 0, id="S1"),
    pytest.param(3, 1, 0, id="S3"),
    pytest.param(8, 1, 0, id="S8-empty-splits"),
    pytest.param(3, 3, 1, id="S3-stride-3-offset-1"),
    pytest.param(8, 3, 1, id="S8-empty-splits-stride-3-offset-1"),
]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("splits, stride, offset", SPLIT_CASES)
def test_key_splits_forward_and_backward(splits, stride, offset, dtype):
    s = SPLIT_SHAPE
    T = s["T"]
    gq, k, v = inputs(s["B"], s["G"], s["F"], T, s["H"], s["D"], dtype, requires_grad=False)
    scale = s["D"] ** -0.5
    o, lse = kernels.forward(gq, k, v, T, stride, offset, scale, splits=splits)
    leaves = upcast(gq, k, v)
    o_ref, lse_ref = reference(*leaves, T, stride, offset)
    assert o.dtype == dtype and lse.dtype == torch.float32 and lse.shape == lse_ref.shape
    assert_close(o, o_ref, tol(dtype), "o")
    assert_close(lse, lse_ref, tol(torch.float32), "lse")

    do = torch.randn_like(o)
    dlse = torch.randn_like(lse)
    got = kernels.backward(do, dlse, gq, k, v, o, lse, T, stride, offset, scale, splits=splits)
    expected = grads(o_ref, lse_ref, do.double(), dlse.double(), leaves)
    for name, a, e in zip(["dgq", "dk", "dv"], got, expected):
        assert a.dtype == dtype and a.shape == e.shape
        assert_close(a, e, tol(dtype), name)

    got_no_lse = kernels.backward(do, None, gq, k, v, o, lse, T, stride, offset, scale, splits=splits)
    expected_no_lse = torch.autograd.grad((o_ref * do.double()).sum(), leaves)
    for name, a, e in zip(["dgq", "dk", "dv"], got_no_lse, expected_no_lse):
        assert_close(a, e, tol(dtype), name + " (dlse=None)")


def test_split_results_agree_across_split_counts():
    s = SPLIT_SHAPE
    gq, k, v = inputs(s["B"], s["G"], s["F"], s["T"], s["H"], s["D"], torch.float32, requires_grad=False)
    scale = s["D"] ** -0.5
    o1, lse1 = kernels.forward(gq, k, v, s["T"], 1, 0, scale, splits=1)
    for splits in (2, 3, 5, 8):
        o, lse = kernels.forward(gq, k, v, s["T"], 1, 0, scale, splits=splits)
        torch.testing.assert_close(o, o1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, lse1, rtol=1e-5, atol=1e-6)


def test_public_call_with_many_keys_uses_splits():
    """More keys than one 128-key block with few programs: the launcher picks S > 1 on its own."""
    B, G, F, T, H, D = 1, 4, 27, 5, 1, 32
    gq, k, v = inputs(B, G, F, T, H, D, torch.float32)
    assert kernels._splits(gq, F * T) > 1
    check_against_reference(gq, k, v, T, 1, 0, torch.float32)


# ------------------------------------------------------------------------------------ memory layouts
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_packed_kv_and_batch_expanded_gq(backend, dtype):
    """k, v as slices of a packed ``[B, N, 2, H, D]`` tensor; gq broadcast over the batch (stride 0)."""
    B, G, F, T, H, D = 2, 6, 8, 3, 2, 32
    kv = rand(B, F * T, 2, H, D, dtype=dtype, requires_grad=True)
    gq_one = rand(1, G, H, D, dtype=dtype, requires_grad=True)

    def build(gq_one, kv):
        return gq_one.expand(B, G, H, D), kv[:, :, 0], kv[:, :, 1]

    gq, k, v = build(gq_one, kv)
    skip_unchecked(backend, dtype)
    assert gq.stride(0) == 0 and not k.is_contiguous() and not v.is_contiguous()
    check_against_reference(gq, k, v, T, 3, 1, dtype, leaves=(gq_one, kv), build=build, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_heads_first_transposed_inputs(backend, dtype):
    """Inputs stored ``[B, H, N, D]`` and transposed to ``[B, N, H, D]`` views."""
    B, G, F, T, H, D = 2, 5, 6, 4, 2, 32
    gq_t = rand(B, H, G, D, dtype=dtype, requires_grad=True)
    k_t = rand(B, H, F * T, D, dtype=dtype, requires_grad=True)
    v_t = rand(B, H, F * T, D, dtype=dtype, requires_grad=True)

    def build(gq_t, k_t, v_t):
        return gq_t.transpose(1, 2), k_t.transpose(1, 2), v_t.transpose(1, 2)

    gq, k, v = build(gq_t, k_t, v_t)
    skip_unchecked(backend, dtype)
    assert not gq.is_contiguous() and not k.is_contiguous()
    check_against_reference(gq, k, v, T, 2, 1, dtype, leaves=(gq_t, k_t, v_t), build=build, backend=backend)


# ------------------------------------------------------------------------------------ poisoned outputs
def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
def test_poisoned_outputs_are_fully_written_public_call(monkeypatch, dtype):
    monkeypatch.setattr(core, "new_output", poisoned)
    gq, k, v = inputs(2, 19, 7, 3, 2, 32, dtype)
    dgq, dk, dv = check_against_reference(gq, k, v, 3, 2, 1, dtype)
    for name, t in (("dgq", dgq), ("dk", dk), ("dv", dv)):
        assert not t.isnan().any(), name


@pytest.mark.parametrize("splits, D", [(1, 72), (3, 32), (8, 72)])
def test_poisoned_outputs_are_fully_written_with_splits(monkeypatch, splits, D):
    """The per-split fp32 partials (forward o/lse, backward dq) are poisoned too; empty splits included."""
    monkeypatch.setattr(core, "new_output", poisoned)
    B, G, F, T, H = 1, 17, 8, 5, 2
    gq, k, v = inputs(B, G, F, T, H, D, torch.float32, requires_grad=False)
    scale = D**-0.5
    o, lse = kernels.forward(gq, k, v, T, 1, 0, scale, splits=splits)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    leaves = upcast(gq, k, v)
    o_ref, lse_ref = reference(*leaves, T, 1, 0)
    assert_close(o, o_ref, tol(torch.float32), "o")
    assert_close(lse, lse_ref, tol(torch.float32), "lse")
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    got = kernels.backward(do, dlse, gq, k, v, o, lse, T, 1, 0, scale, splits=splits)
    expected = grads(o_ref, lse_ref, do.double(), dlse.double(), leaves)
    for name, a, e in zip(["dgq", "dk", "dv"], got, expected):
        assert torch.isfinite(a).all(), name
        assert_close(a, e, tol(torch.float32), name)


def test_every_keyframe_row_of_dk_dv_is_written(monkeypatch):
    """dk/dv start from zeros (rows outside the keyframes stay zero); the kernel must write every keyframe
    row: pre-fill those rows with NaN through the buffer allocation and check none survives."""
    B, G, F, T, H, D, stride, offset = 2, 6, 11, 3, 2, 32, 3, 1
    gq, k, v = inputs(B, G, F, T, H, D, torch.float32, requires_grad=False)
    index = ref.keyframe_token_index(F * T, T, stride, offset, DEVICE)
    zeros_like = torch.zeros_like

    def poisoned_zeros_like(t, *args, **kwargs):
        out = zeros_like(t, *args, **kwargs)
        if out.shape == k.shape:
            out[:, index] = float("nan")
        return out

    scale = D**-0.5
    o, lse = kernels.forward(gq, k, v, T, stride, offset, scale)
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    monkeypatch.setattr(kernels.torch, "zeros_like", poisoned_zeros_like)
    try:
        _, dk, dv = kernels.backward(do, dlse, gq, k, v, o, lse, T, stride, offset, scale)
    finally:
        monkeypatch.undo()
    leaves = upcast(gq, k, v)
    expected = grads(*reference(*leaves, T, stride, offset), do.double(), dlse.double(), leaves)
    assert_close(dk, expected[1], tol(torch.float32), "dk")
    assert_close(dv, expected[2], tol(torch.float32), "dv")


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_two_runs_are_bitwise_equal(backend, dtype):
    skip_unchecked(backend, dtype)
    gq, k, v = inputs(2, 18, 9, 5, 1, 32, dtype)
    g_o = torch.randn(2, 18, 1, 32, dtype=dtype, device=DEVICE)
    g_lse = torch.randn(2, 1, 18, device=DEVICE)
    results = []
    for _ in range(2):
        o, lse = run(gq, k, v, 5, 1, 0, backend=backend)
        results.append((o, lse, *grads(o, lse, g_o, g_lse, (gq, k, v))))
    for name, a, b in zip(["o", "lse", "dgq", "dk", "dv"], *results):
        assert torch.equal(a, b), f"{name} differs between two identical runs"


# ------------------------------------------------------------------------------------ property test
@settings(max_examples=100)
@given(
    B=st.integers(1, 2),
    G=st.integers(1, 20),
    F=st.integers(1, 10),
    T=st.integers(1, 4),
    H=st.integers(1, 2),
    stride=st.integers(1, 16),
    offset_frac=st.floats(0.0, 1.0, exclude_max=True),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(backend, B, G, F, T, H, stride, offset_frac, seed):
    offset = min(F - 1, math.floor(offset_frac * F))
    # A single key token only meets an absolute bound (test_single_key_fp32_gradients_are_at_rounding_level).
    assume(len(range(offset, F, stride)) * T > 1)
    torch.manual_seed(seed)
    gq, k, v = inputs(B, G, F, T, H, 32, torch.float32)
    check_against_reference(gq, k, v, T, stride, offset, torch.float32, backend=backend)
