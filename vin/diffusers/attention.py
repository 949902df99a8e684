"""chunked_attention: run every video self-attention of a diffusers transformer as vin_kernels.chunk_attention."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence

import torch

import vin_kernels
from vin_kernels import ChunkLayout
from vin_kernels.checks import check_int

from . import _installed
from ._families import FAMILIES, VideoInputs, bind_forward, family_of

__all__ = ["ChunkedAttention", "VideoInputs", "chunked_attention", "supported_transformers"]

# Per-layer global keys/values ``[Bg, G, heads, head_dim]`` (Bg divides the forward's batch).
GlobalKV = Sequence[tuple[torch.Tensor, torch.Tensor]]
GlobalTokens = GlobalKV | Callable[[VideoInputs], GlobalKV] | None

# the vin_kernels ops the processors call (joint models and gated global tokens use all three)
ATTENTION_OPS = ("chunk_attention", "global_attention", "merge_attention")
# transformer -> (whole-video arguments, window layout) while vin.diffusers.LongVideo runs a windowed forward
LONG_VIDEO_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def supported_transformers() -> tuple[str, ...]:
    """Class names of the diffusers transformers vin.diffusers supports."""
    return tuple(f.model_class.__name__ for f in FAMILIES)


def _require_int(name: str, value, minimum: int) -> int:
    """A size in latent frames: :func:`vin_kernels.checks.check_int`, the message naming the unit."""
    return check_int(f"{name} (latent frames)", value, minimum)


def check_backend(backend, ops: Sequence[str]) -> str:
    """``backend`` checked when a tool is installed, not at its first forward: ``"auto"``, or a
    vin_kernels backend that implements every op of ``ops`` and is available on this machine
    (:func:`vin_kernels.backends`). Whether it suits the tensors' device is checked per call."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        return backend
    statuses = vin_kernels.backends()
    if backend not in statuses:
        raise ValueError(f"backend must be 'auto' or one of {tuple(statuses)}, got {backend!r}")
    status = statuses[backend]
    missing = [op for op in ops if op not in status.ops]
    if missing:
        raise ValueError(f"backend {backend!r} does not implement {', '.join(missing)} (it has: {', '.join(status.ops)})")
    if not status.available:
        raise RuntimeError(f"backend {backend!r} is unavailable here: {status.reason}")
    return backend


