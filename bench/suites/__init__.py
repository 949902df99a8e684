"""One module per suite: ``run(context) -> dict`` (rows of measurements) and ``markdown(result) -> str``."""

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Context:
    """What a suite needs to know about the run."""

    device: torch.device
    quick: bool
    video_frames: tuple[int, ...]
    ceilings: dict | None = None
    progress: Callable = field(default=lambda iterable, **_: iterable)  # tqdm-like wrapper


def latent_frames(video_frames: int, frames_per_latent: float = 16 / 5) -> int:
    """Latent frames of a video: the paper's VAE turns 16 frames into 5 latents (64 -> 20)."""
    return round(video_frames / frames_per_latent)
