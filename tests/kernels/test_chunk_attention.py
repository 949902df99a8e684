"""chunk_attention's fast backends (Triton, sdpa) against the reference: forward, LSE and every gradient,
odd sizes, stop-gradient, poisoning.

The shared tests take the backend as a fixture. Triton runs on a GPU, or on the CPU in the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), bf16 only on a GPU (tl.dot on bf16 is wrong
in the Triton 3.9 interpreter); sdpa runs everywhere, bf16 included, and takes any head dim.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vin_kernels as vk
import vin_kernels.triton.attention_core as core
from vin_kernels import reference as ref
from vin_kernels.testing import assert_close, tolerance
from vin_kernels.triton import chunk_attention as kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOW_PRECISION = {
    "triton": [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else []),
    "sdpa": [torch.float16, torch.bfloat16],
}
NAMES = ["dq", "dk", "dv", "dglobal_k", "dglobal_v"]


@pytest.fixture(scope="module", params=["triton", "sdpa"])
def backend(request):
    return request.param


def make_inputs(B, N, H, D, Bg, G, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype).requires_grad_()

    q, k, v = rand(B, N, H, D), rand(B, N, H, D), rand(B, N, H, D)
    gk = gv = None
    if Bg:
        gk, gv = rand(Bg, G, H, D), rand(Bg, G, H, D)
    return q, k, v, gk, gv


def run(inputs, backend, grads_out, **kwargs):
    """Output, lse and the gradients of every given input for upstream grads ``grads_out``.

    ``backend="reference"`` calls the reference directly (it also takes float64).
    """
    q, k, v, gk, gv = inputs
    op = ref.chunk_attention if backend == "reference" else vk.chunk_attention
    extra = {} if backend == "reference" else {"backend": backend}
    o, lse = op(q, k, v, global_k=gk, global_v=gv, return_lse=True, **extra, **kwargs)
    leaves = [t for t in inputs if t is not None]
    g_o, g_lse = grads_out
    grads = torch.autograd.grad((o * g_o.to(o.dtype)).sum() + (lse * g_lse).sum(), leaves)
    return o, lse, grads


def check_against_reference(inputs, dtype, backend, **kwargs):
    B, N, H, _ = inputs[0].shape
    grads_out = (torch.randn(B, N, H, inputs[0].shape[-1], device=DEVICE), torch.randn(B, H, N, device=DEVICE))
    o, lse, grads = run(inputs, backend, grads_out, **kwargs)
    up = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    o_r, lse_r, grads_r = run(up, "reference", (grads_out[0].double(), grads_out[1].double()), **kwargs)
    tol = tolerance(dtype)
    assert o.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (B, H, N)
    assert_close(o, o_r, tol, "o")
    assert_close(lse, lse_r, tol, "lse")
    for name, g, g_r in zip(NAMES, grads, grads_r):
        assert g.dtype == dtype
        assert_close(g, g_r, tol, name)


CASES = [
    # B, N, H, D, chunk, context, Bg, G
    pytest.param(2, 37, 2, 32, 12, 5, 1, 3, id="short-last-chunk"),
    pytest.param(1, 20, 1, 32, 64, 0, 0, 0, id="one-chunk-no-globals"),
    pytest.param(1, 24, 1, 32, 4, 6, 1, 2, id="many-chunks-context-past-a-chunk"),
    pytest.param(2, 19, 1, 32, 7, 3, 1, 0, id="G-zero"),
    pytest.param(1, 21, 1, 72, 8, 3, 1, 5, id="D72"),
    pytest.param(1, 18, 1, 96, 8, 8, 1, 17, id="D96-G17"),
    pytest.param(4, 12, 1, 32, 5, 2, 2, 3, id="global-batch-2-of-4"),
]


@pytest.mark.parametrize("context_grad", [True, False], ids=["ctx-grad", "stop-grad"])
@pytest.mark.parametrize("B, N, H, D, chunk, context, Bg, G", CASES)
def test_matches_reference_fp32(backend, B, N, H, D, chunk, context, Bg, G, context_grad):
    inputs = make_inputs(B, N, H, D, Bg, G, torch.float32)
    check_against_reference(inputs, torch.float32, backend, chunk_size=chunk, context_size=context, context_grad=context_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B, N, H, D, chunk, context, Bg, G", CASES[:1] + CASES[4:5])
def test_matches_reference_low_precision(backend, B, N, H, D, chunk, context, Bg, G, dtype):
    if dtype not in LOW_PRECISION[backend]:
        pytest.skip(f"{dtype} on the {backend} backend is checked on a GPU only (tl.dot on bf16 is wrong in the interpreter)")
    inputs = make_inputs(B, N, H, D, Bg, G, dtype)
    check_against_reference(inputs, dtype, backend, chunk_size=chunk, context_size=context, context_grad=False)


@pytest.mark.parametrize("D", [8, 12, 16, 20, 48, 256])
def test_sdpa_any_head_dim(D):
    """sdpa takes the head dims of small models (diffusers' test configs use 8 to 16) and any other."""
    inputs = make_inputs(2, 23, 2, D, 1, 3, torch.float32)
    check_against_reference(inputs, torch.float32, "sdpa", chunk_size=6, context_size=4, context_grad=False)


def test_triton_rejects_head_dims_it_lacks_and_auto_falls_back():
    q, k, v, _, _ = make_inputs(1, 10, 1, 12, 0, 0, torch.float32)
    with pytest.raises(ValueError, match=r"backend='triton'.*head_dim 12 .* not supported by the triton backend"):
        vk.chunk_attention(q, k, v, chunk_size=4, backend="triton")
    if DEVICE == "cuda":  # auto prefers Triton on a GPU, and takes sdpa for a head dim Triton lacks
        assert vk.dispatch.select_backend("chunk_attention", "auto", q.device, head_dim=12) == "sdpa"


def test_heads_first_inputs_as_transposed_views(backend):
    """SDPA's [B, H, N, D] tensors go in as .transpose(1, 2) views (no copy) and give the same result."""
    B, H, N, D = 2, 3, 17, 32
    q, k, v = (torch.randn(B, H, N, D, device=DEVICE) for _ in range(3))
    o = vk.chunk_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), chunk_size=5, context_size=2, backend=backend)
    o_r = ref.chunk_attention(*(t.transpose(1, 2).double() for t in (q, k, v)), chunk_size=5, context_size=2)
    assert o.shape == (B, N, H, D)
    assert_close(o, o_r, tolerance(torch.float32), "o")
    sdpa_full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    o_full = vk.chunk_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), chunk_size=N, backend=backend)
    assert_close(o_full.transpose(1, 2), sdpa_full.double(), tolerance(torch.float32), "o (one chunk) vs SDPA")


