"""Argument validation of the public ops: one bad argument per test, CPU only, tiny shapes.

Contract (docs/design.md, "Operations and their contracts"): a bad input raises ``TypeError`` (wrong kind of object
or dtype) or ``ValueError`` (wrong shape, size, value, device or stride) whose message names the
argument and what was expected; empty inputs return empty outputs. Every bad-input case starts from
a call that is known to succeed (see the ``test_*_valid_call`` smoke tests) and changes exactly one
argument, so a case cannot pass merely because the base call already fails.
"""

from __future__ import annotations

import math

import pytest
import torch

import vin_kernels as vk
from vin_kernels import ChunkLayout, reference

B, N, H, D = 2, 12, 2, 32  # batch, seqlen, heads, head_dim
G = 3  # global tokens
T = 4  # tokens per frame -> N // T = 3 frames
FEAT = (3, 5)  # overlap_fuse feature dims
LAYOUT = ChunkLayout.windows(num_frames=10, window=4, overlap=2)  # n = 4 windows of L = 4 frames
NW, L, F = LAYOUT.num_chunks, LAYOUT.chunk_len, LAYOUT.num_frames


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """A VIN_KERNELS_BACKEND set outside the tests must not change which errors are raised."""
    monkeypatch.delenv("VIN_KERNELS_BACKEND", raising=False)


