"""DDIM sampling with all chunks in parallel and early fusion of the overlapping windows."""

from __future__ import annotations

import math

import torch

import vin_kernels
from vin_kernels import ChunkLayout

from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN

__all__ = ["sample", "denoise_step", "video_of", "FUSION_MODES"]

# When overlapping windows are fused (the paper's ablation): see sample().
FUSION_MODES = ("early", "late", "none")


def _check_fusion(fusion: str) -> None:
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")


def _check_clip(clip_x0) -> None:
    if clip_x0 is not None and not (isinstance(clip_x0, (int, float)) and not isinstance(clip_x0, bool) and 0 < clip_x0 < math.inf):
        raise ValueError(f"clip_x0 must be None or a positive finite number, got {clip_x0!r}")


def schedule_for(model: VideoDiT, schedule: DiffusionSchedule | None) -> DiffusionSchedule:
    """``schedule``, or the default one with the model's prediction target; a schedule whose target is
    not the model's is a ValueError (sampling an eps model as v, or the reverse, gives noise)."""
    if schedule is None:
        return DiffusionSchedule(prediction=model.prediction)
    if not isinstance(schedule, DiffusionSchedule):
        raise TypeError(f"schedule must be a vin.DiffusionSchedule or None, got {type(schedule).__name__}")
    if schedule.prediction != model.prediction:
        raise ValueError(f"the model predicts {model.prediction!r} but schedule.prediction is {schedule.prediction!r}")
    return schedule


def _fuses(fusion: str, layout: ChunkLayout, step: int, steps: int, t_alpha: int) -> bool:
    """Whether step ``step`` (0-based, of ``steps``) blends the windows: the step numbers ``steps`` ..
    ``t_alpha + 1`` are early; ``"early"`` fuses those, ``"late"`` the others, ``"none"`` none.
    Context layouts never fuse."""
    early = steps - step > t_alpha
    return layout.is_windows and (early if fusion == "early" else not early if fusion == "late" else False)


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def video_of(state: torch.Tensor, layout: ChunkLayout, *, fused: bool) -> torch.Tensor:
    """The video ``[B, F, ...]`` a sampling state holds.

    Context layout: the state is the video. Window layout: the state is the windows
    ``[B, n, L, ...]``; while fusing, overlapping frames are identical copies and are read as they are;
    once the windows evolve on their own, their predictions are blended (:func:`vin_kernels.overlap_fuse`).
    """
    if not layout.is_windows:
        return state
    return layout.frames_from_copies(state) if fused else vin_kernels.overlap_fuse(state, layout)


