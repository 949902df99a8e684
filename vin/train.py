"""``python -m vin.train``: train a preset on generated clips, check how well it denoises, sample long videos, score them.

Trains the DiT (and the VIN, unless ``--no-vin``; or one chunk over the whole clip with
``--full-attention``) with :func:`vin.training_loss` on fresh clips of :mod:`vin.data` at every step
(unconditional: the text is a zero embedding). The log says what is trained, the loss with an ETA,
and the denoising diagnostic: the ``x0`` error the trained model implies at t = 200, 500, 900 on
held-out clips, against the best per-frame linear denoiser and the data mean (a model above the
linear denoiser has not learned more than the data's second moments; above the mean, it is worse
than predicting nothing). Then it samples long videos with :func:`vin.sample` and scores them with
:func:`vin.metrics.evaluate` beside real videos. Every flag is checked before any work (one line
naming the flag, exit code 2); a loss that stops being finite stops training (exit code 1).

A ~5-minute run on 2 CPU cores (the quality preset, 1 thread; prints MAWE of 2 sampled videos)::

    python -m vin.train --steps 1200 --eval-videos 2 --threads 1

The bench suite ``python -m bench --suite quality`` runs the whole ablation with these functions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vin_kernels import ChunkLayout

from . import data, metrics, presets
from ._argparse import ArgumentParser
from .diffusion import PREDICTIONS, DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN
from .parallel.cli import save_problem
from .presets import Preset
from .sampling import FUSION_MODES, sample
from .training import predict, training_loss

__all__ = [
    "TrainSettings",
    "Trained",
    "NonFiniteLoss",
    "DIAGNOSTIC_TIMESTEPS",
    "unconditional_text",
    "train",
    "train_layout",
    "eval_layout",
    "denoising_errors",
    "data_baselines",
    "sample_videos",
    "main",
]

DIAGNOSTIC_TIMESTEPS = (200, 500, 900)  # low, middle and high noise (alpha_bar 0.67, 0.08, 0.0004)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (the step and the learning rate are in the message)."""


