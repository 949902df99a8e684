"""``python -m vin.train``: every flag checked before any work (one line naming the flag, exit code 2), a
non-finite loss stops training (exit code 1), and the denoising diagnostic's baselines."""

import math
import os
import subprocess
import sys

import pytest
import torch

import vin
from vin import data, train
from vin.presets import Preset

BAD_FLAGS = {
    "--preset unknown": "--preset unknown",
    "--preset tiny": "--preset tiny",  # its 8x8 latents cannot hold the generated scenes
    "--preset dataclass": "--preset dataclass",
    "--preset VideoDiT": "--preset VideoDiT",
    "--steps 0": "--steps",
    "--steps -1": "--steps",
    "--batch 0": "--batch",
    "--clip-frames 0": "--clip-frames",
    "--lr 0": "--lr",
    "--lr nan": "--lr",
    "--lr inf": "--lr",
    "--lr -1e-3": "--lr",
    "--warmup -1": "--warmup",
    "--ema 1": "--ema",
    "--ema nan": "--ema",
    "--seed -1": "--seed",
    "--threads 0": "--threads",
    "--context -1": "--context",
    "--eval-frames 0": "--eval-frames",
    "--eval-frames -5": "--eval-frames",
    "--eval-videos -1": "--eval-videos",
    "--eval-fusion mid": "--eval-fusion",
    "--prediction x0": "--prediction",
    "--steps two": "--steps",
    "--save /nonexistent-folder/model.pt": "--save",
    "--full-attention --no-vin": "--full-attention",
}


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if anything builds a model, generates data or trains."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(Preset, "build", forbidden)
    monkeypatch.setattr(train, "train", forbidden)
    monkeypatch.setattr(data, "generate", forbidden)


@pytest.mark.parametrize("flags", list(BAD_FLAGS))
def test_a_bad_flag_is_one_line_naming_it_before_any_work(flags, no_work, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(flags.split())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m vin.train: error: ") and BAD_FLAGS[flags] in err, err


def test_an_unwritable_save_path_is_refused(tmp_path, no_work, capsys):
    cases = [(tmp_path, "is a directory"), (tmp_path / "file" / "model.pt", "is not a folder")]
    (tmp_path / "file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root may write anywhere
        cases.append((locked / "model.pt", "is not writable"))
    for path, why in cases:
        with pytest.raises(SystemExit):
            train.main(["--save", str(path)])
        err = capsys.readouterr().err
        assert f"--save {path}: " in err and why in err, err


def test_the_command_line_prints_no_traceback():
    """The real entry point (a fresh interpreter): one line on stderr, exit code 2."""
    run = subprocess.run([sys.executable, "-m", "vin.train", "--lr", "inf"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert "--lr" in run.stderr


def test_help_shows_the_defaults_and_the_five_minute_setting(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "default 4500" in out and "default quality" in out and "default 96" in out
    assert "About 5 minutes on 2 CPU cores: --steps" in out


def test_a_non_finite_loss_stops_training_with_exit_code_1(capsys):
    """A learning rate of 1e30 makes the weights infinite after the first update."""
    code = train.main(["--lr", "1e30", "--steps", "5", "--warmup", "0", "--batch", "1", "--clip-frames", "8", "--eval-videos", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: the training loss is" in captured.err and "training stopped" in captured.err
    assert captured.out.startswith("training quality: DiT")  # it said what it trains first


def test_train_raises_on_a_non_finite_loss():
    settings = train.TrainSettings(steps=3, batch=1, clip_frames=8, lr=1e30, warmup=0)
    with pytest.raises(train.NonFiniteLoss, match="at step 2"):
        train.train(vin.presets.quality(), settings)


def test_settings_and_presets_reject_bad_values():
    for kwargs in [dict(steps=0), dict(batch=-1), dict(lr=math.nan), dict(lr=math.inf), dict(grad_clip=0),
                   dict(full_attention=True)]:  # fmt: skip
        with pytest.raises(ValueError, match="TrainSettings"):
            train.TrainSettings(**kwargs)
    with pytest.raises(ValueError, match="prediction"):
        Preset(vin.presets.quality().dit, vin.presets.quality().vin, chunk=8, context=4, prediction="sample")
    with pytest.raises(ValueError, match="Preset.context"):
        Preset(vin.presets.quality().dit, vin.presets.quality().vin, chunk=8, context=-1)


def test_the_linear_denoiser_baseline_is_the_wiener_filter_error():
    """The eigenvalue formula against the Wiener filter applied to noised frames (same covariance)."""
    scene = data.SceneConfig()
    baselines = train.data_baselines(scene, timesteps=(500,), videos=256)
    frames = data.generate(256, 13, seed=0, split="train", config=scene).video[:, ::12].reshape(512, -1).double()
    mean, centred = frames.mean(0), frames - frames.mean(0)
    covariance = centred.T @ centred / (len(frames) - 1)
    ab = vin.DiffusionSchedule().alpha_bar(500)
    gain = math.sqrt(ab) * covariance @ torch.linalg.inv(ab * covariance + (1 - ab) * torch.eye(len(covariance), dtype=torch.float64))
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = math.sqrt(ab) * frames + math.sqrt(1 - ab) * noise
    estimate = mean + (x_t - math.sqrt(ab) * mean) @ gain.T
    measured = (estimate - frames).square().mean().item()
    assert baselines["linear"][500] == pytest.approx(measured, rel=0.05)
    assert baselines["mean"][500] == pytest.approx(centred.square().sum().item() / (len(frames) - 1) / frames.shape[1], rel=1e-6)
    assert baselines["linear"][500] < baselines["mean"][500]
