"""``python -m vin.parallel``: sample one video on N local processes (or under torchrun) and report.

Examples::

    python -m vin.parallel --nproc-per-node 2 --preset tiny --latent-frames 40 --layout windows --seed 0
    python -m vin.parallel --nproc-per-node 1 --preset tiny --latent-frames 40 --layout windows --seed 0  # one process
    torchrun --nproc-per-node 8 -m vin.parallel --preset paper --latent-frames 320 --layout windows --seed 0

Every rank builds the same random-weight model from ``--seed`` (no pretrained weights exist), samples
with :func:`vin.parallel.sample` (``--nproc-per-node 1``: :func:`vin.sample` in this process), and
the command prints per rank the step time and the bytes it sent per step, then a checksum of the
video (equal for every number of processes). Every flag is checked before any process starts or any
model is built (a one-line error naming the flag, exit code 2).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import vin
from vin._argparse import ArgumentParser

from ..sampling import FUSION_MODES
from .launch import backend_problem, default_backend, init_from_env, launch, under_torchrun
from .plan import Plan, split
from .sampling import SampleStats, sample

PRESETS = {"tiny": vin.presets.tiny, "paper": vin.presets.paper}


MAX_STEPS = vin.DiffusionSchedule().num_train_steps  # DDIM takes at most one step per training timestep
MAX_SEED = 2**63 - 1


def save_problem(path: str) -> str | None:
    """Why ``torch.save`` could not write ``path``, or None when it can (checked before sampling)."""
    target = Path(path)
    if target.is_dir():
        return "is a directory"
    folder = target.parent
    if not folder.is_dir():
        return f"its folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    if target.exists() and not os.access(target, os.W_OK) or not target.exists() and not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags, each checked (one line naming the flag, exit code 2) before any work starts."""
    parser = ArgumentParser(prog="python -m vin.parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, default=None, help="processes to start (default: 1; under torchrun: its world)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument(
        "--latent-frames", type=int, required=True,
        help="LATENT frames of the video (the paper's VAE makes 5 of every 16 video frames: 40 latent = 128 video frames)",
    )  # fmt: skip
    parser.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)  # renamed: a clear error below
    parser.add_argument("--layout", choices=("windows", "context"), required=True)
    parser.add_argument("--seed", type=int, default=0, help=f"weights, text and noise (0 to {MAX_SEED})")
    parser.add_argument("--steps", type=int, default=None, help=f"DDIM steps, 1 to {MAX_STEPS} (default: the preset's, 50)")
    parser.add_argument("--t-alpha", type=int, default=None, help="fuse windows while step > t_alpha, 0 to --steps (default: the preset's, 20)")
    parser.add_argument(
        "--fusion", choices=FUSION_MODES, default="early",
        help="windows: fuse while step > t_alpha (early, the paper's), after it (late) or never (none)",
    )
    parser.add_argument("--batch", type=int, default=1, help="videos sampled together (at least 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process, at least 1 (default: cores / processes)")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default: nccl when every rank has a GPU, else gloo")
    parser.add_argument("--save", default=None, help="torch.save the sampled latent video [B, F, C, h, w] (float32) here")
    args = parser.parse_args(argv)
    if args.frames is not None:
        parser.error("--frames: this command counts latent frames: use --latent-frames (python -m bench's --frames counts video frames)")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if args.nproc_per_node not in (None, int(os.environ.get("LOCAL_WORLD_SIZE", world))):
            parser.error(f"--nproc-per-node {args.nproc_per_node} disagrees with torchrun's {os.environ.get('LOCAL_WORLD_SIZE')}")
    for flag, value, low, high in (
        ("--latent-frames", args.latent_frames, 1, None), ("--seed", args.seed, 0, MAX_SEED),
        ("--steps", args.steps, 1, MAX_STEPS), ("--batch", args.batch, 1, None), ("--threads", args.threads, 1, None),
    ):  # fmt: skip
        if value is not None and (value < low or high is not None and value > high):
            parser.error(f"{flag} must be {'at least ' + str(low) if high is None else f'in [{low}, {high}]'}, got {value}")
    steps = PRESETS[args.preset]().steps if args.steps is None else args.steps
    if args.t_alpha is not None and not 0 <= args.t_alpha <= steps:
        parser.error(f"--t-alpha must be in [0, {steps}] (the number of steps), got {args.t_alpha}")
    if args.layout == "context" and args.fusion != "early":
        parser.error(f"--fusion {args.fusion}: only the windows layout fuses (the context layout never duplicates a frame)")
    if args.save is not None and (problem := save_problem(args.save)):
        parser.error(f"--save {args.save}: {problem}")
    nproc = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])) if under_torchrun() else args.nproc_per_node or 1
    if args.backend is not None and (problem := backend_problem(args.backend, nproc)):
        parser.error(f"--backend {args.backend}: {problem}")
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else nproc
    if world > 1:
        try:
            split(make_layout(args), world)
        except ValueError as error:
            parser.error(f"--nproc-per-node {world}: {error}")
    return args


def _fusion_note(args) -> str:
    return f", {args.fusion} fusion" if args.layout == "windows" else ""


