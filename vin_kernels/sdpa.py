"""The ``sdpa`` backend: every op composed from PyTorch's own fused attention, differentiable by autograd.

Runs on any device and takes any head dim: on a CPU ``scaled_dot_product_attention`` is PyTorch's
flash kernel, on CUDA it picks flash / cuDNN / memory-efficient attention. It is the default on a
CPU and the strongest composite baseline (and the fallback where Triton is missing) on a GPU.

* :func:`chunk_attention`: the query chunks are grouped by shape (:meth:`ChunkLayout.context_groups`
  over tokens: the chunks whose context is cut by the sequence start, the full chunks, a short last
  chunk) and each group is one batched attention call. Per group, the key windows
  ``[context; own]`` (read as strided views of ``k``/``v``) and the shared globals are gathered once
  into heads-first contiguous ``[B*m, H, window + G, D]`` tensors: at most
  ``(context + chunk + G) / chunk`` times the memory of ``k`` and ``v``. Heads-first matters: the CPU
  flash kernel ran 2.5x slower on ``[B, N, H, D]`` views transposed to ``[B, H, N, D]`` (488 ms vs
  196 ms for the gathered windows at N=9600, H=6, D=64, 2 threads). ``context_grad=False`` detaches
  the context part of each window before it joins the keys.
* :func:`global_attention`: the keyframes as a strided view (every ``stride``-th frame), gathered
  heads-first, one fused call.
* :func:`merge_attention`: the reference's vectorized formula (it has no loop to fuse).
* :func:`overlap_fuse`: one ``index_add`` over all windows, no Python loop.

On a CPU every attention call is the aten flash op that PyTorch's SDPA runs there
(``_scaled_dot_product_flash_attention_for_cpu``, called directly: the same kernel and speed, and it
returns the log-sum-exp). With ``return_lse`` it goes through :class:`_AttentionWithLse`, whose
backward adds the log-sum-exp's own gradient; on other devices that path computes the scores
explicitly (the Triton backend is the fast one there).

Edge rows (docs/design.md, Edge cases). The CPU flash kernel drops a NaN logit from its row max when
the NaN sits outside its vector lanes (e.g. rows of fewer than 16 keys), so a row whose logits are
all NaN or ``-inf`` came out as ``o = 0``, ``lse = 0``, the same as a row without keys.
:func:`_edge_rows` finds such rows from the log-sum-exp the kernel returns anyway (exactly 0) and
recomputes only their logits: NaN (a NaN or ``+inf`` logit) or, for a row without keys,
``lse = -inf``. Cost on ordinary inputs: one comparison over the ``[b, H, L]`` log-sum-exp per call
(40 us per chunk_attention call at the CPU kernels-suite shape, N=4800, H=6, D=64, chunks of 1200
with 720 of context and 128 globals, against 92 ms for its forward; measured on the 2-core CPU).

FLOPs: this module registers ``torch.utils.flop_counter`` formulas for the CPU flash op and its
backward (PyTorch has them only for the CUDA ops), so ``FlopCounterMode`` counts this backend, and
any plain ``scaled_dot_product_attention`` on a CPU, as it counts SDPA on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference
from .layout import ChunkLayout

__all__ = ["chunk_attention", "chunk_windows", "global_attention", "merge_attention", "overlap_fuse"]

_ATEN = torch.ops.aten


# ------------------------------------------------------------------------------------ attention core
def _use_aten_cpu_flash(q: torch.Tensor) -> bool:
    """The aten CPU flash op returns the log-sum-exp; it takes fp32, fp16 and bf16 on the CPU (and meta)."""
    return q.device.type in ("cpu", "meta") and q.dtype in (torch.float32, torch.float16, torch.bfloat16)


class _AttentionWithLse(torch.autograd.Function):
    """``(o, lse) = (softmax(s) v, logsumexp(s))``, ``s = scale q k^T``, heads-first ``[b, H, L, D]``.

    Backward: PyTorch's flash backward gives the gradients through ``o``; the log-sum-exp adds
    ``d lse_i / d q_i = scale * (P k)_i`` and ``d lse_i / d k_j = scale * P_ij q_i``, i.e.
    ``dq += scale * dlse * attention(q, k, k)`` and ``dk += scale * P^T (dlse * q)`` (the value
    gradient of the same attention for the upstream ``dlse * q``). Both only when ``dlse`` is given
    (an unused log-sum-exp passes None, not zeros: no second attention for nothing).
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        o, lse = _ATEN._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        scale = ctx.scale
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = _ATEN._scaled_dot_product_flash_attention_for_cpu_backward(
            do.contiguous(), q, k, v, o, lse, 0.0, False, scale=scale
        )
        if dlse is not None:
            pk, _ = _ATEN._scaled_dot_product_flash_attention_for_cpu(q, k, k, scale=scale)  # P k
            upstream = (dlse.unsqueeze(-1) * q.float()).to(q.dtype)
            *_, pt_q = _ATEN._scaled_dot_product_flash_attention_for_cpu_backward(
                upstream, q, k, k, pk, lse, 0.0, False, scale=scale
            )  # P^T (dlse * q)
            dq = (dq.float() + scale * dlse.unsqueeze(-1) * pk.float()).to(q.dtype)
            dk = (dk.float() + scale * pt_q.float()).to(k.dtype)
        return dq, dk, dv, None


