"""vin.flops equals what torch.utils.flop_counter.FlopCounterMode counts on the CPU default path (issue 19.7).

The tiny preset on real CPU tensors with ``backend="auto"`` (the sdpa backend, PyTorch's CPU flash
kernel, whose FLOP formula vin_kernels registers): a denoising step (VIN + DiT forward) and a
training step (:func:`vin.training_loss` and its backward), in full attention, training chunks,
context-mode chunks and overlapping windows. Equal to the FLOP, not within a tolerance. The paper
preset on the meta device with the Triton ops is tests/model/test_model.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vin

PRESET = vin.presets.tiny()
FRAMES = 24
LAYOUTS = {
    "full": None,
    "chunks": PRESET.train_layout(FRAMES),
    "context": PRESET.context_layout(FRAMES),
    "windows": PRESET.window_layout(FRAMES),
}
CPU_FLASH = "aten._scaled_dot_product_flash_attention_for_cpu"


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return PRESET.build()  # CPU, backend "auto": sdpa


def _inputs():
    gen = torch.Generator().manual_seed(1)
    dit = PRESET.dit
    x = torch.randn(2, FRAMES, dit.in_channels, dit.height, dit.width, generator=gen)
    text = torch.randn(2, dit.text_len, dit.text_dim, generator=gen)
    return x, text


def _counts(counter: FlopCounterMode) -> dict[str, int]:
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("mode", list(LAYOUTS))
def test_denoising_step_flops_equal_the_counter(nets, mode):
    model, net_vin = nets
    layout = LAYOUTS[mode]
    x, text = _inputs()
    t = torch.tensor([10, 700])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        global_kv = net_vin(x, t, text) if layout is not None else None
        model(layout.cut_windows(x) if mode == "windows" else x, t, text, layout=layout, global_kv=global_kv)
    analytic = vin.flops.step_flops(PRESET, FRAMES, layout, batch=2)
    counts = _counts(counter)
    assert counter.get_total_flops() == analytic.total, counts
    # the split too: every attention product (DiT and VIN) on the CPU flash kernel, the rest linear layers
    products = vin.flops._step_products(PRESET, FRAMES, layout, 2, None).values()
    assert counts[CPU_FLASH] == sum(p.attention for p in products), counts


@pytest.mark.parametrize("mode", list(LAYOUTS))
def test_training_step_flops_equal_the_counter(nets, mode):
    """Forward and backward of the training loss: :func:`vin.flops.training_step_flops` exactly."""
    model, net_vin = nets
    layout = LAYOUTS[mode]
    x, text = _inputs()
    model.zero_grad(), net_vin.zero_grad()
    with FlopCounterMode(display=False) as counter:
        loss = vin.training_loss(model, net_vin if layout is not None else None, x, text, layout, torch.Generator().manual_seed(2))
        loss.backward()
    counts = _counts(counter)
    assert counts.get(f"{CPU_FLASH}_backward", 0) > 0, counts
    assert counter.get_total_flops() == vin.flops.training_step_flops(PRESET, FRAMES, layout, batch=2).total, counts
