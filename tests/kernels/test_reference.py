"""The reference ops against independent dense float64 formulations with explicit boolean masks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import vin_kernels.reference as ref
from vin_kernels import ChunkLayout
from vin_kernels.testing import assert_close, tolerance

f64 = torch.float64


# ------------------------------------------------------------------------------------ dense formulations
def chunk_masks(N, chunk_size, context_size):
    """Boolean ``[N, N]`` masks: query i may see key j as its own chunk's key / as context."""
    own = torch.zeros(N, N, dtype=torch.bool)
    ctx = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        c0 = (i // chunk_size) * chunk_size
        for j in range(N):
            if c0 <= j < min(c0 + chunk_size, N):
                own[i, j] = True
            elif c0 - context_size <= j < c0:
                ctx[i, j] = True
    return own, ctx


def dense_attention(q, keys, values, masks, scale):
    """softmax over the masked union of several key sources; q ``[B, M, H, D]``, keys ``[B, K_s, H, D]``."""
    scores = [torch.einsum("bmhd,bkhd->bhmk", q, k) * scale for k in keys]
    scores = [s.masked_fill(~m, float("-inf")) for s, m in zip(scores, masks)]
    s = torch.cat(scores, dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)
    sizes = [k.shape[1] for k in keys]
    o = sum(torch.einsum("bhmk,bkhd->bmhd", pp, v) for pp, v in zip(p.split(sizes, dim=-1), values))
    return o, lse


def dense_chunk_attention(q, k, v, chunk_size, context_size, gk=None, gv=None, context_grad=True, scale=None):
    B, N, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    own, ctx = chunk_masks(N, chunk_size, context_size)
    k_ctx, v_ctx = (k, v) if context_grad else (k.detach(), v.detach())
    keys, values, masks = [k, k_ctx], [v, v_ctx], [own, ctx]
    if gk is not None:
        rep = B // gk.shape[0]
        keys.append(gk.repeat_interleave(rep, 0))
        values.append(gv.repeat_interleave(rep, 0))
        masks.append(torch.ones(N, gk.shape[1], dtype=torch.bool))
    return dense_attention(q, keys, values, masks, scale)


def dense_global_attention(gq, k, v, T, stride, offset, scale=None):
    N = k.shape[1]
    frame = torch.arange(N) // T
    allowed = (frame >= offset) & ((frame - offset) % stride == 0)
    mask = allowed[None, :].expand(gq.shape[1], N)
    scale = gq.shape[-1] ** -0.5 if scale is None else scale
    return dense_attention(gq, [k], [v], [mask], scale)


def dense_overlap_fuse(eps, layout, x=None, coeffs=None, out_windows=False):
    """Fused video as one matrix product with the coverage mask ``[F, n, L]`` built by explicit loops."""
    B, n, L = eps.shape[:3]
    F = layout.num_frames
    cover = torch.zeros(F, n, L, dtype=torch.bool)
    for i in range(n):
        for p in range(L):
            cover[layout.starts[i] + p, i, p] = True
    w = torch.tensor(layout.blend_weights, dtype=f64)[None].expand(F, n, L) * cover
    w = w / w.sum(dim=(1, 2), keepdim=True)
    fused = torch.einsum("fnl,bnlc->bfc", w, eps.reshape(B, n, L, -1).to(f64)).reshape(B, F, *eps.shape[3:])
    out = fused if x is None else coeffs[0] * x.to(f64) + coeffs[1] * fused
    if out_windows:
        out = torch.stack([out[:, s : s + L] for s in layout.starts], dim=1)
    return out


def rand(*shape, dtype=f64, requires_grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)


# ------------------------------------------------------------------------------------ chunk_attention
CHUNK_CASES = [
    # B, N, H, D, chunk, context, Bg, G
    pytest.param(2, 13, 2, 8, 4, 2, 1, 3, id="short-last-chunk"),
    pytest.param(1, 9, 1, 4, 9, 0, 0, 0, id="one-chunk-no-globals"),
    pytest.param(1, 9, 2, 4, 16, 3, 1, 2, id="chunk-larger-than-N"),
    pytest.param(1, 10, 1, 4, 1, 3, 1, 1, id="chunk-of-one"),
    pytest.param(4, 12, 2, 4, 5, 7, 2, 4, id="context-past-a-chunk-global-batch-2"),
    pytest.param(4, 8, 1, 4, 3, 0, 4, 1, id="per-row-globals"),
    pytest.param(2, 11, 3, 8, 4, 4, 1, 0, id="G-zero"),
]


def _chunk_inputs(B, N, H, D, Bg, G, dtype=f64, requires_grad=False):
    q, k, v = (rand(B, N, H, D, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    gk = gv = None
    if Bg:
        gk, gv = (rand(Bg, G, H, D, dtype=dtype, requires_grad=requires_grad) for _ in range(2))
    return q, k, v, gk, gv


@pytest.mark.parametrize("B, N, H, D, chunk, context, Bg, G", CHUNK_CASES)
def test_chunk_attention_matches_dense(B, N, H, D, chunk, context, Bg, G):
    q, k, v, gk, gv = _chunk_inputs(B, N, H, D, Bg, G)
    o, lse = ref.chunk_attention(
        q, k, v, chunk_size=chunk, context_size=context, global_k=gk, global_v=gv, return_lse=True
    )
    o_d, lse_d = dense_chunk_attention(q, k, v, chunk, context, gk, gv)
    assert_close(o, o_d, tolerance(f64), "o")
    assert_close(lse, lse_d, tolerance(f64), "lse")
    assert lse.shape == (B, H, N) and lse.dtype == f64


@pytest.mark.parametrize("context_grad", [True, False])
@pytest.mark.parametrize("B, N, H, D, chunk, context, Bg, G", CHUNK_CASES)
def test_chunk_attention_gradients_match_dense(B, N, H, D, chunk, context, Bg, G, context_grad):
    inputs = _chunk_inputs(B, N, H, D, Bg, G, requires_grad=True)
    q, k, v, gk, gv = inputs
    leaves = [t for t in inputs if t is not None]
    g_o = torch.randn(B, N, H, D, dtype=f64)
    g_lse = torch.randn(B, H, N, dtype=f64)
    kwargs = dict(chunk_size=chunk, context_size=context, global_k=gk, global_v=gv, context_grad=context_grad)
    o, lse = ref.chunk_attention(q, k, v, return_lse=True, **kwargs)
    grads = torch.autograd.grad((o * g_o).sum() + (lse * g_lse).sum(), leaves)
    o_d, lse_d = dense_chunk_attention(q, k, v, chunk, context, gk, gv, context_grad)
    grads_d = torch.autograd.grad((o_d * g_o).sum() + (lse_d * g_lse).sum(), leaves)
    for name, g, g_d in zip(["dq", "dk", "dv", "dglobal_k", "dglobal_v"], grads, grads_d):
        assert_close(g, g_d, 1e-10, name)


def test_context_grad_false_stops_gradient_into_previous_chunk():
    """The loss of chunk 1 alone must not reach the keys/values of chunk 0 through the context."""
    q, k, v = (rand(1, 8, 1, 4, requires_grad=True) for _ in range(3))
    o = ref.chunk_attention(q, k, v, chunk_size=4, context_size=4, context_grad=False)
    dk, dv = torch.autograd.grad(o[:, 4:].sum(), (k, v))
    assert dk[:, :4].abs().max() == 0 and dv[:, :4].abs().max() == 0
    assert dk[:, 4:].abs().max() > 0 and dv[:, 4:].abs().max() > 0
    o = ref.chunk_attention(q, k, v, chunk_size=4, context_size=4, context_grad=True)
    dk, dv = torch.autograd.grad(o[:, 4:].sum(), (k, v))
    assert dk[:, :4].abs().max() > 0 and dv[:, :4].abs().max() > 0


def test_chunk_attention_gradcheck():
    # context_grad=False is a deliberate non-gradient: it is checked against the dense form above.
    q, k, v, gk, gv = _chunk_inputs(2, 7, 1, 4, 1, 2, requires_grad=True)

    def f(q, k, v, gk, gv):
        return ref.chunk_attention(
            q, k, v, chunk_size=3, context_size=2, global_k=gk, global_v=gv, return_lse=True
        )

    assert torch.autograd.gradcheck(f, (q, k, v, gk, gv))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chunk_attention_low_precision_against_float64(dtype):
    q, k, v, gk, gv = _chunk_inputs(2, 37, 2, 32, 1, 5, dtype=dtype)
    o, lse = ref.chunk_attention(q, k, v, chunk_size=10, context_size=4, global_k=gk, global_v=gv, return_lse=True)
    up = [t.to(f64) for t in (q, k, v, gk, gv)]
    o_d, lse_d = dense_chunk_attention(*up[:3], 10, 4, *up[3:])
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert_close(o, o_d, tolerance(dtype), "o")
    assert_close(lse, lse_d, tolerance(torch.float32), "lse")


def test_chunk_attention_softmax_scale():
    q, k, v, _, _ = _chunk_inputs(1, 9, 1, 4, 0, 0)
    o = ref.chunk_attention(q, k, v, chunk_size=4, context_size=2, softmax_scale=0.37)
    o_d, _ = dense_chunk_attention(q, k, v, 4, 2, scale=0.37)
    assert_close(o, o_d, tolerance(f64))


def test_query_blocking_changes_nothing(monkeypatch):
    q, k, v, gk, gv = _chunk_inputs(2, 23, 2, 4, 1, 3)
    expected = ref.chunk_attention(q, k, v, chunk_size=10, context_size=3, global_k=gk, global_v=gv, return_lse=True)
    monkeypatch.setattr(ref, "_MAX_SCORE_ELEMENTS", 50)  # forces blocks of ~1-2 query rows
    blocked = ref.chunk_attention(q, k, v, chunk_size=10, context_size=3, global_k=gk, global_v=gv, return_lse=True)
    for a, b in zip(blocked, expected):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_reference_never_materializes_n_by_n():
    B, N, H, D, chunk, ctx = 1, 1024, 1, 32, 128, 64
    q, k, v = (torch.randn(B, N, H, D, requires_grad=True) for _ in range(3))
    with _LargestTensor() as mode:
        o = ref.chunk_attention(q, k, v, chunk_size=chunk, context_size=ctx)
        o.sum().backward()
    assert mode.largest <= B * H * chunk * (chunk + ctx) or mode.largest <= B * N * H * D
    assert mode.largest < N * N // 4


# ------------------------------------------------------------------------------------ global_attention
GLOBAL_CASES = [
    # B, G, F, T, H, D, stride, offset
    pytest.param(2, 5, 12, 3, 2, 8, 5, 0, id="paper-stride"),
    pytest.param(1, 3, 7, 2, 1, 4, 3, 2, id="offset"),
    pytest.param(1, 4, 4, 5, 2, 4, 1, 0, id="every-frame"),
    pytest.param(2, 2, 6, 1, 1, 4, 10, 5, id="single-keyframe"),
]


@pytest.mark.parametrize("B, G, F, T, H, D, stride, offset", GLOBAL_CASES)
def test_global_attention_matches_dense(B, G, F, T, H, D, stride, offset):
    gq, k, v = rand(B, G, H, D), rand(B, F * T, H, D), rand(B, F * T, H, D)
    o, lse = ref.global_attention(
        gq, k, v, tokens_per_frame=T, keyframe_stride=stride, keyframe_offset=offset, return_lse=True
    )
    o_d, lse_d = dense_global_attention(gq, k, v, T, stride, offset)
    assert_close(o, o_d, tolerance(f64), "o")
    assert_close(lse, lse_d, tolerance(f64), "lse")
    assert lse.shape == (B, H, G)


def test_global_attention_gradients_match_dense_and_gradcheck():
    gq, k, v = rand(2, 3, 2, 4, requires_grad=True), rand(2, 12, 2, 4, requires_grad=True), rand(2, 12, 2, 4, requires_grad=True)
    kw = dict(tokens_per_frame=2, keyframe_stride=2, keyframe_offset=1)
    o, lse = ref.global_attention(gq, k, v, return_lse=True, **kw)
    g = torch.autograd.grad(o.square().sum() + lse.sum(), (gq, k, v))
    o_d, lse_d = dense_global_attention(gq, k, v, 2, 2, 1)
    g_d = torch.autograd.grad(o_d.square().sum() + lse_d.sum(), (gq, k, v))
    for name, a, b in zip(["dgq", "dk", "dv"], g, g_d):
        assert_close(a, b, 1e-10, name)
    assert g[1].reshape(2, 6, 2, 2, 4)[:, 0::2].abs().max() == 0  # non-keyframes get no gradient
    assert torch.autograd.gradcheck(lambda *t: ref.global_attention(*t, return_lse=True, **kw), (gq, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_global_attention_low_precision_against_float64(dtype):
    gq, k, v = rand(2, 9, 2, 32, dtype=dtype), rand(2, 40, 2, 32, dtype=dtype), rand(2, 40, 2, 32, dtype=dtype)
    o = ref.global_attention(gq, k, v, tokens_per_frame=4, keyframe_stride=3)
    o_d, _ = dense_global_attention(gq.to(f64), k.to(f64), v.to(f64), 4, 3, 0)
    assert_close(o, o_d, tolerance(dtype))


# ------------------------------------------------------------------------------------ merge_attention
def test_merge_of_two_key_halves_equals_full_attention():
    B, N, H, D, K = 2, 5, 2, 4, 11
    q, k, v = rand(B, N, H, D), rand(B, K, H, D), rand(B, K, H, D)
    split = torch.zeros(N, K, dtype=torch.bool)
    split[:, ::2] = True  # interleaved halves
    full = torch.ones(N, K, dtype=torch.bool)
    o_a, lse_a = dense_attention(q, [k], [v], [split], D**-0.5)
    o_b, lse_b = dense_attention(q, [k], [v], [~split], D**-0.5)
    o_full, lse_full = dense_attention(q, [k], [v], [full], D**-0.5)
    o, lse = ref.merge_attention(o_a, lse_a, o_b, lse_b)
    assert_close(o, o_full, tolerance(f64), "o")
    assert_close(lse, lse_full, tolerance(f64), "lse")


def test_merge_with_empty_sides():
    o_a, o_b = rand(1, 3, 1, 4), rand(1, 3, 1, 4)
    lse_a = torch.tensor([[[0.5, float("-inf"), float("-inf")]]], dtype=f64)
    lse_b = torch.tensor([[[float("-inf"), 1.5, float("-inf")]]], dtype=f64)
    o, lse = ref.merge_attention(o_a, lse_a, o_b, lse_b)
    torch.testing.assert_close(o[:, 0], o_a[:, 0])
    torch.testing.assert_close(o[:, 1], o_b[:, 1])
    assert torch.equal(o[:, 2], torch.zeros_like(o[:, 2]))
    assert lse[0, 0, 0] == 0.5 and lse[0, 0, 1] == 1.5 and torch.isneginf(lse[0, 0, 2])


def test_merge_gradcheck():
    o_a, o_b = rand(1, 3, 2, 4, requires_grad=True), rand(1, 3, 2, 4, requires_grad=True)
    lse_a, lse_b = rand(1, 2, 3, requires_grad=True), rand(1, 2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(ref.merge_attention, (o_a, lse_a, o_b, lse_b))


def test_merge_low_precision_keeps_dtypes():
    o_a, o_b = rand(1, 3, 2, 32, dtype=torch.float16), rand(1, 3, 2, 32, dtype=torch.float16)
    lse_a, lse_b = rand(1, 2, 3, dtype=torch.float32), rand(1, 2, 3, dtype=torch.float32)
    o, lse = ref.merge_attention(o_a, lse_a, o_b, lse_b)
    assert o.dtype == torch.float16 and lse.dtype == torch.float32
    o_d, lse_d = ref.merge_attention(o_a.to(f64), lse_a.to(f64), o_b.to(f64), lse_b.to(f64))
    assert_close(o, o_d, tolerance(torch.float16))


# ------------------------------------------------------------------------------------ overlap_fuse
FUSE_LAYOUTS = [
    pytest.param(ChunkLayout.windows(44, 20, 12), id="paper"),
    pytest.param(ChunkLayout.windows(30, 20, 12), id="clamped-last"),
    pytest.param(ChunkLayout.windows(7, 20, 3), id="one-window"),
    pytest.param(ChunkLayout.windows(25, 6, 5), id="stride-one"),
    pytest.param(ChunkLayout.windows(41, 8, 0), id="no-overlap"),
]


@pytest.mark.parametrize("layout", FUSE_LAYOUTS)
@pytest.mark.parametrize("with_x", [False, True])
@pytest.mark.parametrize("out_windows", [False, True])
def test_overlap_fuse_matches_dense(layout, with_x, out_windows):
    eps = rand(2, layout.num_chunks, layout.chunk_len, 3, 2)
    x = rand(2, layout.num_frames, 3, 2) if with_x else None
    coeffs = (0.9, -0.3) if with_x else None
    out = ref.overlap_fuse(eps, layout, x=x, coeffs=coeffs, out_windows=out_windows)
    expected = dense_overlap_fuse(eps, layout, x, coeffs, out_windows)
    assert_close(out, expected, tolerance(f64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_overlap_fuse_low_precision(dtype):
    layout = ChunkLayout.windows(44, 20, 12)
    eps, x = rand(2, 4, 20, 5, dtype=dtype), rand(2, 44, 5, dtype=dtype)
    out = ref.overlap_fuse(eps, layout, x=x, coeffs=(1.1, 0.2))
    assert out.dtype == dtype
    assert_close(out, dense_overlap_fuse(eps, layout, x, (1.1, 0.2)), tolerance(dtype))


def test_overlap_fuse_without_feature_dims():
    layout = ChunkLayout.windows(30, 20, 12)
    eps = rand(3, 3, 20)
    assert_close(ref.overlap_fuse(eps, layout), dense_overlap_fuse(eps, layout), tolerance(f64))


def test_overlap_fuse_gradcheck():
    layout = ChunkLayout.windows(9, 4, 2)
    eps = rand(1, layout.num_chunks, 4, 2, requires_grad=True)
    x = rand(1, 9, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, x: ref.overlap_fuse(e, layout, x=x, coeffs=(0.7, 1.3)), (eps, x))
    assert torch.autograd.gradcheck(lambda e: ref.overlap_fuse(e, layout, out_windows=True), (eps,))


@given(
    st.integers(1, 10).flatmap(
        lambda w: st.builds(ChunkLayout.windows, st.integers(1, 40), st.just(w), st.integers(0, w - 1))
    ),
    st.integers(0, 2**31 - 1),
)
def test_overlap_fuse_property_matches_dense(layout, seed):
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(1, layout.num_chunks, layout.chunk_len, 2, dtype=f64, generator=gen)
    x = torch.randn(1, layout.num_frames, 2, dtype=f64, generator=gen)
    out = ref.overlap_fuse(eps, layout, x=x, coeffs=(0.5, 2.0), out_windows=True)
    assert_close(out, dense_overlap_fuse(eps, layout, x, (0.5, 2.0), True), tolerance(f64))
