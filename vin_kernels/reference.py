"""Pure-PyTorch reference of every vin-kernels op: the specification the fast backends are tested against.

Everything here is ordinary differentiable PyTorch, runs on any device (CPU, CUDA, meta) and in any
floating dtype (float64 included, for ``torch.autograd.gradcheck``). Low-precision inputs are
computed in float32 and the outputs cast back; the log-sum-exp is returned in float32 (float64 for
float64 inputs). No ``N x N`` score matrix or mask is ever built: attention runs chunk by chunk
and, inside a chunk, over blocks of queries, so paper-sized problems fit in CPU memory.

These functions do not validate their arguments; the public API in :mod:`vin_kernels` does.
"""

from __future__ import annotations

import torch

from .layout import ChunkLayout

__all__ = ["chunk_attention", "global_attention", "merge_attention", "overlap_fuse", "keyframe_token_index", "sample_as_frames"]

# Upper bound on score-matrix elements per block (B * H * rows * keys): 2**26 fp32 = 256 MiB.
_MAX_SCORE_ELEMENTS = 1 << 26


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _attend(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float):
    """One softmax over the concatenation of several key/value sources.

    Args:
        q: ``[B, H, M, D]`` in the compute dtype.
        keys, values: lists of ``[B, H, K_j, D]`` in the compute dtype.
    Returns:
        ``o [B, H, M, D]`` and ``lse [B, H, M]`` (natural log). A row without a key of finite logit
        (every logit -inf, e.g. overflowed) has no keys: ``o = 0``, ``lse = -inf`` and no gradient
        (docs/design.md, Edge cases); a NaN or +inf logit gives NaN.
    """
    k = torch.cat(keys, dim=2)
    v = torch.cat(values, dim=2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    scores = scores.masked_fill(empty, 0.0)  # keeps exp(-inf - -inf) = NaN out of the row and its gradient
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).masked_fill(empty, 0.0)
    return torch.matmul(probs, v), lse.masked_fill(empty.squeeze(-1), float("-inf"))


def _empty_result(shape: tuple[int, ...], dtype: torch.dtype, inputs) -> torch.Tensor:
    """Zeros of ``shape`` (an output without elements) that are part of the autograd graph of ``inputs``.

    An op on an empty problem (``N = 0``, ``G = 0``) still has a backward, as an op with work does:
    ``backward()`` runs and every input that requires grad gets a zero gradient (docs/design.md,
    Edge cases). Each input joins through an empty slice of itself (a view, nothing is copied).
    """
    inputs = [t for t in inputs if t is not None]
    out = inputs[0].new_zeros(shape, dtype=dtype)
    for t in inputs:
        out = out + t.narrow(0, 0, 0).sum()
    return out


def _query_blocks(start: int, stop: int, rows_budget: int):
    """Split query rows ``[start, stop)`` into blocks of at most ``rows_budget`` rows."""
    step = max(1, rows_budget)
    for s in range(start, stop, step):
        yield s, min(s + step, stop)


