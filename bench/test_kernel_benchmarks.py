"""Kernel micro-benchmarks for pytest-benchmark: ``pytest bench --benchmark-only`` (GPU).

Each timed call ends with ``torch.cuda.synchronize()``, so the measured time is the kernels', not
the launch's. The side-by-side comparison with baselines lives in ``python -m bench --suite kernels``.
"""

import pytest
import torch

import vin_kernels as vk

pytest.importorskip("pytest_benchmark")
T = 240


def _synchronized(fn):
    def run():
        fn()
        torch.cuda.synchronize()

    return run


@pytest.fixture(scope="module")
def paper_inputs():
    def make(head_dim, requires_grad=False):
        torch.manual_seed(0)
        shapes = [(1, 80 * T, 16, head_dim)] * 3 + [(1, 512, 16, head_dim)] * 2
        return [torch.randn(s, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad) for s in shapes]

    return make


@pytest.mark.parametrize("head_dim", [72, 128])
def test_chunk_attention_forward(benchmark, paper_inputs, head_dim):
    q, k, v, gk, gv = paper_inputs(head_dim)
    benchmark(_synchronized(lambda: vk.chunk_attention(q, k, v, chunk_size=20 * T, context_size=8 * T, global_k=gk, global_v=gv)))


@pytest.mark.parametrize("head_dim", [72, 128])
def test_chunk_attention_forward_backward(benchmark, paper_inputs, head_dim):
    inputs = paper_inputs(head_dim, requires_grad=True)
    q, k, v, gk, gv = inputs
    do = torch.randn_like(q)

    def step():
        o = vk.chunk_attention(q, k, v, chunk_size=20 * T, context_size=8 * T, global_k=gk, global_v=gv, context_grad=False)
        torch.autograd.grad(o, inputs, do)

    benchmark(_synchronized(step))


def test_global_attention_forward(benchmark, paper_inputs):
    _, k, v, gq, _ = paper_inputs(72)
    benchmark(_synchronized(lambda: vk.global_attention(gq, k, v, tokens_per_frame=T, keyframe_stride=5)))


def test_merge_attention(benchmark, paper_inputs):
    q, k, _, _, _ = paper_inputs(72)
    lse_a, lse_b = (torch.randn(1, 16, 80 * T, device="cuda") for _ in range(2))
    benchmark(_synchronized(lambda: vk.merge_attention(q, lse_a, k, lse_b)))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_overlap_fuse_fused_update(benchmark, backend):
    if not vk.backends()[backend].available:
        pytest.skip(vk.backends()[backend].reason)
    layout = vk.ChunkLayout.windows(160, 32, 12)
    eps = torch.randn(16, layout.num_chunks, 32, 4, 24, 40, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(16, 160, 4, 24, 40, device="cuda", dtype=torch.bfloat16)
    benchmark(_synchronized(lambda: vk.overlap_fuse(eps, layout, x=x, coeffs=(0.98, -0.1), out_windows=True, backend=backend)))
