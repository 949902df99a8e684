"""The vin model layer on the tiny preset (CPU, reference backend): shapes, chunk semantics, locality,
stop-gradient, sampling, training, and the paper preset's FLOPs on the meta device."""

import math
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vin
import vin_kernels
from vin_kernels import ChunkLayout

PRESET = vin.presets.tiny()
CFG = PRESET.dit
B, F = 2, 40
SHAPE = (CFG.in_channels, CFG.height, CFG.width)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    model, net_vin = PRESET.build()
    model.randomize_zero_layers()  # adaLN-Zero makes a fresh DiT predict 0: give every path weight
    return model.eval(), net_vin.eval()


def _inputs(frames=F, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, frames, *SHAPE, generator=gen)
    text = torch.randn(B, CFG.text_len, CFG.text_dim, generator=gen)
    return x, torch.tensor([10, 700]), text


def _windows(x, layout):
    return x[:, torch.tensor(layout.window_frame_index)]


# ------------------------------------------------------------------------------------ shapes
def test_a_fresh_dit_predicts_zero_until_its_zero_layers_are_randomized():
    torch.manual_seed(0)
    model, _ = PRESET.build()
    x, t, text = _inputs(8)
    layout = ChunkLayout.full(8)
    assert not model(x, t, text, layout=layout).any()
    before = {name: p.clone() for name, p in model.named_parameters()}
    assert model.randomize_zero_layers(std=0.5) is model
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(not before[name].any() and name.endswith("weight") for name in changed)
    assert abs(model.final.weight.std().item() - 0.5) < 0.1
    assert model(x, t, text, layout=layout).abs().mean() > 0.01

def test_shapes(nets):
    model, net_vin = nets
    x, t, text = _inputs()
    global_kv = net_vin(x, t, text)
    assert len(global_kv) == CFG.depth
    for gk, gv in global_kv:
        assert gk.shape == gv.shape == (B, PRESET.vin.num_global_tokens, CFG.heads, CFG.head_dim)
    assert model(x, t, text).shape == x.shape
    assert model(x, t, text, layout=PRESET.train_layout(F), global_kv=global_kv).shape == x.shape
    windows = PRESET.window_layout(F)
    xw = _windows(x, windows)
    assert xw.shape == (B, windows.num_chunks, windows.chunk_len, *SHAPE)
    assert model(xw, t, text, layout=windows, global_kv=global_kv).shape == xw.shape


def test_vin_reads_one_keyframe_per_second():
    net_vin = PRESET.build()[1]
    assert net_vin.keyframe_stride == 5  # 1.0 s at 16 fps, 16 frames -> 5 latents
    assert net_vin.keyframes(F) == tuple(range(0, F, 5))