def _heads_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, N, H, D]`` -> ``[B, H, N, D]`` in ``dtype``."""
    return t.transpose(1, 2).to(dtype)


def _expand_globals(g: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Globals ``[Bg, G, H, D]`` -> ``[B, H, G, D]``; row ``b`` uses globals row ``b // (B // Bg)``."""
    return _heads_first(g, dtype).repeat_interleave(batch // g.shape[0], dim=0)


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
    """``o_i = softmax(q_i [k_win(i); gk]^T * scale) [v_win(i); gv]`` for every query chunk ``i``.

    Query chunk ``i`` holds tokens ``[i*chunk_size, (i+1)*chunk_size)`` (the last may be short); its
    keys are tokens ``[max(0, i*chunk_size - context_size), min((i+1)*chunk_size, N))`` plus all
    ``G`` global tokens, in one softmax.

    Args:
        q, k, v: ``[B, N, H, D]``.
        global_k, global_v: ``[Bg, G, H, D]`` or None; ``Bg`` divides ``B`` and row ``b`` uses global
            row ``b // (B // Bg)``.
        context_grad: False detaches the context keys/values (tokens before a chunk's own queries)
            for that chunk, so no gradient flows into them through it (the paper's stop-gradient).
        softmax_scale: defaults to ``D ** -0.5``.
    Returns:
        ``o [B, N, H, D]`` in ``q.dtype``; with ``return_lse`` also ``lse [B, H, N]`` (float32, or
        float64 for float64 inputs).
    """
    B, N, H, D = q.shape
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    cdt = _compute_dtype(q.dtype)
    qh, kh, vh = (_heads_first(t, cdt) for t in (q, k, v))
    globals_ = []
    if global_k is not None:
        globals_ = [_expand_globals(global_k, B, cdt), _expand_globals(global_v, B, cdt)]

    outs, lses = [], []
    for group in ChunkLayout.context_groups(N, chunk_size, context_size):
        for j in range(group.count):
            rows, keys_range = group.query_range(j), group.key_range(j)
            lo, c0, c1 = keys_range.start, rows.start, rows.stop
            k_ctx, v_ctx = kh[:, :, lo:c0], vh[:, :, lo:c0]
            if not context_grad:
                k_ctx, v_ctx = k_ctx.detach(), v_ctx.detach()
            keys = [k_ctx, kh[:, :, c0:c1]]
            values = [v_ctx, vh[:, :, c0:c1]]
            if globals_:
                keys.append(globals_[0])
                values.append(globals_[1])
            num_keys = len(keys_range) + (globals_[0].shape[2] if globals_ else 0)
            block_rows = _MAX_SCORE_ELEMENTS // max(1, B * H * num_keys)
            for r0, r1 in _query_blocks(c0, c1, block_rows):
                o_blk, lse_blk = _attend(qh[:, :, r0:r1], keys, values, scale)
                outs.append(o_blk)
                lses.append(lse_blk)

    if N == 0:
        inputs = (q, k, v, global_k, global_v)
        o, lse = _empty_result(q.shape, q.dtype, inputs), _empty_result((B, H, 0), cdt, inputs)
    else:
        o = torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype)
        lse = torch.cat(lses, dim=2)
    return (o, lse) if return_lse else o


def keyframe_token_index(
    num_tokens: int, tokens_per_frame: int, keyframe_stride: int, keyframe_offset: int = 0, device=None
) -> torch.Tensor:
    """Token indices ``[K*T]`` of the keyframes of a ``num_tokens``-token video (frames from ChunkLayout)."""
    num_frames = num_tokens // tokens_per_frame
    frames = ChunkLayout.keyframes_of(num_frames, keyframe_stride, keyframe_offset)
    frames_t = torch.tensor(frames, dtype=torch.long, device=device)
    tokens = torch.arange(tokens_per_frame, dtype=torch.long, device=device)
    return (frames_t[:, None] * tokens_per_frame + tokens[None, :]).reshape(-1)


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
    """The VIN read: ``o = softmax(gq k_key^T * scale) v_key`` over the tokens of the keyframes.

    Keyframes are latent frames ``keyframe_offset, keyframe_offset + keyframe_stride, ... < F`` of the
    ``F = N / tokens_per_frame`` frames; their tokens are ``[f*T, (f+1)*T)``.

    Args:
        gq: ``[B, G, H, D]`` global queries.
        k, v: ``[B, N, H, D]`` video keys/values, ``N`` a multiple of ``tokens_per_frame``.
    Returns:
        ``o [B, G, H, D]`` in ``gq.dtype``; with ``return_lse`` also ``lse [B, H, G]``.
    """
    B, G, H, D = gq.shape
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    cdt = _compute_dtype(gq.dtype)
    if G == 0 or B == 0:
        o, lse = _empty_result(gq.shape, gq.dtype, (gq, k, v)), _empty_result((B, H, G), cdt, (gq, k, v))
        return (o, lse) if return_lse else o
    index = keyframe_token_index(k.shape[1], tokens_per_frame, keyframe_stride, keyframe_offset, k.device)
    k_key = _heads_first(k.index_select(1, index), cdt)
    v_key = _heads_first(v.index_select(1, index), cdt)
    qh = _heads_first(gq, cdt)
    rows = _MAX_SCORE_ELEMENTS // max(1, B * H * index.numel())
    outs, lses = [], []
    for r0, r1 in _query_blocks(0, G, rows):
        o_blk, lse_blk = _attend(qh[:, :, r0:r1], [k_key], [v_key], scale)
        outs.append(o_blk)
        lses.append(lse_blk)
    o = torch.cat(outs, dim=2).transpose(1, 2).to(gq.dtype)
    lse = torch.cat(lses, dim=2)
    return (o, lse) if return_lse else o


