"""Issue 19: runs never overwrite each other, the report picks the newest run per section, results
land in a checkout's bench/results or a per-user folder (never ``./bench/results`` of any folder,
never ``-unknown`` names), progress is shown, and the tables and plots say what they compare.
Fake suites and hand-made results only: about 5 s."""

import argparse
import io
import json
import types
from pathlib import Path

import pytest
import torch

import vin
from vin_bench import cli, environment, plots, progress, report
from vin_bench.environment import result_stem
from vin_bench.schema import validate
from vin_bench.suites import Context, latent_frames
from vin_bench.suites import flops as flops_suite
from vin_bench.suites import kernels as kernels_suite
from vin_bench.suites import model as model_suite

ROOT = Path(__file__).resolve().parents[2]


def _fake(rows_of):
    return types.SimpleNamespace(run=lambda ctx: {"rows": rows_of(ctx)}, markdown=lambda body: f"{len(body['rows'])} rows")


@pytest.fixture
def fake_suites(monkeypatch):
    """Two fast suites under names the schema knows; the flops one records how full the run was."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "SUITES", {"flops": _fake(lambda ctx: []), "parallel": _fake(lambda ctx: [])})


def _same_second(monkeypatch):
    describe = environment.describe

    def frozen(command=None):
        return describe(command) | {"timestamp": "2030-01-02T03:04:05+00:00"}

    monkeypatch.setattr(cli, "describe", frozen)


# ------------------------------------------------------------------------------------ never overwrite
def test_a_suite_run_after_a_whole_run_leaves_the_whole_run_intact(fake_suites, tmp_path, monkeypatch, capsys):
    """Issue 19.2: ``--suite static`` after the default run rewrote its files with one section."""
    _same_second(monkeypatch)
    assert cli.main(["--out", str(tmp_path)], prog="vin-bench") == 0
    (whole,) = tmp_path.glob("*.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli.main(["--suite", "parallel", "--out", str(tmp_path)], prog="vin-bench") == 0
    assert cli.main(["--suite", "parallel", "--out", str(tmp_path)], prog="vin-bench") == 0  # the same second again
    assert cli.main(["--out", str(tmp_path)], prog="vin-bench") == 0
    assert cli.main(["--full", "--out", str(tmp_path)], prog="vin-bench") == 0
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, f"{name} was overwritten"
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 5 and len(set(names)) == 5
    stem = whole.stem
    assert stem.endswith("-default") and "-20300102-030405-" in stem
    assert {n.removeprefix(stem.removesuffix("-default")) for n in names} == {
        "-default.json", "-parallel-default.json", "-parallel-default-2.json", "-default-2.json", "-full.json",
    }  # fmt: skip
    assert json.loads(whole.read_text())["suites"].keys() == {"flops", "parallel"}


def test_reserve_never_takes_a_name_in_use(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "x-2.md").write_text("")  # an older run's table
    assert cli.reserve(tmp_path, "x").name == "x-3.json"
    assert (tmp_path / "x.json").read_text() == "{}"


# ------------------------------------------------------------------------------------ the report's choice
def _result(suites: list[str], timestamp: str, commit: str = "abc1234", full: bool = False, quick: bool = False, gpu: bool = False) -> dict:
    env = {
        "device": "NVIDIA H100" if gpu else "cpu (x86_64)", "device_kind": "cuda" if gpu else "cpu", "driver": None,
        "cuda": None, "torch": "2.13", "triton": None, "vin_kernels": "0.1.0", "python": "3.11", "commit": commit,
        "command": "python -m bench", "timestamp": timestamp,
    }  # fmt: skip
    return {"schema": "vin-kernels-bench/1", "environment": env, "ceilings": None, "quick": quick, "full": full,
            "suites": {s: {"rows": []} for s in suites}}  # fmt: skip


def test_the_report_takes_each_section_from_its_newest_run(tmp_path):
    runs = {
        "old-full.json": _result(["flops", "kernels", "model"], "2030-01-01T00:00:00+00:00", commit="aaa", full=True),
        "default.json": _result(["flops", "kernels", "model"], "2030-01-02T00:00:00+00:00", commit="bbb"),
        "static-only.json": _result(["static"], "2030-01-03T00:00:00+00:00", commit="bbb"),
        "kernels-quick.json": _result(["kernels"], "2030-01-04T00:00:00+00:00", commit="bbb", quick=True),
        "full-same-commit.json": _result(["model"], "2030-01-01T12:00:00+00:00", commit="bbb", full=True),
        "broken.json": {"schema": "nope"},
    }
    for name, result in runs.items():
        (tmp_path / name).write_text(json.dumps(result))
    chosen = {suite: path.name for suite, (path, _) in report.newest_results(tmp_path).items()}
    assert chosen == {
        "flops": "default.json",  # newer than the old commit's --full run
        "kernels": "default.json",  # the quick run is skipped
        "model": "full-same-commit.json",  # a --full run beats a default run of the same commit
        "static": "static-only.json",  # sections come from different files
    }
    (tmp_path / "gpu.json").write_text(json.dumps(_result(["kernels"], "2029-01-01T00:00:00+00:00", gpu=True)))
    assert report.newest_results(tmp_path)["kernels"][0].name == "gpu.json"


def test_the_report_says_how_each_section_was_measured(tmp_path):
    result = _result(["flops"], "2030-01-02T00:00:00+00:00")
    result["environment"] |= {"cpu_model": "AMD EPYC", "cpus": 2, "threads": 2, "nice": 0, "load_average": [1.0, 1.0, 1.0]}
    result["suite_runs"] = {"flops": {"seconds": 9.4, "load_average_before": [1.2, 1, 1], "load_average_after": [1.5, 1, 1]}}
    assert validate(result) == []
    line = report.provenance(tmp_path / "r.json", result, "flops", tmp_path)
    assert "AMD EPYC, 2 torch threads, nice 0; 9 s; load average 1.20 → 1.50 (1 min)" in line
    result["environment"]["commit"] = None
    assert "vin-kernels 0.1.0 (no git commit)" in report.provenance(tmp_path / "r.json", result, "flops", tmp_path)


def test_the_report_names_a_section_it_cannot_render_instead_of_crashing(tmp_path, monkeypatch, capsys):
    """A result written by older code whose layout a suite's tables no longer read (seen: quality, static)."""
    picky = types.SimpleNamespace(markdown=lambda body: body["new_field"])
    monkeypatch.setattr(cli, "SUITES", {"flops": picky})
    (tmp_path / "old.json").write_text(json.dumps(_result(["flops"], "2030-01-02T00:00:00+00:00")))
    text = report.render(report.newest_results(tmp_path), tmp_path)
    assert "*Not shown: this run's flops result has a layout the current tables cannot read (KeyError: 'new_field')" in text
    assert "python -m bench --suite flops" in text and "old.json: the flops section cannot be rendered" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ where results go
