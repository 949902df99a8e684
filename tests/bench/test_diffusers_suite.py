"""The diffusers suite (issue 20): its FLOP model equals FlopCounterMode's count of the real diffusers Wan
model in every mode, a --quick run writes a valid result with every measurement, its table and plot,
and its own flags fail with one error line before any work."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from vin_bench import cli
from vin_bench.schema import validate

pytestmark = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")

if importlib.util.find_spec("diffusers") is not None:
    from vin_bench.suites import diffusers as suite


@pytest.mark.parametrize("frames", [5, 21, 30, 81])
@pytest.mark.parametrize("mode", ["stock", "chunked", "long_video"])
def test_flop_model_equals_flop_counter_on_the_diffusers_model(mode, frames):
    """Meta device, 2 blocks, 4x6 latent pixels (6 tokens per frame): short, native, windowed (30 frames:
    windows 0 and 9) and 4x lengths; chunks with a short last chunk at 5, 30 and 81 frames."""
    model = suite._build(2, "meta")
    analytic = suite.wan_step_flops(2, frames, 6, mode)
    assert suite.counted_flops(model, frames, (4, 6), mode) == sum(analytic.values())
    assert analytic["self_attention"] > 0 and analytic["cross_attention"] > 0


def test_native_flop_model_shrinks_with_length():
    """The real model (30 blocks, 480x832): chunked and LongVideo cost less than stock, ever less as videos grow."""
    rows = {(r["multiple"], r["mode"]): r for r in suite.native_flop_model()}
    assert rows[(1, "stock")]["tokens"] == 21 * 1560
    assert rows[(1, "long_video")]["flop_ratio_to_stock"] == 1.0  # one window: the stock forward
    for mode in ("chunked", "long_video"):
        ratios = [rows[(m, mode)]["flop_ratio_to_stock"] for m in (2, 4, 8)]
        assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 0.3
    assert rows[(4, "chunked")]["flop_ratio_to_stock"] < rows[(4, "long_video")]["flop_ratio_to_stock"]


def test_quick_run_writes_a_valid_result_table_and_plot(tmp_path, capsys):
    assert cli.main(["--suite", "diffusers", "--quick", "--out", str(tmp_path)], prog="vin-bench") == 0
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert validate(result) == []
    body = result["suites"]["diffusers"]
    rows = body["rows"]
    assert [(r["multiple"], r["mode"]) for r in rows] == [
        (1, "stock"), (1, "chunked"), (2, "stock"), (2, "chunked"), (2, "long_video")
    ]
    for r in rows:
        assert r["flops"] == r["counted_flops"]
        assert r["peak_rss_growth_bytes"] > 0 and r["output_finite"]
        assert 0 < r["self_attention_flop_share"] < 1 and r["self_attention_time_share"] > 0
        assert ("time_ratio_to_stock" in r) == (r["mode"] != "stock")
    table = result_file.with_suffix(".md").read_text()
    assert "| 161 | 41 | long_video |" in table and "FLOP model of the real model" in table
    assert "Peak RSS growth per latent frame: *stock*" in table
    assert len(list(tmp_path.glob("*-diffusers.png"))) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--wan-layers", "0"], "--wan-layers must be 1..30, got 0"),
        (["--wan-layers", "two"], "--wan-layers takes an integer"),
        (["--wan-latent-size", "15x28"], "--wan-latent-size needs even sizes"),
        (["--wan-latent-size", "120x208"], "--wan-latent-size needs even sizes"),
        (["--wan-latent-size", "16"], "--wan-latent-size takes HxW"),
    ],
)
def test_suite_flags_fail_with_one_error_line_before_any_work(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(suite, "run", lambda ctx: pytest.fail("the suite ran before its flags were checked"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--suite", "diffusers", *argv], prog="vin-bench")
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (the harness's parser prints only this line; plain argparse the usage too)
    assert exit_info.value.code == 2 and last.startswith("vin-bench: error: ") and "Traceback" not in err
    assert message in last, err


def test_a_step_s_memory_is_measured_in_a_fresh_process():
    """The path of a real run (``--quick`` measures in-process): one spawned process per row."""
    with suite._memory_runner() as memory:
        measured = memory(1, (2, 4), 5, "chunked", 1)
    assert measured["peak"] > 0 and measured["finite"] and measured["live_memory"]
