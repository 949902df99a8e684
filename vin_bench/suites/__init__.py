"""One module per suite: ``run(context) -> dict`` (rows of measurements) and ``markdown(result) -> str``."""

import argparse
from dataclasses import dataclass, field

import torch

from vin_kernels.layout import PAPER_FRAMES_PER_LATENT

from ..progress import Progress, Silent


@dataclass
class Context:
    """What a suite needs to know about the run."""

    device: torch.device
    quick: bool
    video_frames: tuple[int, ...]
    full_matrix: bool = False  # --full-matrix: the static suite compiles every dtype x arch x head dim
    frames_given: bool = False  # --frames was given (CPU suites then run every length, not only the default range)
    ceilings: dict | None = None
    # The parsed command line: ``full`` (--full) and the suites' own flags (add_arguments).
    options: argparse.Namespace = field(default_factory=lambda: argparse.Namespace(full=False))
    progress: Progress = field(default_factory=Silent)  # ctx.progress(items, desc=...), ctx.progress.bar(total, desc)

    @property
    def full(self) -> bool:
        """``--full``: every shape, length and part of the suite; without it the default run's headline slice."""
        return bool(getattr(self.options, "full", False))


def latent_frames(video_frames: int, frames_per_latent: float = PAPER_FRAMES_PER_LATENT) -> int:
    """Latent frames of a video: the paper's VAE turns 16 frames into 5 latents (64 -> 20)."""
    return round(video_frames / frames_per_latent)


def _mode_sizes(preset) -> dict[str, int]:
    """The preset's chunking as its layouts apply it (on a long video): chunk, context, window, overlap, globals."""
    context, windows = preset.context_layout(1000), preset.window_layout(1000)
    return {"chunk": context.chunk_frames, "context": context.context_frames, "window": windows.chunk_len,
            "overlap": windows.overlap_frames, "globals": preset.vin.num_global_tokens}  # fmt: skip


def layout_definitions(preset) -> str:
    """What the modes ``vin_context`` and ``vin_windows`` of a preset are, in one sentence."""
    m = _mode_sizes(preset)
    return (
        f"*vin_context*: chunks of {m['chunk']} latent frames, each also attending the {m['context']} latent "
        f"frames before it and {m['globals']} VIN global tokens (context-mode inference); "
        f"*vin_windows*: windows of {m['window']} latent frames overlapping by {m['overlap']}, their "
        f"predictions blended (the paper's inference) plus the same global tokens; *full*: full attention over "
        "the whole video, no VIN."
    )


def ratio_cell(value: float | None) -> str:
    """A time ratio: ``0.42x`` in bold when below 1 (faster), empty when absent."""
    if value is None:
        return ""
    text = f"{value:.2f}x"
    return f"**{text}**" if value < 1 else text


def mode_caption(preset) -> str:
    """The modes in a plot caption: ``vin_context: chunks of 20 latent frames + 8 of context; ...``."""
    m = _mode_sizes(preset)
    return (
        f"vin_context: chunks of {m['chunk']} latent frames + {m['context']} of context before each; vin_windows: "
        f"windows of {m['window']} overlapping by {m['overlap']}; both + {m['globals']} VIN global tokens. "
        "full: full attention, no VIN."
    )
