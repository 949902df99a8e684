"""chunk_attention: public function, backend registrations, the Triton torch.library ops (forward,
backward) with fake kernels and autograd."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import reference, sdpa
from ..checks import TRITON_HEAD_DIMS, validate_chunk_attention
from ..dispatch import implementation, register
from ..flops import BACKWARD_FACTOR, chunk_attention_flops

__all__ = ["chunk_attention"]


def chunk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    chunk_size: int,
    context_size: int = 0,
    global_k: torch.Tensor | None = None,
    global_v: torch.Tensor | None = None,
    context_grad: bool = True,
    softmax_scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """``o_i = softmax(q_i [k_win(i); gk]^T * scale) [v_win(i); gv]``: chunked attention with context and globals.

    Query chunk ``i`` (tokens ``[i*chunk_size, (i+1)*chunk_size)``, the last may be short) attends, in
    one softmax, to the keys of tokens ``[max(0, i*chunk_size - context_size), min((i+1)*chunk_size, N))``
    of the same sequence and to all ``G`` shared global tokens. ``chunk_size >= N`` and no globals is
    ordinary full attention. For overlapping windows batch them as ``[B*n, W*T, H, D]`` with
    ``chunk_size = W*T`` and pass globals of batch ``B``: window row ``r`` uses globals row ``r // n``.

    Args:
        q, k, v: ``[B, N, H, D]`` (flash-attn layout), fp16/bf16/fp32, same dtype and device, stride 1
            in the last dim. Any head dim ``D`` on the sdpa and reference backends; Triton takes
            :data:`vin_kernels.checks.TRITON_HEAD_DIMS`. Tensors in SDPA's ``[B, H, N, D]`` layout
            go in without a copy as ``q.transpose(1, 2)`` (the op reads strides; it does not need
            contiguous inputs), and ``o.transpose(1, 2)`` is the result in that layout.
        chunk_size: query tokens per chunk (>= 1).
        context_size: tokens before a chunk's own that its queries also see (>= 0).
        global_k, global_v: ``[Bg, G, H, D]`` shared global keys/values or None; ``Bg`` divides ``B``
            and row ``b`` of ``q`` uses global row ``b // (B // Bg)``; ``G = 0`` means none.
        context_grad: False drops the context part of dk/dv: no gradient reaches a token's k/v
            through the chunks that see it only as context (the paper's stop-gradient).
        softmax_scale: defaults to ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp of every query's scores.
        backend: ``"auto"``, ``"sdpa"``, ``"triton"`` or ``"reference"`` (see :func:`vin_kernels.backends`).
    Returns:
        ``o [B, N, H, D]`` in ``q.dtype``; with ``return_lse`` the pair ``(o, lse)``, ``lse [B, H, N]``
        float32 natural log. Differentiable in q, k, v, global_k, global_v (and through ``lse``).

    Example::

        o = chunk_attention(q, k, v, chunk_size=20 * 240, context_size=8 * 240, global_k=gk, global_v=gv)
    """
    validate_chunk_attention(
        q, k, v, global_k, global_v, chunk_size, context_size, context_grad, softmax_scale, return_lse
    )
    impl = implementation("chunk_attention", backend, q.device, head_dim=q.shape[-1], dtype=q.dtype)
    return impl.fn(
        q, k, v, chunk_size=chunk_size, context_size=context_size, global_k=global_k, global_v=global_v,
        context_grad=context_grad, softmax_scale=softmax_scale, return_lse=return_lse,
    )


def _triton(q, k, v, *, chunk_size, context_size, global_k, global_v, context_grad, softmax_scale, return_lse):
    """The Triton kernels through their torch.library op (empty inputs: the reference)."""
    if q.numel() == 0:
        return reference.chunk_attention(
            q, k, v, chunk_size=chunk_size, context_size=context_size, global_k=global_k, global_v=global_v,
            context_grad=context_grad, softmax_scale=softmax_scale, return_lse=return_lse,
        )
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    o, lse = _chunk_attention_op(q, k, v, global_k, global_v, chunk_size, context_size, context_grad, scale)
    return (o, lse) if return_lse else o


# ------------------------------------------------------------------------------------ torch.library ops
@torch.library.custom_op("vin_kernels::chunk_attention", mutates_args=())
def _chunk_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    global_k: torch.Tensor | None,
    global_v: torch.Tensor | None,
    chunk_size: int,
    context_size: int,
    context_grad: bool,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import chunk_attention as kernels

    return kernels.forward(q, k, v, global_k, global_v, chunk_size, context_size, softmax_scale)


@_chunk_attention_op.register_fake
def _(q, k, v, global_k, global_v, chunk_size, context_size, context_grad, softmax_scale):
    B, N, H, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, H, N), dtype=torch.float32)


@torch.library.custom_op("vin_kernels::chunk_attention_backward", mutates_args=())
def _chunk_attention_backward_op(
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    global_k: torch.Tensor | None,
    global_v: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    chunk_size: int,
    context_size: int,
    context_grad: bool,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dglobal_k, dglobal_v)``; the global gradients are empty tensors without globals."""
    from ..triton import chunk_attention as kernels

    dq, dk, dv, dgk, dgv = kernels.backward(
        do, dlse, q, k, v, global_k, global_v, o, lse, chunk_size, context_size, context_grad, softmax_scale
    )
    if dgk is None:
        dgk, dgv = q.new_empty(0), q.new_empty(0)
    return dq, dk, dv, dgk, dgv


@_chunk_attention_backward_op.register_fake
def _(do, dlse, q, k, v, global_k, global_v, o, lse, chunk_size, context_size, context_grad, softmax_scale):
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v)]
    if global_k is None:
        return (*grads, q.new_empty(0), q.new_empty(0))
    contiguous = torch.contiguous_format
    return (*grads, torch.empty_like(global_k, memory_format=contiguous), torch.empty_like(global_v, memory_format=contiguous))


def _setup_context(ctx, inputs, output):
    q, k, v, global_k, global_v, chunk_size, context_size, context_grad, softmax_scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, global_k, global_v, o, lse)
    ctx.params = (chunk_size, context_size, context_grad, softmax_scale)
    ctx.has_globals = global_k is not None


def _backward(ctx, do, dlse):
    q, k, v, global_k, global_v, o, lse = ctx.saved_tensors
    dq, dk, dv, dgk, dgv = _chunk_attention_backward_op(do, dlse, q, k, v, global_k, global_v, o, lse, *ctx.params)
    if not ctx.has_globals:
        dgk = dgv = None
    return dq, dk, dv, dgk, dgv, None, None, None, None


_chunk_attention_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.vin_kernels.chunk_attention)
def _flops(q, k, v, global_k, global_v, chunk_size, context_size, context_grad, softmax_scale, out_shape=None):
    B, N, H, D = q
    return chunk_attention_flops(B, N, H, D, chunk_size, context_size, 0 if global_k is None else global_k[1])


@register_flop_formula(torch.ops.vin_kernels.chunk_attention_backward)
def _backward_flops(do, dlse, q, k, v, global_k, global_v, o, lse, chunk_size, context_size, context_grad, softmax_scale, out_shape=None):
    B, N, H, D = q
    G = 0 if global_k is None else global_k[1]
    return int(BACKWARD_FACTOR * chunk_attention_flops(B, N, H, D, chunk_size, context_size, G))


register("chunk_attention", "reference", reference.chunk_attention)
register("chunk_attention", "sdpa", sdpa.chunk_attention)
register("chunk_attention", "triton", _triton, head_dims=TRITON_HEAD_DIMS)
