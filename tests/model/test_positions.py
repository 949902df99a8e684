"""One time-position convention for training and sampling (docs/design.md, Time positions and the
prediction target).

A training chunk sees its ``context`` frames and its own ``chunk`` frames; an inference window is
``context + chunk`` frames overlapping the next by ``context``, for every preset. Time enters the DiT
only as frame-index differences (rotary on half the channels; none in the global tokens' scores),
so the DiT's output for a chunk's own frames in the training layout equals its output for them in the
window over ``[context; chunk]``: exactly at depth 1, where a chunk reads its context frames' inputs;
deeper, the context frames' own states differ (the previous chunk computed them in training, the
window in sampling), which the quality suite measures on a trained model.
"""

import dataclasses

import pytest
import torch

import vin
from vin.dit import VideoDiT
from vin.training import predict
from vin_kernels import ChunkLayout

PRESETS = ("paper", "cpu", "quality", "tiny")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_samples_windows_of_a_training_chunk_with_its_context(name):
    preset = getattr(vin.presets, name)()
    assert (preset.window, preset.overlap) == (preset.context + preset.chunk, preset.context)
    windows, training = preset.window_layout(200), preset.train_layout(200)
    assert windows.stride == preset.chunk and windows.chunk_len == max(len(training.key_frames(i)) for i in range(training.num_chunks))
    assert preset.context_layout(200) == training


def _random_nets(depth: int, seed: int = 0):
    """The tiny preset at ``depth`` blocks with every weight random (adaLN-Zero makes a fresh DiT output 0)."""
    preset = vin.presets.tiny()
    preset = dataclasses.replace(preset, dit=dataclasses.replace(preset.dit, depth=depth))
    torch.manual_seed(seed)
    model, net_vin = preset.build()
    model.randomize_zero_layers(std=0.2)
    with torch.no_grad():
        for block in model.blocks:
            block.qkv.weight.mul_(4)  # sharp attention: where a key sits in time matters
    return preset, model.eval(), net_vin.eval()


def _noisy_clips(preset, frames: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    cfg = preset.dit
    x0 = torch.randn(2, frames, cfg.in_channels, cfg.height, cfg.width, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([300, 900])
    text = torch.randn(2, cfg.text_len, cfg.text_dim, generator=gen)
    return preset.schedule.add_noise(x0, noise, t), t, text, preset.schedule.target(x0, noise, t)


def _through_windows(model, net_vin, x_t, t, text, training: ChunkLayout, window: int) -> torch.Tensor:
    """Every frame predicted by the inference window over its training chunk's key frames ``[context; own]``
    (the VIN reads the whole clip, as in both layouts)."""
    global_kv = net_vin(x_t, t, text)
    out = torch.empty_like(x_t)
    for i in range(training.num_chunks):
        keys, own = training.key_frames(i), training.query_frames(i)
        layout = ChunkLayout.windows(len(keys), window, 0)  # one window over exactly these frames
        prediction = model(x_t[:, keys.start : keys.stop].unsqueeze(1), t, text, layout=layout, global_kv=global_kv)[:, 0]
        out[:, own.start : own.stop] = prediction[:, own.start - keys.start :]
    return out


@torch.no_grad()
def _losses(depth: int, frames: int = 28):
    preset, model, net_vin = _random_nets(depth)
    x_t, t, text, target = _noisy_clips(preset, frames)
    training = preset.train_layout(frames)  # chunks of 8 with 4 frames of context; the last of 4
    trained = predict(model, net_vin, x_t, t, text, training)
    windowed = _through_windows(model, net_vin, x_t, t, text, training, preset.window)
    return torch.nn.functional.mse_loss(trained, target), torch.nn.functional.mse_loss(windowed, target), trained, windowed


def test_a_training_chunk_and_its_inference_window_give_the_same_loss():
    """Depth 1, random weights, VIN globals: equal to float precision, frame by frame."""
    train_loss, window_loss, trained, windowed = _losses(depth=1)
    torch.testing.assert_close(windowed, trained, rtol=1e-5, atol=1e-5)
    assert abs(train_loss.item() - window_loss.item()) <= 1e-6 * train_loss.item()


def test_the_old_convention_fails_the_loss_equality(monkeypatch):
    """Negative control: positions counted inside the owning chunk (the convention before) put the
    context frames after the chunk's own first frames; the same comparison then differs."""

    def in_chunk(layout, num_frames, device, first_frame=0):
        if layout.is_windows:
            return torch.arange(num_frames, device=device)
        return torch.tensor(layout.positions_in_chunk[first_frame : first_frame + num_frames], device=device)

    monkeypatch.setattr(VideoDiT, "_time_positions", staticmethod(in_chunk))
    train_loss, window_loss, trained, windowed = _losses(depth=1)
    assert (trained - windowed).abs().max() > 0.1  # measured 1.2 (1.9e-6 with the convention)


def test_deeper_models_differ_only_through_the_context_frames_states():
    """Depth 2: the first chunk (no context) still agrees exactly; later chunks see context frames whose
    layer-1 states the previous chunk computed, so they differ (measured on the quality model instead)."""
    _, _, trained, windowed = _losses(depth=2)
    torch.testing.assert_close(windowed[:, :8], trained[:, :8], rtol=1e-5, atol=1e-5)
    assert (trained[:, 8:] - windowed[:, 8:]).abs().max() > 0.01  # measured 0.67


def test_positions_are_relative_a_shifted_video_gives_the_same_chunk():
    """Context mode numbers frames from the start of the video; only differences matter: a chunk and its
    context moved later in the video (after other frames) predict the same, global tokens included
    (their keys are zero in the rotated channels, so a query's rotation cannot change its scores)."""
    preset, model, net_vin = _random_nets(depth=1)
    x_t, t, text, _ = _noisy_clips(preset, 12)
    global_kv = net_vin(x_t, t, text)
    alone = model(x_t, t, text, layout=ChunkLayout.context(12, 8, 4), global_kv=global_kv)[:, 8:]
    padded = torch.cat([torch.randn(2, 16, *x_t.shape[2:]), x_t], dim=1)  # the same 12 frames at 16..27
    moved = model(padded, t, text, layout=ChunkLayout.context(28, 8, 4), global_kv=global_kv)[:, 24:]
    torch.testing.assert_close(moved, alone, rtol=1e-5, atol=1e-5)
