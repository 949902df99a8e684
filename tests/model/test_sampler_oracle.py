"""The sampler's oracle: vin.sample driven by the closed-form denoiser of known data reproduces the exact
DDIM result, for both prediction targets, every layout and every fusion mode (docs/design.md, Time
positions and the prediction target).

For Gaussian data, and for a mixture of two Gaussians drawn per latent frame, ``E[x0 | x_t]`` is known in
closed form; a fake network that returns the ``eps`` or ``v`` it implies is the perfect denoiser. Its
output for a frame depends on that frame only, so every window that holds a frame predicts the same
value for it, and chunking, windows, blending and the fusion schedule must all leave the plain DDIM
trajectory of the whole video unchanged. The expected result is that trajectory, written out here in
float64 from the ``alpha_bar`` table alone (``x0``, ``eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)``,
``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps``), independent of the schedule's coefficients.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import vin
from vin.sampling import FUSION_MODES
from vin_kernels import ChunkLayout

F, SHAPE, STEPS, T_ALPHA = 28, (4, 4, 4), 25, 12
LAYOUTS = {
    "full": ChunkLayout.full(F),
    "context": ChunkLayout.context(F, 8, 4),
    "windows": ChunkLayout.windows(F, 12, 4),  # windows at 0, 8, 16
}
# (layout, fusion): context layouts have no fusion schedule
CASES = [("full", "early"), ("context", "early")] + [("windows", f) for f in FUSION_MODES]
TOLERANCE = 1e-5  # float32 sampler against the float64 trajectory, values of order 1 (measured: up to 1.5e-6)


def _gaussian_x0(x_t, ab, *, mean=0.3, std=0.6):
    """``E[x0 | x_t]`` for ``x0 ~ N(mean, std^2)`` per element."""
    gain = math.sqrt(ab) * std**2 / (ab * std**2 + 1 - ab)
    return mean + gain * (x_t - math.sqrt(ab) * mean)


def _mixture_x0(x_t, ab, *, means=(-0.7, 0.8), stds=(0.3, 0.5), weights=(0.4, 0.6)):
    """``E[x0 | x_t]`` for latent frames drawn whole from one of two Gaussians (``x0 = mean_k + std_k z``,
    ``z ~ N(0, I)``): the posterior of the component reads every element of the frame (last 3 dims)."""
    logits, estimates = [], []
    for mean, std, weight in zip(means, stds, weights):
        var = ab * std**2 + 1 - ab
        residual = x_t - math.sqrt(ab) * mean
        n = math.prod(x_t.shape[-3:])
        logits.append(math.log(weight) - 0.5 * (residual**2).sum((-1, -2, -3)) / var - 0.5 * n * math.log(var))
        estimates.append(mean + math.sqrt(ab) * std**2 / var * residual)
    posterior = torch.softmax(torch.stack(logits), dim=0)[..., None, None, None]
    return sum(p * e for p, e in zip(posterior, estimates))


DATA = {"gaussian": _gaussian_x0, "mixture": _mixture_x0}


class OracleDenoiser(nn.Module):
    """A stand-in for VideoDiT: the exact ``eps`` or ``v`` of known data, per latent frame, in float64.

    ``prediction`` is what it claims to predict (what the sampler reads); ``outputs`` what it returns
    (different only in the negative control). Takes videos ``[B, F, ...]`` or windows ``[B, n, L, ...]``.
    """

    def __init__(self, data: str, prediction: str, outputs: str | None = None):
        super().__init__()
        self.x0_of, self.prediction, self.outputs = DATA[data], prediction, outputs or prediction
        self.cfg = SimpleNamespace(in_channels=SHAPE[0], height=SHAPE[1], width=SHAPE[2])
        self.schedule = vin.DiffusionSchedule()

    def forward(self, x, t, text, *, layout=None, global_kv=None, **_):
        assert torch.all(t == t[0]) and global_kv is None
        ab = self.schedule.alpha_bar(int(t[0]))
        x = x.double()
        x0 = self.x0_of(x, ab)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        out = eps if self.outputs == "epsilon" else math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0
        return out.float()


def exact_ddim(data: str, seed: int, clip_x0: float | None = None) -> torch.Tensor:
    """The DDIM (eta = 0) trajectory of the whole video with the exact denoiser, in float64, from the
    initial noise ``vin.sample`` draws (``torch.randn`` of the video's shape from the seeded generator)."""
    schedule = vin.DiffusionSchedule()
    x = torch.randn((2, F, *SHAPE), generator=torch.Generator().manual_seed(seed)).double()
    timesteps = schedule.timesteps(STEPS)
    for i, t in enumerate(timesteps):
        ab, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(timesteps[i + 1] if i + 1 < STEPS else -1)
        x0 = DATA[data](x, ab)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


def _sample(model, layout, fusion, seed, clip_x0=None, prediction=None):
    schedule = vin.DiffusionSchedule(prediction=prediction or model.prediction)
    return vin.sample(
        model, None, torch.zeros(2, 1, 1), layout=LAYOUTS[layout], steps=STEPS, t_alpha=T_ALPHA, fusion=fusion,
        generator=torch.Generator().manual_seed(seed), schedule=schedule, clip_x0=clip_x0,
    ).double()


@pytest.fixture(scope="module")
def expected():
    return {(data, clip): exact_ddim(data, 0, clip) for data in DATA for clip in (None, 0.9)}


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("prediction", vin.diffusion.PREDICTIONS)
@pytest.mark.parametrize(("layout", "fusion"), CASES)
def test_sampler_with_the_exact_denoiser_is_exact_ddim(expected, data, prediction, layout, fusion):
    got = _sample(OracleDenoiser(data, prediction), layout, fusion, seed=0)
    error = (got - expected[data, None]).abs().max().item()
    assert error < TOLERANCE, f"max |vin.sample - exact DDIM| = {error:.2e}"


@pytest.mark.parametrize("prediction", vin.diffusion.PREDICTIONS)
@pytest.mark.parametrize(("layout", "fusion"), [("full", "early"), ("windows", "early"), ("windows", "late")])
def test_sampler_with_x0_clipping_is_exact_clipped_ddim(expected, prediction, layout, fusion):
    """The mixture's means lie near +-0.8: clipping at 0.9 changes the implied x0 at high noise."""
    reference = expected["mixture", 0.9]
    assert (reference - expected["mixture", None]).abs().max() > 0.05  # the clip is active
    got = _sample(OracleDenoiser("mixture", prediction), layout, fusion, seed=0, clip_x0=0.9)
    assert (got - reference).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("layout", ["full", "windows"])
def test_a_wrong_target_conversion_fails_the_oracle(expected, layout):
    """Negative control: a network returning v that the sampler reads as eps (or the reverse) is far off."""
    for claims, returns in [("epsilon", "v"), ("v", "epsilon")]:
        got = _sample(OracleDenoiser("gaussian", claims, outputs=returns), layout, "early", seed=0)
        assert (got - expected["gaussian", None]).abs().max().item() > 1000 * TOLERANCE


def test_a_schedule_that_disagrees_with_the_model_is_refused():
    with pytest.raises(ValueError, match="predicts 'v'"):
        _sample(OracleDenoiser("gaussian", "v"), "full", "early", seed=0, prediction="epsilon")
    with pytest.raises(ValueError, match="clip_x0"):
        _sample(OracleDenoiser("gaussian", "v"), "full", "early", seed=0, clip_x0=0.0)
    with pytest.raises(ValueError, match="prediction must be one of"):
        vin.DiffusionSchedule(prediction="v_prediction")
