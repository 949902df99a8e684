"""vin.data (generated videos and their exact ground truth), vin.metrics (each metric on constructed
inputs) and vin.train (a 20-step run lowers the loss; the sampler's fusion modes)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import vin
from vin import data, metrics
from vin.train import TrainSettings, sample_videos, train
from vin_kernels import ChunkLayout

pytest.importorskip("cv2", reason="vin.metrics needs opencv-python-headless (the quality extra)")


@pytest.fixture(scope="module")
def scenes():
    return data.generate(4, 48, seed=3)


# ------------------------------------------------------------------------------------ data
def test_videos_are_deterministic_and_any_prefix_or_slice_is_the_same_video(scenes):
    again = data.generate(4, 48, seed=3)
    assert torch.equal(scenes.video, again.video) and torch.equal(scenes.tracks, again.tracks)
    short = data.generate(2, 20, seed=3, first_video=2, first_frame=10)
    torch.testing.assert_close(short.video, scenes.video[2:, 10:30], rtol=0, atol=1e-6)
    torch.testing.assert_close(short.tracks, scenes.tracks[2:, 10:30], rtol=0, atol=1e-9)
    assert not torch.equal(data.generate(4, 48, seed=4).video, scenes.video)
    assert not torch.equal(data.generate(4, 48, seed=3, split="train").video, scenes.video)
    clips = data.training_batch(3, 2, 24, seed=3)
    torch.testing.assert_close(clips, data.generate(2, 24, seed=3, first_video=6, split="train").video, rtol=0, atol=0)


def test_latents_are_in_range_and_channel_3_is_the_object_coverage(scenes):
    video = scenes.video
    assert video.shape == (4, 48, 4, 16, 16) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    covered = video[:, :, data.ALPHA_CHANNEL] > 0
    assert torch.equal(covered & (scenes.owner >= 0), scenes.owner >= 0)  # owned pixels are covered
    rgb = data.to_rgb(video[0], scale=4)
    assert rgb.shape == (48, 64, 64, 3) and rgb.dtype == np.uint8


def test_tracks_follow_straight_lines_with_elastic_bounces(scenes):
    """Stepping every object frame by frame (reverse a velocity component at a wall) reproduces the
    closed-form tracks, so the ground truth is exact at any frame of any length."""
    cfg = scenes.config
    for b in range(scenes.tracks.shape[0]):
        for k in np.flatnonzero(scenes.present[b].numpy()):
            e = scenes.extent[b, k].item()
            low, high = np.array([e, e]), np.array([cfg.width - e, cfg.height - e])
            position, velocity = scenes.tracks[b, 0, k].numpy().copy(), scenes.velocity[b, k].numpy().copy()
            for t in range(1, scenes.tracks.shape[1]):
                position = position + velocity
                for axis in range(2):  # a speed below the free span bounces at most once per frame
                    if position[axis] > high[axis]:
                        position[axis], velocity[axis] = 2 * high[axis] - position[axis], -velocity[axis]
                    elif position[axis] < low[axis]:
                        position[axis], velocity[axis] = 2 * low[axis] - position[axis], -velocity[axis]
                np.testing.assert_allclose(scenes.tracks[b, t, k].numpy(), position, rtol=0, atol=1e-9)
    speed = scenes.displacement.norm(dim=-1)[scenes.present[:, None].expand(-1, 47, -1)]
    assert speed.max() <= cfg.speed[1] + 1e-9


def test_rendered_objects_sit_on_their_tracks_with_their_colours():
    """Frames where one object is alone (nothing overlaps it): the centroid of its coverage is its
    track point, its pixels carry its colour darkened only by its stripes, and it is fully visible."""
    scenes = data.generate(6, 24, seed=5, config=data.SceneConfig(max_objects=1))
    coverage = (scenes.video[:, :, data.ALPHA_CHANNEL] + 1) / 2  # one object: its own coverage
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    mass = coverage.sum((-1, -2))
    centroid = torch.stack([(coverage * xs).sum((-1, -2)) / mass, (coverage * ys).sum((-1, -2)) / mass], -1)
    # Coverage is sampled at pixel centres: a 2-3 px square or diamond (corners) puts its sampled
    # centroid up to 0.09 px off its centre (0.035 px for a disc), measured over 64 videos of 48 frames.
    torch.testing.assert_close(centroid.double(), scenes.tracks[:, :, 0], rtol=0, atol=0.1)
    assert torch.all(scenes.visible[:, :, 0] == 1)
    inside = (scenes.owner == 0) & (coverage > 0.999)  # fully covered: no background mixed in
    for b in range(6):
        pixels = (scenes.video[b, :, :3].permute(1, 0, 2, 3)[:, inside[b]].double() + 1) / 2  # [3, n] in [0, 1]
        colour = (scenes.color[b, 0, :, None] + 1) / 2
        ratio = pixels / colour.clamp_min(1e-3)
        bright = colour[:, 0] > 0.2  # channels with signal; the stripes darken by at most stripe_depth
        assert ratio[bright].max() <= 1 + 1e-3 and ratio[bright].min() >= 1 - scenes.config.stripe_depth - 0.1


def test_occluded_objects_report_their_visible_fraction():
    scenes = data.generate(16, 48, seed=0, config=data.SceneConfig(min_objects=3, max_objects=3))
    front = scenes.depth.argmax(1)
    assert torch.all(scenes.visible[torch.arange(16), :, front] > 0.999)  # nothing is in front of it
    assert (scenes.visible < 0.9).any(), "no occlusion in 16 scenes of 3 objects"
    for b, t, k in zip(*torch.nonzero(scenes.visible < 0.5, as_tuple=True)):  # mostly hidden: owns few pixels
        area = scenes.radius[b, k] ** 2 * math.pi  # within 10% of every shape's area
        assert (scenes.owner[b, t] == k).sum() < (scenes.visible[b, t, k] + 0.3) * area


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        data.generate(1, 0)
    with pytest.raises(TypeError, match="num_videos"):
        data.generate(1.5, 4)
    with pytest.raises(ValueError, match="split"):
        data.generate(1, 4, split="test")
    with pytest.raises(ValueError, match="radius"):
        data.SceneConfig(height=4, width=4)
    with pytest.raises(ValueError, match="latent"):
        data.to_rgb(torch.zeros(2, 3, 8, 8))


# ------------------------------------------------------------------------------------ metrics
def _shifted_texture(frames=8, shift=(1, 0)):
    """A smooth random texture moved by an integer shift per frame (wrapping around): latents
    ``[F, 4, 16, 16]`` and the exact backward flow at 4x (valid away from the wrapped edge)."""
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 4, 8, 8, generator=gen) * 2 - 1, size=(16, 16), mode="bicubic")
    base = base.clamp(-1, 1)[0]
    video = torch.stack([torch.roll(base, (t * shift[1], t * shift[0]), dims=(1, 2)) for t in range(frames)])
    size = 16 * metrics.FLOW_SCALE
    backward = np.zeros((frames - 1, size, size, 2), np.float32)
    backward[..., 0], backward[..., 1] = -shift[0] * metrics.FLOW_SCALE, -shift[1] * metrics.FLOW_SCALE
    valid = np.zeros((frames - 1, size, size), bool)
    valid[:, 8:-8, 8:-8] = True  # the wrapped border and the bilinear upsampling's edge rows
    return video, (backward, valid)


def test_a_perfect_warp_gives_zero_warp_error():
    video, flow = _shifted_texture()
    exact = metrics.warp_error(video, flow=flow)
    assert exact["warp_error"] == 0 and exact["mawe"] == 0
    assert exact["motion"] == pytest.approx(1.0)
    farneback = metrics.warp_error(video)  # the estimated flow is close to the truth
    assert farneback["warp_error"] < 0.5 and farneback["motion"] == pytest.approx(1.0, abs=0.2)
    shuffled = metrics.warp_error(video[torch.tensor([0, 4, 1, 6, 2, 7, 3, 5])])
    assert shuffled["mawe"] > 10 * farneback["mawe"]


def test_ground_truth_flow_warps_generated_videos_almost_exactly(scenes):
    for b in range(2):
        exact = metrics.warp_error(scenes.video[b], flow=metrics.ground_truth_flow(scenes, b))
        estimated = metrics.warp_error(scenes.video[b])
        assert exact["warp_error"] < 0.1 < estimated["warp_error"] < 1.0  # sub-pixel interpolation only
        assert exact["valid_fraction"] > 0.5


def test_an_inserted_cut_is_detected_at_its_border_only(scenes):
    layout = ChunkLayout.context(48, 8)
    clean = metrics.scene_cuts(scenes.video[0], layout)
    assert clean["cut_rate"] == 0 and clean["inside_rate"] == 0
    cut = torch.cat([scenes.video[0, :24], scenes.video[1, 24:]])  # a different scene from frame 24 on
    detected = metrics.scene_cuts(cut, layout)
    assert detected["cut_rate"] == pytest.approx(1 / 5) and detected["inside_rate"] == 0
    inside = torch.cat([scenes.video[0, :20], scenes.video[1, 20:]])  # a cut inside chunk 2
    assert metrics.scene_cuts(inside, layout)["inside_rate"] > 0


def test_chunk_borders_of_windows_span_the_shared_frames():
    layout = ChunkLayout.windows(28, 12, 4)  # windows at 0, 8, 16 (the last clamped: 16..27)
    assert metrics.chunk_borders(layout) == [range(7, 12), range(15, 20)]
    assert metrics.chunk_borders(ChunkLayout.context(20, 8, 4)) == [range(7, 8), range(15, 16)]
    assert metrics.chunk_borders(ChunkLayout.windows(24, 8, 0)) == [range(7, 8), range(15, 16)]


def test_identity_drift_sees_objects_change_colour_at_a_border(scenes):
    layout = ChunkLayout.context(48, 8)
    same = metrics.identity_drift(scenes.video[2], layout)
    assert same["chunks_with_objects"] == 1 and same["drift"] < 0.05
    recoloured = scenes.video[2].clone()
    recoloured[24:, :3] = recoloured[24:, :3].flip(1)  # RGB -> BGR from chunk 3 on
    changed = metrics.identity_drift(recoloured, layout)
    assert changed["drift"] > 2 * same["drift"] + 0.05 and changed["drift_first_last"] > 0.2
    empty = metrics.identity_drift(torch.full((16, 4, 16, 16), -1.0), ChunkLayout.context(16, 8))
    assert empty["chunks_with_objects"] == 0 and math.isnan(empty["drift"])


def test_metrics_reject_bad_input(scenes):
    with pytest.raises(ValueError, match="latent video"):
        metrics.warp_error(scenes.video)  # a batch, not one video
    with pytest.raises(ValueError, match="frames"):
        metrics.scene_cuts(scenes.video[0], ChunkLayout.context(40, 8))
    with pytest.raises(TypeError, match="layout"):
        metrics.identity_drift(scenes.video[0], 8)
    with pytest.raises(ValueError, match="NaN"):
        metrics.frame_differences(torch.full((4, 4, 16, 16), math.nan))


# ------------------------------------------------------------------------------------ training, sampling
def test_twenty_training_steps_lower_the_loss():
    """The quality preset at its real size, 20 steps on 4 clips of 24 frames (about 3 s on 2 cores)."""
    settings = TrainSettings(steps=20, batch=4, warmup=5, lr=3e-3)
    trained = train(vin.presets.quality(), settings)
    first, last = np.mean(trained.losses[:4]), np.mean(trained.losses[-4:])
    assert last < 0.8 * first, trained.losses
    assert all(map(math.isfinite, trained.losses))


@pytest.fixture(scope="module")
def small_trained():
    preset = dataclasses.replace(vin.presets.quality(), steps=4, t_alpha=2)
    return train(preset, TrainSettings(steps=1, batch=1, warmup=1))


def test_fusion_modes_sample_the_same_noise_differently(small_trained):
    layout = small_trained.preset.window_layout(28)
    videos = {f: sample_videos(small_trained, layout, num_videos=1, fusion=f) for f in vin.sampling.FUSION_MODES}
    assert all(v.shape == (1, 28, 4, 16, 16) and torch.isfinite(v).all() for v in videos.values())
    assert not torch.equal(videos["early"], videos["late"]) and not torch.equal(videos["early"], videos["none"])
    again = sample_videos(small_trained, layout, num_videos=1, fusion="early")
    assert torch.equal(again, videos["early"])
    with pytest.raises(ValueError, match="fusion"):
        sample_videos(small_trained, layout, num_videos=1, fusion="mid")
