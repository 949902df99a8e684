"""One module per suite: ``run(context) -> dict`` (rows of measurements) and ``markdown(result) -> str``."""

from dataclasses import dataclass, field
from typing import Callable

import torch

from vin_kernels.layout import PAPER_FRAMES_PER_LATENT


@dataclass
class Context:
    """What a suite needs to know about the run."""

    device: torch.device
    quick: bool
    video_frames: tuple[int, ...]
    full_matrix: bool = False  # --full-matrix: the static suite compiles every dtype x arch x head dim
    frames_given: bool = False  # --frames was given (CPU suites then run every length, not only the default range)
    ceilings: dict | None = None
    options: object = None  # the parsed command line (argparse.Namespace): suites' own flags (add_arguments)
    progress: Callable = field(default=lambda iterable, **_: iterable)  # tqdm-like wrapper


def latent_frames(video_frames: int, frames_per_latent: float = PAPER_FRAMES_PER_LATENT) -> int:
    """Latent frames of a video: the paper's VAE turns 16 frames into 5 latents (64 -> 20)."""
    return round(video_frames / frames_per_latent)