@dataclass(frozen=True)
class TrainSettings:
    """One training run: AdamW at ``lr`` with ``warmup`` linear warm-up steps and a cosine decay to 0
    over ``steps``; ``batch`` clips of ``clip_frames`` latent frames per step; gradients clipped at
    ``grad_clip``; ``ema``: the decay of an exponential moving average of the weights, which the
    trained model keeps (0: the last weights). ``seed`` fixes the initial weights, the clips and the
    diffusion noise.
    ``with_vin``: train the global tokens; ``full_attention``: one chunk over the whole clip and no
    VIN (the baseline VIN is compared with)."""

    steps: int = 4500
    batch: int = 4
    clip_frames: int = 16
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    with_vin: bool = True
    full_attention: bool = False

    def __post_init__(self):
        for name, low in (("steps", 1), ("batch", 1), ("clip_frames", 1), ("warmup", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainSettings.{name} must be an int >= {low}, got {value!r}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"TrainSettings.{name} must be a positive finite number, got {value!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise ValueError(f"TrainSettings.ema must be a number in [0, 1), got {self.ema!r}")
        if self.full_attention and self.with_vin:
            raise ValueError("TrainSettings: full_attention trains without the VIN; set with_vin=False")


@dataclass
class Trained:
    """A trained model: the DiT, the VIN (None without), the loss of every step, the wall time, and
    the denoising diagnostic of :func:`denoising_errors` at the steps it was measured."""

    preset: Preset
    settings: TrainSettings
    model: VideoDiT
    vin: VIN | None
    losses: list[float]
    seconds: float
    threads: int
    diagnostics: dict[int, dict[int, float]] = field(default_factory=dict)  # step -> {t: x0-MSE}

    def state(self) -> dict:
        """What :func:`load` needs: weights, preset and settings."""
        return {
            "preset": dataclasses.asdict(self.preset),
            "settings": dataclasses.asdict(self.settings),
            "model": self.model.state_dict(),
            "vin": None if self.vin is None else self.vin.state_dict(),
            "losses": self.losses,
            "diagnostics": self.diagnostics,
        }


def unconditional_text(preset: Preset, batch: int, device=None) -> torch.Tensor:
    """The text input of an unconditional model: zeros ``[batch, text_len, text_dim]``."""
    return torch.zeros(batch, preset.dit.text_len, preset.dit.text_dim, device=device)


def train_layout(preset: Preset, settings: TrainSettings, frames: int) -> ChunkLayout | None:
    """The layout a run trains with: None (full attention) or the preset's chunks with context."""
    return None if settings.full_attention else preset.train_layout(frames)


def eval_layout(preset: Preset, settings: TrainSettings, frames: int) -> ChunkLayout:
    """The layout a run samples with: one chunk over the whole video, or the preset's windows."""
    return ChunkLayout.full(frames) if settings.full_attention else preset.window_layout(frames)


def scene_config(preset: Preset) -> data.SceneConfig:
    """The generated scenes at the preset's latent size (ValueError when they do not fit it)."""
    if preset.dit.in_channels != 4:
        raise ValueError(f"the generated videos have 4 latent channels, the preset expects {preset.dit.in_channels}")
    return data.SceneConfig(height=preset.dit.height, width=preset.dit.width)


def _learning_rate(settings: TrainSettings, step: int) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe(preset: Preset, settings: TrainSettings, name: str = "") -> str:
    """One paragraph: the model, the layout, the data and the optimisation a run trains."""
    dit, schedule = preset.dit, preset.schedule
    build = preset.build(device="meta")
    params = sum(p.numel() for p in build[0].parameters())
    vin_params = sum(p.numel() for p in build[1].parameters()) if settings.with_vin else 0
    if settings.full_attention:
        layout = f"full attention over the {settings.clip_frames}-frame clip (one chunk, no VIN)"
    else:
        layout = (f"chunks of {preset.chunk} latent frames with {preset.context} frames of context on clips of "
                  f"{settings.clip_frames} ({'with' if settings.with_vin else 'without'} the VIN's "
                  f"{preset.vin.num_global_tokens} global tokens)")
    return (
        f"training {name or 'a preset'}: DiT {params / 1e6:.2f} M parameters (width {dit.hidden}, {dit.depth} blocks, "
        f"{dit.heads} heads, {dit.height}x{dit.width} latents in {dit.patch}x{dit.patch} patches = "
        f"{dit.tokens_per_frame} tokens per latent frame), VIN {vin_params / 1e6:.2f} M; {schedule.prediction} "
        f"prediction; {layout}; {settings.steps} steps x {settings.batch} clips, AdamW lr {settings.lr:g} "
        f"(warm-up {settings.warmup}, cosine), seed {settings.seed}, {torch.get_num_threads()} thread(s)"
    )


@torch.no_grad()
def denoising_errors(
    model: VideoDiT,
    vin: VIN | None,
    clips: torch.Tensor,
    layout: ChunkLayout | None,
    schedule: DiffusionSchedule,
    text: torch.Tensor,
    timesteps=DIAGNOSTIC_TIMESTEPS,
    seed: int = 0,
) -> dict[int, float]:
    """``{t: mean ||x0_hat - x0||^2}``: the ``x0`` the model implies (:meth:`DiffusionSchedule.x0_from`) on
    ``clips`` noised at each timestep ``t`` (noise from ``seed``), through ``layout``."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=clips.device).manual_seed(seed)
    errors = {}
    for t in timesteps:
        t_batch = torch.full((clips.shape[0],), t, device=clips.device, dtype=torch.long)
        noise = torch.randn(clips.shape, generator=generator, device=clips.device)
        x_t = schedule.add_noise(clips, noise, t_batch)
        out = predict(model, vin, x_t, t_batch, text, layout)
        errors[t] = float((schedule.x0_from(x_t, out, t_batch) - clips).square().mean())
    model.train(was_training)
    return errors


def data_baselines(scene: data.SceneConfig, timesteps=DIAGNOSTIC_TIMESTEPS, *, videos: int = 512, seed: int = 0) -> dict:
    """The x0-MSE of two denoisers that know only the data's first two moments, per latent frame:

    * ``mean``: ``x0_hat = mu`` (the mean frame), error ``tr(S) / D``;
    * ``linear``: the best linear (Wiener) denoiser ``x0_hat = mu + sqrt(ab) S (ab S + (1 - ab) I)^-1
      (x_t - sqrt(ab) mu)``, error ``sum_i l_i (1 - ab) / (ab l_i + 1 - ab) / D`` over the eigenvalues
      ``l_i`` of ``S``,

    with ``mu`` and the covariance ``S`` (``D = 4 h w``) of frames 0 and 12 of ``videos`` training
    videos. Returns ``{"mean": {t: mse}, "linear": {t: mse}, "frames": count}``.
    """
    clips = data.generate(videos, 13, seed=seed, split="train", config=scene).video[:, ::12]
    frames = clips.reshape(-1, clips[0, 0].numel()).double()
    centred = frames - frames.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / (len(frames) - 1)).clamp_min(0)
    schedule, D = DiffusionSchedule(), frames.shape[1]
    linear = {}
    for t in timesteps:
        ab = schedule.alpha_bar(t)
        linear[t] = float((eigenvalues * (1 - ab) / (ab * eigenvalues + 1 - ab)).sum() / D)
    mean = float(eigenvalues.sum() / D)
    return {"mean": {t: mean for t in timesteps}, "linear": linear, "frames": len(frames)}


def format_diagnostics(model_errors: dict[int, float], baselines: dict, label: str = "model") -> list[str]:
    """The diagnostic as a small table (one line per denoiser)."""
    ts = list(model_errors)
    lines = ["x0-MSE at t:          " + "".join(f"{t:>9}" for t in ts)]
    rows = [(label, model_errors), ("best linear denoiser", baselines["linear"]), ("data mean", baselines["mean"])]
    for name, errors in rows:
        lines.append(f"  {name:<20}" + "".join(f"{errors[t]:9.4f}" for t in ts))
    return lines


@contextlib.contextmanager
def _swapped(params: list[torch.Tensor], values: list[torch.Tensor] | None):
    """The parameters hold ``values`` inside the block (nothing changes when ``values`` is None)."""
    if values is None:
        yield
        return
    saved = [p.detach().clone() for p in params]
    torch._foreach_copy_([p.data for p in params], values)
    try:
        yield
    finally:
        torch._foreach_copy_([p.data for p in params], saved)


def train(
    preset: Preset,
    settings: TrainSettings = TrainSettings(),
    *,
    scene: data.SceneConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "training",
    log: Callable[[str], None] | None = None,
    diagnose: int = 0,
    checkpoint: Callable[[int, VideoDiT, VIN | None], None] | None = None,
) -> Trained:
    """Train ``preset`` on generated clips (chunks and context of the preset, or full attention).

    Step ``s`` trains on :func:`vin.data.training_batch` ``(s, batch, clip_frames, seed)`` with the
    diffusion noise drawn from a generator seeded with ``seed``, so two runs with the same settings
    see the same data and noise (the weights still differ by floating-point reordering across
    machines). The scenes must match the preset's latent size. The target is the preset's
    ``prediction``.

    ``log`` receives text lines: the loss about every tenth of the run with the elapsed time and an
    ETA. ``diagnose > 0``: :func:`denoising_errors` on 8 held-out clips at that many evenly spaced
    steps (the last one included; of the averaged weights with ``ema``), kept in
    :attr:`Trained.diagnostics`; ``checkpoint(step, model, vin)`` is called there too (the model in
    eval mode, holding those weights), e.g. to sample.
    Raises :class:`NonFiniteLoss` when a loss is NaN or infinite.
    """
    scene = scene if scene is not None else scene_config(preset)
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
    layout = train_layout(preset, settings, settings.clip_frames)
    text = unconditional_text(preset, settings.batch, device)
    schedule = preset.schedule
    held_out = data.generate(8, settings.clip_frames, seed=settings.seed, split="eval", config=scene).video.to(device)
    diagnose_at = {round(settings.steps * (i + 1) / diagnose) - 1 for i in range(diagnose)} if diagnose else set()
    log_at = {round(settings.steps * (i + 1) / 10) - 1 for i in range(10)}
    steps = range(settings.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, leave=False)
    losses, diagnostics = [], {}
    averages = [p.detach().clone() for p in params] if settings.ema else None
    start = time.perf_counter()
    model.train()
    for step in steps:
        clips = data.training_batch(step, settings.batch, settings.clip_frames, seed=settings.seed, config=scene).to(device)
        lr = _learning_rate(settings, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = training_loss(model, net_vin, clips, text, layout, generator, schedule)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the training loss is {loss.item()} at step {step + 1} (learning rate {lr:g}): training stopped")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        if averages is not None:  # the EMA's decay ramps up over the first steps: (1 + s) / (10 + s)
            torch._foreach_lerp_(averages, [p.detach() for p in params], 1 - min(settings.ema, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if progress and step % 25 == 0:
            steps.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}")
        if step in diagnose_at:
            with _swapped(params, averages):
                diagnostics[step + 1] = denoising_errors(
                    model, net_vin, held_out, layout, schedule, unconditional_text(preset, len(held_out), device), seed=settings.seed
                )
                if checkpoint is not None:
                    model.eval()
                    checkpoint(step + 1, model, net_vin)
                    model.train()
        if log is not None and step in log_at:
            elapsed = time.perf_counter() - start
            recent = losses[-max(1, settings.steps // 10) :]
            eta = elapsed / (step + 1) * (settings.steps - step - 1)
            log(f"step {step + 1}/{settings.steps}: loss {sum(recent) / len(recent):.4f}, {_minutes(elapsed)} elapsed, ETA {_minutes(eta)}")
    seconds = time.perf_counter() - start
    if averages is not None:
        torch._foreach_copy_([p.data for p in params], averages)
    model.eval()
    if net_vin is not None:
        net_vin.eval()
    return Trained(preset, settings, model, net_vin, losses, seconds, torch.get_num_threads(), diagnostics)


def sample_videos(
    trained: Trained,
    layout: ChunkLayout,
    *,
    num_videos: int,
    seed: int = 0,
    fusion: str = "early",
    steps: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``num_videos`` long videos ``[num_videos, layout.num_frames, 4, h, w]`` from :func:`vin.sample`
    with the preset's steps, ``t_alpha`` and prediction (all videos in one batched call; noise from ``seed``)."""
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
        schedule=preset.schedule,
        progress=progress,
    )


# ------------------------------------------------------------------------------------------ command line
PRESET_NAMES = ("quality", "cpu", "paper", "tiny")  # the presets of vin.presets


def _scene_problem(name: str) -> str | None:
    try:
        scene_config(getattr(presets, name)())
    except ValueError as error:
        return str(error)
    return None


TRAINABLE = tuple(name for name in PRESET_NAMES if _scene_problem(name) is None)  # the scenes fit their latents


def _preset_problem(name: str) -> str | None:
    """Why ``--preset name`` cannot be trained on generated scenes, or None."""
    if name not in PRESET_NAMES:
        return f"unknown preset {name!r}; choose one of {', '.join(TRAINABLE)}"
    if name not in TRAINABLE:
        return f"the generated scenes do not fit its latents ({_scene_problem(name)}); choose one of {', '.join(TRAINABLE)}"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags, each checked (one line naming the flag, exit code 2) before any work starts."""
    defaults = TrainSettings()
    parser = ArgumentParser(
        prog="python -m vin.train",
        description=__doc__.split("\n\n")[0],
        epilog="About 5 minutes on 2 CPU cores: --steps 1200 --eval-videos 2 --threads 1. "
        "The quality suite (python -m bench --suite quality) trains with the defaults.\n",
    )
    parser.add_argument("--preset", default="quality", help=f"a preset of vin.presets whose latents fit the generated "
                        f"scenes: {', '.join(TRAINABLE)} (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps (at least 1; default %(default)s)")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="clips per step (at least 1; default %(default)s)")
    parser.add_argument("--clip-frames", type=int, default=defaults.clip_frames, help="latent frames per training clip (at least 1; default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate (positive, finite; default %(default)s)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="linear warm-up steps (at least 0; default %(default)s)")
    parser.add_argument("--ema", type=float, default=defaults.ema, help="decay of the weights' moving average the model keeps, "
                        "in [0, 1) (0: the last weights; default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="weights, clips and noise (at least 0; default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (at least 1; default: torch's)")
    parser.add_argument("--prediction", choices=PREDICTIONS, default=None, help="network target (default: the preset's)")
    parser.add_argument("--no-vin", action="store_true", help="train without global tokens")
    parser.add_argument("--full-attention", action="store_true", help="one chunk over the whole clip, no VIN (the baseline)")
    parser.add_argument("--context", type=int, default=None, help="local context in latent frames, at least 0 (default: the preset's)")
    parser.add_argument("--save", default=None, help="write the weights, preset, losses and diagnostics here (torch.save)")
    parser.add_argument("--eval-videos", type=int, default=4, help="long videos to sample and score (0: none; default %(default)s)")
    parser.add_argument("--eval-frames", type=int, default=96, help="latent frames per evaluation video (at least 2; default %(default)s)")
    parser.add_argument("--eval-fusion", choices=FUSION_MODES, default="early", help="window fusion of the evaluation samples (default %(default)s)")
    args = parser.parse_args(argv)
    if problem := _preset_problem(args.preset):
        parser.error(f"--preset {args.preset}: {problem}")
    for flag, value, low in (
        ("--steps", args.steps, 1), ("--batch", args.batch, 1), ("--clip-frames", args.clip_frames, 1),
        ("--warmup", args.warmup, 0), ("--seed", args.seed, 0), ("--threads", args.threads, 1),
        ("--context", args.context, 0), ("--eval-videos", args.eval_videos, 0), ("--eval-frames", args.eval_frames, 2),
    ):  # fmt: skip
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if not 0 < args.lr < math.inf:
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 <= args.ema < 1:
        parser.error(f"--ema must be in [0, 1), got {args.ema}")
    if args.full_attention and (args.no_vin or args.context is not None):
        parser.error("--full-attention trains one chunk without the VIN: drop --no-vin and --context")
    if args.save is not None and (problem := save_problem(args.save)):
        parser.error(f"--save {args.save}: {problem}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = getattr(presets, args.preset)()
    if args.context is not None:
        preset = dataclasses.replace(preset, context=args.context)
    if args.prediction is not None:
        preset = dataclasses.replace(preset, prediction=args.prediction)
    settings = TrainSettings(
        steps=args.steps, batch=args.batch, clip_frames=args.clip_frames, lr=args.lr, warmup=args.warmup, ema=args.ema, seed=args.seed,
        with_vin=not (args.no_vin or args.full_attention), full_attention=args.full_attention,
    )  # fmt: skip
    scene = scene_config(preset)
    print(describe(preset, settings, args.preset), flush=True)
    baselines = data_baselines(scene)
    try:
        trained = train(preset, settings, scene=scene, log=lambda line: print(line, flush=True), diagnose=1)
    except NonFiniteLoss as error:
        print(f"python -m vin.train: error: {error} (lower --lr?)", file=sys.stderr)
        return 1
    errors = trained.diagnostics[settings.steps]
    for line in format_diagnostics(errors, baselines):
        print(line)
    tail = trained.losses[-50:]
    report = {
        "preset": args.preset,
        "settings": dataclasses.asdict(settings),
        "context": preset.context,
        "prediction": preset.prediction,
        "train_seconds": round(trained.seconds, 1),
        "threads": trained.threads,
        "first_loss": trained.losses[0],
        "final_loss": sum(tail) / len(tail),
        "x0_mse": {"model": errors, "best_linear": baselines["linear"], "data_mean": baselines["mean"]},
    }
    if args.save:
        torch.save(trained.state(), args.save)
        print(f"saved to {args.save}")
    if args.eval_videos:
        layout = eval_layout(preset, settings, args.eval_frames)
        start = time.perf_counter()
        videos = sample_videos(trained, layout, num_videos=args.eval_videos, fusion=args.eval_fusion, progress=True)
        scores = metrics.evaluate(videos, layout)
        reference = metrics.evaluate(data.generate(args.eval_videos, args.eval_frames, seed=args.seed, config=scene).video, layout)
        summary = {k: v for k, v in scores.items() if k != "per_video"}
        report["eval"] = {"frames": args.eval_frames, "fusion": args.eval_fusion, "layout": repr(layout),
                          "sample_seconds": round(time.perf_counter() - start, 1), **summary,
                          "data": {k: v for k, v in reference.items() if k != "per_video"}}
        print(f"sampled {args.eval_videos} videos of {args.eval_frames} latent frames ({layout!r}): MAWE "
              f"{summary['mawe']:.2f} (data {reference['mawe']:.2f}), motion {summary['motion']:.2f} "
              f"(data {reference['motion']:.2f}), drift {summary['drift']:.3f} (data {reference['drift']:.3f})")
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
