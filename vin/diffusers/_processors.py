"""Attention processors that run a diffusers video self-attention through vin_kernels.

Each processor repeats its stock counterpart step for step (projections, QK-norm, RoPE, output
projection: the same modules and functions in the same order and dtypes) and replaces only the
attention itself by a call into the shared state of a :class:`vin.diffusers.ChunkedAttention`
handle:

* ``state.video_attention(layer, q, k, v)`` for cross-attention models (Wan, LTX-Video), whose
  self-attention holds only video tokens;
* ``state.joint_attention(layer, vq, vk, vv, tq, tk, tv, text_mask)`` for joint-attention models
  (HunyuanVideo, CogVideoX), whose self-attention holds text and video tokens in one sequence.

All q/k/v are ``[B, N, heads, head_dim]`` (flash-attn layout, what the kernels take); the stock
processors reach the same layout before their attention call, so no extra copies are made.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb as ltx_apply_rotary_emb

__all__ = [
    "CogVideoXChunkedProcessor",
    "HunyuanVideoChunkedProcessor",
    "LTXVideoChunkedProcessor",
    "WanChunkedProcessor",
]


class _ChunkedProcessor:
    """Holds the handle's shared state and this attention's index among the video self-attentions."""

    def __init__(self, state, layer: int):
        self.state = state
        self.layer = layer

    def _unsupported(self, what: str):
        raise NotImplementedError(
            f"{type(self).__name__} (vin.diffusers.chunked_attention) does not support {what}; "
            "remove the handle (handle.remove()) to run this call with the stock processor"
        )


def _wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on ``[B, N, heads, head_dim]``, as in ``WanAttnProcessor`` (diffusers nests it there)."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanChunkedProcessor(_ChunkedProcessor):
    """``WanAttnProcessor`` for the video self-attention (``attn1``) with chunked attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:
            self._unsupported("cross-attention (encoder_hidden_states); it is installed on self-attentions only")
        if attention_mask is not None:
            self._unsupported("an attention mask over the video tokens")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        hidden_states = self.state.video_attention(self.layer, query, key, value)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class LTXVideoChunkedProcessor(_ChunkedProcessor):
    """``LTXVideoAttnProcessor`` for the video self-attention (``attn1``) with chunked attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is not None:
            self._unsupported("cross-attention (encoder_hidden_states); it is installed on self-attentions only")
        if attention_mask is not None:
            self._unsupported("an attention mask over the video tokens")
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = ltx_apply_rotary_emb(query, image_rotary_emb)
            key = ltx_apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        hidden_states = self.state.video_attention(self.layer, query, key, value)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class HunyuanVideoChunkedProcessor(_ChunkedProcessor):
    """``HunyuanVideoAttnProcessor2_0`` for the dual-stream and single-stream blocks with chunked attention.

    Stock sequence order is ``[video; text]``: single-stream blocks project the concatenation with one
    set of weights, dual-stream blocks project the text with ``add_{q,k,v}_proj``. RoPE is applied
    to the video tokens only. ``attention_mask`` (``[B, 1, 1, N_video + N_text]`` bool, built by the
    model from ``encoder_attention_mask``) masks padded text keys.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None:
            self._unsupported("a call without text tokens (encoder_hidden_states=None)")
        text_len = encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if single_stream:
            video = slice(None, -text_len) if text_len else slice(None)
            text = slice(query.shape[1] - text_len, None)
            vq, vk, vv = query[:, video], key[:, video], value[:, video]
            tq, tk, tv = query[:, text], key[:, text], value[:, text]
        else:
            vq, vk, vv = query, key, value
            tq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            tk = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            tv = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                tq = attn.norm_added_q(tq)
            if attn.norm_added_k is not None:
                tk = attn.norm_added_k(tk)
        if image_rotary_emb is not None:
            vq = apply_rotary_emb(vq, image_rotary_emb, sequence_dim=1)
            vk = apply_rotary_emb(vk, image_rotary_emb, sequence_dim=1)

        text_mask = self.state.text_key_mask(attention_mask, vq.shape[1], text_len)
        video_out, text_out = self.state.joint_attention(self.layer, vq, vk, vv, tq, tk, tv, text_mask)
        video_out = video_out.flatten(2, 3).to(vq.dtype)
        text_out = text_out.flatten(2, 3).to(vq.dtype)

        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[0](video_out)
            video_out = attn.to_out[1](video_out)
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


class CogVideoXChunkedProcessor(_ChunkedProcessor):
    """``CogVideoXAttnProcessor2_0`` with chunked attention.

    Stock sequence order is ``[text; video]``, projected with one set of weights; QK-norm is a
    LayerNorm over ``head_dim``; RoPE (when the pipeline passes it) on the video tokens only; the
    output projection runs over the whole sequence before it is split again.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            self._unsupported("an attention mask (the stock CogVideoX pipelines pass none)")
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim)
        value = value.view(batch_size, -1, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        tq, tk, tv = query[:, :text_len], key[:, :text_len], value[:, :text_len]
        vq, vk, vv = query[:, text_len:], key[:, text_len:], value[:, text_len:]
        if image_rotary_emb is not None:
            vq = apply_rotary_emb(vq, image_rotary_emb, sequence_dim=1)
            if not attn.is_cross_attention:
                vk = apply_rotary_emb(vk, image_rotary_emb, sequence_dim=1)

        video_out, text_out = self.state.joint_attention(self.layer, vq, vk, vv, tq, tk, tv, None)
        hidden_states = torch.cat([text_out, video_out], dim=1).flatten(2, 3)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_len, hidden_states.size(1) - text_len], dim=1
        )
        return hidden_states, encoder_hidden_states