def test_stop_gradient_blocks_context_keys(backend):
    """With context_grad=False, chunk 1's loss gives chunk 0's keys/values no gradient."""
    q, k, v, _, _ = make_inputs(1, 16, 1, 32, 0, 0, torch.float32)
    o = vk.chunk_attention(q, k, v, chunk_size=8, context_size=8, context_grad=False, backend=backend)
    dk, dv = torch.autograd.grad(o[:, 8:].sum(), (k, v))
    assert dk[:, :8].abs().max() == 0 and dv[:, :8].abs().max() == 0
    assert dk[:, 8:].abs().max() > 0


def test_softmax_scale_and_strided_inputs(backend):
    """q, k, v as slices of a packed qkv tensor; globals expanded along the batch (stride 0)."""
    B, N, H, D = 2, 19, 2, 32
    qkv = torch.randn(B, N, 3, H, D, device=DEVICE).requires_grad_()
    g = torch.randn(1, 4, 2, H, D, device=DEVICE).requires_grad_()
    q, k, v = qkv.unbind(2)
    gk, gv = (t.expand(B, -1, -1, -1) for t in g.unbind(2))
    kw = dict(chunk_size=6, context_size=4, softmax_scale=0.3, global_k=gk, global_v=gv)
    o = vk.chunk_attention(q, k, v, backend=backend, **kw)
    (d_qkv, d_g) = torch.autograd.grad(o.square().sum(), (qkv, g))
    qkv64, g64 = qkv.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    q64, k64, v64 = qkv64.unbind(2)
    gk64, gv64 = (t.expand(B, -1, -1, -1) for t in g64.unbind(2))
    kw64 = dict(kw, global_k=gk64, global_v=gv64)
    o_r = ref.chunk_attention(q64, k64, v64, **kw64)
    d_qkv_r, d_g_r = torch.autograd.grad(o_r.square().sum(), (qkv64, g64))
    assert_close(o, o_r, tolerance(torch.float32), "o")
    assert_close(d_qkv, d_qkv_r, tolerance(torch.float32), "dqkv")
    assert_close(d_g, d_g_r, tolerance(torch.float32), "dglobals")