class _ChunkedState:
    """What the installed processors share: the settings and, per forward, the video's geometry and globals.

    The forward pre-hook sets ``num_frames``/``tokens_per_frame`` and the global keys/values for each
    forward; they stay until the next forward, so that recomputation in backward (gradient
    checkpointing) sees the values of its forward.
    """

    def __init__(
        self, chunk: int, context: int, context_grad: bool, backend: str, global_tokens: GlobalTokens,
        global_gate: torch.Tensor | None,
    ):
        self.chunk, self.context, self.context_grad, self.backend = chunk, context, context_grad, backend
        self.global_tokens = global_tokens
        self.global_gate = global_gate
        self.num_frames: int | None = None
        self.tokens_per_frame: int | None = None
        self.global_kv: GlobalKV | None = None
        self._mask_cache: tuple[torch.Tensor, int, torch.Tensor | None] | None = None

    # -------------------------------------------------------------------------------- per forward
    def begin_forward(self, family, transformer, arguments: dict, num_layers: int) -> None:
        self.num_frames, self.tokens_per_frame = family.geometry(transformer, arguments)
        self._mask_cache = None
        if self.global_tokens is None:
            self.global_kv = None
            return
        if callable(self.global_tokens):
            long_call = LONG_VIDEO_CALLS.get(transformer)
            if long_call is None:
                video = family.video_inputs(transformer, arguments)
            else:
                whole_video_arguments, layout = long_call
                video = family.video_inputs(transformer, whole_video_arguments)
                video = dataclasses.replace(video, windows_per_video=layout.num_chunks)
            kv = self.global_tokens(video)
        else:
            kv = self.global_tokens
        if len(kv) != num_layers:
            raise ValueError(
                f"global_tokens must give one (global_k, global_v) pair per video self-attention "
                f"({num_layers}), got {len(kv)}"
            )
        self.global_kv = kv

    # -------------------------------------------------------------------------------- attention
    def _sizes(self, num_tokens: int) -> dict[str, int]:
        F, T = self.num_frames, self.tokens_per_frame
        if F is None:
            raise RuntimeError("chunked attention processor called outside a forward of its transformer")
        if num_tokens != F * T:
            raise ValueError(
                f"the self-attention holds {num_tokens} video tokens, not the {F} latent frames x {T} tokens "
                "per frame the transformer's forward arguments describe"
            )
        return ChunkLayout.context(F, self.chunk, self.context).attention_sizes(T)

    def _globals(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        if self.global_kv is None:
            return None, None
        gk, gv = self.global_kv[layer]
        return gk.to(like.dtype), gv.to(like.dtype)

    def video_attention(self, layer: int, q, k, v) -> torch.Tensor:
        """Video queries attend their chunk, its context frames and the layer's global tokens."""
        gk, gv = self._globals(layer, q)
        return self._chunks_and_globals(layer, q, k, v, gk, gv, None, None, self._sizes(q.shape[1]))

    def _chunks_and_globals(self, layer: int, q, k, v, gk, gv, shared_k, shared_v, sizes) -> torch.Tensor:
        """``chunk_attention`` of ``q`` over its chunk window, the ``shared`` keys (a joint model's
        text) and the layer's global tokens ``gk``/``gv``: one softmax over all of them, or with a
        ``global_gate`` :meth:`_gated` (the globals' share scaled by the layer's gate)."""
        gate = None if self.global_gate is None or gk is None or gk.shape[1] == 0 else self.global_gate[layer]
        if gate is None and gk is not None:
            if shared_k is not None:
                shared_k, shared_v = torch.cat([gk, shared_k], dim=1), torch.cat([gv, shared_v], dim=1)
            else:
                shared_k, shared_v = gk, gv
        out = vin_kernels.chunk_attention(
            q, k, v, global_k=shared_k, global_v=shared_v, context_grad=self.context_grad, backend=self.backend,
            return_lse=gate is not None, **sizes,
        )
        return out if gate is None else self._gated(q, *out, gk, gv, gate)

    def _gated(self, q, o_chunk, lse_chunk, gk, gv, gate) -> torch.Tensor:
        """``o = o_c + gate * (o_cg - o_c)`` per head: ``o_c`` the attention without the global tokens,
        ``o_cg`` the one softmax over the same keys and the globals (``merge_attention`` of ``o_c``
        and the attention over the globals alone, by their log-sum-exps).

        ``gate = 0`` gives ``o_c`` bitwise (``o_c + 0``; ``o_cg`` is finite: the merge subtracts the
        larger log-sum-exp); ``gate = 1`` the ungated one softmax. ``d o / d gate = o_cg - o_c`` is
        finite and nonzero at 0, so a zero-initialized gate trains; the global tokens' gradients are
        ``gate`` times theirs in the ungated attention (zero while ``gate = 0``). A shift of the
        globals' logits by ``log(gate)`` is the same at 0 and 1 but has no usable gradient at 0
        (``1/gate`` times a weight of 0) and no value for a gate an optimizer step made negative.
        """
        B, _, H, _ = q.shape
        if gk.shape[0] != B:
            gk, gv = (g.repeat_interleave(B // g.shape[0], dim=0) for g in (gk, gv))
        o_globals, lse_globals = vin_kernels.global_attention(
            q, gk, gv, tokens_per_frame=gk.shape[1], keyframe_stride=1, return_lse=True, backend=self.backend
        )
        o_both, _ = vin_kernels.merge_attention(o_chunk, lse_chunk, o_globals, lse_globals, backend=self.backend)
        gate = gate.to(torch.float32).reshape(1, 1, -1, 1)  # [heads] or a scalar per layer
        return (o_chunk.float() + gate * (o_both.float() - o_chunk.float())).to(o_chunk.dtype)

    def text_key_mask(self, attention_mask, num_video: int, num_text: int) -> torch.Tensor | None:
        """The text-key part ``[B, L]`` (bool) of a joint model's key mask ``[B, 1, 1, N_video + L]``, or None.

        Computed once per forward (every layer gets the same mask tensor); the video keys must all be
        kept, since a chunk's keys are a window of the sequence.
        """
        if attention_mask is None:
            return None
        cache = self._mask_cache
        if cache is not None and cache[0] is attention_mask and cache[1] == num_video:
            return cache[2]
        mask = attention_mask
        expected = (1, 1, num_video + num_text)
        if mask.dtype != torch.bool or mask.dim() != 4 or tuple(mask.shape[1:]) != expected:
            raise NotImplementedError(
                f"joint attention supports a boolean key mask [B, 1, 1, {num_video + num_text}] only, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        mask = mask[:, 0, 0]
        if not bool(mask[:, :num_video].all()):
            raise NotImplementedError("joint attention cannot mask video keys; only text keys may be masked")
        text = mask[:, num_video:]
        text = None if bool(text.all()) else text
        self._mask_cache = (attention_mask, num_video, text)
        return text

    def joint_attention(self, layer: int, vq, vk, vv, tq, tk, tv, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint text+video self-attention, chunked over the video.

        Video queries: one softmax over their chunk window (and context), the (unmasked) text tokens
        and the layer's global tokens — the text rides along as ``chunk_attention``'s shared globals.
        Text queries: attention over every video token (:func:`vin_kernels.global_attention` with
        every frame a keyframe) and over the unmasked text, merged by their log-sum-exp
        (:func:`vin_kernels.merge_attention`): exactly the stock attention of the text rows.

        Rows of the batch whose text masks differ run separately (the kernels take one key set per call).
        """
        B = vq.shape[0]
        sizes = self._sizes(vq.shape[1])
        gk, gv = self._globals(layer, vq)
        if gk is not None and gk.shape[0] != B:
            gk, gv = (g.repeat_interleave(B // g.shape[0], dim=0) for g in (gk, gv))
        if text_mask is None:
            groups = [(slice(None), None)]
        elif bool((text_mask == text_mask[:1]).all()):
            groups = [(slice(None), text_mask[0].nonzero().squeeze(1))]
        else:
            groups = [(slice(b, b + 1), text_mask[b].nonzero().squeeze(1)) for b in range(B)]

        video_out, text_out = [], []
        for rows, keep in groups:
            k_text, v_text = tk[rows], tv[rows]
            if keep is not None:
                k_text, v_text = k_text.index_select(1, keep), v_text.index_select(1, keep)
            g_rows = (None, None) if gk is None else (gk[rows], gv[rows])
            video_out.append(
                self._chunks_and_globals(layer, vq[rows], vk[rows], vv[rows], *g_rows, k_text, v_text, sizes)
            )
            text_out.append(self._text_queries(tq[rows], vk[rows], vv[rows], k_text, v_text))
        if len(groups) == 1:
            return video_out[0], text_out[0]
        return torch.cat(video_out), torch.cat(text_out)

    def _text_queries(self, tq, vk, vv, k_text, v_text) -> torch.Tensor:
        if tq.shape[1] == 0:
            return tq.new_empty(tq.shape)
        o_video, lse_video = vin_kernels.global_attention(
            tq, vk, vv, tokens_per_frame=self.tokens_per_frame, keyframe_stride=1, return_lse=True, backend=self.backend
        )
        if k_text.shape[1] == 0:
            return o_video
        o_text, lse_text = vin_kernels.global_attention(
            tq, k_text, v_text, tokens_per_frame=k_text.shape[1], keyframe_stride=1, return_lse=True,
            backend=self.backend,
        )
        return vin_kernels.merge_attention(o_video, lse_video, o_text, lse_text, backend=self.backend)[0]


class ChunkedAttention:
    """Handle of :func:`chunked_attention`: the installed processors and the forward pre-hook.

    Attributes:
        transformer: the transformer it is installed on.
        attentions: names of the video self-attention modules whose processors it replaced, in the
            order of the per-layer global tokens.
        chunk, context, context_grad, backend: the settings (``chunk``/``context`` in latent frames).

    ``remove()`` puts the stock processor objects back and removes the hook; the handle is also a
    context manager that removes itself on exit. :func:`vin.diffusers.remove` removes it through the
    transformer (also when the handle object is lost).
    """

    def __init__(self, transformer, family, chunk, context, context_grad, backend, global_tokens, global_gate):
        self.transformer = transformer
        self.family = family
        self.chunk, self.context, self.context_grad, self.backend = chunk, context, context_grad, backend
        modules = family.attention_modules(transformer)
        self.attentions: tuple[str, ...] = tuple(name for name, _ in modules)
        self._modules = [module for _, module in modules]
        _check_global_gate(global_gate, self._modules)
        self._state = _ChunkedState(chunk, context, context_grad, backend, global_tokens, global_gate)
        self._stock = [module.processor for module in self._modules]
        for layer, module in enumerate(self._modules):
            module.set_processor(family.processor_class(self._state, layer))
        self._hook = transformer.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        self._removed = False
        _installed.register(transformer, "chunked_attention", self)

    @property
    def installed(self) -> bool:
        """True until :meth:`remove`."""
        return not self._removed

    @property
    def global_tokens(self) -> GlobalTokens:
        return self._state.global_tokens

    @global_tokens.setter
    def global_tokens(self, value: GlobalTokens) -> None:
        _check_global_tokens(value)
        self._state.global_tokens = value

    @property
    def global_gate(self) -> torch.Tensor | None:
        return self._state.global_gate

    @global_gate.setter
    def global_gate(self, value: torch.Tensor | None) -> None:
        _check_global_gate(value, self._modules)
        self._state.global_gate = value

    def _pre_forward(self, module, args, kwargs):
        arguments = bind_forward(module, args, kwargs).arguments
        self._state.begin_forward(self.family, module, arguments, len(self._modules))

    def remove(self) -> None:
        """Restore the stock processors (the same objects) and remove the hook. Idempotent."""
        if self._removed:
            return
        self._hook.remove()
        for module, processor in zip(self._modules, self._stock):
            module.set_processor(processor)
        self._removed = True
        _installed.unregister(self.transformer, "chunked_attention", self)

    def __enter__(self) -> ChunkedAttention:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else "installed"
        return (
            f"ChunkedAttention({type(self.transformer).__name__}, chunk={self.chunk}, context={self.context}, "
            f"{len(self.attentions)} attentions, {state})"
        )


def _check_global_gate(gate, modules) -> None:
    """None, or a float tensor ``[layers]`` or ``[layers, heads]`` for the video self-attentions ``modules``."""
    if gate is None:
        return
    heads = {module.heads for module in modules}
    shapes = [(len(modules),)] + ([(len(modules), *heads)] if len(heads) == 1 else [])
    if not isinstance(gate, torch.Tensor) or not gate.is_floating_point() or tuple(gate.shape) not in shapes:
        what = f"{type(gate).__name__} {tuple(gate.shape)}" if isinstance(gate, torch.Tensor) else type(gate).__name__
        raise TypeError(
            f"global_gate must be None or a float tensor of shape {' or '.join(map(str, shapes))} "
            f"(per video self-attention, optionally per head), got {what}"
        )


def _check_global_tokens(value) -> None:
    if value is None or callable(value):
        return
    def is_pair(pair) -> bool:
        return isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)

    if not isinstance(value, Sequence) or not all(is_pair(pair) for pair in value):
        raise TypeError(
            "global_tokens must be None, a sequence of (global_k, global_v) tensor pairs (one per video "
            "self-attention) or a callable VideoInputs -> such a sequence"
        )


def chunked_attention(
    transformer,
    *,
    chunk: int,
    context: int = 0,
    global_tokens: GlobalTokens = None,
    global_gate: torch.Tensor | None = None,
    context_grad: bool = True,
    backend: str = "auto",
) -> ChunkedAttention:
    """Run every video self-attention of ``transformer`` as :func:`vin_kernels.chunk_attention`.

    The video tokens (``F`` latent frames of ``T`` tokens; both read from every forward's arguments:
    latent shape, patch size) are cut into chunks of ``chunk`` frames; chunk ``i``'s queries attend,
    in one softmax, to the keys of frames ``[max(0, i*chunk - context), (i+1)*chunk)`` and to the
    layer's global tokens. ``chunk >= F`` without globals is the stock attention.

    * Cross-attention models (Wan 2.1/2.2, LTX-Video): the self-attention holds only video tokens.
    * Joint-attention models (HunyuanVideo, CogVideoX): video queries see their chunk window plus
      all text tokens (as shared globals, unmasked ones only); text queries see every token, as in
      the stock model (global_attention over the video merged with attention over the text).

    Projections, QK-norm, RoPE (positions stay those of the whole video) and output projections are
    the stock processor's. Nothing is copied per chunk.

    Args:
        transformer: a ``WanTransformer3DModel``, ``LTXVideoTransformer3DModel``,
            ``HunyuanVideoTransformer3DModel`` or ``CogVideoXTransformer3DModel``.
        chunk: latent frames per chunk (>= 1). context: latent frames before a chunk its queries also see.
        global_tokens: None; per video self-attention (in the order of ``handle.attentions``) a pair
            ``(global_k, global_v)`` of ``[Bg, G, heads, head_dim]`` tensors (``Bg`` divides the batch;
            no RoPE, no norm applied); or a callable ``VideoInputs -> such pairs`` called once per
            forward (e.g. a :class:`vin.diffusers.VINAdapter`).
        global_gate: None (the global tokens join the chunk's softmax), or a float tensor
            ``[layers]`` or ``[layers, heads]``: per layer (and head) the output is
            ``o_c + gate * (o_cg - o_c)``, ``o_c`` the attention without the global tokens, ``o_cg``
            the one softmax with them. 0 gives exactly the output without global tokens, 1 the
            ungated one; differentiable in the gate (a :class:`vin.diffusers.VINAdapter`'s is
            zero-initialized, so attaching it changes nothing until it is trained).
        context_grad: False stops gradients into a token's keys/values through the chunks that see
            it only as context (the paper's inter-chunk stop-gradient, for training).
        backend: vin_kernels backend (``"auto"``: the fastest available for the tensors' device);
            a name that is unknown, unavailable here or lacks an op the processors call raises here.
    Returns:
        the :class:`ChunkedAttention` handle; ``handle.remove()`` (or :func:`vin.diffusers.remove`
        on the transformer) restores the stock processors.

    Example::

        handle = vin.diffusers.chunked_attention(pipe.transformer, chunk=5, context=2)
        video = pipe(prompt, num_frames=81).frames[0]
        handle.remove()
    """
    family = family_of(transformer)
    chunk = _require_int("chunk", chunk, 1)
    context = _require_int("context", context, 0)
    if not isinstance(context_grad, bool):
        raise TypeError(f"context_grad must be a bool, got {type(context_grad).__name__}")
    check_backend(backend, ATTENTION_OPS)
    _check_global_tokens(global_tokens)
    installed = _installed.lookup(transformer, "chunked_attention")
    if installed is not None:
        raise ValueError(
            f"chunked attention is already installed on this {type(transformer).__name__} ({installed!r}); "
            "remove that handle first (handle.remove(), or vin.diffusers.remove(transformer) without the handle)"
        )
    return ChunkedAttention(transformer, family, chunk, context, context_grad, backend, global_tokens, global_gate)
