"""vin.diffusers.VINAdapter: a VIN feeds global tokens to a frozen diffusers transformer and trains alone."""

from __future__ import annotations

import pytest
import torch

import vin
import vin.diffusers as vd
from vin_kernels import ChunkLayout, reference

# Keyframe every 4 latent frames (16 fps, 4 video frames per latent frame, 1 s); heads of 8 channels.
VIN_CONFIG = vin.VINConfig(num_global_tokens=4, dim=16, depth=1, heads=2, fps=16, frames_per_latent=4)
FORWARD_ONLY = ("hidden_states", "timestep", "encoder_hidden_states")


def _latent_size(case, inputs):
    if case.frame_tokens:
        return inputs["height"], inputs["width"]
    return tuple(inputs["hidden_states"].shape[-2:])


def _adapter(case, model, inputs):
    torch.manual_seed(1)
    height, width = _latent_size(case, inputs)
    return vd.VINAdapter(model, VIN_CONFIG, height=height, width=width)


def _sample(model, inputs):
    return model(**inputs, return_dict=False)[0]


def _loss(adapter, inputs, seed):
    extra = {k: v for k, v in inputs.items() if k not in FORWARD_ONLY}
    return adapter.training_loss(
        inputs["hidden_states"], inputs["encoder_hidden_states"], generator=torch.Generator().manual_seed(seed), **extra
    )


def test_fresh_adapter_changes_nothing(case, build, generator):
    """Gate 0: exactly (bitwise) what chunked_attention with the same chunk/context and no global tokens
    gives; with one chunk covering the video that is the stock model (bitwise for Wan and LTX-Video;
    measured 2e-8 HunyuanVideo, 1.5e-7 CogVideoX: the chunked processors' own rounding)."""
    model = build(case)
    inputs = case.inputs(6, generator)
    adapter = _adapter(case, model, inputs)
    assert adapter.gate.shape == (adapter.dit_config.depth, adapter.dit_config.heads) and not adapter.gate.any()
    with torch.no_grad():
        with adapter.attach(chunk=2, context=1):
            out = _sample(model, inputs)
        with vd.chunked_attention(model, chunk=2, context=1):
            expected = _sample(model, inputs)
        with adapter.attach(chunk=6):
            one_chunk = _sample(model, inputs)
        stock = _sample(model, inputs)
    assert torch.equal(out, expected)
    assert torch.equal(one_chunk, stock) if not case.joint else rel_error(one_chunk, stock) <= 1e-6


def rel_error(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_open_gate_is_one_softmax_over_chunk_and_global_tokens(case, build, generator):
    """Gate 1: the ungated attention (chunked_attention with the adapter's tokens and no gate), to 1e-6."""
    model = build(case)
    inputs = case.inputs(6, generator)
    adapter = _adapter(case, model, inputs)
    with torch.no_grad():
        adapter.gate.fill_(1.0)
        with adapter.attach(chunk=2, context=1):
            out = _sample(model, inputs)
        with vd.chunked_attention(model, chunk=2, context=1, global_tokens=adapter):
            expected = _sample(model, inputs)
        adapter.gate.fill_(0.5)
        with adapter.attach(chunk=2, context=1):
            half = _sample(model, inputs)
    assert rel_error(out, expected) <= 1e-6
    assert rel_error(half, expected) > 1e-4  # the gate is in use


def test_gradients_reach_the_gate_then_the_vin(case, build, generator):
    """At gate 0 the loss's gradient reaches every layer's gate (finite, nonzero) and the VIN's is exactly
    0 (its tokens do not touch the output yet); with the gate open every adapter parameter gets one."""
    model = build(case)
    inputs = case.inputs(6, generator)
    adapter = _adapter(case, model, inputs)
    model_params = {id(p) for p in model.parameters()}
    assert not any(id(p) in model_params for p in adapter.parameters())

    def gradients():
        adapter.zero_grad(set_to_none=True)
        with adapter.attach(chunk=2, context=1):
            loss = _loss(adapter, inputs, seed=0)
            loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is None for p in model.parameters())
        grads = {name: p.grad for name, p in adapter.named_parameters()}
        assert not [name for name, g in grads.items() if g is None]
        assert all(torch.isfinite(g).all() for g in grads.values())
        return grads

    closed = gradients()
    assert (closed["gate"].abs().sum(dim=1) > 0).all()  # every layer's gate
    assert all(not g.any() for name, g in closed.items() if name != "gate")
    with torch.no_grad():
        adapter.gate.fill_(0.5)
    opened = gradients()
    assert all(g.abs().sum() > 0 for name, g in opened.items() if name.startswith("vin.layer_kv"))  # every layer used
    assert opened["gate"].abs().sum() > 0


