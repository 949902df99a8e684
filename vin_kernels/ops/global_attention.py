"""global_attention (the VIN read): public function, backend registrations, the Triton torch.library
ops with fake kernels and autograd."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import reference, sdpa
from ..checks import TRITON_HEAD_DIMS, validate_global_attention
from ..dispatch import implementation, register
from ..flops import BACKWARD_FACTOR, global_attention_flops

__all__ = ["global_attention"]


def global_attention(
    gq: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tokens_per_frame: int,
    keyframe_stride: int,
    keyframe_offset: int = 0,
    softmax_scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """``o = softmax(gq k_key^T * scale) v_key``: global queries read the keyframes of a video in place.

    The keys are the tokens ``[f*T, (f+1)*T)`` of the keyframes ``f = keyframe_offset,
    keyframe_offset + keyframe_stride, ... < N / T`` (``T = tokens_per_frame``; the stride comes from
    :meth:`ChunkLayout.keyframe_stride`, paper: 5).

    Args:
        gq: ``[B, G, H, D]`` global queries, fp16/bf16/fp32, stride 1 in the last dim (any head dim
            on sdpa/reference, :data:`vin_kernels.checks.TRITON_HEAD_DIMS` on Triton; ``[B, H, G, D]``
            tensors go in as ``gq.transpose(1, 2)``, no copy).
        k, v: ``[B, N, H, D]`` video keys/values, dtype/device of ``gq``, ``N`` a multiple of ``T``.
        tokens_per_frame, keyframe_stride: >= 1. keyframe_offset: ``0 <= offset < N / T``.
        softmax_scale: defaults to ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp.
        backend: ``"auto"``, ``"sdpa"``, ``"triton"`` or ``"reference"``.
    Returns:
        ``o [B, G, H, D]`` in ``gq.dtype``; with ``return_lse`` also ``lse [B, H, G]`` float32.
        Differentiable in gq, k, v (rows of k/v outside the keyframes get zero gradient).

    Example::

        z = global_attention(gq, k, v, tokens_per_frame=240, keyframe_stride=ChunkLayout.keyframe_stride())
    """
    validate_global_attention(gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, return_lse)
    impl = implementation("global_attention", backend, gq.device, head_dim=gq.shape[-1], dtype=gq.dtype)
    return impl.fn(
        gq, k, v, tokens_per_frame=tokens_per_frame, keyframe_stride=keyframe_stride,
        keyframe_offset=keyframe_offset, softmax_scale=softmax_scale, return_lse=return_lse,
    )


def _triton(gq, k, v, *, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, return_lse):
    """The Triton kernels through their torch.library op (empty inputs: the reference)."""
    if gq.numel() == 0:
        return reference.global_attention(
            gq, k, v, tokens_per_frame=tokens_per_frame, keyframe_stride=keyframe_stride,
            keyframe_offset=keyframe_offset, softmax_scale=softmax_scale, return_lse=return_lse,
        )
    scale = gq.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    o, lse = _global_attention_op(gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, scale)
    return (o, lse) if return_lse else o


# ------------------------------------------------------------------------------------ torch.library ops
@torch.library.custom_op("vin_kernels::global_attention", mutates_args=())
def _global_attention_op(
    gq: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tokens_per_frame: int,
    keyframe_stride: int,
    keyframe_offset: int,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import global_attention as kernels

    return kernels.forward(gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale)


@_global_attention_op.register_fake
def _(gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale):
    B, G, H, _ = gq.shape
    return torch.empty_like(gq, memory_format=torch.contiguous_format), gq.new_empty((B, H, G), dtype=torch.float32)


@torch.library.custom_op("vin_kernels::global_attention_backward", mutates_args=())
def _global_attention_backward_op(
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    gq: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    tokens_per_frame: int,
    keyframe_stride: int,
    keyframe_offset: int,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dgq, dk, dv)``."""
    from ..triton import global_attention as kernels

    return kernels.backward(
        do, dlse, gq, k, v, o, lse, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale
    )


@_global_attention_backward_op.register_fake
def _(do, dlse, gq, k, v, o, lse, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (gq, k, v))


def _setup_context(ctx, inputs, output):
    gq, k, v, *params = inputs
    ctx.save_for_backward(gq, k, v, *output)
    ctx.params = params


def _backward(ctx, do, dlse):
    gq, k, v, o, lse = ctx.saved_tensors
    dgq, dk, dv = _global_attention_backward_op(do, dlse, gq, k, v, o, lse, *ctx.params)
    return dgq, dk, dv, None, None, None, None


_global_attention_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.vin_kernels.global_attention)
def _flops(gq, k, v, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, out_shape=None):
    B, G, H, D = gq
    return global_attention_flops(B, G, H, D, k[1], tokens_per_frame, keyframe_stride, keyframe_offset)


@register_flop_formula(torch.ops.vin_kernels.global_attention_backward)
def _backward_flops(do, dlse, gq, k, v, o, lse, tokens_per_frame, keyframe_stride, keyframe_offset, softmax_scale, out_shape=None):
    B, G, H, D = gq
    flops = global_attention_flops(B, G, H, D, k[1], tokens_per_frame, keyframe_stride, keyframe_offset)
    return int(BACKWARD_FACTOR * flops)


register("global_attention", "reference", reference.global_attention)
register("global_attention", "sdpa", sdpa.global_attention)
register("global_attention", "triton", _triton, head_dims=TRITON_HEAD_DIMS)
