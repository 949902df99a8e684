"""chunked_attention: run every video self-attention of a diffusers transformer as vin_kernels.chunk_attention."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence

import torch

import vin_kernels
from vin_kernels import ChunkLayout
from vin_kernels.checks import check_int

from ._families import FAMILIES, VideoInputs, bind_forward, family_of

__all__ = ["ChunkedAttention", "VideoInputs", "chunked_attention", "supported_transformers"]

# Per-layer global keys/values ``[Bg, G, heads, head_dim]`` (Bg divides the forward's batch).
GlobalKV = Sequence[tuple[torch.Tensor, torch.Tensor]]
GlobalTokens = GlobalKV | Callable[[VideoInputs], GlobalKV] | None

# transformer -> weak reference to its installed handle (one at a time: a second would save ours as the
# "stock" processors). The value is weak so that a forgotten handle does not keep the transformer alive.
_INSTALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# transformer -> (whole-video arguments, window layout) while vin.diffusers.LongVideo runs a windowed forward
LONG_VIDEO_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def supported_transformers() -> tuple[str, ...]:
    """Class names of the diffusers transformers vin.diffusers supports."""
    return tuple(f.model_class.__name__ for f in FAMILIES)


def _require_int(name: str, value, minimum: int) -> int:
    """A size in latent frames: :func:`vin_kernels.checks.check_int`, the message naming the unit."""
    return check_int(f"{name} (latent frames)", value, minimum)


class _ChunkedState:
    """What the installed processors share: the settings and, per forward, the video's geometry and globals.

    The forward pre-hook sets ``num_frames``/``tokens_per_frame`` and the global keys/values for each
    forward; they stay until the next forward, so that recomputation in backward (gradient
    checkpointing) sees the values of its forward.
    """

    def __init__(self, chunk: int, context: int, context_grad: bool, backend: str, global_tokens: GlobalTokens):
        self.chunk, self.context, self.context_grad, self.backend = chunk, context, context_grad, backend
        self.global_tokens = global_tokens
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
        return vin_kernels.chunk_attention(
            q, k, v, global_k=gk, global_v=gv, context_grad=self.context_grad, backend=self.backend,
            **self._sizes(q.shape[1]),
        )

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
            k_shared, v_shared = k_text, v_text
            if gk is not None:
                k_shared, v_shared = torch.cat([gk[rows], k_text], dim=1), torch.cat([gv[rows], v_text], dim=1)
            video_out.append(
                vin_kernels.chunk_attention(
                    vq[rows], vk[rows], vv[rows], global_k=k_shared, global_v=v_shared,
                    context_grad=self.context_grad, backend=self.backend, **sizes,
                )
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
    context manager that removes itself on exit.
    """

    def __init__(self, transformer, family, chunk, context, context_grad, backend, global_tokens):
        self.transformer = transformer
        self.family = family
        self.chunk, self.context, self.context_grad, self.backend = chunk, context, context_grad, backend
        self._state = _ChunkedState(chunk, context, context_grad, backend, global_tokens)
        modules = family.attention_modules(transformer)
        self.attentions: tuple[str, ...] = tuple(name for name, _ in modules)
        self._modules = [module for _, module in modules]
        self._stock = [module.processor for module in self._modules]
        for layer, module in enumerate(self._modules):
            module.set_processor(family.processor_class(self._state, layer))
        self._hook = transformer.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        self._removed = False
        _INSTALLED[transformer] = weakref.ref(self)

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
        installed = _INSTALLED.get(self.transformer)
        if installed is not None and installed() is self:
            del _INSTALLED[self.transformer]

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
        context_grad: False stops gradients into a token's keys/values through the chunks that see
            it only as context (the paper's inter-chunk stop-gradient, for training).
        backend: vin_kernels backend (``"auto"``: the fastest available for the tensors' device).
    Returns:
        the :class:`ChunkedAttention` handle; ``handle.remove()`` restores the stock processors.

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
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    _check_global_tokens(global_tokens)
    installed = _INSTALLED.get(transformer)
    if installed is not None and installed() is not None:
        raise ValueError(
            f"chunked attention is already installed on this {type(transformer).__name__} "
            f"({installed()!r}); remove that handle first"
        )
    return ChunkedAttention(transformer, family, chunk, context, context_grad, backend, global_tokens)
