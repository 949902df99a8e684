"""GPU-only checks of the Triton attention kernels at the paper's shape and beyond.

Paper shape: 80 latent frames x 240 tokens per frame (N = 19200), chunks of 20 frames with 8
frames of context, 512 global tokens, 16 heads, head dim 72 (the paper's DiT) and 128. The
reference runs in float32 on the same (rounded) inputs.
"""

import pytest
import torch

import vin_kernels as vk
from vin_kernels import reference as ref
from vin_kernels.testing import assert_close, tolerance

pytestmark = pytest.mark.gpu

T = 240  # tokens per latent frame at 192x320 with an 8x VAE and 2x2 patches
PAPER = dict(frames=80, chunk=20, context=8, G=512, H=16)


def _inputs(B, N, H, D, G, dtype, requires_grad=True):
    torch.manual_seed(0)
    shapes = [(B, N, H, D)] * 3 + [(1, G, H, D)] * 2
    return [torch.randn(s, device="cuda", dtype=dtype).requires_grad_(requires_grad) for s in shapes]


def _check(dtype, D, frames, chunk, context, G, H, B=1, backward=True):
    N = frames * T
    q, k, v, gk, gv = inputs = _inputs(B, N, H, D, G, dtype, requires_grad=backward)
    kw = dict(chunk_size=chunk * T, context_size=context * T, context_grad=False)
    o, lse = vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, return_lse=True, backend="triton", **kw)
    up = [t.detach().float().requires_grad_(backward) for t in inputs]
    o_r, lse_r = ref.chunk_attention(*up[:3], global_k=up[3], global_v=up[4], return_lse=True, **kw)
    tol = tolerance(dtype)
    assert_close(o, o_r, tol, "o")
    assert_close(lse, lse_r, tol, "lse")
    if not backward:
        return
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, inputs, do)
    grads_r = torch.autograd.grad(o_r, up, do.float())
    for name, g, g_r in zip(["dq", "dk", "dv", "dglobal_k", "dglobal_v"], grads, grads_r):
        assert_close(g, g_r, tol, name)


@pytest.mark.parametrize("D", [72, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_chunk_attention_paper_shape(dtype, D):
    _check(dtype, D, **PAPER)


def test_chunk_attention_large_n_forward():
    """256 latent frames (N = 61440): forward only at full head count."""
    _check(torch.bfloat16, 72, frames=256, chunk=20, context=8, G=512, H=16, backward=False)


def test_chunk_attention_large_n_backward():
    """256 latent frames with fewer heads, so the float32 reference's autograd fits in memory."""
    _check(torch.bfloat16, 72, frames=256, chunk=20, context=8, G=512, H=2)


def test_chunk_attention_fp32_exact_and_tf32():
    _check(torch.float32, 72, frames=8, chunk=3, context=1, G=64, H=2)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:  # tf32 dots: the fp32 tolerance with tf32 (docs/design.md, Numerics: 1e-3)
        N = 8 * T
        q, k, v, gk, gv = _inputs(1, N, 2, 64, 64, torch.float32, requires_grad=False)
        o = vk.chunk_attention(q, k, v, chunk_size=3 * T, global_k=gk, global_v=gv, backend="triton")
        o_r = ref.chunk_attention(q, k, v, chunk_size=3 * T, global_k=gk, global_v=gv)
        assert_close(o, o_r, tolerance(torch.float32, tf32=True))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow


@pytest.mark.parametrize("D", [72, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_global_attention_paper_shape(dtype, D):
    """The VIN read: 512 global queries over every 5th frame of an 80-frame video."""
    N, G, H = PAPER["frames"] * T, PAPER["G"], PAPER["H"]
    torch.manual_seed(0)
    gq, k, v = (torch.randn(s, device="cuda", dtype=dtype).requires_grad_() for s in [(1, G, H, D), (1, N, H, D), (1, N, H, D)])
    kw = dict(tokens_per_frame=T, keyframe_stride=vk.ChunkLayout.keyframe_stride())
    o, lse = vk.global_attention(gq, k, v, return_lse=True, backend="triton", **kw)
    up = [t.detach().float().requires_grad_() for t in (gq, k, v)]
    o_r, lse_r = ref.global_attention(*up, return_lse=True, **kw)
    tol = tolerance(dtype)
    assert_close(o, o_r, tol, "o")
    assert_close(lse, lse_r, tol, "lse")
    do = torch.randn_like(o)
    for name, g, g_r in zip(
        ["dgq", "dk", "dv"], torch.autograd.grad(o, (gq, k, v), do), torch.autograd.grad(o_r, up, do.float())
    ):
        assert_close(g, g_r, tol, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_merge_attention_bf16_fp16(dtype):
    B, N, H, D = 2, 1000, 16, 72
    o_a, o_b = (torch.randn(B, N, H, D, device="cuda", dtype=dtype) for _ in range(2))
    lse_a, lse_b = (torch.randn(B, H, N, device="cuda") for _ in range(2))
    o, lse = vk.merge_attention(o_a, lse_a, o_b, lse_b, backend="triton")
    o_r, lse_r = ref.merge_attention(o_a.double(), lse_a.double(), o_b.double(), lse_b.double())
    assert_close(o, o_r, tolerance(dtype), "o")
    assert_close(lse, lse_r, tolerance(torch.float32), "lse")


def test_auto_backend_uses_triton_on_gpu():
    q = torch.randn(1, 64, 2, 64, device="cuda", dtype=torch.bfloat16)
    assert vk.dispatch.select_backend("chunk_attention", "auto", q.device) == "triton"
    o = vk.chunk_attention(q, q, q, chunk_size=16)
    assert_close(o, ref.chunk_attention(q.float(), q.float(), q.float(), chunk_size=16), tolerance(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_the_first_option_that_fits_this_gpu_runs(dtype, monkeypatch):
    """VIN_KERNELS_AUTOTUNE=0 runs, forward and backward at D = 128, the first tile option whose
    shared-memory estimate fits this GPU (vin_kernels/triton/tiles.py): no OutOfResources on a 99 KB
    part, where the most preferred options do not fit."""
    from vin_kernels.triton import tiles

    monkeypatch.setenv("VIN_KERNELS_AUTOTUNE", "0")
    arch = tiles.device_arch(torch.device("cuda"))
    size = torch.empty((), dtype=dtype).element_size()
    assert all(t.candidates(arch, size, 128) for t in tiles.TUNINGS.values())
    _check(dtype, 128, frames=6, chunk=2, context=1, G=64, H=2)
    gq, k, v = (torch.randn(s, device="cuda", dtype=dtype).requires_grad_()
                for s in [(1, 64, 2, 128), (1, 6 * T, 2, 128), (1, 6 * T, 2, 128)])
    o = vk.global_attention(gq, k, v, tokens_per_frame=T, keyframe_stride=2, backend="triton")
    o_r = ref.global_attention(*(t.detach().float() for t in (gq, k, v)), tokens_per_frame=T, keyframe_stride=2)
    assert_close(o, o_r, tolerance(dtype), "o")
    torch.autograd.grad(o, (gq, k, v), torch.randn_like(o))