# ------------------------------------------------------------------------------------ chunk semantics
def test_batched_windows_equal_a_loop_over_windows(nets):
    model, net_vin = nets
    x, t, text = _inputs()
    global_kv = net_vin(x, t, text)
    layout = PRESET.window_layout(F)
    batched = model(_windows(x, layout), t, text, layout=layout, global_kv=global_kv)
    single = ChunkLayout.windows(layout.chunk_len, layout.chunk_len, 0)  # one window of the same length
    for i, frames in enumerate(layout.window_frame_index):
        alone = model(x[:, list(frames)].unsqueeze(1), t, text, layout=single, global_kv=global_kv)
        torch.testing.assert_close(batched[:, i], alone[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layout",
    [ChunkLayout.context(12, 20, 8), ChunkLayout.windows(12, 20, 4)],
    ids=["context-one-chunk", "windows-one-window"],
)
def test_one_chunk_without_vin_is_full_attention(nets, layout):
    model, _ = nets
    x, t, text = _inputs(frames=12)
    full = model(x, t, text)
    xs = x.unsqueeze(1) if layout.is_windows else x
    chunked = model(xs, t, text, layout=layout)
    torch.testing.assert_close(chunked.reshape(full.shape), full, rtol=1e-5, atol=1e-5)


def _chunk_output(model, net_vin, x, t, text, layout, chunk):
    global_kv = net_vin(x, t, text) if net_vin is not None else None
    out = model(x, t, text, layout=layout, global_kv=global_kv)
    return out[:, list(layout.query_frames(chunk))]


def receptive_start(layout, chunk, depth):
    """First frame that can reach chunk ``chunk``'s output through ``depth`` layers without the VIN.

    The last layer reads the chunk's key window; a context frame's state in the layer below was
    computed by the chunk that owns it, over that chunk's window, and so on down the layers.
    """
    start = layout.key_frames(chunk).start
    for _ in range(depth - 1):
        start = layout.key_frames(layout.owner(start)).start
    return start


def test_locality_context_mode(nets):
    """Frames before chunk i's receptive field and every frame after the chunk leave its output unchanged."""
    model, net_vin = nets
    layout = PRESET.train_layout(F)  # chunks of 8 frames, context 4, depth 2
    chunk = 3  # frames 24..31: window 20..31; frame 20 is chunk 2's, whose window starts at 12
    reach = receptive_start(layout, chunk, CFG.depth)
    assert reach == 12
    x, t, text = _inputs()
    base = _chunk_output(model, None, x, t, text, layout, chunk)
    far = x.clone()
    far[:, :reach] += 1.0  # every frame before the receptive field
    far[:, layout.query_frames(chunk).stop :] += 1.0  # and every later frame
    torch.testing.assert_close(_chunk_output(model, None, far, t, text, layout, chunk), base, rtol=0, atol=0)
    near = x.clone()
    near[:, reach] += 1.0
    assert not torch.equal(_chunk_output(model, None, near, t, text, layout, chunk), base)


def test_far_frames_reach_a_chunk_only_through_the_vin_keyframes(nets):
    model, net_vin = nets
    layout = PRESET.train_layout(F)
    chunk, keyframe, other = 3, 5, 6  # frame 5 is a keyframe, 6 is not; both before chunk 3's reach (12)
    x, t, text = _inputs()
    base = _chunk_output(model, net_vin, x, t, text, layout, chunk)
    moved = x.clone()
    moved[:, other] += 1.0
    torch.testing.assert_close(_chunk_output(model, net_vin, moved, t, text, layout, chunk), base, rtol=0, atol=0)
    moved[:, keyframe] += 1.0
    assert not torch.equal(_chunk_output(model, net_vin, moved, t, text, layout, chunk), base)


def test_locality_window_mode(nets):
    model, _ = nets
    layout = PRESET.window_layout(F)
    x, t, text = _inputs()
    base = model(_windows(x, layout), t, text, layout=layout)
    moved = x.clone()
    moved[:, layout.query_frames(0).stop :] += 1.0  # every frame outside window 0
    out = model(_windows(moved, layout), t, text, layout=layout)
    torch.testing.assert_close(out[:, 0], base[:, 0], rtol=0, atol=0)
    assert not torch.equal(out[:, 1], base[:, 1])


@pytest.mark.parametrize("context_grad", [False, True])
def test_no_gradient_crosses_a_context_with_stop_gradient(nets, context_grad):
    model, _ = nets
    layout = PRESET.train_layout(F)
    x, t, text = _inputs()
    x.requires_grad_()
    out = model(x, t, text, layout=layout, context_grad=context_grad)
    chunk = layout.query_frames(2)
    (grad,) = torch.autograd.grad(out[:, chunk.start : chunk.stop].square().sum(), x)
    before = grad[:, : chunk.start]
    if context_grad:
        assert before.abs().max() > 0
    else:
        assert before.abs().max() == 0
    assert grad[:, chunk.start : chunk.stop].abs().max() > 0


# ------------------------------------------------------------------------------------ sampling
def test_sampling_is_deterministic_with_a_seed(nets):
    model, net_vin = nets
    _, _, text = _inputs()
    layout = PRESET.window_layout(F)

    def run(seed, eta):
        return vin.sample(model, net_vin, text, layout=layout, steps=6, t_alpha=3, eta=eta, generator=torch.Generator().manual_seed(seed))

    for eta in (0.0, 1.0):
        first, second = run(0, eta), run(0, eta)
        assert first.shape == (B, F, *SHAPE) and torch.isfinite(first).all()
        assert torch.equal(first, second)
        assert not torch.equal(first, run(1, eta))


def test_fused_step_is_the_blend_then_the_ddim_update(nets):
    model, net_vin = nets
    x, _, text = _inputs()
    layout = PRESET.window_layout(F)
    schedule = vin.DiffusionSchedule(prediction=model.prediction)
    t, t_prev = 900, 880
    state = _windows(x, layout)  # the sampler keeps a window layout's state as windows
    fused = vin.sampling.denoise_step(model, net_vin, state, text, t, t_prev, layout, fuse=True, schedule=schedule)
    t_batch = torch.full((B,), t)
    eps = model(state, t_batch, text, layout=layout, global_kv=net_vin(x, t_batch, text))
    a, b, _ = schedule.ddim(t, t_prev)
    expected = a * x + b * vin_kernels.reference.overlap_fuse(eps, layout)
    assert fused.shape == state.shape
    torch.testing.assert_close(fused, _windows(expected, layout), rtol=1e-5, atol=1e-5)
    assert torch.equal(vin.sampling.video_of(fused, layout, fused=True), layout.frames_from_copies(fused))


def test_window_sampler_equals_the_video_sampler_written_out(nets):
    """vin.sample with a window layout, against the same DDIM loop written with the state as a video:
    gather the windows each fused step, blend, update; after t_alpha, independent windows, final blend."""
    model, net_vin = nets
    _, _, text = _inputs()
    layout, steps, t_alpha = PRESET.window_layout(F), 6, 3
    schedule = vin.DiffusionSchedule(prediction=model.prediction)
    got = vin.sample(model, net_vin, text, layout=layout, steps=steps, t_alpha=t_alpha, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((B, F, *SHAPE), generator=gen)
    timesteps = schedule.timesteps(steps)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < steps else -1
        a, b, _ = schedule.ddim(t, t_prev)
        t_batch = torch.full((B,), t)
        if steps - i > t_alpha:
            eps = model(_windows(x, layout), t_batch, text, layout=layout, global_kv=net_vin(x, t_batch, text))
            x = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=(a, b))
        else:
            if x.shape[1] == F:
                x = _windows(x, layout)
            video = vin_kernels.overlap_fuse(x, layout)
            x = a * x + b * model(x, t_batch, text, layout=layout, global_kv=net_vin(video, t_batch, text))
    expected = vin_kernels.overlap_fuse(x, layout)
    assert torch.equal(got, expected)


def test_context_mode_sampling(nets):
    model, net_vin = nets
    _, _, text = _inputs()
    out = vin.sample(model, net_vin, text, layout=PRESET.context_layout(F), steps=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (B, F, *SHAPE) and torch.isfinite(out).all()


def test_tiny_preset_samples_40_frames_in_50_steps_quickly():
    model, net_vin = PRESET.build()
    text = torch.randn(1, CFG.text_len, CFG.text_dim)
    start = time.perf_counter()
    out = vin.sample(model, net_vin, text, layout=PRESET.window_layout(40), generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - start
    assert out.shape == (1, 40, *SHAPE) and torch.isfinite(out).all()
    assert elapsed < 60, f"50-step sample of 40 frames took {elapsed:.1f} s"


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_recovers_x0_from_the_exact_prediction(prediction):
    """With the true noise (or the true v of the current x_t) as prediction, DDIM (eta=0) walks x_T
    back to x0 exactly; a v fed to the epsilon update (or the reverse) does not."""
    schedule = vin.DiffusionSchedule(prediction=prediction)
    wrong = vin.DiffusionSchedule(prediction="v" if prediction == "epsilon" else "epsilon")
    x0, noise = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ts = schedule.timesteps(10)
    x = y = math.sqrt(schedule.alpha_bar(ts[0])) * x0 + math.sqrt(1 - schedule.alpha_bar(ts[0])) * noise
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ab = schedule.alpha_bar(t)
        target = noise if prediction == "epsilon" else math.sqrt(ab) * noise - math.sqrt(1 - ab) * x0
        x = schedule.ddim_step(x, target, t, t_prev)
        y = wrong.ddim_step(y, target, t, t_prev)
        x_clip = schedule.ddim_step(x, target, t, t_prev, clip_x0=1e9)  # clipping nothing: the same update
        torch.testing.assert_close(x_clip, schedule.ddim_step(x, target, t, t_prev))
    torch.testing.assert_close(x, x0)
    assert (y - x0).abs().max() > 0.1


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("layout_kind", ["train", "window", "full"])
def test_training_loss_is_a_finite_scalar(layout_kind):
    model, net_vin = PRESET.build()
    x0, _, text = _inputs()
    layout = {"train": PRESET.train_layout(F), "window": PRESET.window_layout(F), "full": None}[layout_kind]
    loss = vin.training_loss(model, net_vin if layout else None, x0, text, layout, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_training_loss_regresses_the_prediction_target(prediction):
    """A fresh DiT outputs 0 (adaLN-Zero), so its loss is the mean square of the target: eps, or
    v = sqrt(ab) eps - sqrt(1 - ab) x0 for the same t and noise draws."""
    model = vin.VideoDiT(CFG, prediction=prediction)
    x0, _, text = _inputs(frames=12)
    loss = vin.training_loss(model, None, x0, text, None, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (B,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    ab = vin.DiffusionSchedule().alpha_bars(t).view(B, 1, 1, 1, 1)
    target = noise if prediction == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(loss, target.square().mean())
    with pytest.raises(ValueError, match="the model predicts"):
        vin.training_loss(model, None, x0, text, None, torch.Generator(), vin.DiffusionSchedule(prediction="v" if prediction == "epsilon" else "epsilon"))


def test_tiny_preset_loss_falls_over_30_steps():
    torch.manual_seed(0)
    model, net_vin = PRESET.build()
    params = [*model.parameters(), *net_vin.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    frames = torch.linspace(0, 1, 24)[None, :, None, None, None]
    x0 = torch.sin(6.28 * (frames + torch.linspace(0, 1, 8)[None, None, None, :, None])).expand(2, 24, *SHAPE).contiguous()
    text = torch.randn(2, CFG.text_len, CFG.text_dim)
    layout = PRESET.train_layout(24)
    losses = []
    for _ in range(30):
        loss = vin.training_loss(model, net_vin, x0, text, layout, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# ------------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("frames", [80, 128])
@pytest.mark.parametrize("mode", ["full", "context", "windows"])
def test_paper_preset_flops_match_the_counter_on_meta(mode, frames):
    preset = vin.presets.paper()
    model, net_vin = preset.build(device="meta", backend="triton")
    layout = {"full": None, "context": preset.context_layout(frames), "windows": preset.window_layout(frames)}[mode]
    x = torch.empty(1, frames, 4, 24, 40, device="meta")
    text = torch.empty(1, 120, 4096, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        global_kv = net_vin(x, t, text) if layout is not None else None
        xs = x[:, torch.tensor(layout.window_frame_index, device="meta")] if mode == "windows" else x
        model(xs, t, text, layout=layout, global_kv=global_kv)
    counted = counter.get_total_flops()
    analytic = vin.flops.step_flops(preset, frames, layout).total
    assert abs(counted - analytic) <= 0.01 * analytic, f"counted {counted:.4e} vs analytic {analytic:.4e}"
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert any("vin_kernels.chunk_attention" in op for op in ops)


def test_flops_of_vin_below_full_attention_for_long_videos():
    preset = vin.presets.paper()
    full = vin.flops.step_flops(preset, 256, None)
    context = vin.flops.step_flops(preset, 256, preset.context_layout(256))
    assert context.total < full.total and full.vin == 0 and context.vin > 0
    sample = vin.flops.sample_flops(preset, 256, preset.context_layout(256))
    assert sample.total == 50 * context.total


def test_bf16_networks_with_float32_sampling_state():
    model, net_vin = PRESET.build(dtype=torch.bfloat16)
    text = torch.randn(1, CFG.text_len, CFG.text_dim)
    out = vin.sample(model, net_vin, text, layout=PRESET.window_layout(20), steps=3, t_alpha=2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_named_attention_helpers_are_plain_attention():
    """cross_attention = attention over all keys; attention_with_extra_keys = one softmax over [k; extra]."""
    from vin.layers import attention_with_extra_keys, cross_attention

    q, k, v = (torch.randn(2, 7, 3, 16) for _ in range(3))
    ek, ev = (torch.randn(2, 5, 3, 16) for _ in range(2))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def heads(t):
        return t.transpose(1, 2)

    torch.testing.assert_close(cross_attention(q, ek, ev), heads(sdpa(heads(q), heads(ek), heads(ev))), rtol=1e-5, atol=1e-6)
    expected = heads(sdpa(heads(q), heads(torch.cat([k, ek], 1)), heads(torch.cat([v, ev], 1))))
    torch.testing.assert_close(attention_with_extra_keys(q, k, v, ek, ev), expected, rtol=1e-5, atol=1e-6)
