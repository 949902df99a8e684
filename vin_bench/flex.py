"""FlexAttention with the chunk mask: the peer both the kernels suite and the GPU check time."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vin_kernels import ChunkLayout


def chunk_flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk_size: int, context_size: int, compile_backend: str = "inductor"
) -> Callable[[], torch.Tensor]:
    """``run() -> o [B, H, N, D]``: ``torch.compile``'d FlexAttention computing ``chunk_attention``.

    Heads-first inputs: ``q [B, H, N, D]``, keys and values ``[B, H, N + G, D]`` whose last ``G``
    rows are the global tokens. Query token ``t`` of chunk ``i`` sees keys
    ``[max(0, i*chunk_size - context_size), min((i+1)*chunk_size, N))`` (from
    :meth:`ChunkLayout.context_groups`) and every global key. The block mask is built here; the first
    ``run()`` compiles."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, N, _ = q.shape
    key_lo = torch.empty(N, dtype=torch.long, device=q.device)
    key_hi = torch.empty_like(key_lo)
    for group in ChunkLayout.context_groups(N, chunk_size, context_size):
        for j in range(group.count):
            rows, keys = group.query_range(j), group.key_range(j)
            key_lo[rows.start : rows.stop], key_hi[rows.start : rows.stop] = keys.start, keys.stop

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= N) | ((kv_idx >= key_lo[q_idx]) & (kv_idx < key_hi[q_idx]))

    block_mask = create_block_mask(mask_mod, B, H, N, k.shape[2], device=q.device)
    compiled = torch.compile(flex_attention, backend=compile_backend)
    return lambda: compiled(q, k, v, block_mask=block_mask)