def test_results_go_to_the_checkout_or_a_user_folder_never_the_current_one(tmp_path, monkeypatch):
    """Issue 19.6: outside a checkout the results went to ./bench/results of whatever folder."""
    monkeypatch.delenv("VIN_BENCH_RESULTS", raising=False)
    assert environment.is_checkout(ROOT)
    monkeypatch.setattr(environment, "ROOT", ROOT)  # run from the checkout (CI imports an installed copy)
    monkeypatch.chdir(tmp_path)
    assert environment.default_results_dir() == ROOT / "bench" / "results"  # the checkout the code runs from
    monkeypatch.setattr(environment, "ROOT", tmp_path / "site-packages")  # an installed package
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert environment.default_results_dir() == tmp_path / "data" / "vin-kernels" / "bench-results"
    monkeypatch.chdir(ROOT / "docs")  # inside a checkout: its bench/results
    assert environment.default_results_dir() == ROOT / "bench" / "results"
    monkeypatch.setenv("VIN_BENCH_RESULTS", str(tmp_path / "mine"))
    assert environment.default_results_dir() == tmp_path / "mine"


def test_a_run_without_a_git_commit_is_named_by_the_package_version(monkeypatch, tmp_path):
    monkeypatch.setattr(environment, "ROOT", tmp_path)
    assert environment.git_commit() is None
    env = environment.describe(["vin-bench"])
    assert env["commit"] is None
    stem = result_stem(env, "default", ["flops"])
    assert "unknown" not in stem and f"-v{env['vin_kernels']}-flops-default" in stem
    assert result_stem(env | {"commit": "abc1234+dirty"}, "full").endswith("-abc1234-dirty-full")


