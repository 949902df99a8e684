"""Building blocks shared by the DiT and the VIN. Every attention here is a vin_kernels op."""

from __future__ import annotations

import math

import torch
from torch import nn

import vin_kernels

__all__ = [
    "sincos",
    "spatial_sincos",
    "rotary_angles",
    "rotate",
    "TimestepEmbedding",
    "Mlp",
    "modulate",
    "split_heads",
    "cross_attention",
    "attention_with_extra_keys",
    "layer_norm",
    "zero_",
    "patchify",
    "unpatchify",
]


def sincos(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[*positions.shape, dim]`` (cos half, then sin half) of float positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def spatial_sincos(rows: int, cols: int, dim: int) -> torch.Tensor:
    """2-D sin-cos embedding ``[rows * cols, dim]`` of a patch grid (half the channels per axis)."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([sincos(r.reshape(-1), dim // 2), sincos(c.reshape(-1), dim - dim // 2)], dim=-1)


def rotary_angles(positions: torch.Tensor, dims: int, base: float, tokens_per_position: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[len(positions) * tokens_per_position, dims / 2]`` float32 of the rotary embedding
    (RoPE; Su et al., 2021) of integer positions, each repeated for ``tokens_per_position`` consecutive
    tokens: angle ``p * base^(-2j / dims)`` for ``j < dims / 2``, computed in float64 so that
    positions in the thousands keep float32 accuracy."""
    freqs = base ** (-torch.arange(0, dims, 2, dtype=torch.float64, device=positions.device) / dims)
    angles = positions.double()[:, None] * freqs
    angles = angles.repeat_interleave(tokens_per_position, dim=0)
    return angles.cos().float(), angles.sin().float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of ``x [B, N, H, D]`` by per-token angles ``[N, R/2]``.

    Channel ``i`` pairs with ``i + R/2`` ("rotate half"): ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``;
    the other ``D - R`` channels are unchanged. ``q . k`` of two rotated vectors then depends on their
    positions only through the difference. Returns a new ``[B, N, H, D]`` tensor in ``x``'s dtype.
    """
    half = cos.shape[-1]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class TimestepEmbedding(nn.Module):
    """Diffusion timestep ``t [B]`` -> ``[B, dim]``: sinusoidal features, then a 2-layer MLP."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sincos(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class Mlp(nn.Sequential):
    """``Linear(dim, hidden) -> GELU(tanh) -> Linear(hidden, out)``."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, out or dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``shift, scale [B, C]`` broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


def split_heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """``[B, N, parts * heads * D]`` -> ``parts`` views ``[B, N, heads, D]`` (stride 1 in D, no copy)."""
    B, N, _ = x.shape
    return x.view(B, N, parts, heads, -1).unbind(2)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Plain attention ``softmax(q k^T / sqrt(D)) v`` of ``M`` queries over all ``L`` keys (text cross-attention).

    q: ``[B, M, H, D]``; k, v: ``[B, L, H, D]``. Runs as :func:`vin_kernels.global_attention` reading a
    "video" of one frame that holds all ``L`` tokens (``tokens_per_frame = L``, every frame a keyframe).
    """
    return vin_kernels.global_attention(q, k, v, tokens_per_frame=k.shape[1], keyframe_stride=1, backend=backend)


def attention_with_extra_keys(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_k: torch.Tensor, extra_v: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Self-attention that also reads extra tokens, in one softmax: ``softmax(q [k; extra_k]^T / sqrt(D)) [v; extra_v]``.

    q, k, v: ``[B, N, H, D]``; extra_k, extra_v: ``[B, E, H, D]`` (e.g. the text, which the VIN's global
    tokens read while they talk to each other; the extra tokens are not updated). Runs as one chunk of
    :func:`vin_kernels.chunk_attention` with the extra tokens as its shared globals (read in place).
    """
    return vin_kernels.chunk_attention(q, k, v, chunk_size=q.shape[1], global_k=extra_k, global_v=extra_v, backend=backend)


def layer_norm(dim: int, affine: bool = False) -> nn.LayerNorm:
    """LayerNorm with eps 1e-6 (no affine parameters where adaLN provides them)."""
    return nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)


def zero_(module: nn.Linear) -> nn.Linear:
    """Zero a linear layer's weight and bias (adaLN-Zero gates, final projection)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Latent frames ``[B, F, C, h, w]`` -> patch tokens ``[B, F * (h/p) * (w/p), C * p * p]`` (frame-major)."""
    B, F, C, h, w = x.shape
    x = x.reshape(B, F, C, h // patch, patch, w // patch, patch).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, F * (h // patch) * (w // patch), C * patch * patch)


def unpatchify(tokens: torch.Tensor, frames: int, channels: int, height: int, width: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, F*T, C*p*p]`` -> ``[B, F, C, h, w]``."""
    B = tokens.shape[0]
    x = tokens.reshape(B, frames, height // patch, width // patch, channels, patch, patch).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, frames, channels, height, width)
