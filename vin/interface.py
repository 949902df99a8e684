"""VIN: the Video Interface Network. Global tokens read the keyframes, think with the text, feed the DiT."""

from __future__ import annotations

import torch
from torch import nn

from vin_kernels import ChunkLayout

from .config import DiTConfig, VINConfig
from .dit import GlobalKV
from .layers import (
    Mlp,
    TimestepEmbedding,
    attention_with_extra_keys,
    cross_attention,
    layer_norm,
    patchify,
    spatial_sincos,
    split_heads,
)

__all__ = ["VIN"]


class ProcessorBlock(nn.Module):
    """Pre-norm block: self-attention of the global tokens that also attends to the text, then an MLP.

    The projected text ``[B, L, heads, head_dim]`` joins as extra keys/values of the same softmax
    (:func:`~vin.layers.attention_with_extra_keys`): the global tokens read the text while they talk
    to each other; the text itself is not updated.
    """

    def __init__(self, cfg: VINConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.norm1 = layer_norm(d, affine=True)
        self.qkv = nn.Linear(d, 3 * d)
        self.text_kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = layer_norm(d, affine=True)
        self.mlp = Mlp(d, cfg.mlp_hidden)

    def forward(self, z: torch.Tensor, text: torch.Tensor, backend: str) -> torch.Tensor:
        B, G, _ = z.shape
        q, k, v = split_heads(self.qkv(self.norm1(z)), 3, self.heads)
        tk, tv = split_heads(self.text_kv(text), 2, self.heads)
        a = attention_with_extra_keys(q, k, v, tk, tv, backend)
        z = z + self.proj(a.reshape(B, G, -1))
        return z + self.mlp(self.norm2(z))


class VIN(nn.Module):
    """``global_kv = VIN(x_t, t, text)``: per DiT layer, the keys/values of the refined global tokens.

    * Global tokens: ``num_global_tokens`` learned vectors of width ``dim``, independent of the input,
      plus the timestep embedding (the VIN is recomputed from the noisy input at every step).
    * Encoder: one cross-attention in which the global tokens query the tokens of the keyframes of
      the noisy video (one latent frame every ``keyframe_interval_s``; frames from
      :meth:`ChunkLayout.keyframes`). Only the keyframe latents are patch-embedded (with their
      spatial position; no time position, so a video of any length reads alike; see
      docs/design.md, Time positions and the prediction target) and projected, then
      :func:`vin_kernels.global_attention` reads them.
    * Processor: ``depth`` :class:`ProcessorBlock` (self-attention that also sees the text, MLP).
    * Output: the tokens projected to the DiT width, then per DiT layer to that layer's global keys
      and values ``[B, G, dit.heads, dit.head_dim]``.
    """

    def __init__(self, cfg: VINConfig, dit: DiTConfig, backend: str = "auto"):
        super().__init__()
        self.cfg, self.dit = cfg, dit
        self.backend = backend
        d = cfg.dim
        self.tokens = nn.Parameter(torch.randn(cfg.num_global_tokens, d) * 0.02)
        self.t_embed = TimestepEmbedding(d, dit.frequency_dim)
        self.patch_embed = nn.Linear(dit.patch_dim, d)
        grid = (dit.height // dit.patch, dit.width // dit.patch)
        self.register_buffer("spatial_pos", spatial_sincos(*grid, d), persistent=False)
        self.text_proj = Mlp(dit.text_dim, d, d)
        self.enc_norm_q = layer_norm(d, affine=True)
        self.enc_norm_kv = layer_norm(d, affine=True)
        self.enc_q = nn.Linear(d, d)
        self.enc_kv = nn.Linear(d, 2 * d)
        self.enc_proj = nn.Linear(d, d)
        self.blocks = nn.ModuleList(ProcessorBlock(cfg) for _ in range(cfg.depth))
        self.out_norm = layer_norm(d, affine=True)
        self.to_dit = nn.Linear(d, dit.hidden)
        self.layer_kv = nn.ModuleList(nn.Linear(dit.hidden, 2 * dit.hidden) for _ in range(dit.depth))

    @property
    def keyframe_stride(self) -> int:
        c = self.cfg
        return ChunkLayout.keyframe_stride(c.fps, c.keyframe_interval_s, c.frames_per_latent)

    def keyframes(self, num_frames: int) -> tuple[int, ...]:
        """Latent frames the encoder reads in a video of ``num_frames`` latent frames."""
        return ChunkLayout.keyframes_of(num_frames, self.keyframe_stride)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> GlobalKV:
        """x: the whole noisy video ``[B, F, C, h, w]``; t ``[B]``; text ``[B, text_len, text_dim]``
        (both cast to the VIN's dtype)."""
        B, F = x.shape[:2]
        T, d, heads = self.dit.tokens_per_frame, self.cfg.dim, self.cfg.heads
        x, text = x.to(self.tokens.dtype), text.to(self.tokens.dtype)
        frames = self.keyframes(F)
        frame_index = torch.tensor(frames, device=x.device)
        keys = self.patch_embed(patchify(x.index_select(1, frame_index), self.dit.patch))
        keys = (keys.view(B, len(frames), T, d) + self.spatial_pos).flatten(1, 2)

        z = self.tokens.to(keys.dtype).expand(B, -1, -1) + self.t_embed(t)[:, None]
        q = self.enc_q(self.enc_norm_q(z)).view(B, -1, heads, d // heads)
        k, v = split_heads(self.enc_kv(self.enc_norm_kv(keys)), 2, heads)
        z = z + self.enc_proj(cross_attention(q, k, v, self.backend).reshape(B, -1, d))
        text = self.text_proj(text)
        for block in self.blocks:
            z = block(z, text, self.backend)
        z = self.to_dit(self.out_norm(z))
        return [split_heads(kv(z), 2, self.dit.heads) for kv in self.layer_kv]