def test_the_cli_says_where_the_results_go(fake_suites, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIN_BENCH_RESULTS", str(tmp_path / "r"))
    assert cli.main([], prog="vin-bench") == 0
    captured = capsys.readouterr()
    assert f"results go to {tmp_path / 'r'}" in captured.err and f"results: {tmp_path / 'r'}" in captured.out


# ------------------------------------------------------------------------------------ progress
def test_progress_without_a_terminal_prints_a_line_per_step_at_most_every_interval():
    stream = io.StringIO()
    steps = progress.Progress(stream=stream, interval=0.0)
    assert list(steps(range(3), desc="model")) == [0, 1, 2]
    with steps.bar(5, desc="static: kernel options") as bar:
        bar.update(2)
        bar.update(3)
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["  model: 1/3 done, 0 s", "  model: 2/3 done, 0 s", "  model: 3/3 done, 0 s"]
    assert lines[3:] == ["  static: kernel options: 2/5 done, 0 s", "  static: kernel options: 5/5 done, 0 s"]
    quiet = io.StringIO()
    list(progress.Progress(stream=quiet, interval=60)(range(4), desc="x"))
    assert quiet.getvalue().splitlines() == ["  x: 4/4 done, 0 s"]  # only the last step within the interval


def test_context_defaults_and_full_flag():
    ctx = Context(device=torch.device("cpu"), quick=False, video_frames=(64,))
    assert ctx.full is False and list(ctx.progress([1, 2])) == [1, 2]
    assert Context(torch.device("cpu"), False, (64,), options=argparse.Namespace(full=True)).full is True


def test_full_matrix_implies_full_and_refuses_quick(capsys):
    assert cli.parse_args(["--full-matrix"], prog="vin-bench").full is True  # its results are named -full
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--full-matrix", "--quick"], prog="vin-bench")
    assert exit_.value.code == 2 and "--full-matrix: not with --quick" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ what the tables say
def test_default_and_full_runs_pick_the_headline_slice_or_everything():
    cpu = torch.device("cpu")
    default = Context(cpu, quick=False, video_frames=cli.DEFAULT_VIDEO_FRAMES)
    full = Context(cpu, quick=False, video_frames=cli.DEFAULT_VIDEO_FRAMES, options=argparse.Namespace(full=True))
    assert [s.tokens for s in kernels_suite.cpu_shapes(default)] == [4800]  # the paper's 80 latent frames
    assert [s.tokens for s in kernels_suite.cpu_shapes(full)] == [2400, 4800, 9600]
    assert model_suite._frame_lengths(default, gpu=False) == (256, 512)  # issue 20's 80 and 160 latent frames
    assert model_suite._frame_lengths(full, gpu=False) == (64, 128, 256, 512)
    given = Context(cpu, quick=False, video_frames=(64, 1024), frames_given=True)
    assert model_suite._frame_lengths(given, gpu=False) == (64, 1024)
    assert [s.tokens for s in kernels_suite.cpu_shapes(given)] == [19200]


def _kernel_rows():
    shape = kernels_suite.cpu_shapes(Context(torch.device("cpu"), quick=False, video_frames=(256,)))[0]
    base = {"op": "chunk_attention", "shape": shape.label, "shape_args": kernels_suite._chunk_args(shape), "pass": "fwd"}
    rows = [
        base | {"impl": "vin_sdpa", "kind": "vin", "median_ms": 40.0, "flops": 2.0},
        base | {"impl": "vin_reference", "kind": "reference", "median_ms": 400.0, "flops": 2.0},
        base | {"impl": "sdpa_full_attention", "kind": "full", "median_ms": 100.0, "flops": 10.0},
        base | {"impl": "flex_attention_compiled", "kind": "baseline", "median_ms": 20.0, "flops": 2.0},
    ]
    for r in rows:
        r |= {"times_ms": [r["median_ms"]] * 5, "p20_ms": r["median_ms"], "p80_ms": r["median_ms"]}
    return shape, rows


def test_kernels_table_leads_with_time_and_flops_over_full_attention():
    """Issue 19.4: the table once led with a speed-up over the naive reference."""
    shape, rows = _kernel_rows()
    kernels_suite._ratios(rows)
    vin_row = rows[0]
    assert vin_row["time_vs_full_attention"] == 0.4 and vin_row["flop_ratio_to_full"] == 0.2
    assert vin_row["time_vs_flex_attention"] == 2.0 and vin_row["time_vs_reference"] == 0.1
    assert "ratio_to_best_baseline" not in vin_row or vin_row["ratio_to_best_baseline"] == 0.5
    table = kernels_suite.markdown({"dtype": "float32", "threads": 2, "device_kind": "cpu", "rows": rows})
    header = next(line for line in table.splitlines() if line.startswith("| op "))
    assert header.split("|")[6:10] == [" time / full ", " FLOPs / full ", " time / Flex ", " time / reference "]
    line = next(line for line in table.splitlines() if "| vin_sdpa |" in line)
    assert "| **0.40x** | 0.20 | 2.00x | **0.10x** |" in line  # below 1 (faster) in bold
    assert "N=4800 (80 x 60), chunk 20 + context 8 latent frames, 128 globals, 6 heads, D=64" == shape.label
    assert shape.label in line
    assert kernels_suite.headline({"rows": rows}) == [
        "chunk_attention (vin_sdpa; chunk 20 + context 8 latent frames, 128 globals, 6 heads, D=64), full attention's time "
        "for its FLOPs: 80 latent frames (N=4800) fwd 0.40x for 0.20x; forward 2.00x FlexAttention's time"
    ]


def test_kernels_plot_writes_the_full_attention_ratio_beside_the_bars():
    pytest.importorskip("matplotlib")
    _, rows = _kernel_rows()
    kernels_suite._ratios(rows)
    fig = plots.kernels_figure({"dtype": "float32", "threads": 2, "device_kind": "cpu", "rows": rows})
    fig.canvas.draw()
    ax = fig.axes[0]
    (label,) = [t for t in ax.texts]
    assert label.get_text() == "0.40x full (FLOPs 0.20x)" and label.get_fontweight() == "bold"
    assert "full attention" in ax.get_title() and "chunk 20 + context 8" in ax.get_yticklabels()[0].get_text()
    assert all(t.get_window_extent().x1 <= ax.get_window_extent().x1 + 1 for t in ax.texts), "a label leaves the axes"


def _flop_ratio(preset, mode, video_frames):
    frames = latent_frames(video_frames)
    layout = preset.context_layout(frames) if mode == "vin_context" else preset.window_layout(frames)
    return vin.flops.step_flops(preset, frames, layout).total / vin.flops.step_flops(preset, frames, None).total


def test_flops_and_model_tables_define_the_modes_and_say_where_vin_wins():
    paper = vin.presets.paper()
    wins = {mode: flops_suite.wins_from(paper, mode) for mode in ("vin_context", "vin_windows")}
    for mode, since in wins.items():  # fewer FLOPs from there on (up to the scan's end), not just before
        assert since is not None and _flop_ratio(paper, mode, since - 16) >= 1, mode
        assert all(_flop_ratio(paper, mode, v) < 1 for v in range(since, flops_suite.WINS_SCAN_VIDEO_FRAMES + 1, 16)), mode
    context, windows = paper.context_layout(1000), paper.window_layout(1000)
    result = flops_suite.run(Context(torch.device("cpu"), quick=False, video_frames=(64,)))
    table = flops_suite.markdown(result)
    assert f"*vin_context*: chunks of {context.chunk_frames} latent frames, each also attending the {context.context_frames} latent frames before it" in table
    assert f"*vin_windows*: windows of {windows.chunk_len} latent frames overlapping by {windows.overlap_frames}" in table
    since = f"*vin_context* from {wins['vin_context']} video frames ({latent_frames(wins['vin_context'])} latent) on"
    assert since in table and f"*vin_windows* from {wins['vin_windows']} video frames" in table
    rows = [
        {"mode": m, "video_frames": 256, "latent_frames": 80, "step_median_ms": ms, "step_p20_ms": ms - 1, "step_p80_ms": ms + 2,
         "step_times_ms": [ms] * 3, "step_ms_per_latent_frame": ms / 80, "flops_per_step": ms * 10, "peak_rss_growth_bytes": 2**20}
        for m, ms in (("full", 100.0), ("vin_context", 60.0), ("vin_windows", 110.0))
    ]  # fmt: skip
    model_suite._flop_ratios(rows)
    cpu = vin.presets.cpu()
    body = {"preset": "cpu", "dtype": "float32", "threads": 2, "device_kind": "cpu", "rows": rows,
            "definitions": model_suite.layout_definitions(cpu), "mode_caption": model_suite.mode_caption(cpu),
            "wins_from_video_frames": {m: flops_suite.wins_from(cpu, m) for m in ("vin_context", "vin_windows")}}  # fmt: skip
    table = model_suite.markdown(body)
    assert "| 256 | 80 | vin_context | 60 [59-62] | 0.8 | **0.60x** | 0.60 | 1 |" in table
    assert "| 256 | 80 | vin_windows | 110 [109-112] | 1.4 | 1.10x | 1.10 |" in table
    assert "*vin_context*: chunks of 20 latent frames" in table and "Fewer FLOPs per step than full attention" in table
    assert model_suite.headline(body) == ["cpu preset, one denoising step, time of full attention's (FLOPs) at 256 video "
                                          "frames: vin_context 0.60x (0.60x); vin_windows 1.10x (1.10x)"]  # fmt: skip


def test_model_plot_has_p20_p80_bars_plain_log_ticks_and_says_what_ran():
    pytest.importorskip("matplotlib")
    rows = [
        {"mode": m, "video_frames": f, "latent_frames": latent_frames(f), "step_median_ms": ms * f / 64,
         "step_p20_ms": 0.9 * ms * f / 64, "step_p80_ms": 1.2 * ms * f / 64, "step_times_ms": [1.0] * 5}
        for f in (64, 128, 256, 512) for m, ms in (("full", 200.0), ("vin_context", 150.0))
    ]  # fmt: skip
    fig = plots.model_figure({"preset": "cpu", "dtype": "float32", "threads": 2, "rows": rows, "mode_caption": "vin_context: chunks"})
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(text.replace(".", "").isdigit() for text in labels), labels  # 200, 500, 1000, 2000
    assert len(ax.containers) == 2  # one errorbar container per mode
    caption = " ".join(t.get_text() for t in fig.texts)
    for words in ("float32", "random weights", "2 threads", "median of 5 steps", "p20-p80", "vin_context: chunks"):
        assert words in caption, caption


def test_cpu_kernel_rows_are_timed_in_alternation():
    """Load from other work on the shared machine hits every implementation of a round alike."""
    calls = []

    def call(name):
        return lambda: calls.append(name)

    def broken():
        raise RuntimeError("no kernel here\nmore")

    specs = [({"impl": "a"}, call("a"), {"flops": 1.0}), ({"impl": "x"}, broken, {}), ({"impl": "b"}, call("b"), {"bytes": 2.0})]
    ctx = Context(torch.device("cpu"), quick=True, video_frames=(64,))
    rows = kernels_suite._alternating_rows(ctx, specs, desc="test")
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then 3 rounds of one call each
    assert [r["impl"] for r in rows] == ["a", "x", "b"]
    assert rows[1]["error"] == "RuntimeError: no kernel here" and len(rows[0]["times_ms"]) == 3 and "gbps" in rows[2]


def test_full_model_run_times_a_training_step_against_full_attention(monkeypatch):
    """Issue 20: the training step's ratio to full attention is measured (--full), beside its FLOP ratio."""
    monkeypatch.setattr(model_suite, "TRAIN_VIDEO_FRAMES", 64)  # 20 latent frames of the tiny preset: seconds
    preset = vin.presets.tiny()
    torch.manual_seed(0)
    model, net_vin = preset.build()
    ctx = Context(torch.device("cpu"), quick=False, video_frames=(64,), options=argparse.Namespace(full=True))
    rows = model_suite._measure_training(ctx, preset, model, net_vin)
    assert [r["mode"] for r in rows] == ["full", "vin_context"] and all(len(r["step_times_ms"]) == 5 for r in rows)
    vin_row = rows[1]
    frames = latent_frames(64)
    full_flops = vin.flops.training_step_flops(preset, frames, None).total
    assert vin_row["flop_ratio_to_full"] == vin.flops.training_step_flops(preset, frames, preset.train_layout(frames)).total / full_flops
    assert vin_row["time_ratio_to_full"] == vin_row["step_median_ms"] / rows[0]["step_median_ms"] > 0
    body = {"preset": "tiny", "dtype": "float32", "threads": 2, "device_kind": "cpu", "rows": [], "training": rows}
    assert f"a training step at 64 video frames: vin_context {vin_row['time_ratio_to_full']:.2f}x" in model_suite.headline(
        body | {"rows": [{"mode": "vin_context", "video_frames": 64, "time_ratio_to_full": 0.5, "flop_ratio_to_full": 0.5}]})[0]
    table = "\n".join(model_suite.training_markdown(body))
    assert "| 64 | 20 | vin_context |" in table and "| 64 | 20 | full |" in table
