"""Model presets: the paper's configuration and a tiny one for CPUs and tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vin_kernels import ChunkLayout

from .config import DiTConfig, VINConfig
from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN

__all__ = ["Preset", "paper", "cpu", "quality", "tiny"]


@dataclass(frozen=True)
class Preset:
    """A DiT + VIN configuration with its chunking, sampling settings and prediction target.

    One positional convention for training and sampling (docs/design.md, Time positions and the
    prediction target): training chunks of ``chunk`` frames see ``context`` frames before them; an
    inference window is one such chunk with its context, ``window = context + chunk`` frames, and
    consecutive windows share the ``overlap = context`` frames (each window adds ``chunk`` new
    frames); context-mode inference uses the same ``context``. Early fusion while the DDIM step
    number is above ``t_alpha`` of ``steps``.
    ``prediction``: what the DiT predicts, ``"epsilon"`` or ``"v"`` (:class:`vin.DiffusionSchedule`).
    """

    dit: DiTConfig
    vin: VINConfig
    chunk: int
    context: int
    t_alpha: int = 20
    steps: int = 50
    prediction: str = "epsilon"

    def __post_init__(self):
        for name, low in (("chunk", 1), ("context", 0), ("t_alpha", 0), ("steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Preset.{name} must be an int >= {low}, got {value!r}")
        DiffusionSchedule(prediction=self.prediction)  # validates the name

    @property
    def window(self) -> int:
        """Frames per inference window: a training chunk with its context (``context + chunk``)."""
        return self.context + self.chunk

    @property
    def overlap(self) -> int:
        """Frames consecutive inference windows share: the training context."""
        return self.context

    @property
    def schedule(self) -> DiffusionSchedule:
        """The diffusion schedule with this preset's prediction target (pass it to sample/training_loss)."""
        return DiffusionSchedule(prediction=self.prediction)

    def train_layout(self, num_frames: int) -> ChunkLayout:
        """Training: chunks of ``chunk`` frames with ``context`` frames of local context."""
        return ChunkLayout.context(num_frames, self.chunk, self.context)

    def context_layout(self, num_frames: int) -> ChunkLayout:
        """Context-mode inference (no duplicated frames): the training layout."""
        return ChunkLayout.context(num_frames, self.chunk, self.context)

    def window_layout(self, num_frames: int) -> ChunkLayout:
        """The paper's inference: windows of ``context + chunk`` frames overlapping by ``context``."""
        return ChunkLayout.windows(num_frames, self.window, self.overlap)

    def build(self, device=None, dtype: torch.dtype | None = None, backend: str = "auto") -> tuple[VideoDiT, VIN]:
        """``(VideoDiT, VIN)`` with random weights (``device="meta"`` allocates nothing)."""
        with torch.device(device or "cpu"):
            model = VideoDiT(self.dit, backend=backend, prediction=self.prediction)
            vin = VIN(self.vin, self.dit, backend=backend)
        if dtype is not None:
            model, vin = model.to(dtype), vin.to(dtype)
        return model, vin


def paper() -> Preset:
    """The paper's setting: an Open-Sora-like DiT at 192x320 (240 tokens per latent frame).

    DiT: hidden 1152, depth 28, 16 heads (head dim 72), patch 1x2x2, 4 latent channels, text
    120 x 4096. VIN: 512 global tokens of width 4096, 4 blocks x 32 heads, a keyframe every
    1.0 s (every 5th latent frame at 16 fps, 16 frames -> 5 latents). Training: chunks of 20
    frames with 8 frames of context. Inference: windows of 8 + 20 = 28 frames overlapping by 8 (each
    window adds one 20-frame chunk: what a training chunk saw; the paper extends the context to 12
    at inference, which would show the DiT time distances it never trained on); fusion while
    step > 20 of 50; epsilon prediction (the paper's loss).
    """
    dit = DiTConfig(in_channels=4, height=24, width=40, patch=2, hidden=1152, depth=28, heads=16, text_dim=4096, text_len=120)
    vin = VINConfig(num_global_tokens=512, dim=4096, depth=4, heads=32)
    return Preset(dit, vin, chunk=20, context=8, t_alpha=20, steps=50)


def cpu() -> Preset:
    """A DiT a 2-core CPU steps in seconds, with the paper's chunking: 12x20 latents with 2x2 patches
    (60 tokens per latent frame), hidden 384, depth 4, 6 heads (head dim 64), 128 global tokens of width
    384 (2 processor blocks, 6 heads); chunks of 20 frames with 8 of context, windows of 28 overlapping
    by 8. The CPU benchmarks' model (``python -m bench --suite model`` on a CPU)."""
    dit = DiTConfig(in_channels=4, height=12, width=20, patch=2, hidden=384, depth=4, heads=6, text_dim=384, text_len=32)
    vin = VINConfig(num_global_tokens=128, dim=384, depth=2, heads=6)
    return Preset(dit, vin, chunk=20, context=8, t_alpha=20, steps=50)


def quality() -> Preset:
    """The toy model that learns :mod:`vin.data`'s scenes in minutes on a 2-core CPU (the ``quality``
    bench suite, :mod:`vin.train`): 16x16 latents in 4x4 patches (16 tokens per latent frame), width
    128, 4 blocks of 4 heads (head dim 32), no text (a zero embedding of width 8), v prediction; VIN:
    16 global tokens of width 128, 1 block, a keyframe every 5th latent frame. Chunks of 8 latent
    frames with 4 of context in training; windows of 12 overlapping by 4 at inference, fusion while
    step > 20 of 50. (Patches of 2 learn as fast per second but make full attention over a 96-frame
    video 16x costlier, 6144 tokens: too slow for the ceiling the suite compares with.)"""
    dit = DiTConfig(in_channels=4, height=16, width=16, patch=4, hidden=128, depth=4, heads=4, text_dim=8, text_len=1)
    vin = VINConfig(num_global_tokens=16, dim=128, depth=1, heads=4)
    return Preset(dit, vin, chunk=8, context=4, t_alpha=20, steps=50, prediction="v")


def tiny() -> Preset:
    """A small model with the paper's structure (16 tokens per frame, width 64, head dim 32) that
    samples 40 latent frames in 50 steps on a 2-core CPU in seconds; chunks of 8 with 4 of context,
    windows of 12 overlapping by 4; v prediction."""
    dit = DiTConfig(in_channels=4, height=8, width=8, patch=2, hidden=64, depth=2, heads=2, text_dim=32, text_len=8)
    vin = VINConfig(num_global_tokens=16, dim=64, depth=1, heads=2)
    return Preset(dit, vin, chunk=8, context=4, t_alpha=20, steps=50, prediction="v")
