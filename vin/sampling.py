"""DDIM sampling with all chunks in parallel and early fusion of the overlapping windows."""

from __future__ import annotations

import torch

import vin_kernels
from vin_kernels import ChunkLayout

from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN

__all__ = ["sample", "denoise_step"]


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _blend(windows: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Windows ``[B, n, L, ...]`` -> video ``[B, F, ...]`` with the layout's blend weights."""
    return vin_kernels.overlap_fuse(windows, layout)


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
) -> torch.Tensor:
    """One DDIM step ``t -> t_prev`` of every chunk of every video in one batched DiT call.

    ``state`` (float32; the networks run in their own dtype) is the video ``[B, F, C, h, w]`` (context layout, or window layout with ``fuse``) or
    the windows ``[B, n, L, C, h, w]`` (window layout without ``fuse``); the result has the same
    form. With ``fuse`` the windows' noise predictions are blended and the DDIM update applied in
    one :func:`vin_kernels.overlap_fuse`. The VIN reads the whole current video (the blend of the
    windows when they evolve independently). ``eta > 0`` needs ``generator``.
    """
    a, b, sigma = schedule.ddim(t, t_prev, eta)
    t_batch = torch.full((state.shape[0],), t, device=state.device, dtype=torch.long)
    independent = layout.is_windows and not fuse
    global_kv = vin(_blend(state, layout) if independent else state, t_batch, text) if vin is not None else None
    if layout.is_windows and fuse:
        index = torch.tensor(layout.window_frame_index, device=state.device)
        eps = model(state[:, index], t_batch, text, layout=layout, global_kv=global_kv).to(state.dtype)
        state = vin_kernels.overlap_fuse(eps, layout, x=state, coeffs=(a, b))
    else:
        eps = model(state, t_batch, text, layout=layout, global_kv=global_kv).to(state.dtype)
        state = a * state + b * eps
    if sigma > 0:
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
    generator: torch.Generator,
    schedule: DiffusionSchedule | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample a float32 latent video ``[B, F, C, h, w]`` (``B = text.shape[0]``, ``F = layout.num_frames``).

    DDIM with ``steps`` steps counted down from ``steps`` to 1; every step runs the VIN on the
    current video and all chunks of all videos in one batched DiT call (:func:`denoise_step`).

    * Window layout (the paper's inference): while the step number is above ``t_alpha`` the
      overlapping windows' noise predictions are blended by :func:`vin_kernels.overlap_fuse`, fused
      with the DDIM update into one video; afterwards each window evolves on its own and the
      final video is assembled with the same blend.
    * Context layout (the cheaper variant): the video is never duplicated; each chunk sees the
      context frames before it, and the DDIM update runs on the whole video. For full attention
      use ``ChunkLayout.context(F, F)`` with ``vin=None``.

    The sampling state stays float32; the DiT and VIN run in the dtype of their weights.
    Deterministic given ``generator`` (all noise is drawn from it). ``progress`` shows a tqdm bar.
    """
    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a ChunkLayout (ChunkLayout.context(F, F) for full attention), got {layout!r}")
    schedule = schedule or DiffusionSchedule()
    cfg = model.cfg
    like = torch.empty((), device=text.device, dtype=torch.float32)
    state = _randn((text.shape[0], layout.num_frames, cfg.in_channels, cfg.height, cfg.width), generator, like)
    timesteps = schedule.timesteps(steps)
    iterator = enumerate(timesteps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=steps, desc="sampling")
    fusing = layout.is_windows
    for i, t in iterator:
        if fusing and steps - i <= t_alpha:  # early fusion is over: cut the video into windows
            state = state[:, torch.tensor(layout.window_frame_index, device=state.device)]
            fusing = False
        t_prev = timesteps[i + 1] if i + 1 < steps else -1
        state = denoise_step(
            model, vin, state, text, t, t_prev, layout, fuse=fusing, schedule=schedule, eta=eta, generator=generator
        )
    return _blend(state, layout) if layout.is_windows and not fusing else state