def make_layout(args):
    preset = PRESETS[args.preset]()
    return preset.window_layout(args.latent_frames) if args.layout == "windows" else preset.context_layout(args.latent_frames)


def build(args, device: torch.device):
    """``(preset, model, vin, text, generator, layout)`` from the arguments, identical on every rank."""
    preset = PRESETS[args.preset]()
    layout = make_layout(args)
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, net = preset.build(device=device, dtype=dtype)
    model.randomize_zero_layers()  # a fresh DiT predicts 0
    text = torch.randn(args.batch, preset.dit.text_len, preset.dit.text_dim, device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    return preset, model.eval(), net.eval(), text, generator, layout


def checksum(video: torch.Tensor) -> str:
    data = video.detach().cpu().contiguous()
    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    return f"sum={data.double().sum().item():.10g} abs_sum={data.double().abs().sum().item():.10g} sha256={digest}"


def _kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def rank_report(rank: int, plan: Plan, stats: SampleStats) -> str:
    """One line: the rank's chunks, its step time (median, per kind) and the bytes it sent per step."""
    shard, unit = plan.shards[rank], "windows" if plan.layout.is_windows else "chunks"
    parts = [f"rank {rank}: {unit} {shard.chunks.start}-{shard.chunks.stop - 1}, frames {shard.frames.start}-{shard.frames.stop - 1}"]
    ms = [s * 1e3 for s in stats.step_seconds]
    kinds = sorted(set(stats.step_kinds), key=stats.step_kinds.index)
    per_kind = ", ".join(
        f"{k} {statistics.median([t for t, kk in zip(ms, stats.step_kinds) if kk == k]):.1f}" for k in kinds
    )
    parts.append(f"step {statistics.median(ms):.1f} ms median ({per_kind})")
    sent = ", ".join(f"{k} {_kib(statistics.median([b for b, kk in zip(stats.step_bytes, stats.step_kinds) if kk == k]))}" for k in kinds)
    parts.append(f"sent per step: {sent}; final gather {_kib(stats.final_bytes)}")
    return " | ".join(parts)


def run_rank(args) -> dict:
    """Sample on this rank of the default group; rank 0 prints the report. Returns the rank's stats."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    preset, model, net, text, generator, layout = build(args, device)
    stats = SampleStats()
    steps, t_alpha = _schedule(args, preset)
    start = time.perf_counter()
    video = sample(model, net, text, layout=layout, steps=steps, t_alpha=t_alpha, fusion=args.fusion, generator=generator, stats=stats)
    seconds = time.perf_counter() - start
    plan = Plan(layout, world, net.keyframe_stride)
    lines = [None] * world
    dist.all_gather_object(lines, (rank_report(rank, plan, stats), checksum(video)))
    if rank == 0:
        print(
            f"vin.parallel: {world} ranks ({dist.get_backend()}, {torch.get_num_threads()} threads each), {args.preset} preset, "
            f"{layout.num_frames} latent frames, {layout!r}, {steps} steps{_fusion_note(args)}, seed {args.seed}"
        )
        for line, _ in lines:
            print(line)
        same = len({c for _, c in lines}) == 1
        print(f"sample {seconds:.2f} s; video {list(video.shape)} float32 checksum: {lines[0][1]} ({'equal' if same else 'DIFFERENT'} on every rank)")
        if args.save:
            torch.save(video.cpu(), args.save)
            print(f"saved {args.save}")
    return {"seconds": seconds, "stats": stats, "checksum": checksum(video)}


def _schedule(args, preset) -> tuple[int, int]:
    """``(steps, t_alpha)``: the flags, else the preset's."""
    return preset.steps if args.steps is None else args.steps, preset.t_alpha if args.t_alpha is None else args.t_alpha


def run_single(args) -> dict:
    """``--nproc-per-node 1``: :func:`vin.sample` in this process (no torch.distributed)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda") if torch.cuda.is_available() and args.backend != "gloo" else torch.device("cpu")
    preset, model, net, text, generator, layout = build(args, device)
    steps, t_alpha = _schedule(args, preset)
    start = time.perf_counter()
    video = vin.sample(model, net, text, layout=layout, steps=steps, t_alpha=t_alpha, fusion=args.fusion, generator=generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"vin.sample (one process, {torch.get_num_threads()} threads), {args.preset} preset, {layout.num_frames} latent "
        f"frames, {layout!r}, {steps} steps{_fusion_note(args)}, seed {args.seed}"
    )
    print(f"step {seconds / steps * 1e3:.1f} ms mean | sent per step: 0 B")
    print(f"sample {seconds:.2f} s; video {list(video.shape)} float32 checksum: {checksum(video)}")
    if args.save:
        torch.save(video.cpu(), args.save)
        print(f"saved {args.save}")
    return {"seconds": seconds, "checksum": checksum(video)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if under_torchrun():
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        init_from_env(args.backend)
        try:
            run_rank(args)
        finally:
            dist.destroy_process_group()
        return 0
    nproc = args.nproc_per_node or 1
    if nproc == 1:
        run_single(args)
        return 0
    launch(run_rank, nproc, (args,), backend=args.backend or default_backend(nproc), threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