def test_upstream_gradient_with_zero_strides(backend):
    """o.sum() hands the backward an expanded gradient (all strides 0)."""
    q, k, v, gk, gv = make_inputs(1, 13, 1, 32, 1, 2, torch.float32)
    o = vk.chunk_attention(q, k, v, chunk_size=5, context_size=2, global_k=gk, global_v=gv, backend=backend)
    grads = torch.autograd.grad(o.sum(), (q, k, v, gk, gv))
    up = [t.detach().double().requires_grad_() for t in (q, k, v, gk, gv)]
    o_r = ref.chunk_attention(*up[:3], chunk_size=5, context_size=2, global_k=up[3], global_v=up[4])
    grads_r = torch.autograd.grad(o_r.sum(), up)
    for name, g, g_r in zip(NAMES, grads, grads_r):
        assert_close(g, g_r, tolerance(torch.float32), name)


def test_outputs_poisoned_with_nan_are_fully_written(monkeypatch):
    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(core, "new_output", poisoned)
    inputs = make_inputs(2, 23, 1, 72, 1, 5, torch.float32)
    check_against_reference(inputs, torch.float32, "triton", chunk_size=7, context_size=4, context_grad=False)


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_global_gradient_splits_sum_to_the_same(splits):
    """The dglobal reduction cut into S pieces (fp32 partials, fixed-order sum) gives the reference."""
    q, k, v, gk, gv = (t.detach() for t in make_inputs(2, 30, 1, 32, 1, 3, torch.float32))
    o, lse = kernels.forward(q, k, v, gk, gv, 8, 3, 32**-0.5)
    do = torch.randn_like(o)
    _, _, _, dgk, dgv = kernels.backward(do, None, q, k, v, gk, gv, o, lse, 8, 3, True, 32**-0.5, splits=splits)
    up = [t.double().requires_grad_() for t in (q, k, v, gk, gv)]
    o_r = ref.chunk_attention(*up[:3], chunk_size=8, context_size=3, global_k=up[3], global_v=up[4])
    dgk_r, dgv_r = torch.autograd.grad(o_r, up[3:], do.double())
    assert_close(dgk, dgk_r, tolerance(torch.float32), "dglobal_k")
    assert_close(dgv, dgv_r, tolerance(torch.float32), "dglobal_v")


def test_deterministic(backend):
    inputs = make_inputs(2, 26, 1, 32, 1, 4, torch.float32)
    grads_out = (torch.randn(2, 26, 1, 32, device=DEVICE), torch.randn(2, 1, 26, device=DEVICE))
    kw = dict(chunk_size=7, context_size=3)
    first = run(inputs, backend, grads_out, **kw)
    second = run(inputs, backend, grads_out, **kw)
    for a, b in zip([first[0], first[1], *first[2]], [second[0], second[1], *second[2]]):
        assert torch.equal(a, b)


@settings(max_examples=100)
@given(
    batch=st.sampled_from([(1, 1), (2, 1), (2, 2)]),
    N=st.integers(1, 26),
    H=st.integers(1, 2),
    chunk=st.integers(1, 30),
    context=st.integers(0, 30),
    G=st.integers(0, 5),
    with_globals=st.booleans(),
    context_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(backend, batch, N, H, chunk, context, G, with_globals, context_grad, seed):
    B, Bg = batch
    inputs = make_inputs(B, N, H, 32, Bg if with_globals else 0, G, torch.float32, seed=seed)
    check_against_reference(inputs, torch.float32, backend, chunk_size=chunk, context_size=context, context_grad=context_grad)