def merge_attention(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor):
    """Attention over the union of two disjoint key sets from the two partial results.

    ``lse = log(exp(lse_a) + exp(lse_b))``, ``o = exp(lse_a - lse) * o_a + exp(lse_b - lse) * o_b``.
    A side with ``lse = -inf`` (no keys) contributes nothing; if both are empty the output is 0
    and ``lse = -inf``.

    Args:
        o_a, o_b: ``[B, N, H, D]``.
        lse_a, lse_b: ``[B, H, N]`` natural-log sums (float32).
    Returns:
        ``(o [B, N, H, D] in o_a.dtype, lse [B, H, N] in lse_a.dtype)``.
    """
    cdt = _compute_dtype(o_a.dtype)
    la, lb = lse_a.to(cdt), lse_b.to(cdt)
    m = torch.maximum(la, lb)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    total = wa + wb
    safe_total = torch.where(total == 0, torch.ones_like(total), total)
    # Both sides empty: lse = -inf, chosen by where so that no log(0) is differentiated (its gradient, 0 * inf, is NaN).
    lse = torch.where(total == 0, torch.full_like(total, float("-inf")), m + torch.log(safe_total))
    # [B, H, N] -> [B, N, H, 1] to scale o
    sa = (wa / safe_total).transpose(1, 2).unsqueeze(-1)
    sb = (wb / safe_total).transpose(1, 2).unsqueeze(-1)
    o = sa * o_a.to(cdt) + sb * o_b.to(cdt)
    return o.to(o_a.dtype), lse.to(lse_a.dtype)


def overlap_fuse(
    eps: torch.Tensor,
    layout: ChunkLayout,
    *,
    x: torch.Tensor | None = None,
    coeffs: tuple[float, float] | None = None,
    out_windows: bool = False,
):
    """Blend per-window predictions into the video: ``fused[f] = sum_i w_i(f) * eps[:, i, f - start_i]``.

    ``w_i(f)`` are the layout's normalized blend weights (:attr:`ChunkLayout.frame_blend`); where
    two windows overlap by ``O`` frames this is the paper's ``((O - W(k)) eps_i + W(k) eps_{i+1}) / O``.
    With ``x`` the sampler update is fused: ``out = a * x + b * fused`` for ``coeffs = (a, b)``.

    Args:
        eps: ``[B, n, L, *feat]`` per-window predictions (``n = layout.num_chunks``,
            ``L = layout.chunk_len``).
        layout: a window-mode :class:`ChunkLayout`.
        x: optional current sample, as frames ``[B, F, *feat]`` or as windows ``[B, n, L, *feat]``
            whose overlapping frames are copies (read at :attr:`ChunkLayout.frame_source`).
        coeffs: ``(a, b)``, required with ``x``.
        out_windows: return the result cut back into windows ``[B, n, L, *feat]``.
    Returns:
        ``[B, F, *feat]`` (or ``[B, n, L, *feat]`` with ``out_windows``) in ``eps.dtype``.
    """
    cdt = _compute_dtype(eps.dtype)
    B, n, L = eps.shape[:3]
    feat = eps.shape[3:]
    fused = eps.new_zeros((B, layout.num_frames, *feat), dtype=cdt)
    weights = torch.tensor(layout.normalized_blend_weights, dtype=cdt, device=eps.device)
    weights = weights.reshape(n, L, *([1] * len(feat)))
    for i, start in enumerate(layout.starts):
        fused = fused.index_add(1, torch.arange(start, start + L, device=eps.device), weights[i] * eps[:, i].to(cdt))
    out = fused if x is None else coeffs[0] * sample_as_frames(x, eps, layout).to(cdt) + coeffs[1] * fused
    if out_windows:
        out = layout.cut_windows(out)
    return out.to(eps.dtype)


def sample_as_frames(x: torch.Tensor, eps: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """The sample ``x`` of :func:`overlap_fuse` as frames ``[B, F, *feat]``.

    ``x`` with one dim fewer than ``eps`` is already frames; ``x`` shaped like ``eps`` is windows
    ``[B, n, L, *feat]`` and frame ``f`` is read from the first window covering it
    (:attr:`ChunkLayout.frame_source`; a state written with ``out_windows=True`` holds the same
    value in every window covering a frame).
    """
    return x if x.dim() < eps.dim() else layout.frames_from_copies(x)