# ------------------------------------------------------------------------------------------ helpers
def t(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(*shape, dtype=dtype, device=device)
    return torch.randint(-3, 3, shape, dtype=dtype, device=device)


def strided(*shape) -> torch.Tensor:
    """``shape`` with stride 2 in the last dim (a view of a tensor twice as wide)."""
    return torch.randn(*shape[:-1], 2 * shape[-1])[..., ::2]


def qkv(**kw) -> torch.Tensor:
    return t(B, N, H, D, **kw)


def case(id_, over, exc, match, marks=()):
    """One bad-input case: ``over()`` gives the argument(s) replacing the valid ones."""
    return pytest.param(over, exc, match, id=id_, marks=marks)


def call_chunk(**over):
    args = dict(q=qkv(), k=qkv(), v=qkv(), chunk_size=4, context_size=4)
    args.update(over)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return vk.chunk_attention(q, k, v, **args)


def call_global(**over):
    args = dict(gq=t(B, G, H, D), k=qkv(), v=qkv(), tokens_per_frame=T, keyframe_stride=2, keyframe_offset=0)
    args.update(over)
    gq, k, v = args.pop("gq"), args.pop("k"), args.pop("v")
    return vk.global_attention(gq, k, v, **args)


def call_merge(**over):
    args = dict(o_a=qkv(), lse_a=t(B, H, N), o_b=qkv(), lse_b=t(B, H, N))
    args.update(over)
    o_a, lse_a, o_b, lse_b = (args.pop(name) for name in ("o_a", "lse_a", "o_b", "lse_b"))
    return vk.merge_attention(o_a, lse_a, o_b, lse_b, **args)


def call_fuse(**over):
    args = dict(eps=t(B, NW, L, *FEAT), layout=LAYOUT)
    args.update(over)
    eps, layout = args.pop("eps"), args.pop("layout")
    return vk.overlap_fuse(eps, layout, **args)


def with_x(**over):
    """overlap_fuse arguments with a valid ``x`` and ``coeffs``, then ``over``."""
    args = dict(x=t(B, F, *FEAT), coeffs=(0.5, 2.0))
    args.update(over)
    return args


CALLS = {"chunk_attention": call_chunk, "global_attention": call_global,
         "merge_attention": call_merge, "overlap_fuse": call_fuse}  # fmt: skip


# ------------------------------------------------------------------------------- valid calls pass
def test_chunk_attention_valid_call():
    q, k, v, gk, gv = qkv(), qkv(), qkv(), t(1, G, H, D), t(1, G, H, D)
    o, lse = vk.chunk_attention(
        q, k, v, chunk_size=4, context_size=4, global_k=gk, global_v=gv, softmax_scale=0.3, return_lse=True
    )
    ref_o, ref_lse = reference.chunk_attention(
        q, k, v, chunk_size=4, context_size=4, global_k=gk, global_v=gv, softmax_scale=0.3, return_lse=True
    )
    assert o.shape == (B, N, H, D) and o.dtype == q.dtype
    assert lse.shape == (B, H, N) and lse.dtype == torch.float32
    torch.testing.assert_close(o, ref_o)
    torch.testing.assert_close(lse, ref_lse)
    assert call_chunk().shape == (B, N, H, D)  # the base of every chunk_attention case


def test_global_attention_valid_call():
    o, lse = call_global(return_lse=True, keyframe_offset=1, softmax_scale=0.5)
    assert o.shape == (B, G, H, D) and lse.shape == (B, H, G) and lse.dtype == torch.float32
    assert call_global().shape == (B, G, H, D)


def test_merge_attention_valid_call():
    o, lse = call_merge()
    assert o.shape == (B, N, H, D) and lse.shape == (B, H, N) and lse.dtype == torch.float32


def test_overlap_fuse_valid_call():
    assert call_fuse().shape == (B, F, *FEAT)
    assert call_fuse(out_windows=True).shape == (B, NW, L, *FEAT)
    eps, x = t(B, NW, L, *FEAT), t(B, F, *FEAT)
    out = vk.overlap_fuse(eps, LAYOUT, x=x, coeffs=[0.5, 2], out_windows=False)
    torch.testing.assert_close(out, reference.overlap_fuse(eps, LAYOUT, x=x, coeffs=(0.5, 2.0)))


@pytest.mark.parametrize("op", list(CALLS))
def test_explicit_reference_backend_and_env_pass(op, monkeypatch):
    CALLS[op](backend="reference")
    monkeypatch.setenv("VIN_KERNELS_BACKEND", "reference")
    CALLS[op]()
    monkeypatch.setenv("VIN_KERNELS_BACKEND", "bogus")
    CALLS[op](backend="reference")  # an explicit backend argument wins over the environment


# ---------------------------------------------------------------------------------- chunk_attention
CHUNK_CASES = [
    # q, k, v: kind, dtype, rank, shape, head dim, stride, device
    case("q-not-tensor", lambda: dict(q=[[0.0] * D]), TypeError, r"^q must be a torch\.Tensor, got list"),
    case("q-numpy", lambda: dict(q=qkv().numpy()), TypeError, r"^q must be a torch\.Tensor"),
    case("k-not-tensor", lambda: dict(k=None), TypeError, r"^k must be a torch\.Tensor, got NoneType"),
    case("v-not-tensor", lambda: dict(v=1.0), TypeError, r"^v must be a torch\.Tensor, got float"),
    case("q-float64", lambda: dict(q=qkv(dtype=torch.float64)), TypeError, r"^q must have dtype float16, bfloat16, float32; got float64"),
    case("q-int32", lambda: dict(q=qkv(dtype=torch.int32)), TypeError, r"^q must have dtype .*; got int32"),
    case("k-float64", lambda: dict(k=qkv(dtype=torch.float64)), TypeError, r"^k must have dtype .*; got float64"),
    case("v-int32", lambda: dict(v=qkv(dtype=torch.int32)), TypeError, r"^v must have dtype .*; got int32"),
    case("q-rank3", lambda: dict(q=t(B, N, H * D)), ValueError, r"^q must have shape \[batch, seqlen, heads, head_dim\] \(4 dims\), got \(2, 12, 64\)"),
    case("q-rank5", lambda: dict(q=t(B, N, H, D, 1)), ValueError, r"^q must have shape .*\(4 dims\)"),
    case("k-rank3", lambda: dict(k=t(B, N, H * D)), ValueError, r"^k must have shape .*\(4 dims\)"),
    case("v-rank2", lambda: dict(v=t(N, D)), ValueError, r"^v must have shape .*\(4 dims\)"),
    case("k-seqlen-mismatch", lambda: dict(k=t(B, N + 1, H, D)), ValueError, r"^k must have the shape of q \(2, 12, 2, 32\), got \(2, 13, 2, 32\)"),
    case("k-heads-mismatch", lambda: dict(k=t(B, N, H + 1, D)), ValueError, r"^k must have the shape of q"),
    case("v-batch-mismatch", lambda: dict(v=t(B + 1, N, H, D)), ValueError, r"^v must have the shape of q"),
    case("v-head-dim-mismatch", lambda: dict(v=t(B, N, H, 64)), ValueError, r"^v must have the shape of q"),
    case("k-dtype-mismatch", lambda: dict(k=qkv(dtype=torch.float16)), TypeError, r"^k must have the dtype of q \(torch\.float32\), got torch\.float16"),
    case("v-dtype-mismatch", lambda: dict(v=qkv(dtype=torch.bfloat16)), TypeError, r"^v must have the dtype of q"),
    case("head-dim-0", lambda: dict(q=t(B, N, H, 0), k=t(B, N, H, 0), v=t(B, N, H, 0)), ValueError, r"^q has head_dim 0 \(last dim\); it must be at least 1"),
    case("head-dim-48-triton", lambda: dict(q=t(B, N, H, 48), k=t(B, N, H, 48), v=t(B, N, H, 48), backend="triton"), ValueError, r"^chunk_attention: backend='triton': head_dim 48 \(last dim of the inputs\) is not supported by the triton backend, which takes head dims \(32, 64, 72, 80, 96, 128\); the sdpa and reference backends take any"),
    case("head-dim-256-triton", lambda: dict(q=t(B, N, H, 256), k=t(B, N, H, 256), v=t(B, N, H, 256), backend="triton"), ValueError, r"^chunk_attention: backend='triton': head_dim 256 "),
    case("q-last-stride-2", lambda: dict(q=strided(B, N, H, D)), ValueError, r"^q must have stride 1 in its last dimension"),
    case("k-last-stride-2", lambda: dict(k=strided(B, N, H, D)), ValueError, r"^k must have stride 1 in its last dimension"),
    case("v-last-stride-2", lambda: dict(v=strided(B, N, H, D)), ValueError, r"^v must have stride 1 in its last dimension"),
    case("k-meta-device", lambda: dict(k=qkv(device="meta")), ValueError, r"^k must be on the device of q \(cpu\), got meta"),
    case("v-meta-device", lambda: dict(v=qkv(device="meta")), ValueError, r"^v must be on the device of q"),
    case("q-meta-device", lambda: dict(q=qkv(device="meta")), ValueError, r"^k must be on the device of q \(meta\), got cpu"),
    # chunk_size / context_size
    case("chunk_size-0", lambda: dict(chunk_size=0), ValueError, r"^chunk_size must be >= 1, got 0"),
    case("chunk_size-negative", lambda: dict(chunk_size=-4), ValueError, r"^chunk_size must be >= 1, got -4"),
    case("chunk_size-float", lambda: dict(chunk_size=4.0), TypeError, r"^chunk_size must be an int, got float"),
    case("chunk_size-bool", lambda: dict(chunk_size=True), TypeError, r"^chunk_size must be an int, got bool"),
    case("chunk_size-None", lambda: dict(chunk_size=None), TypeError, r"^chunk_size must be an int, got NoneType"),
    case("context_size-negative", lambda: dict(context_size=-1), ValueError, r"^context_size must be >= 0, got -1"),
    case("context_size-float", lambda: dict(context_size=2.5), TypeError, r"^context_size must be an int, got float"),
    # flags
    case("context_grad-int", lambda: dict(context_grad=1), TypeError, r"^context_grad must be a bool, got int"),
    case("context_grad-None", lambda: dict(context_grad=None), TypeError, r"^context_grad must be a bool"),
    case("return_lse-str", lambda: dict(return_lse="yes"), TypeError, r"^return_lse must be a bool, got str"),
    case("return_lse-int", lambda: dict(return_lse=0), TypeError, r"^return_lse must be a bool, got int"),
    # softmax_scale
    case("softmax_scale-0", lambda: dict(softmax_scale=0.0), ValueError, r"^softmax_scale must be a positive finite number, got 0\.0"),
    case("softmax_scale-negative", lambda: dict(softmax_scale=-0.1), ValueError, r"^softmax_scale must be a positive finite number"),
    case("softmax_scale-nan", lambda: dict(softmax_scale=math.nan), ValueError, r"^softmax_scale must be a positive finite number, got nan"),
    case("softmax_scale-inf", lambda: dict(softmax_scale=math.inf), ValueError, r"^softmax_scale must be a positive finite number, got inf"),
    case("softmax_scale-str", lambda: dict(softmax_scale="0.1"), TypeError, r"^softmax_scale must be a float, got str"),
    case("softmax_scale-bool", lambda: dict(softmax_scale=True), TypeError, r"^softmax_scale must be a float, got bool"),
    # globals
    case("global_k-without-global_v", lambda: dict(global_k=t(1, G, H, D)), ValueError, r"^global_k and global_v must be given together; global_v is None"),
    case("global_v-without-global_k", lambda: dict(global_v=t(1, G, H, D)), ValueError, r"^global_k and global_v must be given together; global_k is None"),
    case("global_k-not-tensor", lambda: dict(global_k="gk", global_v=t(1, G, H, D)), TypeError, r"^global_k must be a torch\.Tensor, got str"),
    case("global_v-not-tensor", lambda: dict(global_k=t(1, G, H, D), global_v=[1.0]), TypeError, r"^global_v must be a torch\.Tensor, got list"),
    case("global_k-float64", lambda: dict(global_k=t(1, G, H, D, dtype=torch.float64), global_v=t(1, G, H, D, dtype=torch.float64)), TypeError, r"^global_k must have dtype .*; got float64"),
    case("global_k-rank3", lambda: dict(global_k=t(G, H, D), global_v=t(G, H, D)), ValueError, r"^global_k must have shape \[global_batch, num_global, heads, head_dim\] \(4 dims\)"),
    case("global-batch-3-not-dividing-2", lambda: dict(global_k=t(3, G, H, D), global_v=t(3, G, H, D)), ValueError, r"^global_k's batch 3 must divide q's batch 2"),
    case("global-batch-4-larger", lambda: dict(global_k=t(4, G, H, D), global_v=t(4, G, H, D)), ValueError, r"^global_k's batch 4 must divide q's batch 2"),
    case("global-batch-0", lambda: dict(global_k=t(0, G, H, D), global_v=t(0, G, H, D)), ValueError, r"^global_k's batch 0 must divide q's batch 2"),
    case("global_k-heads-mismatch", lambda: dict(global_k=t(1, G, H + 1, D), global_v=t(1, G, H + 1, D)), ValueError, r"^global_k must have shape .* with heads=2, head_dim=32 like q, got \(1, 3, 3, 32\)"),
    case("global_k-head-dim-mismatch", lambda: dict(global_k=t(1, G, H, 64), global_v=t(1, G, H, 64)), ValueError, r"^global_k must have shape .* with heads=2, head_dim=32 like q"),
    case("global_v-shape-mismatch", lambda: dict(global_k=t(1, G, H, D), global_v=t(1, G + 1, H, D)), ValueError, r"^global_v must have the shape of global_k \(1, 3, 2, 32\), got \(1, 4, 2, 32\)"),
    case("global_k-dtype-mismatch", lambda: dict(global_k=t(1, G, H, D, dtype=torch.float16), global_v=t(1, G, H, D, dtype=torch.float16)), TypeError, r"^global_k must have the dtype of q"),
    case("global_v-dtype-mismatch", lambda: dict(global_k=t(1, G, H, D), global_v=t(1, G, H, D, dtype=torch.float16)), TypeError, r"^global_v must have the dtype of global_k"),
    case("global_k-meta-device", lambda: dict(global_k=t(1, G, H, D, device="meta"), global_v=t(1, G, H, D, device="meta")), ValueError, r"^global_k must be on the device of q \(cpu\), got meta"),
    case("global_v-meta-device", lambda: dict(global_k=t(1, G, H, D), global_v=t(1, G, H, D, device="meta")), ValueError, r"^global_v must be on the device of global_k"),
    case("global_k-last-stride-2", lambda: dict(global_k=strided(1, G, H, D), global_v=t(1, G, H, D)), ValueError, r"^global_k must have stride 1 in its last dimension"),
    case("global_v-last-stride-2", lambda: dict(global_k=t(1, G, H, D), global_v=strided(1, G, H, D)), ValueError, r"^global_v must have stride 1 in its last dimension"),
]  # fmt: skip


@pytest.mark.parametrize("over, exc, match", CHUNK_CASES)
def test_chunk_attention_rejects(over, exc, match):
    with pytest.raises(exc, match=match):
        call_chunk(**over())


# --------------------------------------------------------------------------------- global_attention
GLOBAL_CASES = [
    case("gq-not-tensor", lambda: dict(gq=[0.0]), TypeError, r"^gq must be a torch\.Tensor, got list"),
    case("k-not-tensor", lambda: dict(k=None), TypeError, r"^k must be a torch\.Tensor, got NoneType"),
    case("v-not-tensor", lambda: dict(v=(1, 2)), TypeError, r"^v must be a torch\.Tensor, got tuple"),
    case("gq-float64", lambda: dict(gq=t(B, G, H, D, dtype=torch.float64)), TypeError, r"^gq must have dtype float16, bfloat16, float32; got float64"),
    case("gq-int32", lambda: dict(gq=t(B, G, H, D, dtype=torch.int32)), TypeError, r"^gq must have dtype .*; got int32"),
    case("k-float64", lambda: dict(k=qkv(dtype=torch.float64)), TypeError, r"^k must have dtype .*; got float64"),
    case("v-int32", lambda: dict(v=qkv(dtype=torch.int32)), TypeError, r"^v must have dtype .*; got int32"),
    case("gq-rank3", lambda: dict(gq=t(B, G, H * D)), ValueError, r"^gq must have shape \[batch, num_global, heads, head_dim\] \(4 dims\)"),
    case("k-rank3", lambda: dict(k=t(B, N, H * D)), ValueError, r"^k must have shape \[batch, seqlen, heads, head_dim\] \(4 dims\)"),
    case("v-rank5", lambda: dict(v=t(B, N, H, D, 1)), ValueError, r"^v must have shape .*\(4 dims\)"),
    case("k-dtype-mismatch", lambda: dict(k=qkv(dtype=torch.float16)), TypeError, r"^k must have the dtype of gq"),
    case("v-dtype-mismatch", lambda: dict(v=qkv(dtype=torch.float16)), TypeError, r"^v must have the dtype of k"),
    case("gq-batch-ne-k-batch", lambda: dict(gq=t(B + 1, G, H, D)), ValueError, r"^k must have shape .* with batch=3, heads=2, head_dim=32 like gq, got \(2, 12, 2, 32\)"),
    case("k-heads-ne-gq-heads", lambda: dict(k=t(B, N, H + 1, D)), ValueError, r"^k must have shape .* with batch=2, heads=2, head_dim=32 like gq"),
    case("k-head-dim-ne-gq", lambda: dict(k=t(B, N, H, 64)), ValueError, r"^k must have shape .* head_dim=32 like gq"),
    case("v-shape-ne-k", lambda: dict(v=t(B, N - T, H, D)), ValueError, r"^v must have the shape of k \(2, 12, 2, 32\), got \(2, 8, 2, 32\)"),
    case("head-dim-0", lambda: dict(gq=t(B, G, H, 0), k=t(B, N, H, 0), v=t(B, N, H, 0)), ValueError, r"^gq has head_dim 0 \(last dim\); it must be at least 1"),
    case("head-dim-48-triton", lambda: dict(gq=t(B, G, H, 48), k=t(B, N, H, 48), v=t(B, N, H, 48), backend="triton"), ValueError, r"^global_attention: backend='triton': head_dim 48 .* not supported by the triton backend"),
    case("gq-last-stride-2", lambda: dict(gq=strided(B, G, H, D)), ValueError, r"^gq must have stride 1 in its last dimension"),
    case("k-last-stride-2", lambda: dict(k=strided(B, N, H, D)), ValueError, r"^k must have stride 1 in its last dimension"),
    case("v-last-stride-2", lambda: dict(v=strided(B, N, H, D)), ValueError, r"^v must have stride 1 in its last dimension"),
    case("k-meta-device", lambda: dict(k=qkv(device="meta")), ValueError, r"^k must be on the device of gq \(cpu\), got meta"),
    case("v-meta-device", lambda: dict(v=qkv(device="meta")), ValueError, r"^v must be on the device of k"),
    case("gq-meta-device", lambda: dict(gq=t(B, G, H, D, device="meta")), ValueError, r"^k must be on the device of gq \(meta\), got cpu"),
    case("tokens_per_frame-0", lambda: dict(tokens_per_frame=0), ValueError, r"^tokens_per_frame must be >= 1, got 0"),
    case("tokens_per_frame-float", lambda: dict(tokens_per_frame=4.0), TypeError, r"^tokens_per_frame must be an int, got float"),
    case("tokens_per_frame-bool", lambda: dict(tokens_per_frame=True), TypeError, r"^tokens_per_frame must be an int, got bool"),
    case("seqlen-not-multiple-of-tokens_per_frame", lambda: dict(tokens_per_frame=5), ValueError, r"^k's seqlen 12 must be a multiple of tokens_per_frame=5"),
    case("keyframe_stride-0", lambda: dict(keyframe_stride=0), ValueError, r"^keyframe_stride must be >= 1, got 0"),
    case("keyframe_stride-float", lambda: dict(keyframe_stride=2.0), TypeError, r"^keyframe_stride must be an int, got float"),
    case("keyframe_offset-negative", lambda: dict(keyframe_offset=-1), ValueError, r"^keyframe_offset must be >= 0, got -1"),
    case("keyframe_offset-bool", lambda: dict(keyframe_offset=False), TypeError, r"^keyframe_offset must be an int, got bool"),
    case("keyframe_offset-eq-num-frames", lambda: dict(keyframe_offset=N // T), ValueError, r"^keyframe_offset must be < the number of frames 3, got 3"),
    case("keyframe_offset-gt-num-frames", lambda: dict(keyframe_offset=10), ValueError, r"^keyframe_offset must be < the number of frames 3, got 10"),
    case("k-zero-tokens-with-globals", lambda: dict(k=t(B, 0, H, D), v=t(B, 0, H, D)), ValueError, r"^k and v hold no tokens; global_attention needs at least one keyframe"),
    case("softmax_scale-0", lambda: dict(softmax_scale=0), ValueError, r"^softmax_scale must be a positive finite number"),
    case("softmax_scale-nan", lambda: dict(softmax_scale=math.nan), ValueError, r"^softmax_scale must be a positive finite number, got nan"),
    case("softmax_scale-str", lambda: dict(softmax_scale="auto"), TypeError, r"^softmax_scale must be a float, got str"),
    case("return_lse-int", lambda: dict(return_lse=1), TypeError, r"^return_lse must be a bool, got int"),
]  # fmt: skip


@pytest.mark.parametrize("over, exc, match", GLOBAL_CASES)
def test_global_attention_rejects(over, exc, match):
    with pytest.raises(exc, match=match):
        call_global(**over())


# ---------------------------------------------------------------------------------- merge_attention
MERGE_CASES = [
    case("o_a-not-tensor", lambda: dict(o_a=None), TypeError, r"^o_a must be a torch\.Tensor, got NoneType"),
    case("o_b-not-tensor", lambda: dict(o_b=[1.0]), TypeError, r"^o_b must be a torch\.Tensor, got list"),
    case("lse_a-not-tensor", lambda: dict(lse_a=0.0), TypeError, r"^lse_a must be a torch\.Tensor, got float"),
    case("lse_b-not-tensor", lambda: dict(lse_b=None), TypeError, r"^lse_b must be a torch\.Tensor, got NoneType"),
    case("o_a-float64", lambda: dict(o_a=qkv(dtype=torch.float64)), TypeError, r"^o_a must have dtype float16, bfloat16, float32; got float64"),
    case("o_a-int32", lambda: dict(o_a=qkv(dtype=torch.int32)), TypeError, r"^o_a must have dtype .*; got int32"),
    case("o_b-float64", lambda: dict(o_b=qkv(dtype=torch.float64)), TypeError, r"^o_b must have dtype .*; got float64"),
    case("o_b-dtype-mismatch", lambda: dict(o_b=qkv(dtype=torch.float16)), TypeError, r"^o_b must have the dtype of o_a"),
    case("lse_a-float16", lambda: dict(lse_a=t(B, H, N, dtype=torch.float16)), TypeError, r"^lse_a must have dtype float32; got float16"),
    case("lse_a-float64", lambda: dict(lse_a=t(B, H, N, dtype=torch.float64)), TypeError, r"^lse_a must have dtype float32; got float64"),
    case("lse_b-bfloat16", lambda: dict(lse_b=t(B, H, N, dtype=torch.bfloat16)), TypeError, r"^lse_b must have dtype float32; got bfloat16"),
    case("lse_b-int32", lambda: dict(lse_b=t(B, H, N, dtype=torch.int32)), TypeError, r"^lse_b must have dtype float32; got int32"),
    case("o_a-rank3", lambda: dict(o_a=t(B, N, H * D)), ValueError, r"^o_a must have shape \[batch, seqlen, heads, head_dim\] \(4 dims\)"),
    case("o_b-rank5", lambda: dict(o_b=t(B, N, H, D, 1)), ValueError, r"^o_b must have shape .*\(4 dims\)"),
    case("o_b-shape-mismatch", lambda: dict(o_b=t(B, N + 1, H, D)), ValueError, r"^o_b must have the shape of o_a \(2, 12, 2, 32\), got \(2, 13, 2, 32\)"),
    case("o_b-head-dim-mismatch", lambda: dict(o_b=t(B, N, H, 64)), ValueError, r"^o_b must have the shape of o_a"),
    case("lse_a-rank4", lambda: dict(lse_a=t(B, H, N, 1)), ValueError, r"^lse_a must have shape \[batch, heads, seqlen\] \(3 dims\)"),
    case("lse_a-seq-heads-swapped", lambda: dict(lse_a=t(B, N, H)), ValueError, r"^lse_a must have shape \[batch, heads, seqlen\] = \(2, 2, 12\) to match o_a, got \(2, 12, 2\)"),
    case("lse_b-wrong-seqlen", lambda: dict(lse_b=t(B, H, N - 1)), ValueError, r"^lse_b must have shape \[batch, heads, seqlen\] = \(2, 2, 12\) to match o_a"),
    case("o_a-last-stride-2", lambda: dict(o_a=strided(B, N, H, D)), ValueError, r"^o_a must have stride 1 in its last dimension"),
    case("o_b-last-stride-2", lambda: dict(o_b=strided(B, N, H, D)), ValueError, r"^o_b must have stride 1 in its last dimension"),
    case("o_b-meta-device", lambda: dict(o_b=qkv(device="meta")), ValueError, r"^o_b must be on the device of o_a \(cpu\), got meta"),
    case("lse_a-meta-device", lambda: dict(lse_a=t(B, H, N, device="meta")), ValueError, r"^lse_a must be on the device of o_a \(cpu\), got meta"),
    case("lse_b-meta-device", lambda: dict(lse_b=t(B, H, N, device="meta")), ValueError, r"^lse_b must be on the device of o_a"),
]  # fmt: skip


@pytest.mark.parametrize("over, exc, match", MERGE_CASES)
def test_merge_attention_rejects(over, exc, match):
    with pytest.raises(exc, match=match):
        call_merge(**over())


# ------------------------------------------------------------------------------------- overlap_fuse
FUSE_CASES = [
    case("layout-not-ChunkLayout", lambda: dict(layout=(10, 4, 2)), TypeError, r"^layout must be a vin_kernels\.ChunkLayout, got tuple"),
    case("layout-None", lambda: dict(layout=None), TypeError, r"^layout must be a vin_kernels\.ChunkLayout, got NoneType"),
    case("layout-context-mode", lambda: dict(layout=ChunkLayout.context(10, 4, 2)), ValueError, r"^layout must be a window-mode ChunkLayout"),
    case("eps-not-tensor", lambda: dict(eps=[[0.0]]), TypeError, r"^eps must be a torch\.Tensor, got list"),
    case("eps-float64", lambda: dict(eps=t(B, NW, L, *FEAT, dtype=torch.float64)), TypeError, r"^eps must have dtype float16, bfloat16, float32; got float64"),
    case("eps-int32", lambda: dict(eps=t(B, NW, L, *FEAT, dtype=torch.int32)), TypeError, r"^eps must have dtype .*; got int32"),
    case("eps-rank2", lambda: dict(eps=t(B, NW)), ValueError, r"^eps must have shape \[batch, num_windows=4, window=4, \*features\] for this layout, got \(2, 4\)"),
    case("eps-wrong-num-windows", lambda: dict(eps=t(B, NW + 1, L, *FEAT)), ValueError, r"^eps must have shape \[batch, num_windows=4, window=4, \*features\] for this layout, got \(2, 5, 4, 3, 5\)"),
    case("eps-wrong-window-len", lambda: dict(eps=t(B, NW, L - 1, *FEAT)), ValueError, r"^eps must have shape \[batch, num_windows=4, window=4"),
    case("eps-video-not-windows", lambda: dict(eps=t(B, F, *FEAT)), ValueError, r"^eps must have shape \[batch, num_windows=4, window=4"),
    case("eps-feature-dims-transposed", lambda: dict(eps=t(B, NW, L, *FEAT).transpose(3, 4)), ValueError, r"^eps must be contiguous in its feature dims \(dims 3 and up\)"),
    case("eps-last-stride-2", lambda: dict(eps=strided(B, NW, L, *FEAT)), ValueError, r"^eps must be contiguous in its feature dims"),
    case("out_windows-int", lambda: dict(out_windows=1), TypeError, r"^out_windows must be a bool, got int"),
    case("out_windows-None", lambda: dict(out_windows=None), TypeError, r"^out_windows must be a bool, got NoneType"),
    case("coeffs-without-x", lambda: dict(coeffs=(0.5, 2.0)), ValueError, r"^coeffs is given without x"),
    case("x-without-coeffs", lambda: with_x(coeffs=None), ValueError, r"^x is given without coeffs"),
    case("x-not-tensor", lambda: with_x(x=[0.0]), TypeError, r"^x must be a torch\.Tensor, got list"),
    case("x-float64", lambda: with_x(x=t(B, F, *FEAT, dtype=torch.float64)), TypeError, r"^x must have dtype .*; got float64"),
    case("x-dtype-mismatch", lambda: with_x(x=t(B, F, *FEAT, dtype=torch.float16)), TypeError, r"^x must have the dtype of eps \(torch\.float32\), got torch\.float16"),
    case("x-meta-device", lambda: with_x(x=t(B, F, *FEAT, device="meta")), ValueError, r"^x must be on the device of eps \(cpu\), got meta"),
    case("eps-meta-device", lambda: with_x(eps=t(B, NW, L, *FEAT, device="meta")), ValueError, r"^x must be on the device of eps \(meta\), got cpu"),
    case("x-wrong-num-frames", lambda: with_x(x=t(B, F + 1, *FEAT)), ValueError, r"^x must have shape \[batch, num_frames, \*features\] = \(2, 10, 3, 5\) \(frames\) or the shape of eps \(2, 4, 4, 3, 5\) \(windows\), got \(2, 11, 3, 5\)"),
    case("x-wrong-features", lambda: with_x(x=t(B, F, 5, 3)), ValueError, r"^x must have shape \[batch, num_frames, \*features\] = \(2, 10, 3, 5\)"),
    case("x-wrong-batch", lambda: with_x(x=t(B + 1, F, *FEAT)), ValueError, r"^x must have shape \[batch, num_frames, \*features\]"),
    case("x-windows-wrong-count", lambda: with_x(x=t(B, NW - 1, L, *FEAT)), ValueError, r"^x must have shape \[batch, num_frames, \*features\] = .* or the shape of eps"),
    case("x-windows-not-packed", lambda: with_x(x=t(B, NW, L, FEAT[1], FEAT[0]).transpose(-1, -2)), ValueError, r"^x must be contiguous in its feature dims \(dims 3 and up\)"),
    case("x-feature-dims-non-contiguous", lambda: with_x(x=t(B, F, 5, 3).transpose(2, 3)), ValueError, r"^x must be contiguous in its feature dims \(dims 2 and up\)"),
    case("coeffs-one-value", lambda: with_x(coeffs=(0.5,)), TypeError, r"^coeffs must be a pair \(a, b\) of floats, got \(0\.5,\)"),
    case("coeffs-three-values", lambda: with_x(coeffs=(0.5, 1.0, 2.0)), TypeError, r"^coeffs must be a pair \(a, b\) of floats"),
    case("coeffs-scalar", lambda: with_x(coeffs=0.5), TypeError, r"^coeffs must be a pair \(a, b\) of floats, got 0\.5"),
    case("coeffs-str", lambda: with_x(coeffs="ab"), TypeError, r"^coeffs must be a pair \(a, b\) of floats"),
    case("coeffs-contains-str", lambda: with_x(coeffs=(0.5, "2")), TypeError, r"^coeffs\[1\] must be a float, got str"),
    case("coeffs-contains-None", lambda: with_x(coeffs=(None, 2.0)), TypeError, r"^coeffs\[0\] must be a float, got NoneType"),
    case("coeffs-contains-nan", lambda: with_x(coeffs=(math.nan, 2.0)), ValueError, r"^coeffs\[0\] must be a finite number, got nan"),
    case("coeffs-contains-inf", lambda: with_x(coeffs=(0.5, -math.inf)), ValueError, r"^coeffs\[1\] must be a finite number, got -inf"),
]  # fmt: skip


@pytest.mark.parametrize("over, exc, match", FUSE_CASES)
def test_overlap_fuse_rejects(over, exc, match):
    with pytest.raises(exc, match=match):
        call_fuse(**over())


# ------------------------------------------------------------------------------------------ backend
@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize(
    "backend, exc, match",
    [
        pytest.param("bogus", ValueError, r"^backend must be 'auto' or one of \('reference', 'sdpa', 'triton', 'cuda'\), got 'bogus'", id="unknown-name"),
        pytest.param("Reference", ValueError, r"^backend must be 'auto' or one of .*, got 'Reference'", id="wrong-case"),
        pytest.param("", ValueError, r"^backend must be 'auto' or one of .*, got ''", id="empty-string"),
        pytest.param(None, TypeError, r"^backend must be a str, got NoneType", id="None"),
        pytest.param(1, TypeError, r"^backend must be a str, got int", id="int"),
    ],
)  # fmt: skip
def test_backend_argument_rejected(op, backend, exc, match):
    with pytest.raises(exc, match=match):
        CALLS[op](backend=backend)


@pytest.mark.parametrize("op", ["chunk_attention", "global_attention", "merge_attention"])
def test_backend_the_op_lacks(op):
    with pytest.raises(ValueError, match=rf"^{op} has no 'cuda' backend \(backend='cuda'\); it has: reference, sdpa, triton"):
        CALLS[op](backend="cuda")


@pytest.mark.parametrize("op", list(CALLS))
def test_triton_backend_on_cpu_tensors_without_interpreter(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=rf"^{op}: backend='triton': the triton backend needs CUDA tensors, got tensors on cpu"):
        CALLS[op](backend="triton")


def test_overlap_fuse_cuda_backend_on_cpu_tensors():
    # ValueError when the extension could run but the tensors are on the CPU; RuntimeError when the
    # extension (or a CUDA device) is unavailable here. Either way the message must say cuda.
    with pytest.raises((ValueError, RuntimeError), match=r"^overlap_fuse: backend='cuda': .*cuda"):
        call_fuse(backend="cuda")


@pytest.mark.parametrize("op", list(CALLS))
def test_env_backend_bogus(op, monkeypatch):
    monkeypatch.setenv("VIN_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"^VIN_KERNELS_BACKEND must be 'auto' or one of .*, got 'bogus'"):
        CALLS[op]()


@pytest.mark.parametrize("op", ["chunk_attention", "global_attention", "merge_attention"])
def test_env_backend_the_op_lacks(op, monkeypatch):
    monkeypatch.setenv("VIN_KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=rf"^{op} has no 'cuda' backend \(VIN_KERNELS_BACKEND='cuda'\)"):
        CALLS[op]()


def test_validation_runs_before_backend_selection(monkeypatch):
    monkeypatch.setenv("VIN_KERNELS_BACKEND", "bogus")
    with pytest.raises(TypeError, match=r"^q must have dtype"):
        call_chunk(q=qkv(dtype=torch.float64))


# ------------------------------------------------------------------------------------- ChunkLayout
@pytest.mark.parametrize(
    "make, exc, match",
    [
        pytest.param(lambda: ChunkLayout.context(0, 4), ValueError, r"^num_frames must be >= 1, got 0", id="context-num_frames-0"),
        pytest.param(lambda: ChunkLayout.windows(0, 4, 2), ValueError, r"^num_frames must be >= 1, got 0", id="windows-num_frames-0"),
        pytest.param(lambda: ChunkLayout.context(10, 0), ValueError, r"^chunk must be >= 1, got 0", id="chunk-0"),
        pytest.param(lambda: ChunkLayout.context(10, -2), ValueError, r"^chunk must be >= 1, got -2", id="chunk-negative"),
        pytest.param(lambda: ChunkLayout.windows(10, 0, 0), ValueError, r"^window must be >= 1, got 0", id="window-0"),
        pytest.param(lambda: ChunkLayout.context(10, 4, -1), ValueError, r"^context must be >= 0, got -1", id="context-negative"),
        pytest.param(lambda: ChunkLayout.windows(10, 4, 4), ValueError, r"^overlap must be smaller than window, got overlap=4 >= window=4", id="overlap-eq-window"),
        pytest.param(lambda: ChunkLayout.windows(10, 4, 7), ValueError, r"^overlap must be smaller than window, got overlap=7 >= window=4", id="overlap-gt-window"),
        pytest.param(lambda: ChunkLayout.windows(10, 4, -1), ValueError, r"^overlap must be >= 0, got -1", id="overlap-negative"),
        pytest.param(lambda: ChunkLayout.context(10.0, 4), TypeError, r"^num_frames must be an int, got float", id="num_frames-float"),
        pytest.param(lambda: ChunkLayout.context(10, 4.0), TypeError, r"^chunk must be an int, got float", id="chunk-float"),
        pytest.param(lambda: ChunkLayout.context(10, True), TypeError, r"^chunk must be an int, got bool", id="chunk-bool"),
        pytest.param(lambda: ChunkLayout.context(10, 4, 2.0), TypeError, r"^context must be an int, got float", id="context-float"),
        pytest.param(lambda: ChunkLayout.windows(True, 4, 2), TypeError, r"^num_frames must be an int, got bool", id="num_frames-bool"),
        pytest.param(lambda: ChunkLayout.windows(10, 4.5, 2), TypeError, r"^window must be an int, got float", id="window-float"),
        pytest.param(lambda: ChunkLayout.windows(10, 4, False), TypeError, r"^overlap must be an int, got bool", id="overlap-bool"),
        pytest.param(lambda: ChunkLayout.windows(10, 4, 1.0), TypeError, r"^overlap must be an int, got float", id="overlap-float"),
        pytest.param(lambda: ChunkLayout("tiles", 10, 4), ValueError, r"^mode must be one of \('context', 'windows'\), got 'tiles'", id="mode-unknown"),
        pytest.param(lambda: ChunkLayout.keyframe_stride(interval_s=0.05), ValueError, r"^interval_s=0\.05 is shorter than half a latent frame", id="keyframe_stride-interval-too-short"),
        pytest.param(lambda: ChunkLayout.keyframe_stride(interval_s=0), ValueError, r"^interval_s must be a positive finite number, got 0", id="keyframe_stride-interval-0"),
        pytest.param(lambda: ChunkLayout.keyframe_stride(fps=-1), ValueError, r"^fps must be a positive finite number, got -1", id="keyframe_stride-fps-negative"),
        pytest.param(lambda: ChunkLayout.keyframe_stride(fps=math.nan), ValueError, r"^fps must be a positive finite number, got nan", id="keyframe_stride-fps-nan"),
        pytest.param(lambda: ChunkLayout.keyframe_stride(fps="16"), TypeError, r"^fps must be a float, got str", id="keyframe_stride-fps-str"),
        pytest.param(lambda: ChunkLayout.keyframe_stride(frames_per_latent=0), ValueError, r"^frames_per_latent must be a positive finite number", id="keyframe_stride-frames_per_latent-0"),
    ],
)  # fmt: skip
def test_chunk_layout_rejects(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_chunk_layout_valid():
    assert ChunkLayout.keyframe_stride() == 5
    assert (LAYOUT.num_chunks, LAYOUT.chunk_len) == (4, 4)
    assert ChunkLayout.context(10, 4, 2).num_chunks == 3


# ---------------------------------------------------------------------------- empty inputs are fine
# Empty inputs give empty outputs on every backend, and a backward like any other call: every input
# that requires grad gets a zero gradient of its shape (issue 19.14; docs/design.md, Edge cases).
BACKENDS = ["reference", "sdpa", "triton"]


def leaves(*shapes) -> list[torch.Tensor]:
    return [t(*shape).requires_grad_() for shape in shapes]


def assert_zero_backward(outputs, inputs) -> None:
    """``sum(outputs).backward()`` runs (the outputs are part of the graph) and every input's gradient is 0."""
    assert all(o.requires_grad for o in outputs), "an empty output has no autograd graph"
    sum(o.sum() for o in outputs).backward()
    for i, x in enumerate(inputs):
        assert x.grad is not None and x.grad.shape == x.shape, f"input {i}: gradient {x.grad}"
        assert torch.equal(x.grad, torch.zeros_like(x)), f"input {i}: nonzero gradient"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape, globals_",
    [
        pytest.param((0, N, H, D), None, id="B=0"),
        pytest.param((B, 0, H, D), None, id="N=0"),
        pytest.param((B, 0, H, D), (1, G, H, D), id="N=0-with-globals"),
        pytest.param((0, N, H, D), (1, G, H, D), id="B=0-with-globals"),
        pytest.param((B, 0, H, D), (B, 0, H, D), id="N=0-G=0-globals"),
    ],
)
def test_chunk_attention_empty(shape, globals_, backend):
    q, k, v, *globals_ = leaves(shape, shape, shape, *([globals_] * 2 if globals_ else []))
    gk, gv = globals_ or (None, None)
    kw = dict(chunk_size=4, context_size=4, global_k=gk, global_v=gv, backend=backend)
    o, lse = vk.chunk_attention(q, k, v, return_lse=True, **kw)
    b, n, h, _ = shape
    assert o.shape == shape and o.dtype == q.dtype
    assert lse.shape == (b, h, n) and lse.dtype == torch.float32
    assert_zero_backward([o, lse, vk.chunk_attention(q, k, v, **kw)], [q, k, v, *globals_])


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_attention_with_zero_globals_is_plain_chunk_attention(backend):
    """``G = 0`` global tokens: the same outputs and gradients as no globals, and zero-size global gradients."""
    q, k, v, gk, gv = leaves(*[(B, N, H, D)] * 3, (1, 0, H, D), (1, 0, H, D))
    kw = dict(chunk_size=4, context_size=4, backend=backend)
    o = vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, **kw)
    grads = torch.autograd.grad(o.sum(), [q, k, v, gk, gv])
    q2, k2, v2 = (x.detach().requires_grad_() for x in (q, k, v))
    o2 = vk.chunk_attention(q2, k2, v2, **kw)
    torch.testing.assert_close(o, o2)
    for got, want in zip(grads, torch.autograd.grad(o2.sum(), [q2, k2, v2])):
        torch.testing.assert_close(got, want)
    assert grads[3].shape == gk.shape and grads[4].shape == gv.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "gq_shape, kv_shape",
    [
        pytest.param((B, 0, H, D), (B, N, H, D), id="G=0"),
        pytest.param((B, 0, H, D), (B, 0, H, D), id="G=0-and-N=0"),
        pytest.param((0, G, H, D), (0, N, H, D), id="B=0"),
        pytest.param((0, G, H, D), (0, 0, H, D), id="B=0-and-N=0"),
    ],
)
def test_global_attention_empty(gq_shape, kv_shape, backend):
    gq, k, v = leaves(gq_shape, kv_shape, kv_shape)
    kw = dict(tokens_per_frame=T, keyframe_stride=2, backend=backend)
    o, lse = vk.global_attention(gq, k, v, return_lse=True, **kw)
    b, g, h, _ = gq_shape
    assert o.shape == gq_shape and o.dtype == gq.dtype
    assert lse.shape == (b, h, g) and lse.dtype == torch.float32
    assert_zero_backward([o, lse, vk.global_attention(gq, k, v, **kw)], [gq, k, v])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(B, 0, H, D), (0, N, H, D)], ids=["N=0", "B=0"])
def test_merge_attention_empty(shape, backend):
    b, n, h, _ = shape
    inputs = leaves(shape, (b, h, n), shape, (b, h, n))
    o, lse = vk.merge_attention(*inputs, backend=backend)
    assert o.shape == shape and lse.shape == (b, h, n) and lse.dtype == torch.float32
    assert_zero_backward([o, lse], inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("fused_update", [False, True], ids=["eps-only", "with-x"])
@pytest.mark.parametrize(
    "batch, feat",
    [
        pytest.param(0, FEAT, id="B=0"),
        pytest.param(B, (0,), id="feat-(0)"),
        pytest.param(B, (0, 5), id="feat-(0,5)"),
        pytest.param(B, (3, 0), id="feat-(3,0)"),
    ],
)
def test_overlap_fuse_empty(batch, feat, fused_update, out_windows, backend):
    eps, x = leaves((batch, NW, L, *feat), (batch, F, *feat))
    kw = dict(x=x, coeffs=(0.5, 2.0)) if fused_update else {}
    out = vk.overlap_fuse(eps, LAYOUT, out_windows=out_windows, backend=backend, **kw)
    assert out.shape == ((batch, NW, L, *feat) if out_windows else (batch, F, *feat))
    assert out.dtype == eps.dtype
    assert_zero_backward([out], [eps, x] if fused_update else [eps])