def _moving_blobs(batch: int, frames: int, size: int, generator) -> torch.Tensor:
    """Latent videos ``[B, 4, F, size, size]``: a Gaussian blob per video moving one pixel per frame."""
    f = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    x = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    videos = []
    for _ in range(batch):
        y0, x0, speed = (torch.rand(3, generator=generator) * torch.tensor([size, size, 2.0])).tolist()
        blob = torch.exp(-((y - y0) ** 2 + (x - (x0 + speed * f) % size) ** 2) / 4.0)
        videos.append(blob.expand(4, frames, size, size) * torch.tensor([1.0, -1.0, 0.5, 2.0]).view(4, 1, 1, 1))
    return torch.stack(videos)


def test_short_training_run_lowers_the_loss(named_case, build, generator):
    """30 Adam steps on generated moving-blob videos (Wan, chunks of 3 frames with 1 context frame) take the
    loss well below that of the frozen model without global tokens. The gate starts at 0 (the first
    evaluation is the frozen model's) and trains at 10x the VIN's learning rate (measured: 1.520 ->
    1.272; 1.452 at the VIN's rate, the gates then reach only +-0.09 in 30 steps)."""
    case = named_case("wan2.1")
    model = build(case)
    inputs = dict(case.inputs(8, generator), hidden_states=_moving_blobs(2, 8, 8, generator))
    adapter = _adapter(case, model, inputs)
    optimizer = torch.optim.Adam([{"params": adapter.vin.parameters()}, {"params": [adapter.gate], "lr": 3e-2}], lr=3e-3)

    def evaluation_loss():
        with torch.no_grad():
            return sum(_loss(adapter, inputs, seed).item() for seed in range(4)) / 4

    with adapter.attach(chunk=3, context=1) as handle:
        handle.global_tokens = None
        frozen = evaluation_loss()
        handle.global_tokens = adapter
        assert evaluation_loss() == frozen
        for step in range(30):
            optimizer.zero_grad()
            _loss(adapter, inputs, seed=100 + step).backward()
            optimizer.step()
        trained = evaluation_loss()
    assert trained < 0.9 * frozen, (frozen, trained)


def test_vin_reads_the_whole_video_under_long_video(named_case, build, generator, rel_err):
    """With LongVideo the VIN reads all 10 frames once; every window of a video gets that video's tokens
    (through the gate, here random)."""
    case = named_case("wan2.1")
    model = build(case)
    inputs = case.inputs(10, generator)
    adapter = _adapter(case, model, inputs)
    with torch.no_grad():
        adapter.gate.copy_(torch.rand(adapter.gate.shape, generator=generator))
    seen = []
    adapter.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    layout = ChunkLayout.windows(10, 4, 2)
    with torch.no_grad():
        with adapter.attach(chunk=4), vd.LongVideo(model, window=4, overlap=2):
            out = model(**inputs, return_dict=False)[0]
        (video,) = seen
        assert video.num_frames == 10 and video.windows_per_video == layout.num_chunks
        global_kv = adapter(video)
        windows = []
        with vd.chunked_attention(model, chunk=4, global_tokens=global_kv, global_gate=adapter.gate):
            for start in layout.starts:
                window = model(**case.frames(inputs, start, start + 4), return_dict=False)[0]
                windows.append(window.movedim(2, 1))
        expected = reference.overlap_fuse(torch.stack(windows, 1), layout).movedim(1, 2)
    assert rel_err(out, expected) <= 1e-5


def test_wrong_latent_size_raises(named_case, build, generator):
    case = named_case("wan2.1")
    model = build(case)
    adapter = vd.VINAdapter(model, VIN_CONFIG, height=16, width=16)
    with pytest.raises(RuntimeError, match="attach"):
        _loss(adapter, case.inputs(4, generator), seed=0)
    with adapter.attach(chunk=2), pytest.raises(ValueError, match="built for latent frames"):
        _loss(adapter, case.inputs(4, generator), seed=0)
