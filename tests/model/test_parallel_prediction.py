"""vin.parallel.sample with the prediction target and x0 clipping: bitwise vin.sample's video on 2 spawned
gloo processes (one thread each), for an eps and a v model, with clipping on fused, late-fusion and
context-layout steps (the tiny preset, every weight random)."""


import pytest
import torch

import vin
from vin import parallel

STEPS, T_ALPHA = 4, 2
SCENARIOS = {  # name -> (prediction, layout kind, sampling kwargs)
    "v-windows-clip": ("v", "windows", {"clip_x0": 1.0}),
    "v-windows-late-clip": ("v", "windows", {"clip_x0": 1.0, "fusion": "late"}),
    "eps-windows-clip": ("epsilon", "windows", {"clip_x0": 0.5}),
    "eps-context-clip": ("epsilon", "context", {"clip_x0": 0.5}),
    "eps-windows": ("epsilon", "windows", {}),
}


def _nets(prediction: str):
    import dataclasses

    preset = dataclasses.replace(vin.presets.tiny(), prediction=prediction)
    torch.manual_seed(0)
    model, net_vin = preset.build()
    model.randomize_zero_layers()  # a fresh DiT predicts 0
    return preset, model.eval(), net_vin.eval()


def _sample(sampler, name: str, **extra):
    prediction, kind, kwargs = SCENARIOS[name]
    preset, model, net_vin = _nets(prediction)
    layout = preset.window_layout(40) if kind == "windows" else preset.context_layout(40)
    text = torch.randn(1, preset.dit.text_len, preset.dit.text_dim, generator=torch.Generator().manual_seed(7))
    return sampler(model, net_vin, text, layout=layout, steps=STEPS, t_alpha=T_ALPHA, generator=torch.Generator().manual_seed(3),
                   **kwargs, **extra)  # fmt: skip


def _rank_job():
    return {name: _sample(parallel.sample, name) for name in SCENARIOS}


@pytest.fixture(scope="module")
def spawned(launch_test_job):
    return launch_test_job(_rank_job, 2)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_parallel_sample_equals_vin_sample_bitwise(spawned, name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: MKL's products depend on the thread count
    try:
        expected = _sample(vin.sample, name)
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(expected).all()
    for rank in (0, 1):
        assert torch.equal(spawned[rank][name], expected), f"rank {rank}: {(spawned[rank][name] - expected).abs().max()}"


def test_clipping_changes_the_video():
    """The scenarios would pass with clipping ignored by both samplers: check it acts."""
    clipped = _sample(vin.sample, "eps-windows-clip")
    plain = _sample(vin.sample, "eps-windows")
    assert not torch.equal(clipped, plain)
