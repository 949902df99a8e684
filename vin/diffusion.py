"""The diffusion schedule, the prediction target and the DDIM update shared by the training loss and the samplers."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["DiffusionSchedule", "PREDICTIONS"]

# What the network predicts (docs/design.md, Time positions and the prediction target): the noise
# ``eps`` or the velocity ``v = sqrt(ab) eps - sqrt(1 - ab) x0`` (diffusers' "epsilon" / "v_prediction").
PREDICTIONS = ("epsilon", "v")


@functools.lru_cache(maxsize=8)
def _alpha_bar_table(steps: int, beta_start: float, beta_end: float) -> tuple[float, ...]:
    """``alpha_bar_t`` for ``t = 0 .. steps-1`` of the linear beta schedule, in float64."""
    table, product = [], 1.0
    for i in range(steps):
        product *= 1.0 - (beta_start + (beta_end - beta_start) * i / (steps - 1))
        table.append(product)
    return tuple(table)


@dataclass(frozen=True)
class DiffusionSchedule:
    """DDPM's linear beta schedule over ``num_train_steps`` (``alpha_bar_t = prod (1 - beta)``) and
    what the network predicts.

    ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``. ``prediction="epsilon"``: the network predicts
    ``eps``; ``"v"``: it predicts ``v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0`` (Salimans & Ho, 2022),
    whose implied ``x0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) v`` stays well conditioned at high noise,
    where ``x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)`` multiplies the error of ``eps`` by up to
    ``1 / sqrt(ab_t)`` (160 at ``t = 999``).
    """

    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction: str = "epsilon"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    def alpha_bar(self, t: int) -> float:
        """``alpha_bar_t``; ``t = -1`` (after the last step) is 1."""
        return 1.0 if t < 0 else _alpha_bar_table(self.num_train_steps, self.beta_start, self.beta_end)[t]

    def alpha_bars(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_t`` for a tensor of timesteps (float32, on ``t``'s device)."""
        table = _alpha_bar_table(self.num_train_steps, self.beta_start, self.beta_end)
        return torch.tensor(table, dtype=torch.float64, device=t.device)[t].float()

    def _per_sample(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alpha_bars(t).reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` with per-sample ``t [B]``."""
        ab = self._per_sample(t, x0)
        return (ab.sqrt() * x0.float() + (1 - ab).sqrt() * noise.float()).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output (float32): ``noise``, or ``v = sqrt(ab) noise - sqrt(1 - ab) x0``."""
        if self.prediction == "epsilon":
            return noise.float()
        ab = self._per_sample(t, x0)
        return ab.sqrt() * noise.float() - (1 - ab).sqrt() * x0.float()

    def x0_from(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The ``x0`` a network output implies at per-sample ``t [B]`` (float32)."""
        ab = self._per_sample(t, x_t)
        if self.prediction == "epsilon":
            return (x_t.float() - (1 - ab).sqrt() * output.float()) / ab.sqrt()
        return ab.sqrt() * x_t.float() - (1 - ab).sqrt() * output.float()

    def timesteps(self, steps: int) -> list[int]:
        """DDIM timesteps for ``steps`` sampling steps, from noisiest to cleanest (step ``steps`` .. 1)."""
        if not 1 <= steps <= self.num_train_steps:
            raise ValueError(f"steps must be in [1, {self.num_train_steps}], got {steps}")
        stride = self.num_train_steps // steps
        return [stride * i for i in reversed(range(steps))]

    def _sigma(self, t: int, t_prev: int, eta: float) -> float:
        ab, ab_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        return eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))

    def ddim(self, t: int, t_prev: int, eta: float = 0.0) -> tuple[float, float, float]:
        """``(a, b, sigma)`` of the DDIM update ``x_prev = a * x_t + b * output + sigma * z`` for the
        network's ``output`` (``eps`` or ``v``, by :attr:`prediction`).

        ``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps`` with ``(x0, eps)`` implied by the
        output: epsilon: ``x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)``; v: ``x0 = sqrt(ab) x_t - sqrt(1 - ab) v``,
        ``eps = sqrt(1 - ab) x_t + sqrt(ab) v``.
        """
        ab, ab_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        sigma = self._sigma(t, t_prev, eta)
        keep = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
        if self.prediction == "epsilon":
            return math.sqrt(ab_prev / ab), keep - math.sqrt(ab_prev * (1 - ab) / ab), sigma
        s, n = math.sqrt(ab), math.sqrt(1 - ab)
        root_prev = math.sqrt(ab_prev)
        return root_prev * s + keep * n, keep * s - root_prev * n, sigma

    def ddim_step(
        self, x_t: torch.Tensor, output: torch.Tensor, t: int, t_prev: int, *, eta: float = 0.0, clip_x0: float | None = None
    ) -> torch.Tensor:
        """``x_prev`` without the noise term ``sigma * z``: :meth:`ddim`'s linear update, or with
        ``clip_x0`` the DDIM update from the implied ``x0`` clamped to ``[-clip_x0, clip_x0]`` and the
        ``eps`` recomputed from it, ``eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)`` (diffusers' ``clip_sample``)."""
        if clip_x0 is None:
            a, b, _ = self.ddim(t, t_prev, eta)
            return a * x_t + b * output
        ab, ab_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        sigma = self._sigma(t, t_prev, eta)
        s, n = math.sqrt(ab), math.sqrt(1 - ab)
        x0 = (x_t - n * output) / s if self.prediction == "epsilon" else s * x_t - n * output
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x_t - s * x0) / n
        return math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