@torch.no_grad()
def denoise_step(
    model: VideoDiT,
    vin: VIN | None,
    state: torch.Tensor,
    text: torch.Tensor,
    t: int,
    t_prev: int,
    layout: ChunkLayout,
    *,
    fuse: bool,
    schedule: DiffusionSchedule,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """One DDIM step ``t -> t_prev`` of every chunk of every video in one batched DiT call.

    ``state`` (float32; the networks run in their own dtype) is the video ``[B, F, C, h, w]`` (context
    layout) or the windows ``[B, n, L, C, h, w]`` (window layout); the result has the same form. The
    VIN reads the whole current video (:func:`video_of`). The network's output (``eps`` or ``v``, by
    ``schedule.prediction``) enters the DDIM update of :meth:`DiffusionSchedule.ddim`. Window layout
    with ``fuse``: the windows' outputs are blended and the update applied to the windowed state in
    one :func:`vin_kernels.overlap_fuse` (``x`` and the result as windows: overlapping frames stay
    identical copies); without ``fuse`` every window is updated on its own. ``clip_x0``: the implied
    ``x0`` is clamped to ``[-clip_x0, clip_x0]`` (:meth:`DiffusionSchedule.ddim_step`; fused steps blend
    the outputs first). ``eta > 0`` needs ``generator``; its noise is drawn per frame while fusing
    (copies stay identical), per window after.
    """
    a, b, sigma = schedule.ddim(t, t_prev, eta)
    t_batch = torch.full((state.shape[0],), t, device=state.device, dtype=torch.long)
    fused = layout.is_windows and fuse
    global_kv = vin(video_of(state, layout, fused=fused), t_batch, text) if vin is not None else None
    out = model(state, t_batch, text, layout=layout, global_kv=global_kv).to(state.dtype)
    if fused and clip_x0 is None:
        state = vin_kernels.overlap_fuse(out, layout, x=state, coeffs=(a, b), out_windows=True)
    else:
        if fused:
            out = vin_kernels.overlap_fuse(out, layout, out_windows=True)
        state = schedule.ddim_step(state, out, t, t_prev, eta=eta, clip_x0=clip_x0)
    if sigma > 0:
        if fused:
            video_shape = (state.shape[0], layout.num_frames, *state.shape[3:])
            state = state + sigma * layout.cut_windows(_randn(video_shape, generator, state))
        else:
            state = state + sigma * _randn(state.shape, generator, state)
    return state


@torch.no_grad()
def sample(
    model: VideoDiT,
    vin: VIN | None,
    text: torch.Tensor,
    *,
    layout: ChunkLayout,
    steps: int = 50,
    eta: float = 0.0,
    t_alpha: int = 20,
    fusion: str = "early",
    generator: torch.Generator,
    schedule: DiffusionSchedule | None = None,
    clip_x0: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample a float32 latent video ``[B, F, C, h, w]`` (``B = text.shape[0]``, ``F = layout.num_frames``).

    DDIM with ``steps`` steps counted down from ``steps`` to 1; every step runs the VIN on the
    current video and all chunks of all videos in one batched DiT call (:func:`denoise_step`).

    * Window layout (the paper's inference): the state is the windows. While the step number is
      above ``t_alpha`` the overlapping windows' noise predictions are blended and the DDIM update
      applied by one :func:`vin_kernels.overlap_fuse` call per step (early fusion); afterwards each
      window evolves on its own and the final video is the blend of the windows. ``fusion`` picks
      other schedules for the ablation: ``"late"`` lets the windows evolve on their own while the
      step number is above ``t_alpha`` and fuses them from then on (their blend is the state when
      fusion starts); ``"none"`` never fuses and takes every frame of the final video from the
      window that owns it (:meth:`ChunkLayout.owned_frames`), as if each chunk were sampled alone
      (beside the VIN, which still reads the blend of the windows). Context layouts ignore it.
    * Context layout (the cheaper variant): the video is never duplicated; each chunk sees the
      context frames before it, and the DDIM update runs on the whole video. For full attention
      use ``ChunkLayout.full(F)`` with ``vin=None``.

    ``schedule`` (default: ``DiffusionSchedule(prediction=model.prediction)``) must predict what the
    model predicts (``VideoDiT.prediction``; ValueError otherwise). ``clip_x0``: DDIM with the implied ``x0`` clamped to
    ``[-clip_x0, clip_x0]`` at every step (None: no clipping).

    The sampling state stays float32; the DiT and VIN run in the dtype of their weights.
    Deterministic given ``generator`` (all noise is drawn from it). ``progress`` shows a tqdm bar.
    """
    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a ChunkLayout (ChunkLayout.full(F) for full attention), got {layout!r}")
    _check_fusion(fusion)
    _check_clip(clip_x0)
    schedule = schedule_for(model, schedule)
    cfg = model.cfg
    like = torch.empty((), device=text.device, dtype=torch.float32)
    state = _randn((text.shape[0], layout.num_frames, cfg.in_channels, cfg.height, cfg.width), generator, like)
    if layout.is_windows:
        state = layout.cut_windows(state)
    timesteps = schedule.timesteps(steps)
    iterator = enumerate(timesteps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=steps, desc="sampling")
    fuse, diverged = layout.is_windows, False
    for i, t in iterator:
        fuse = _fuses(fusion, layout, i, steps, t_alpha)
        if fuse and diverged:  # late fusion starts: the windows' copies of a frame differ, blend them
            state, diverged = layout.cut_windows(vin_kernels.overlap_fuse(state, layout)), False
        diverged = diverged or (layout.is_windows and not fuse)
        t_prev = timesteps[i + 1] if i + 1 < steps else -1
        state = denoise_step(
            model, vin, state, text, t, t_prev, layout, fuse=fuse, schedule=schedule, eta=eta, generator=generator,
            clip_x0=clip_x0,
        )
    if layout.is_windows and fusion == "none":
        return layout.owned_frames(state)
    return video_of(state, layout, fused=fuse)
