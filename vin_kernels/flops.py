"""Forward and backward FLOPs of the attention ops, counted as their matrix products.

One formula per op, used by the ops' ``torch.utils.flop_counter`` registrations (so
``FlopCounterMode`` counts the custom ops, on the meta device too), by :mod:`vin.flops` and by the
benchmarks. A multiply-add is 2 FLOPs; an attention forward is 2 products (``Q K^T``, ``P V``) and
its backward 5 (``Q K^T`` again, ``dO V^T``, ``P^T dO``, ``dS K``, ``dS^T Q``), FlashAttention's
convention. Softmax, merges and blends are not counted.
"""

from __future__ import annotations

from .layout import ChunkLayout

__all__ = [
    "BACKWARD_FACTOR",
    "attention_pairs_chunked",
    "chunk_attention_flops",
    "global_attention_flops",
]

BACKWARD_FACTOR = 2.5  # 5 matrix products in the backward for 2 in the forward


def attention_pairs_chunked(num_tokens: int, chunk_size: int, context_size: int, num_global: int) -> int:
    """Query-key pairs of chunk attention over one sequence: ``sum_i rows_i * (window_i + G)``.

    The chunk windows come from ``ChunkLayout.context`` applied to tokens.
    """
    if num_tokens == 0:
        return 0
    tokens = ChunkLayout.context(num_tokens, chunk_size, context_size)
    return sum(
        len(tokens.query_frames(i)) * (len(tokens.key_frames(i)) + num_global) for i in range(tokens.num_chunks)
    )


def chunk_attention_flops(batch, num_tokens, heads, head_dim, chunk_size, context_size, num_global) -> int:
    """Forward FLOPs of :func:`vin_kernels.chunk_attention` on ``[batch, num_tokens, heads, head_dim]``."""
    pairs = attention_pairs_chunked(num_tokens, chunk_size, context_size, num_global)
    return 4 * batch * heads * head_dim * pairs


def global_attention_flops(batch, num_global, heads, head_dim, num_tokens, tokens_per_frame, stride, offset) -> int:
    """Forward FLOPs of :func:`vin_kernels.global_attention`: ``G`` queries over the keyframe tokens."""
    num_frames = num_tokens // tokens_per_frame
    keys = len(ChunkLayout.keyframes_of(num_frames, stride, offset)) * tokens_per_frame if num_frames else 0
    return 4 * batch * heads * head_dim * num_global * keys
