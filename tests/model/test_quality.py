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


# The generator's richer scenes (several textured, occluding objects; the default before the toy model
# had to learn its data in minutes): the data and metric tests exercise every feature on them.
RICH = data.SceneConfig(max_objects=3, radius=(2.0, 3.0), stripe_depth=0.35)


@pytest.fixture(scope="module")
def scenes():
    return data.generate(4, 48, seed=3, config=RICH)


# ------------------------------------------------------------------------------------ data
def test_videos_are_deterministic_and_any_prefix_or_slice_is_the_same_video(scenes):
    again = data.generate(4, 48, seed=3, config=RICH)
    assert torch.equal(scenes.video, again.video) and torch.equal(scenes.tracks, again.tracks)
    short = data.generate(2, 20, seed=3, first_video=2, first_frame=10, config=RICH)
    torch.testing.assert_close(short.video, scenes.video[2:, 10:30], rtol=0, atol=1e-6)
    torch.testing.assert_close(short.tracks, scenes.tracks[2:, 10:30], rtol=0, atol=1e-9)
    assert not torch.equal(data.generate(4, 48, seed=4, config=RICH).video, scenes.video)
    assert not torch.equal(data.generate(4, 48, seed=3, split="train", config=RICH).video, scenes.video)
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
    scenes = data.generate(6, 24, seed=5, config=data.SceneConfig(radius=(2.0, 3.0), stripe_depth=0.35))
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


def test_the_default_scenes_are_one_plain_object():
    """The toy model's data: one object of one colour (no stripes) per video."""
    scenes = data.generate(8, 12, seed=1)
    assert scenes.present.sum(1).tolist() == [1] * 8 and torch.all(scenes.visible[:, :, 0] == 1)
    for b in range(8):
        inside = (scenes.video[b, :, data.ALPHA_CHANNEL] > 0.999)  # fully covered pixels: the object's colour only
        colours = scenes.video[b, :, :3].permute(1, 0, 2, 3)[:, inside]
        torch.testing.assert_close(colours, scenes.color[b, 0, :, None].float().expand_as(colours), rtol=0, atol=1e-5)


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


# ------------------------------------------------------------------------------------ the quality suite's report
def _fake_result():
    """A result of the quality suite's layout, with made-up numbers (nothing trained)."""
    from vin_bench.suites import quality as suite

    def row(variant, mawe):
        scores = {key: 0.1 for key in suite.METRICS} | {f"{key}_sem": 0.01 for key in suite.METRICS} | {"mawe": mawe}
        return {"variant": variant, "description": variant, "layout": "-", "x0_mse": {"200": 0.02, "500": 0.07, "900": 0.13}, **scores}

    rows = [row(suite.DATA_ROW, 1.2)] + [row(v, 2.0 + i) for i, v in enumerate(suite.VARIANTS)]
    videos = {name: data.generate(1, 12, seed=i).video[0] for i, name in enumerate([suite.DATA_ROW, *suite.VARIANTS])}
    png, frames = suite._strip_png(videos, 6)
    curve = {"100": 0.03, "200": 0.02}
    return {
        "preset": "quality", "prediction": "v", "train": dataclasses.asdict(suite.TRAIN),
        "eval": {"videos": 8, "frames": 96, "sampling_steps": 50, "t_alpha": 20, "flow": "Farneback"},
        "threads": {"parallel_processes": 2, "per_process": 1}, "total_seconds": 2280.0, "rows": rows,
        "diagnostics": {"timesteps": [200, 500, 900], "baselines": {"best_linear": {"200": 0.03, "500": 0.09, "900": 0.13},
                                                                      "data_mean": {"200": 0.13, "500": 0.13, "900": 0.13}},
                        "models": {suite.loss_label(m): {"100": {"200": 0.04, "500": 0.1, "900": 0.14}} for m in suite.MODELS}},
        "full_attention_mawe_curve": {"frames": 16, "videos": 2, "mawe": curve},
        "layout_losses": {suite.loss_label("vin"): {"training": 0.1, "windows": 0.11}},
        "losses": {suite.loss_label(m): [1.0, 0.5] for m in suite.MODELS},
        "strip": {"rows": list(videos), "frames": frames, "png_base64": png},
    }  # fmt: skip


def test_the_report_names_every_variant_the_same_way_and_states_one_time(tmp_path):
    import cv2

    from vin_bench.suites import quality as suite

    result = _fake_result()
    table = suite.markdown(result)
    for variant in [suite.DATA_ROW, *suite.VARIANTS]:
        assert f"| {variant} |" in table
    assert "Whole run: 38 min" in table and "(38 min)" in suite.headline(result)[0]
    assert "| best linear (Wiener) denoiser | - | 0.0300 | 0.0900 | 0.1300 |" in table
    assert "full attention **no**, full **yes**" in table  # MAWE 7.0 and 2.0 against 2 x 1.2
    # Every loss curve is named after the bars it is sampled as.
    bars = set(suite.VARIANTS)
    assert {name for label in result["losses"] for name in label.split(", ")} == bars
    (path,) = suite.files(result, tmp_path, "run")
    image = cv2.imread(str(path))
    rows = len(suite.VARIANTS) + 1
    assert image.shape[0] == rows * 16 * suite.STRIP_ZOOM and image.shape[1] > 2 * 16 * suite.STRIP_ZOOM
    margin = image[:, :100]
    assert all((margin[i * 64 : (i + 1) * 64] < 128).any() for i in range(rows)), "a row has no label"


def test_the_suite_states_the_time_its_committed_run_measured():
    """One figure everywhere: OPT_IN (the CLI's list of opt-in suites) says what the newest committed
    quality run took."""
    import json
    import re
    from pathlib import Path

    from vin_bench.suites import quality as suite

    runs = sorted(Path(__file__).resolve().parents[2].glob("bench/results/*quality*.json"))
    results = [r for r in (json.loads(p.read_text()) for p in runs) if "prediction" in r["suites"].get("quality", {})]
    if not results:
        pytest.skip("no committed run of this quality suite")
    minutes = round(results[-1]["suites"]["quality"]["total_seconds"] / 60)
    assert re.search(rf"\b{minutes} minutes", suite.OPT_IN), (suite.OPT_IN, minutes)


def test_workers_log_lines_not_progress_bars_without_a_terminal(monkeypatch, capsys):
    """Issue 19.3: the workers' tqdm bars filled a log with ~0.5 MB of redrawn lines; without a terminal a
    worker prints one line per tenth of its training."""
    import dataclasses

    from vin_bench.suites import quality as suite

    settings = dataclasses.replace(suite.TRAIN, steps=10, warmup=2)
    job = {"model": "vin", "preset": vin.presets.quality(), "settings": settings, "device": "cpu", "frames": 8, "videos": 1,
           "sample_seed": 1, "threads": 0, "progress": False, "variants": []}  # fmt: skip
    monkeypatch.setattr(suite, "CURVE_POINTS", 0)
    suite._train_and_sample(job)
    err = capsys.readouterr().err
    assert err.count("quality: train vin: step ") == 10 and "it/s" not in err and "\r" not in err
