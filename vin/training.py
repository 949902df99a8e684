"""The training loss: chunks with local context, stop-gradient across chunks, loss on owned frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vin_kernels import ChunkLayout

from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN

__all__ = ["training_loss"]


def training_loss(
    model: VideoDiT,
    vin: VIN | None,
    x0: torch.Tensor,
    text: torch.Tensor,
    layout: ChunkLayout | None,
    generator: torch.Generator,
    schedule: DiffusionSchedule | None = None,
) -> torch.Tensor:
    """``mean ||eps_theta(x_t, t, Z_t) - eps||^2`` over the frames each chunk owns (the paper's objective).

    Samples ``t ~ U{0..T-1}`` per video and ``eps ~ N(0, I)`` from ``generator``, noises ``x0``, runs the
    VIN on the noisy video (if any) and the DiT chunked by ``layout`` with ``context_grad=False``:
    chunk ``i``'s loss reaches the previous chunk's frames only through the global tokens. In
    context mode every frame is owned by one chunk; in window mode a frame's prediction comes from
    its owning window (:attr:`ChunkLayout.owners`); ``layout=None`` is full attention.

    Args:
        x0: clean latent video ``[B, F, C, h, w]``. text: ``[B, text_len, text_dim]``.
    Returns:
        the scalar float32 loss.
    """
    schedule = schedule or DiffusionSchedule()
    B = x0.shape[0]
    t = torch.randint(0, schedule.num_train_steps, (B,), generator=generator, device=generator.device).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
    x_t = schedule.add_noise(x0, noise, t)
    global_kv = vin(x_t, t, text) if vin is not None else None
    if layout is not None and layout.is_windows:
        eps = model(layout.cut_windows(x_t), t, text, layout=layout, global_kv=global_kv, context_grad=False)
        eps = layout.owned_frames(eps)
    else:
        eps = model(x_t, t, text, layout=layout, global_kv=global_kv, context_grad=False)
    return F.mse_loss(eps.float(), noise.float())
