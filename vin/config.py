"""Configuration of the chunk-parallel DiT and the VIN (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from vin_kernels.layout import PAPER_FRAMES_PER_LATENT

__all__ = ["DiTConfig", "VINConfig"]


@dataclass(frozen=True)
class DiTConfig:
    """A latent video DiT: patch embedding, ``depth`` adaLN-Zero blocks, text cross-attention.

    Latent videos are ``[B, F, in_channels, height, width]``; patches of ``patch = (1, p, p)`` give
    ``tokens_per_frame = (height / p) * (width / p)`` tokens per latent frame.
    """

    in_channels: int = 4
    height: int = 24
    width: int = 40
    patch: int = 2
    hidden: int = 1152
    depth: int = 28
    heads: int = 16
    mlp_ratio: float = 4.0
    text_dim: int = 4096
    text_len: int = 120
    frequency_dim: int = 256  # sinusoidal timestep features before the timestep MLP

    def __post_init__(self):
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"height {self.height} and width {self.width} must be multiples of patch {self.patch}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} must be a multiple of heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def tokens_per_frame(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    @property
    def patch_dim(self) -> int:
        """Values per patch: ``in_channels * patch * patch``."""
        return self.in_channels * self.patch * self.patch

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)


@dataclass(frozen=True)
class VINConfig:
    """The Video Interface Network: ``num_global_tokens`` learned tokens of width ``dim``.

    Encoder: one cross-attention from the global tokens to the tokens of the keyframes (one latent
    frame every ``keyframe_interval_s`` seconds at ``fps`` with ``frames_per_latent`` video frames per
    latent frame). Processor: ``depth`` self-attention blocks with ``heads`` heads that also see the
    text. Paper: 512 tokens, width 4096, 4 blocks, 32 heads, a keyframe every 1.0 s.
    """

    num_global_tokens: int = 512
    dim: int = 4096
    depth: int = 4
    heads: int = 32
    mlp_ratio: float = 4.0
    keyframe_interval_s: float = 1.0
    fps: float = 16.0
    frames_per_latent: float = PAPER_FRAMES_PER_LATENT

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)
