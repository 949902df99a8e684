"""vin.diffusers.LongVideo: overlapping windows batched in one call, blended with the paper's ramp."""

from __future__ import annotations

import pytest
import torch

import vin.diffusers as vd
from vin.diffusers.tiny import tiny_wan_pipeline
from vin_kernels import ChunkLayout, reference

T = 16  # tokens per latent frame of every case (conftest)
WINDOWABLE = ["wan2.1", "wan2.2-ti2v", "ltx-video", "hunyuan-video", "cogvideox-2b", "cogvideox-5b-rope"]


def _sample(model, inputs):
    return model(**inputs, return_dict=False)[0]


def _as_frames(case, sample):
    """Output sample -> ``[B, F, *feat]`` (frames second) for blending in the test."""
    if case.frame_tokens:
        return sample.unflatten(1, (-1, T))
    return sample.movedim(case.frame_dim, 1)


def _from_frames(case, frames):
    if case.frame_tokens:
        return frames.flatten(1, 2)
    return frames.movedim(1, case.frame_dim)


def _stock_windows(case, model, inputs, layout):
    """Every window run through the stock model as a video of its own: ``[B, n, L, *feat]``."""
    outs = [_as_frames(case, _sample(model, case.frames(inputs, s, s + layout.chunk_len))) for s in layout.starts]
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("name", WINDOWABLE)
def test_windows_in_one_batch_blended_equal_each_window_alone(name, named_case, build, generator, rel_err):
    """10 frames, windows of 4 overlapping by 2 (starts 0, 2, 4, 6): one batched forward of B*4 windows,
    blended = the stock model on each window alone, blended by the reference ramp."""
    case = named_case(name)
    model = build(case)
    inputs = case.inputs(10, generator)
    layout = ChunkLayout.windows(10, 4, 2)
    batch_sizes = []
    probe = model.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    with torch.no_grad(), vd.LongVideo(model, window=4, overlap=2):
        out = _sample(model, inputs)
    probe.remove()
    assert batch_sizes == [2 * layout.num_chunks]  # one call, all windows of both videos

    with torch.no_grad():
        expected = reference.overlap_fuse(_stock_windows(case, model, inputs, layout), layout)
    assert rel_err(out, _from_frames(case, expected)) <= 1e-5


def test_fuse_until_switches_from_ramp_to_owner_windows(named_case, build, generator, rel_err):
    case = named_case("wan2.1")
    model = build(case)
    layout = ChunkLayout.windows(9, 4, 2)  # starts 0, 2, 4, 5: the last window is clamped
    for timestep, ramp in ((700.0, True), (300.0, False)):
        inputs = dict(case.inputs(9, generator), timestep=torch.full((2,), timestep))
        with torch.no_grad(), vd.LongVideo(model, window=4, overlap=2, fuse_until=500):
            out = _sample(model, inputs)
            windows = _stock_windows(case, model, inputs, layout)
        if ramp:
            expected = reference.overlap_fuse(windows, layout)
        else:
            owner = torch.tensor(layout.owners)
            expected = windows[:, owner, torch.arange(9) - torch.tensor(layout.starts)[owner]]
        assert rel_err(out, _from_frames(case, expected)) <= 1e-5


def test_short_video_passes_through_unchanged(named_case, build, generator):
    case = named_case("hunyuan-video")
    model = build(case)
    inputs = case.inputs(4, generator)
    with torch.no_grad():
        ref = _sample(model, inputs)
        with vd.LongVideo(model, window=4, overlap=1):
            out = _sample(model, inputs)
    assert torch.equal(out, ref)


def test_composes_with_chunked_attention(named_case, build, generator, rel_err):
    """LongVideo cuts first (its pre-hook is prepended), then chunked_attention chunks each window."""
    case = named_case("wan2.1")
    model = build(case)
    inputs = case.inputs(10, generator)
    layout = ChunkLayout.windows(10, 4, 2)
    with torch.no_grad():
        with vd.chunked_attention(model, chunk=2), vd.LongVideo(model, window=4, overlap=2):
            out = _sample(model, inputs)
        with vd.chunked_attention(model, chunk=2):
            expected = reference.overlap_fuse(_stock_windows(case, model, inputs, layout), layout)
    assert rel_err(out, _from_frames(case, expected)) <= 1e-5


def test_bad_arguments_raise_clear_errors(named_case, build, generator):
    model = build(named_case("wan2.1"))
    with pytest.raises(ValueError, match="overlap must be smaller than window"):
        vd.LongVideo(model, window=4, overlap=4)
    with pytest.raises(TypeError, match=r"window \(latent frames\) must be an int"):
        vd.LongVideo(model, window=4.5, overlap=1)
    with pytest.raises(TypeError, match="fuse_until must be None or a timestep"):
        vd.LongVideo(model, window=4, overlap=1, fuse_until="early")
    with vd.LongVideo(model, window=4, overlap=1), pytest.raises(ValueError, match="already installed"):
        vd.LongVideo(model, window=6, overlap=1)
    cog = build(named_case("cogvideox1.5"))
    with vd.LongVideo(cog, window=2, overlap=1), pytest.raises(NotImplementedError, match="patch_size_t=2"):
        _sample(cog, named_case("cogvideox1.5").inputs(4, generator))


@pytest.mark.parametrize("two_experts", [False, True], ids=["wan2.1-t2v", "wan2.2-a14b"])
def test_unmodified_pipeline_makes_videos_longer_than_its_rope_table(two_experts):
    """The tiny WanPipeline's transformer takes at most rope_max_seq_len = 8 latent frames; asked for
    13 latent frames it fails alone and succeeds with LongVideo (windows of 8 overlapping by 3)."""
    pipe = tiny_wan_pipeline(rope_max_seq_len=8, two_experts=two_experts)
    call = dict(
        prompt="a red ball rolls", negative_prompt="cat", height=32, width=32, num_frames=4 * 12 + 1,
        num_inference_steps=2, max_sequence_length=8, output_type="latent",
    )
    with pytest.raises(RuntimeError):
        pipe(**call, generator=torch.Generator().manual_seed(0))
    transformers = [pipe.transformer] + ([pipe.transformer_2] if two_experts else [])
    handles = [vd.LongVideo(t, window=8, overlap=3) for t in transformers]
    latents = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    for handle in handles:
        handle.remove()
    assert latents.shape == (1, 16, 13, 4, 4)
    assert torch.isfinite(latents).all()
