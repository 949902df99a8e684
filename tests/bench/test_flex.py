"""The FlexAttention peer the benchmarks time computes chunk_attention (else its times compare other work)."""

import pytest
import torch

import vin_kernels as vk
from vin_bench.flex import chunk_flex_attention


@pytest.mark.parametrize("tokens, chunk, context, globals_", [(40, 12, 5, 3), (36, 12, 0, 1), (20, 20, 0, 2)])
def test_flex_peer_equals_chunk_attention(tokens, chunk, context, globals_):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, tokens, 2, 16) for _ in range(3))
    gk, gv = (torch.randn(2, globals_, 2, 16) for _ in range(2))
    heads_first = [t.transpose(1, 2).contiguous() for t in (q, torch.cat([k, gk], 1), torch.cat([v, gv], 1))]
    run = chunk_flex_attention(*heads_first, chunk_size=chunk, context_size=context, compile_backend="eager")
    expected = vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, chunk_size=chunk, context_size=context, backend="reference")
    torch.testing.assert_close(run().transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
