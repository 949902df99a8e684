"""VideoDiT: a latent video DiT whose self-attention is chunked, with local context and VIN global tokens."""

from __future__ import annotations

import torch
from torch import nn

import vin_kernels
from vin_kernels import ChunkLayout

from .config import DiTConfig
from .layers import (
    Mlp,
    TimestepEmbedding,
    cross_attention,
    layer_norm,
    modulate,
    patchify,
    sincos,
    spatial_sincos,
    split_heads,
    unpatchify,
    zero_,
)

__all__ = ["VideoDiT", "GlobalKV"]

# Per DiT layer, the VIN's global keys and values ``[B, G, heads, head_dim]`` (or None: no VIN).
GlobalKV = list[tuple[torch.Tensor, torch.Tensor]]


class DiTBlock(nn.Module):
    """adaLN-Zero block: chunked self-attention (+ global tokens), text cross-attention, MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        h = cfg.hidden
        self.heads = cfg.heads
        self.norm1 = layer_norm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.norm2 = layer_norm(h, affine=True)
        self.cross_q = nn.Linear(h, h)
        self.cross_kv = nn.Linear(h, 2 * h)
        self.cross_proj = nn.Linear(h, h)
        self.norm3 = layer_norm(h)
        self.mlp = Mlp(h, cfg.mlp_hidden)
        self.ada = nn.Sequential(nn.SiLU(), zero_(nn.Linear(h, 6 * h)))

    def forward(self, x, c, text, attention: dict, global_kv, backend: str):
        """x ``[B, N, hidden]``, c ``[B, hidden]``, text ``[B, L, hidden]``; attention: chunk_attention sizes."""
        B, N, _ = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        q, k, v = split_heads(self.qkv(modulate(self.norm1(x), shift1, scale1)), 3, self.heads)
        gk, gv = global_kv if global_kv is not None else (None, None)
        a = vin_kernels.chunk_attention(q, k, v, global_k=gk, global_v=gv, backend=backend, **attention)
        x = x + gate1[:, None] * self.proj(a.reshape(B, N, -1))
        q = self.cross_q(self.norm2(x)).view(B, N, self.heads, -1)
        tk, tv = split_heads(self.cross_kv(text), 2, self.heads)
        x = x + self.cross_proj(cross_attention(q, tk, tv, backend).reshape(B, N, -1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm3(x), shift2, scale2))


class VideoDiT(nn.Module):
    """Latent video DiT over chunks: ``eps = VideoDiT(x_t, t, text, layout=..., global_kv=...)``.

    Patch embedding 1 x p x p, timestep embedding with adaLN-Zero modulation, ``depth`` blocks of
    (self-attention through :func:`vin_kernels.chunk_attention`, cross-attention to the text,
    MLP), a final adaLN layer back to latent frames.

    The chunking comes from the layout:

    * ``layout=None`` ("full" mode): one chunk over the whole video, the full-attention baseline.
    * context layout: ``x [B, F, C, h, w]``; chunk ``i``'s queries see their own frames, the
      layout's context frames before them and the global tokens.
    * window layout: ``x [B, n, L, C, h, w]`` (the windows); all ``B*n`` windows run in one batched
      call, each seeing itself and the global tokens of its video.

    Time positions are frame indices inside the chunk (window) that owns a frame, so every chunk
    looks like a short video of its own; in full mode they are the frame indices.
    """

    def __init__(self, cfg: DiTConfig, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.backend = backend
        h = cfg.hidden
        self.patch_embed = nn.Linear(cfg.patch_dim, h)
        grid = (cfg.height // cfg.patch, cfg.width // cfg.patch)
        self.register_buffer("spatial_pos", spatial_sincos(*grid, h), persistent=False)
        self.t_embed = TimestepEmbedding(h, cfg.frequency_dim)
        self.text_proj = Mlp(cfg.text_dim, h, h)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = layer_norm(h)
        self.final_ada = nn.Sequential(nn.SiLU(), zero_(nn.Linear(h, 2 * h)))
        self.final = zero_(nn.Linear(h, cfg.patch_dim))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        *,
        layout: ChunkLayout | None = None,
        global_kv: GlobalKV | None = None,
        context_grad: bool = True,
    ) -> torch.Tensor:
        """Predict the noise of ``x``.

        Args:
            x: ``[B, F, C, h, w]`` (full or context layout) or ``[B, n, L, C, h, w]`` (window layout).
            t: ``[B]`` diffusion timesteps. text: ``[B, text_len, text_dim]``.
            global_kv: per block the VIN's ``(gk, gv)`` ``[B, G, heads, head_dim]``, or None.
            context_grad: False stops gradients through the context frames (training).
        Returns:
            the predicted noise, shaped like ``x``, in the model's dtype (inputs are cast to it).
        """
        cfg = self.cfg
        dtype = self.patch_embed.weight.dtype
        x, text = x.to(dtype), text.to(dtype)
        c, text = self.t_embed(t), self.text_proj(text)  # per video, before windows repeat them
        windows = layout is not None and layout.is_windows
        if windows:
            B, n = x.shape[:2]
            x = x.flatten(0, 1)
            c, text = c.repeat_interleave(n, dim=0), text.repeat_interleave(n, dim=0)
        F = x.shape[1]
        T = cfg.tokens_per_frame
        tokens = self.patch_embed(patchify(x, cfg.patch))
        time_pos = sincos(self._time_positions(layout, F, x.device), cfg.hidden).to(tokens.dtype)
        tokens = (tokens.view(-1, F, T, cfg.hidden) + self.spatial_pos + time_pos[:, None]).flatten(1, 2)
        attention = (
            layout.attention_sizes(T) if layout is not None else {"chunk_size": F * T, "context_size": 0}
        ) | {"context_grad": context_grad}
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, c, text, attention, None if global_kv is None else global_kv[i], self.backend)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))
        eps = unpatchify(out, F, cfg.in_channels, cfg.height, cfg.width, cfg.patch)
        return eps.unflatten(0, (B, n)) if windows else eps

    @staticmethod
    def _time_positions(layout: ChunkLayout | None, num_frames: int, device) -> torch.Tensor:
        """Per frame of ``x``: its index inside the chunk/window that owns it (the frame index in full mode)."""
        if layout is None or layout.is_windows:
            return torch.arange(num_frames, device=device)
        return torch.tensor(layout.positions_in_chunk, device=device)
