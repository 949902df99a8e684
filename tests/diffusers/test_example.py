"""examples/wan_long_video.py runs (shortened) and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wan_long_video.py"


def test_wan_long_video_example_runs():
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--frames", "41", "--steps", "2", "--train-steps", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "11 latent frames in one piece: RuntimeError" in out
    assert "video (41, 3, 32, 32)" in out
    assert "long video with the VIN's global tokens: (41, 3, 32, 32)" in out