def _edge_rows(q: torch.Tensor, k: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, scale: float):
    """The CPU flash kernel's ``(o, lse)`` with the edge rows of docs/design.md (Edge cases) made exact.

    The kernel returns ``o = 0``, ``lse = 0`` for a row without keys (every logit ``-inf``) and also
    for a row whose logits are all NaN or ``-inf`` when the NaN ones sit outside its vector lanes. Only
    rows with ``lse == 0`` exactly can be either, so only their logits are recomputed (fp32,
    ``(q k^T) * scale`` as the kernel): a NaN or ``+inf`` logit makes the row NaN (``o`` and ``lse``),
    all ``-inf`` gives ``lse = -inf`` (``o`` stays 0). An ordinary row with ``lse = 0`` is left as is.
    Not applied under ``torch.compile`` (no data-dependent branch in the graph) nor on meta tensors.
    """
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return o, lse
    candidates = lse == 0
    if not candidates.any():  # ordinary inputs: one comparison over [b, H, L]
        return o, lse
    nan_rows, empty_rows = torch.zeros_like(candidates), torch.zeros_like(candidates)
    block = max(1, reference._MAX_SCORE_ELEMENTS // k.shape[2])
    with torch.no_grad():
        for b, h in candidates.any(-1).nonzero().tolist():
            for rows in candidates[b, h].nonzero().flatten().split(block):
                s = torch.matmul(q[b, h, rows].float(), k[b, h].float().transpose(0, 1)) * scale
                nan_rows[b, h, rows] = (torch.isnan(s) | torch.isposinf(s)).any(-1)
                empty_rows[b, h, rows] = torch.isneginf(s).all(-1)
    if nan_rows.any():
        o = torch.where(nan_rows.unsqueeze(-1), float("nan"), o)
    lse = torch.where(nan_rows, float("nan"), torch.where(empty_rows, float("-inf"), lse))
    return o, lse


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, return_lse: bool):
    """Attention over heads-first ``[b, H, Lq, D]`` / ``[b, H, Lk, D]``: ``o [b, H, Lq, D]`` and
    (with ``return_lse``) ``lse [b, H, Lq]`` float32 (float64 for float64 inputs)."""
    if _use_aten_cpu_flash(q):
        if return_lse:
            o, lse = _AttentionWithLse.apply(q, k, v, scale)
        else:  # what scaled_dot_product_attention runs on a CPU (bitwise), plus the log-sum-exp
            o, lse = _ATEN._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
        o, lse = _edge_rows(q, k, o, lse, scale)
        return o, (lse if return_lse else None)
    if not return_lse:
        return F.scaled_dot_product_attention(q, k, v, scale=scale), None
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(cdt), k.to(cdt).transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    o = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v.to(cdt))
    return o.to(q.dtype), lse


