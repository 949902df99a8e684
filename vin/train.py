"""``python -m vin.train``: train a preset on generated clips, sample long videos, measure their consistency.

Trains the DiT (and the VIN, unless ``--no-vin``) with :func:`vin.training_loss` on fresh clips of
:mod:`vin.data` at every step (unconditional: the text is a zero embedding), then samples long
videos with :func:`vin.sample` and scores them with :func:`vin.metrics.evaluate`. Example (the
``quality`` preset; a few minutes on a 2-core CPU)::

    python -m vin.train --steps 1500 --save /tmp/vin-quality.pt
    python -m vin.train --steps 1500 --no-vin --eval-fusion early

The bench suite ``python -m bench --suite quality`` runs the whole ablation with these functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass

import torch

from . import data, metrics, presets
from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN
from .presets import Preset
from .sampling import FUSION_MODES, sample
from .training import training_loss

__all__ = ["TrainSettings", "Trained", "unconditional_text", "train", "sample_videos", "main"]


@dataclass(frozen=True)
class TrainSettings:
    """One training run: AdamW at ``lr`` with ``warmup`` linear warm-up steps and a cosine decay to 0
    over ``steps``; ``batch`` clips of ``clip_frames`` latent frames per step; gradients clipped at
    ``grad_clip``. ``seed`` fixes the initial weights, the clips and the diffusion noise."""

    steps: int = 1500
    batch: int = 8
    clip_frames: int = 24
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    with_vin: bool = True

    def __post_init__(self):
        for name in ("steps", "batch", "clip_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainSettings.{name} must be a positive int, got {value!r}")
        if not (self.lr > 0 and self.grad_clip > 0 and self.warmup >= 0):
            raise ValueError(f"TrainSettings needs lr > 0, grad_clip > 0, warmup >= 0; got {self}")


@dataclass
class Trained:
    """A trained model: the DiT, the VIN (None without), the loss of every step, the wall time."""

    preset: Preset
    settings: TrainSettings
    model: VideoDiT
    vin: VIN | None
    losses: list[float]
    seconds: float
    threads: int

    def state(self) -> dict:
        """What :func:`load` needs: weights, preset and settings."""
        return {
            "preset": dataclasses.asdict(self.preset),
            "settings": dataclasses.asdict(self.settings),
            "model": self.model.state_dict(),
            "vin": None if self.vin is None else self.vin.state_dict(),
            "losses": self.losses,
        }


def unconditional_text(preset: Preset, batch: int, device=None) -> torch.Tensor:
    """The text input of an unconditional model: zeros ``[batch, text_len, text_dim]``."""
    return torch.zeros(batch, preset.dit.text_len, preset.dit.text_dim, device=device)


def _learning_rate(settings: TrainSettings, step: int) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    preset: Preset,
    settings: TrainSettings = TrainSettings(),
    *,
    scene: data.SceneConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "training",
) -> Trained:
    """Train ``preset`` (its ``chunk`` and ``context`` set the training layout) on generated clips.

    Step ``s`` trains on :func:`vin.data.training_batch` ``(s, batch, clip_frames, seed)`` with the
    diffusion noise drawn from a generator seeded with ``seed``, so two runs with the same settings
    see the same data and noise (the weights still differ by floating-point reordering across
    machines). The scenes must match the preset's latent size.
    """
    scene = scene if scene is not None else data.SceneConfig(height=preset.dit.height, width=preset.dit.width)
    if (scene.height, scene.width) != (preset.dit.height, preset.dit.width) or preset.dit.in_channels != 4:
        raise ValueError(
            f"the scenes are {scene.height}x{scene.width} with 4 channels but the preset expects "
            f"{preset.dit.height}x{preset.dit.width} with {preset.dit.in_channels}"
        )
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    model, net_vin = preset.build(device=device)
    if not settings.with_vin:
        net_vin = None
    params = list(model.parameters()) + ([] if net_vin is None else list(net_vin.parameters()))
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    layout = preset.train_layout(settings.clip_frames)
    text = unconditional_text(preset, settings.batch, device)
    schedule = DiffusionSchedule()
    steps = range(settings.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, leave=False)
    losses = []
    start = time.perf_counter()
    model.train()
    for step in steps:
        clips = data.training_batch(step, settings.batch, settings.clip_frames, seed=settings.seed, config=scene).to(device)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, step)
        loss = training_loss(model, net_vin, clips, text, layout, generator, schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if progress and step % 25 == 0:
            steps.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    if net_vin is not None:
        net_vin.eval()
    return Trained(preset, settings, model, net_vin, losses, seconds, torch.get_num_threads())


def sample_videos(
    trained: Trained,
    layout,
    *,
    num_videos: int,
    seed: int = 0,
    fusion: str = "early",
    steps: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``num_videos`` long videos ``[num_videos, layout.num_frames, 4, h, w]`` from :func:`vin.sample`
    with the preset's steps and ``t_alpha`` (all videos in one batched call; noise from ``seed``)."""
    preset = trained.preset
    device = next(trained.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    return sample(
        trained.model,
        trained.vin,
        unconditional_text(preset, num_videos, device),
        layout=layout,
        steps=steps or preset.steps,
        t_alpha=preset.t_alpha,
        fusion=fusion,
        generator=generator,
        progress=progress,
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vin.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quality", help="a function of vin.presets (default: quality)")
    parser.add_argument("--steps", type=int, default=TrainSettings.steps)
    parser.add_argument("--batch", type=int, default=TrainSettings.batch)
    parser.add_argument("--clip-frames", type=int, default=TrainSettings.clip_frames)
    parser.add_argument("--lr", type=float, default=TrainSettings.lr)
    parser.add_argument("--seed", type=int, default=TrainSettings.seed)
    parser.add_argument("--no-vin", action="store_true", help="train without global tokens")
    parser.add_argument("--context", type=int, default=None, help="local context in frames (default: the preset's)")
    parser.add_argument("--save", default=None, help="write the weights, preset and losses here (torch.save)")
    parser.add_argument("--eval-videos", type=int, default=4, help="long videos to sample and score (0: none)")
    parser.add_argument("--eval-frames", type=int, default=96, help="latent frames per evaluation video")
    parser.add_argument("--eval-fusion", choices=FUSION_MODES, default="early")
    args = parser.parse_args(argv)
    if not hasattr(presets, args.preset) or not callable(getattr(presets, args.preset)):
        parser.error(f"--preset: vin.presets has no preset {args.preset!r}")
    if args.context is not None and args.context < 0:
        parser.error(f"--context must be >= 0, got {args.context}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = getattr(presets, args.preset)()
    if args.context is not None:
        preset = dataclasses.replace(preset, context=args.context)
    settings = TrainSettings(
        steps=args.steps, batch=args.batch, clip_frames=args.clip_frames, lr=args.lr, seed=args.seed, with_vin=not args.no_vin
    )
    trained = train(preset, settings, progress=True)
    tail = trained.losses[-50:]
    report = {
        "preset": args.preset,
        "settings": dataclasses.asdict(settings),
        "context": preset.context,
        "train_seconds": round(trained.seconds, 1),
        "threads": trained.threads,
        "first_loss": trained.losses[0],
        "final_loss": sum(tail) / len(tail),
    }
    if args.save:
        torch.save(trained.state(), args.save)
    if args.eval_videos:
        layout = preset.window_layout(args.eval_frames)
        videos = sample_videos(trained, layout, num_videos=args.eval_videos, fusion=args.eval_fusion, progress=True)
        scores = metrics.evaluate(videos, layout, progress=True)
        report["eval"] = {"frames": args.eval_frames, "fusion": args.eval_fusion} | {
            k: v for k, v in scores.items() if k != "per_video"
        }
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
