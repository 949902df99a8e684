"""vin.parallel: the split and its messages on small tensors, the DiT's prefix path, and sampling on
spawned gloo processes equal to vin.sample bitwise (CPU, one thread per process), plus the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

import vin
import vin_kernels
from vin import parallel
from vin.parallel import cli
from vin.parallel.sampling import _Rank
from vin_kernels import ChunkLayout

PRESET = vin.presets.tiny()
CFG = PRESET.dit
FRAME = (CFG.in_channels, CFG.height, CFG.width)
STEPS, T_ALPHA = 4, 2  # two fused steps, then two independent ones
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread, as in each rank: bitwise comparisons need equal thread counts, and on a busy
    2-core machine OpenMP's second thread makes these small products slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _nets():
    """The tiny preset with every weight random (adaLN-Zero would make the DiT predict 0)."""
    torch.manual_seed(0)
    model, net_vin = PRESET.build()
    model.randomize_zero_layers()  # a fresh DiT predicts 0
    return model.eval(), net_vin.eval()


def _text(batch):
    return torch.randn(batch, CFG.text_len, CFG.text_dim, generator=torch.Generator().manual_seed(7))


# ------------------------------------------------------------------------------------ the split
@st.composite
def layouts(draw, max_frames=48):
    frames = draw(st.integers(1, max_frames))
    if draw(st.booleans()):
        window = draw(st.integers(2, 16))
        layout = ChunkLayout.windows(frames, window, draw(st.integers(0, window - 1)))
    else:
        layout = ChunkLayout.context(frames, draw(st.integers(1, 12)), draw(st.integers(0, 14)))
    return layout, draw(st.integers(1, layout.num_chunks))


@given(layouts())
def test_split_is_contiguous_balanced_and_owned_frames_tile_the_video(case):
    layout, world = case
    shards = parallel.split(layout, world)
    assert [s.rank for s in shards] == list(range(world))
    assert [c for s in shards for c in s.chunks] == list(range(layout.num_chunks))
    assert max(len(s.chunks) for s in shards) - min(len(s.chunks) for s in shards) <= 1
    assert [f for s in shards for f in s.owned] == list(range(layout.num_frames))
    for s in shards:
        assert set(s.owned) <= set(s.frames)
        assert set(s.frames) == {f for c in s.chunks for f in layout.query_frames(c)}
        assert all(layout.owners[f] in s.chunks for f in s.owned)


def test_uneven_splits():
    layout = PRESET.window_layout(40)  # 5 windows
    assert [len(s.chunks) for s in parallel.split(layout, 2)] == [3, 2]
    assert [len(s.chunks) for s in parallel.split(layout, 3)] == [2, 2, 1]


def test_bad_rank_counts_are_clear_errors():
    layout = PRESET.window_layout(40)
    with pytest.raises(ValueError, match="6 ranks for a layout with only 5 windows"):
        parallel.split(layout, 6)
    with pytest.raises(ValueError, match="at least 1"):
        parallel.split(layout, 0)
    with pytest.raises(TypeError, match="must be an int"):
        parallel.split(layout, 2.0)
    with pytest.raises(TypeError, match="ChunkLayout"):
        parallel.split((40, 12, 4), 2)


def test_sample_without_a_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    model, net_vin = _nets()
    with pytest.raises(ValueError, match="group: torch.distributed is not initialized"):
        parallel.sample(model, net_vin, _text(1), layout=PRESET.window_layout(40), generator=torch.Generator())
    with pytest.raises(ValueError, match="fusion must be one of"):  # checked before any collective
        parallel.sample(model, net_vin, _text(1), layout=PRESET.window_layout(40), fusion="mid", generator=torch.Generator())


# ------------------------------------------------------------------------------------ context halos
@given(layouts())
def test_halo_sources_are_exactly_the_context_before_a_shard(case):
    layout, world = case
    if layout.is_windows:
        layout = ChunkLayout.context(layout.num_frames, layout.chunk_frames, layout.overlap_frames)
        world = min(world, layout.num_chunks)
    plan = parallel.Plan(layout, world, keyframe_stride=5)
    for shard in plan.shards:
        halo = plan.halo_of(shard.rank)
        context = layout.context_frames_of(shard.chunks.start)
        if halo is None:
            assert not context
            continue
        assert halo.context == context and halo.prefix.stop == shard.frames.start
        assert halo.prefix.start in layout.starts and halo.prefix.start <= context.start
        assert [f for _, frames in halo.sources for f in frames] == list(context)
        for src, frames in halo.sources:
            assert set(frames) <= set(plan.shards[src].frames)
            assert (shard.rank, frames) in plan.halo_sends(src)


class Mailbox:
    """Stand-in for the Communicator when ranks run one after another in one process: a send waits in
    the box until the matching receive (the n-th exchange of the receiver) takes it."""

    def __init__(self, rank, box):
        self.rank, self.box, self.calls, self.device = rank, box, 0, torch.device("cpu")

    def exchange(self, sends, receives):
        self.calls += 1
        for dst, tensor in sends:
            self.box[(self.rank, dst, self.calls)] = tensor.clone()
        out = [self.box.pop((src, self.rank, self.calls)) for src, _, _ in receives]
        assert all(t.shape == shape and t.dtype == dtype for t, (_, shape, dtype) in zip(out, receives))
        return out


@pytest.mark.parametrize(
    "layout, world",
    [
        (PRESET.context_layout(40), 2),  # chunks of 8 with 4 frames of context: 3 + 2 chunks
        (PRESET.context_layout(41), 3),  # a short last chunk
        (ChunkLayout.context(12, 4, 6), 3),  # context longer than a chunk: rank 2 reads ranks 0 and 1
    ],
    ids=["2-ranks", "3-ranks-short-last", "context-over-two-ranks"],
)
def test_dit_on_parts_with_received_context_equals_the_whole_video_bitwise(layout, world):
    """Each part of the video runs VideoDiT(first_frame, prefix_kv) with the context keys/values the
    earlier parts send through _Rank.prefix_kv; the prediction is the whole-video one, bit for bit."""
    model, net_vin = _nets()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, layout.num_frames, *FRAME, generator=gen)
    t, text = torch.tensor([900, 40]), _text(2)
    global_kv = net_vin(x, t, text)
    whole = model(x, t, text, layout=layout, global_kv=global_kv)
    plan, box = parallel.Plan(layout, world, net_vin.keyframe_stride), {}
    for shard in plan.shards:
        rank = _Rank(plan, Mailbox(shard.rank, box), 2, FRAME)
        part = model(
            x[:, shard.frames.start : shard.frames.stop], t, text, layout=layout, global_kv=global_kv,
            first_frame=shard.frames.start, prefix_kv=rank.prefix_kv,
        )
        assert torch.equal(part, whole[:, shard.frames.start : shard.frames.stop]), shard
    assert not box  # every send was received
    without_context = model(x[:, plan.shards[1].frames.start :], t, text, layout=layout, global_kv=global_kv, first_frame=plan.shards[1].frames.start)
    assert not torch.equal(without_context, whole[:, plan.shards[1].frames.start :])  # the context matters


def test_dit_part_arguments_are_checked():
    model, _ = _nets()
    x, t, text = torch.randn(1, 16, *FRAME), torch.tensor([10]), _text(1)
    with pytest.raises(ValueError, match="first_frame must be a chunk start"):
        model(x, t, text, layout=PRESET.context_layout(40), first_frame=4)
    windows = PRESET.window_layout(40)
    with pytest.raises(ValueError, match="need a context-mode layout"):
        model(x[:, None, :12], t, text, layout=windows, first_frame=8)
    with pytest.raises(ValueError, match="window_range must be a range of the 1 windows"):
        model(x[:, None, :12], t, text, layout=windows, window_range=range(0, 2))
    with pytest.raises(ValueError, match="window_range needs a window-mode layout"):
        model(x, t, text, layout=PRESET.context_layout(16), window_range=range(0, 1))


def test_windows_of_one_rank_equal_the_batched_windows_bitwise():
    """window_range keeps the adaLN rows of the whole batch: 1 window alone gives the same bits."""
    model, net_vin = _nets()
    layout = PRESET.window_layout(40)
    x = torch.randn(1, 40, *FRAME)[:, torch.tensor(layout.window_frame_index)]
    t, text = torch.tensor([500]), _text(1)
    global_kv = net_vin(torch.randn(1, 40, *FRAME), t, text)
    batched = model(x, t, text, layout=layout, global_kv=global_kv)
    for part in (range(0, 1), range(1, 3), range(4, 5)):
        alone = model(x[:, part.start : part.stop], t, text, layout=layout, global_kv=global_kv, window_range=part)
        assert torch.equal(alone, batched[:, part.start : part.stop])


# ------------------------------------------------------------------------------------ window overlaps
@given(layouts(max_frames=40), st.sampled_from(["fused", "keyframes", "final"]))
def test_window_transfers_give_every_rank_what_it_blends(case, kind):
    """Emulate the exchange on small tensors: with its own windows and the entries the plan sends it,
    overlap_fuse on a rank gives the blend of all windows on the frames that rank needs, bitwise."""
    layout, world = case
    if not layout.is_windows:
        layout = ChunkLayout.windows(layout.num_frames, layout.chunk_frames + 1, min(layout.chunk_frames, layout.context_frames))
        world = min(world, layout.num_chunks)
    plan = parallel.Plan(layout, world, keyframe_stride=3)
    transfers, needed = {
        "fused": (plan.fused_step_transfers(), [s.frames for s in plan.shards]),
        "keyframes": (plan.keyframe_transfers(), [plan.keyframes_of(r) for r in range(world)]),
        "final": (plan.final_transfers(), [s.owned for s in plan.shards]),
    }[kind]
    L = layout.chunk_len
    windows = torch.randn(2, layout.num_chunks, L, 3)
    expected = vin_kernels.overlap_fuse(windows, layout)
    for shard in plan.shards:
        full = torch.zeros_like(windows)
        full[:, shard.chunks] = windows[:, shard.chunks]
        for t in (t for t in transfers if t.dst == shard.rank):
            assert t.src != shard.rank and all(w in plan.shards[t.src].chunks for w, _ in t.entries)
            sender = plan.shards[t.src].chunks
            payload = windows[:, sender].flatten(1, 2)[:, t.source_index(sender.start, L)]
            full.flatten(1, 2)[:, t.target_index(L)] = payload
        frames = list(needed[shard.rank])
        assert torch.equal(vin_kernels.overlap_fuse(full, layout)[:, frames], expected[:, frames])


def test_plan_bytes_of_the_paper_preset_are_far_below_ulysses():
    """Window layout, 1024 video frames (320 latent) on 8 ranks: keyframes and overlaps only."""
    preset = vin.presets.paper()
    plan = parallel.Plan(preset.window_layout(320), 8, keyframe_stride=5)
    dit = preset.dit
    sizes = dict(batch=1, frame_elements=dit.in_channels * dit.height * dit.width, token_elements=dit.tokens_per_frame * dit.hidden, depth=dit.depth, model_itemsize=2, vin_itemsize=2)
    bytes_ = plan.step_bytes(**sizes)
    ulysses = 4 * 320 * dit.tokens_per_frame * dit.hidden * 2 * dit.depth * 7 / 8  # q, k, v, o all-to-all per layer
    assert 0 < bytes_["fused"] < 1e-3 * ulysses and 0 < bytes_["independent"] < bytes_["fused"]


# ------------------------------------------------------------------------------------ spawned processes
def _scenarios():
    """``name -> (layout, ranks of the group, batch, sampling kwargs)``; the world has 3 ranks."""
    return {
        "windows-3-ranks": (PRESET.window_layout(40), (0, 1, 2), 1, {}),  # 2 + 2 + 1 windows
        "context-3-ranks-eta": (PRESET.context_layout(40), (0, 1, 2), 1, {"eta": 0.5}),  # 2 + 2 + 1 chunks
        "context-over-two-ranks": (ChunkLayout.context(12, 4, 6), (0, 1, 2), 1, {}),
        "windows-fused-throughout": (PRESET.window_layout(36), (0, 1, 2), 1, {"t_alpha": 0}),
        "windows-never-fused": (PRESET.window_layout(36), (0, 1, 2), 1, {"t_alpha": STEPS}),
        "windows-late-fusion-eta": (PRESET.window_layout(40), (0, 1, 2), 1, {"fusion": "late", "eta": 0.5}),
        "windows-no-fusion-2-ranks": (PRESET.window_layout(40), (0, 1), 1, {"fusion": "none"}),
        "windows-2-ranks-eta-batch-2": (PRESET.window_layout(40), (0, 1), 2, {"eta": 1.0}),  # 3 + 2 windows
        "context-2-ranks": (PRESET.context_layout(44), (0, 1), 1, {}),  # 3 + 3 chunks, the last short
        "windows-1-rank": (PRESET.window_layout(40), (2,), 1, {}),
    }


def _sample_kwargs(kwargs):
    return {"steps": STEPS, "t_alpha": T_ALPHA} | kwargs


def _error(fn) -> str:
    try:
        fn()
    except ValueError as error:
        return str(error)
    return "no error"


def _rank_job():
    """Runs on each of 3 gloo processes: every scenario (in its group), then the error cases."""
    rank = dist.get_rank()
    model, net_vin = _nets()
    groups = {ranks: dist.new_group(list(ranks)) for ranks in [(0, 1), (2,)]}  # every rank creates every group
    results = {}
    for name, (layout, ranks, batch, kwargs) in _scenarios().items():
        if rank in ranks:
            stats = parallel.SampleStats()
            video = parallel.sample(
                model, net_vin, _text(batch), layout=layout, generator=torch.Generator().manual_seed(3),
                group=groups.get(ranks), stats=stats, **_sample_kwargs(kwargs),
            )
            results[name] = (video, stats)

    def run(layout, group=None, seed=3):
        parallel.sample(model, net_vin, _text(1), layout=layout, steps=2, generator=torch.Generator().manual_seed(seed), group=group)

    results["too-many-ranks"] = _error(lambda: run(PRESET.context_layout(16)))  # 2 chunks on 3 ranks
    results["different-generators"] = _error(lambda: run(PRESET.window_layout(40), seed=3 + (rank == 1)))
    if rank == 2:
        results["not-in-group"] = _error(lambda: run(PRESET.window_layout(40), group=groups[(0, 1)]))
    return results


def _single_process_reference(layout, batch, kwargs):
    """vin.sample at one thread, like each rank (MKL's products depend on the thread count)."""
    model, net_vin = _nets()
    return vin.sample(model, net_vin, _text(batch), layout=layout, generator=torch.Generator().manual_seed(3), **_sample_kwargs(kwargs))


@pytest.fixture(scope="module")
def spawned(request, launch_test_job):
    """The results of _rank_job on 3 spawned gloo processes (one thread each)."""
    return launch_test_job(_rank_job, 3)


@pytest.mark.parametrize("name", list(_scenarios()))
def test_parallel_sample_equals_vin_sample_bitwise(spawned, name):
    layout, ranks, batch, kwargs = _scenarios()[name]
    expected = _single_process_reference(layout, batch, kwargs)
    for rank in ranks:
        video, _ = spawned[rank][name]
        assert video.shape == expected.shape == (batch, layout.num_frames, *FRAME)
        assert torch.equal(video, expected), f"rank {rank}: max difference {(video - expected).abs().max().item()}"


@pytest.mark.parametrize("name", list(_scenarios()))
def test_measured_bytes_equal_the_plan(spawned, name):
    layout, ranks, batch, kwargs = _scenarios()[name]
    model, net_vin = _nets()
    plan = parallel.Plan(layout, len(ranks), net_vin.keyframe_stride)
    predicted = plan.step_bytes(
        batch=batch, frame_elements=CFG.in_channels * CFG.height * CFG.width, token_elements=CFG.tokens_per_frame * CFG.hidden,
        depth=CFG.depth, model_itemsize=4, vin_itemsize=4,
    )
    stats = [spawned[rank][name][1] for rank in ranks]
    kinds = stats[0].step_kinds
    assert all(s.step_kinds == kinds for s in stats) and len(kinds) == STEPS
    for i, kind in enumerate(kinds):
        late_fusion_starts = kind == "fused" and i > 0 and kinds[i - 1] == "independent"
        extra = predicted["fusion_start"] if late_fusion_starts else 0
        assert sum(s.step_bytes[i] for s in stats) == predicted[kind] + extra, (i, kind)
    blended = kinds[-1] == "independent" and kwargs.get("fusion") != "none"
    final = predicted["final"] + (predicted["final_blend"] if blended else 0)
    assert sum(s.final_bytes for s in stats) == final
    if len(ranks) > 1:
        assert all(b > 0 for b in stats[0].step_bytes)


def test_bad_groups_and_arguments_are_clear_errors_on_every_rank(spawned):
    for rank in range(3):
        assert "3 ranks for a layout with only 2 chunks" in spawned[rank]["too-many-ranks"]
        assert "differ across the ranks of the group in ['generator']" in spawned[rank]["different-generators"]
    assert "not a member of the group" in spawned[2]["not-in-group"]


# ------------------------------------------------------------------------------------ command line
def test_cli_spawns_ranks_runs_under_torchrun_and_matches_one_process(tmp_path, capfd):
    common = ["--preset", "tiny", "--latent-frames", "24", "--layout", "windows", "--seed", "1", "--steps", "3", "--t-alpha", "1", "--threads", "1"]
    outputs = []
    for nproc, name in (("1", "one"), ("2", "two")):  # --nproc-per-node 2 spawns the ranks from this process
        assert cli.main(["--nproc-per-node", nproc, *common, "--save", str(tmp_path / f"{name}.pt")]) == 0
        outputs.append(capfd.readouterr().out)
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vin.parallel", *common, "--save", str(tmp_path / "run.pt")],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300,
    )
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    outputs.append(torchrun.stdout)
    assert "vin.sample (one process, 1 threads)" in outputs[0]
    for out in outputs[1:]:
        assert "vin.parallel: 2 ranks (gloo, 1 threads each)" in out, out
        assert "rank 0: windows 0-1" in out and "rank 1: windows 2-2" in out and "sent per step: fused" in out
        assert "(equal on every rank)" in out
    checksums = {out.split("checksum: ")[1].split("\n")[0].split(" (")[0] for out in outputs}
    assert len(checksums) == 1, checksums
    videos = [torch.load(tmp_path / f"{name}.pt") for name in ("one", "two", "run")]
    assert videos[0].shape == (1, 24, *FRAME) and all(torch.equal(v, videos[0]) for v in videos)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--nproc-per-node", "4"], "--nproc-per-node 4: 4 ranks for a layout with only 3 windows"),
        (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["--layout", "context", "--fusion", "late"], "--fusion late: only the windows layout fuses"),
        (["--steps", "0"], "--steps must be in [1, 1000], got 0"),  # once ran the preset's 50 steps silently
        (["--steps", "-2"], "--steps must be in [1, 1000], got -2"),
        (["--t-alpha", "51"], "--t-alpha must be in [0, 50]"),
        (["--batch", "0"], "--batch must be at least 1, got 0"),
        (["--batch", "-1"], "--batch must be at least 1, got -1"),
        (["--threads", "-2"], "--threads must be at least 1, got -2"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),  # once ignored silently
        (["--seed", "-1"], "--seed must be in [0, "),
        (["--latent-frames", "0"], "--latent-frames must be at least 1, got 0"),
        (["--frames", "24"], "--frames: this command counts latent frames: use --latent-frames"),
        (["--backend", "nccl"], "--backend nccl: NCCL needs a CUDA GPU per local rank"),
        (["--save", "{tmp}/no-such-folder/video.pt"], "no-such-folder does not exist"),  # once failed after sampling
        (["--save", "{tmp}"], "is a directory"),
        (["--save", "{tmp}/a-file/video.pt"], "a-file is not a folder"),
        (["--steps", "two"], "argument --steps: invalid int value: 'two'"),
    ],
)
def test_cli_refuses_bad_flags_in_one_line_before_any_work(flags, message, tmp_path, monkeypatch, capsys):
    """Issue 19.11: every flag is checked before a model is built or a process started: exit code 2,
    one line naming the flag, no traceback."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for work in ("build", "launch", "run_single", "run_rank"):
        monkeypatch.setattr(cli, work, lambda *a, **k: pytest.fail("work started before the flags were checked"))
    base = {"--latent-frames": "24", "--layout": "windows"}
    given = dict(zip(flags[::2], flags[1::2]))
    argv = [part for flag, value in (base | given).items() for part in (flag, value.format(tmp=tmp_path))]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m vin.parallel: error: ") and message in err, err


def test_cli_one_line_errors_from_the_shell_without_a_traceback():
    """The same through ``python -m vin.parallel`` (nothing sampled: it exits as soon as torch imports)."""
    bad = subprocess.run(
        [sys.executable, "-m", "vin.parallel", "--latent-frames", "24", "--layout", "windows", "--steps", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "python -m vin.parallel: error: --steps must be in [1, 1000], got 0 (see --help)"


def test_cli_fusion_applies_to_windows_only():
    assert cli.parse_args(["--latent-frames", "24", "--layout", "windows", "--fusion", "none"]).fusion == "none"


def test_launch_refuses_nccl_without_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="NCCL needs a CUDA GPU per local rank: 2 rank"):
        parallel.launch(_rank_job, 2, backend="nccl")
    with pytest.raises(ValueError, match="threads must be a positive int"):
        parallel.launch(_rank_job, 2, backend="gloo", threads=0)
