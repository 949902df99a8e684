"""merge_attention: public function, backend registrations, the Triton torch.library op with its fake
kernel and autograd."""

from __future__ import annotations

import torch

from .. import reference, sdpa
from ..checks import validate_merge_attention
from ..dispatch import implementation, register

__all__ = ["merge_attention"]


def merge_attention(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lse = logaddexp(lse_a, lse_b)``, ``o = e^(lse_a - lse) o_a + e^(lse_b - lse) o_b``.

    Combines two attentions of the same queries over disjoint key sets into the attention over
    their union (split-KV, cascade and multi-device reads). A side with ``lse = -inf`` had no keys
    and contributes nothing; both empty gives ``o = 0``, ``lse = -inf``.

    Args:
        o_a, o_b: ``[B, N, H, D]`` partial outputs, fp16/bf16/fp32, same dtype/device/shape.
        lse_a, lse_b: ``[B, H, N]`` float32 natural-log sums, as returned with ``return_lse=True``.
        backend: ``"auto"``, ``"sdpa"``, ``"triton"`` or ``"reference"``.
    Returns:
        ``(o [B, N, H, D] in o_a.dtype, lse [B, H, N] float32)``, differentiable in all four inputs.
    """
    validate_merge_attention(o_a, lse_a, o_b, lse_b)
    return implementation("merge_attention", backend, o_a.device).fn(o_a, lse_a, o_b, lse_b)


def _triton(o_a, lse_a, o_b, lse_b):
    """The Triton kernel through its torch.library op (empty inputs: the reference)."""
    if o_a.numel() == 0:
        return reference.merge_attention(o_a, lse_a, o_b, lse_b)
    return _merge_attention_op(o_a, lse_a, o_b, lse_b)


@torch.library.custom_op("vin_kernels::merge_attention", mutates_args=())
def _merge_attention_op(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import merge_attention as kernels

    return kernels.forward(o_a, lse_a, o_b, lse_b)


@_merge_attention_op.register_fake
def _(o_a, lse_a, o_b, lse_b):
    B, N, H, D = o_a.shape
    return o_a.new_empty((B, N, H, D)), lse_a.new_empty((B, H, N))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, do, dlse):
    """With ``w_a = e^(lse_a - lse)``: ``do_a = w_a do``, ``dlse_a = w_a (w_b <do, o_a - o_b> + dlse)``.

    The weights are recomputed relative to ``max(lse_a, lse_b)`` as in the forward, not from the
    merged lse: that one is rounded to fp32, an error of ``|lse| * 2^-24`` every weight would inherit.
    """
    o_a, lse_a, o_b, lse_b = ctx.saved_tensors
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isneginf(m), 0.0, m)
    e_a, e_b = torch.exp(lse_a - m), torch.exp(lse_b - m)
    total = e_a + e_b
    total = torch.where(total == 0, 1.0, total)  # both sides empty; a NaN or +inf side keeps its NaN weights
    w_a, w_b = e_a / total, e_b / total
    do32 = do.float()
    cross = (do32 * (o_a.float() - o_b.float())).sum(-1).transpose(1, 2)  # [B, H, N]
    dlse = torch.zeros_like(lse_a) if dlse is None else dlse
    dlse_a = w_a * (w_b * cross + dlse)
    dlse_b = w_b * (dlse - w_a * cross)
    do_a = (w_a.transpose(1, 2).unsqueeze(-1) * do32).to(o_a.dtype)
    do_b = (w_b.transpose(1, 2).unsqueeze(-1) * do32).to(o_b.dtype)
    return do_a, dlse_a, do_b, dlse_b


_merge_attention_op.register_autograd(_backward, setup_context=_setup_context)


register("merge_attention", "reference", reference.merge_attention)
register("merge_attention", "sdpa", sdpa.merge_attention)
register("merge_attention", "triton", _triton)