# ------------------------------------------------------------------------------------ FLOP counting
def _register_cpu_flash_flops() -> None:
    """``torch.utils.flop_counter`` formulas for the CPU flash op and its backward: PyTorch's own SDPA
    counts (2 products forward, 5 backward), which it registers only for the CUDA ops. Skipped for an
    op that already has one (a later PyTorch's, or a second call): registering twice is an error."""
    from torch.utils import flop_counter

    def forward_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(q, k, v)

    def backward_flops(do, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(do, q, k, v)

    for op, formula in (
        (_ATEN._scaled_dot_product_flash_attention_for_cpu, forward_flops),
        (_ATEN._scaled_dot_product_flash_attention_for_cpu_backward, backward_flops),
    ):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


_register_cpu_flash_flops()


# ------------------------------------------------------------------------------------ chunk_attention
def _windows(t: torch.Tensor, start: int, length: int, stride: int, count: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens, ``stride`` apart from ``start``: a view ``[B, count, H, length, D]``."""
    span = t.narrow(1, start, (count - 1) * stride + length)
    return span.unfold(1, length, stride).transpose(-1, -2)  # [B, count, H, D, length] -> [..., length, D]


def chunk_windows(q, k, v, global_k, global_v, *, chunk_size: int, context_size: int = 0, context_grad: bool = True):
    """The attention problems of :func:`vin_kernels.chunk_attention`, one per group of equal chunks.

    Yields ``(group, queries, keys, values)`` for every :class:`ChunkGroup` of
    ``ChunkLayout.context_groups(N, chunk_size, context_size)`` (token counts): ``queries
    [B*m, H, query_len, D]`` and ``keys``/``values`` ``[B*m, H, key_len + G, D]`` heads-first
    contiguous (context, own tokens, then the ``G`` globals of the row's video), ``m = group.count``.
    ``context_grad=False`` detaches the context part. Each is an ordinary dense attention problem
    (what this backend hands to ``scaled_dot_product_attention``, and what a dense kernel is
    benchmarked on).
    """
    B, N, H, D = q.shape
    heads_first_globals = (None, None)
    if global_k is not None:
        group = B // global_k.shape[0]
        heads_first_globals = tuple(g.transpose(1, 2).repeat_interleave(group, dim=0) for g in (global_k, global_v))
    for grp in ChunkLayout.context_groups(N, chunk_size, context_size):
        m, stride = grp.count, grp.stride
        queries = _windows(q, grp.query_start, grp.query_len, stride, m).reshape(B * m, H, grp.query_len, D)
        operands = []
        for t, g in zip((k, v), heads_first_globals):
            window = _windows(t, grp.key_start, grp.key_len, stride, m)  # [B, m, H, key_len, D]
            parts = [window]
            if not context_grad and grp.context_len:
                parts = [window[..., : grp.context_len, :].detach(), window[..., grp.context_len :, :]]
            if g is not None:
                parts.append(g.unsqueeze(1).expand(B, m, H, g.shape[2], D))
            operands.append(torch.cat(parts, dim=3).flatten(0, 1) if len(parts) > 1 else window.reshape(B * m, H, -1, D))
        yield grp, queries, operands[0], operands[1]


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
):
    """:func:`vin_kernels.chunk_attention` from batched fused attention calls, one per group of equal chunks."""
    B, N, H, D = q.shape
    if q.numel() == 0:
        return reference.chunk_attention(
            q, k, v, chunk_size=chunk_size, context_size=context_size, global_k=global_k, global_v=global_v,
            context_grad=context_grad, softmax_scale=softmax_scale, return_lse=return_lse,
        )
    scale = D**-0.5 if softmax_scale is None else float(softmax_scale)
    outs, lses = [], []
    problems = chunk_windows(
        q, k, v, global_k, global_v, chunk_size=chunk_size, context_size=context_size, context_grad=context_grad
    )
    for grp, queries, keys, values in problems:
        m = grp.count
        o, lse = _attend(queries, keys, values, scale, return_lse)
        outs.append(o.unflatten(0, (B, m)).permute(0, 1, 3, 2, 4).reshape(B, m * grp.query_len, H, D))
        if return_lse:
            lses.append(lse.unflatten(0, (B, m)).transpose(1, 2).reshape(B, H, m * grp.query_len))
    o = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return (o, torch.cat(lses, dim=2)) if return_lse else o


# ------------------------------------------------------------------------------------ global_attention
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
):
    """:func:`vin_kernels.global_attention`: the keyframe tokens gathered heads-first, one fused call."""
    B, G, H, D = gq.shape
    if gq.numel() == 0:
        return reference.global_attention(
            gq, k, v, tokens_per_frame=tokens_per_frame, keyframe_stride=keyframe_stride,
            keyframe_offset=keyframe_offset, softmax_scale=softmax_scale, return_lse=return_lse,
        )
    scale = D**-0.5 if softmax_scale is None else float(softmax_scale)
    T = tokens_per_frame
    frames = ChunkLayout.keyframe_slice(k.shape[1] // T, keyframe_stride, keyframe_offset)

    def keyframe_tokens(t: torch.Tensor) -> torch.Tensor:  # [B, N, H, D] -> [B, H, K*T, D] contiguous
        return t.unflatten(1, (-1, T))[:, frames].permute(0, 3, 1, 2, 4).reshape(B, H, -1, D)

    o, lse = _attend(gq.transpose(1, 2), keyframe_tokens(k), keyframe_tokens(v), scale, return_lse)
    o = o.transpose(1, 2)
    return (o, lse) if return_lse else o


# ------------------------------------------------------------------------------------ merge_attention
merge_attention = reference.merge_attention


# ------------------------------------------------------------------------------------ overlap_fuse
def overlap_fuse(
    eps: torch.Tensor,
    layout: ChunkLayout,
    *,
    x: torch.Tensor | None = None,
    coeffs: tuple[float, float] | None = None,
    out_windows: bool = False,
) -> torch.Tensor:
    """:func:`vin_kernels.overlap_fuse` as one weighted ``index_add`` of all windows into the frames."""
    cdt = torch.float64 if eps.dtype == torch.float64 else torch.float32
    B, n, L = eps.shape[:3]
    feat = eps.shape[3:]
    device = eps.device
    index = torch.tensor(layout.window_frame_index, dtype=torch.long, device=device).reshape(-1)
    weight = torch.tensor(layout.normalized_blend_weights, dtype=cdt, device=device).reshape(n * L, *([1] * len(feat)))
    fused = eps.new_zeros((B, layout.num_frames, *feat), dtype=cdt).index_add(1, index, eps.flatten(1, 2).to(cdt) * weight)
    if x is not None:
        fused = coeffs[0] * reference.sample_as_frames(x, eps, layout).to(cdt) + coeffs[1] * fused
    if out_windows:
        fused = layout.cut_windows(fused)
    return fused.to(eps.dtype)
