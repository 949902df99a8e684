"""The training loss: chunks with local context, stop-gradient across chunks, loss on owned frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vin_kernels import ChunkLayout

from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN
from .sampling import schedule_for

__all__ = ["training_loss", "predict"]


def predict(
    model: VideoDiT,
    vin: VIN | None,
    x_t: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    layout: ChunkLayout | None,
    *,
    context_grad: bool = False,
) -> torch.Tensor:
    """The network's output for every frame of the noisy videos ``x_t [B, F, C, h, w]`` at timesteps ``t [B]``.

    The VIN (if any) reads the whole noisy video; the DiT runs chunked by ``layout``: context mode
    (every frame predicted by the chunk that owns it; ``context_grad=False`` stops gradients
    through the context frames), window mode (each frame from its owning window,
    :attr:`ChunkLayout.owners`), or ``None`` (full attention). Returns ``[B, F, C, h, w]``.
    """
    global_kv = vin(x_t, t, text) if vin is not None else None
    if layout is not None and layout.is_windows:
        out = model(layout.cut_windows(x_t), t, text, layout=layout, global_kv=global_kv, context_grad=context_grad)
        return layout.owned_frames(out)
    return model(x_t, t, text, layout=layout, global_kv=global_kv, context_grad=context_grad)


def training_loss(
    model: VideoDiT,
    vin: VIN | None,
    x0: torch.Tensor,
    text: torch.Tensor,
    layout: ChunkLayout | None,
    generator: torch.Generator,
    schedule: DiffusionSchedule | None = None,
) -> torch.Tensor:
    """``mean ||out_theta(x_t, t, Z_t) - target||^2`` over the frames each chunk owns (the paper's objective).

    Samples ``t ~ U{0..T-1}`` per video and ``eps ~ N(0, I)`` from ``generator``, noises ``x0``, runs the
    VIN on the noisy video (if any) and the DiT chunked by ``layout`` with ``context_grad=False``
    (:func:`predict`): chunk ``i``'s loss reaches the previous chunk's frames only through the global
    tokens. The target is ``eps`` or ``v = sqrt(ab) eps - sqrt(1 - ab) x0`` by ``schedule.prediction``
    (default: ``DiffusionSchedule(prediction=model.prediction)``; a schedule predicting something
    else than the model is a ValueError).

    Args:
        x0: clean latent video ``[B, F, C, h, w]``. text: ``[B, text_len, text_dim]``.
    Returns:
        the scalar float32 loss.
    """
    schedule = schedule_for(model, schedule)
    B = x0.shape[0]
    t = torch.randint(0, schedule.num_train_steps, (B,), generator=generator, device=generator.device).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
    out = predict(model, vin, schedule.add_noise(x0, noise, t), t, text, layout)
    return F.mse_loss(out.float(), schedule.target(x0, noise, t))
