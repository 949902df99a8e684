"""The diffusion schedule and the DDIM update shared by the training loss and the sampler."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["DiffusionSchedule"]


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
    """DDPM's linear beta schedule over ``num_train_steps`` (``alpha_bar_t = prod (1 - beta)``)."""

    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2

    def alpha_bar(self, t: int) -> float:
        """``alpha_bar_t``; ``t = -1`` (after the last step) is 1."""
        return 1.0 if t < 0 else _alpha_bar_table(self.num_train_steps, self.beta_start, self.beta_end)[t]

    def alpha_bars(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_t`` for a tensor of timesteps (float32, on ``t``'s device)."""
        table = _alpha_bar_table(self.num_train_steps, self.beta_start, self.beta_end)
        return torch.tensor(table, dtype=torch.float64, device=t.device)[t].float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` with per-sample ``t [B]``."""
        ab = self.alpha_bars(t).reshape(-1, *([1] * (x0.dim() - 1)))
        return (ab.sqrt() * x0.float() + (1 - ab).sqrt() * noise.float()).to(x0.dtype)

    def timesteps(self, steps: int) -> list[int]:
        """DDIM timesteps for ``steps`` sampling steps, from noisiest to cleanest (step ``steps`` .. 1)."""
        if not 1 <= steps <= self.num_train_steps:
            raise ValueError(f"steps must be in [1, {self.num_train_steps}], got {steps}")
        stride = self.num_train_steps // steps
        return [stride * i for i in reversed(range(steps))]

    def ddim(self, t: int, t_prev: int, eta: float = 0.0) -> tuple[float, float, float]:
        """``(a, b, sigma)`` of the DDIM update ``x_prev = a * x_t + b * eps + sigma * z``.

        With ``x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``:
        ``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z``.
        """
        ab, ab_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        a = math.sqrt(ab_prev / ab)
        b = math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) - math.sqrt(ab_prev * (1 - ab) / ab)
        return a, b, sigma
