"""parallel suite (runs anywhere; gloo processes on this machine): what vin.parallel moves and what it gains.

The default run measures part 1 on 2 ranks and computes part 3 (about 15 s on 2 cores); ``--full``
adds 3 ranks and part 2 (about 5 minutes).

1. ``bytes``: the tiny preset sampled by :func:`vin.parallel.sample` on 2 and 3 gloo ranks, both
   layouts: bytes all ranks send per step, measured (:class:`vin.parallel.SampleStats`), checked
   equal to :meth:`vin.parallel.Plan.step_bytes`, next to the activation bytes the same step moves
   under Ulysses sequence parallelism (an all-to-all of q, k, v and the attention output in every
   layer, full attention over the whole video).
2. ``speed``: one process (:func:`vin.sample`) against two (:func:`vin.parallel.sample`), one torch
   thread each, same seed (the videos must be bitwise equal), runs alternating: per run the median
   step time (two processes: the slower rank's, step by step) and the sample's wall time; over the
   runs their median and their best (other work on the shared machine only ever slows a run down;
   the 1-minute load average before and after shows how much there was). Beside them the machine's
   own ceiling: two processes that each sample half the video alone (:func:`vin.sample`, no
   communication), timed the same way; the two-process speedup is also given as a share of it.
3. ``model`` (a model, not a measurement): the paper preset at 1024 and 4096 video frames on 8 and
   64 GPUs, bytes per step from the plan (whose counts equal the measured ones in part 1), FLOPs per
   rank from :mod:`vin.flops`, beside what a Ulysses step moves; and the VIN read as an all-gather
   of keyframe latents (what vin.parallel does) against partial reads merged by log-sum-exp.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.distributed as dist

import vin
from vin import parallel

from . import Context, latent_frames

LAYOUTS = ("windows", "context")
STEPS_BYTES = 4  # with t_alpha = 2: two fused and two independent window steps
# 640 latent frames: about 200 ms of compute per step on one core, so the ~0.7 ms median of a gloo
# exchange between two busy processes (measured here) and its multi-ms tail matter little.
SPEED_FRAMES, SPEED_STEPS, SPEED_T_ALPHA, SPEED_REPEATS = 640, 16, 8, 5
MODEL_VIDEO_FRAMES, MODEL_GPUS = (1024, 4096), (8, 64)
MODEL_ITEMSIZE = 2  # the paper preset runs in bf16 on GPUs


# ------------------------------------------------------------------------------------ shared
def _layout(preset, name: str, frames: int):
    return preset.window_layout(frames) if name == "windows" else preset.context_layout(frames)


def _nets(preset):
    """The preset with random weights everywhere (adaLN-Zero would make the DiT predict 0)."""
    torch.manual_seed(0)
    model, net_vin = preset.build()
    model.randomize_zero_layers()  # a fresh DiT predicts 0
    return model.eval(), net_vin.eval()


def _text(preset):
    return torch.randn(1, preset.dit.text_len, preset.dit.text_dim, generator=torch.Generator().manual_seed(1))


def _sizes(dit, model_itemsize: int, vin_itemsize: int) -> dict:
    """The :meth:`Plan.step_bytes` arguments of one video of a DiT configuration."""
    return dict(
        batch=1, frame_elements=dit.in_channels * dit.height * dit.width, token_elements=dit.tokens_per_frame * dit.hidden,
        depth=dit.depth, model_itemsize=model_itemsize, vin_itemsize=vin_itemsize,
    )  # fmt: skip


def ulysses_step_bytes(dit, latent: int, ranks: int, itemsize: int) -> int:
    """Bytes all ranks send in one Ulysses step of full attention over ``latent`` frames: per layer an
    all-to-all of q, k, v (before) and the output (after), each ``[N, hidden]``, of which every rank
    keeps ``1 / ranks``."""
    tokens = latent * dit.tokens_per_frame
    return 4 * tokens * dit.hidden * itemsize * dit.depth * (ranks - 1) // ranks


def activation_bytes(dit, latent: int, itemsize: int) -> int:
    """The DiT's hidden states in one step: ``depth`` layers of ``[N, hidden]``."""
    return latent * dit.tokens_per_frame * dit.hidden * itemsize * dit.depth


# ------------------------------------------------------------------------------------ on each rank
def _bytes_job(frames: int) -> dict:
    """Each layout sampled for STEPS_BYTES steps on this group: the rank's stats and the video's checksum."""
    preset = vin.presets.tiny()
    model, net_vin = _nets(preset)
    out = {}
    for name in LAYOUTS:
        stats = parallel.SampleStats()
        parallel.sample(
            model, net_vin, _text(preset), layout=_layout(preset, name, frames), steps=STEPS_BYTES, t_alpha=2,
            generator=torch.Generator().manual_seed(2), stats=stats,
        )  # fmt: skip
        out[name] = {"kinds": stats.step_kinds, "bytes": stats.step_bytes, "final": stats.final_bytes}
    return out


def _timed_steps(step_seconds: list[float]):
    """vin.sampling.denoise_step, timed into ``step_seconds`` (vin.sample looks it up at each call)."""
    denoise_step = vin.sampling.denoise_step

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = denoise_step(*args, **kwargs)
        step_seconds.append(time.perf_counter() - start)
        return out

    return timed


def _speed_job(name: str, halves: bool = False) -> dict:
    """One timed sample (SPEED_STEPS steps): vin.sample of SPEED_FRAMES frames alone, vin.parallel.sample
    of them in a group, or (``halves``) vin.sample of half of them on each rank, without communication."""
    preset = vin.presets.tiny()
    model, net_vin = _nets(preset)
    layout = _layout(preset, name, SPEED_FRAMES // 2 if halves else SPEED_FRAMES)
    stats = parallel.SampleStats()
    args = dict(layout=layout, steps=SPEED_STEPS, t_alpha=SPEED_T_ALPHA, generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    if dist.get_world_size() == 1 or halves:
        vin.sampling.denoise_step = _timed_steps(stats.step_seconds)
        video = vin.sample(model, net_vin, _text(preset), **args)
    else:
        video = parallel.sample(model, net_vin, _text(preset), stats=stats, **args)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "step_seconds": stats.step_seconds, "threads": torch.get_num_threads(), "video": video}


# ------------------------------------------------------------------------------------ parts
def _bytes_rows(ctx: Context) -> list[dict]:
    preset = vin.presets.tiny()
    dit, frames = preset.dit, 40
    net_vin = preset.build(device="meta")[1]
    rows = []
    for ranks in ctx.progress((2, 3) if ctx.full else (2,), desc="parallel: bytes, gloo groups sampled"):
        per_rank = parallel.launch(_bytes_job, ranks, (frames,), backend="gloo", threads=1)
        for name in LAYOUTS:
            layout = _layout(preset, name, frames)
            plan = parallel.Plan(layout, ranks, net_vin.keyframe_stride)
            predicted = plan.step_bytes(**_sizes(dit, 4, 4))
            kinds = per_rank[0][name]["kinds"]
            for kind in dict.fromkeys(kinds):
                step = kinds.index(kind)
                measured = sum(r[name]["bytes"][step] for r in per_rank)
                ulysses = ulysses_step_bytes(dit, frames, ranks, 4)
                rows.append({
                    "kind": "bytes", "layout": name, "ranks": ranks, "latent_frames": frames, "preset": "tiny",
                    "dtype": "float32", "step": kind, "chunks": layout.num_chunks,
                    "split": [len(s.chunks) for s in plan.shards],
                    "measured_bytes_per_step": measured, "per_rank_bytes": [r[name]["bytes"][step] for r in per_rank],
                    "planned_bytes_per_step": predicted[kind], "matches_plan": measured == predicted[kind],
                    "ulysses_bytes_per_step": ulysses, "activation_bytes_per_step": activation_bytes(dit, frames, 4),
                    "ratio_to_ulysses": measured / ulysses,
                })  # fmt: skip
    return rows


def _speed_rows(ctx: Context) -> list[dict]:
    if not ctx.full or ctx.quick:
        return []
    rows = []
    # processes, halves: one process; two (vin.parallel); two sampling half the video each (the ceiling)
    setups = ((1, False), (2, False), (2, True))
    bar = ctx.progress.bar(len(LAYOUTS) * SPEED_REPEATS * len(setups), desc=f"parallel: speed, samples of {SPEED_FRAMES} latent frames")
    for name in LAYOUTS:
        runs = {setup: [] for setup in setups}
        load_before = os.getloadavg()[0]
        for _ in range(SPEED_REPEATS):  # alternate, so slow phases of other work hit all
            for ranks, halves in setups:
                runs[ranks, halves].append(parallel.launch(_speed_job, ranks, (name, halves), backend="gloo", threads=1))
                bar.update()
        load_after = os.getloadavg()[0]
        reference = runs[1, False][0][0]["video"]
        equal = all(torch.equal(rank["video"], reference) for r in runs[1, False] + runs[2, False] for rank in r)
        measured = {}
        for setup, repeats in runs.items():
            measured[setup] = {
                # per run: the median over steps of the slowest rank (a step ends for all at its last exchange)
                "step_ms": [statistics.median(1e3 * max(s) for s in zip(*(rank["step_seconds"] for rank in r))) for r in repeats],
                "sample_seconds": [max(rank["seconds"] for rank in r) for r in repeats],
            }
        base = {key: (statistics.median(v), min(v)) for key, v in measured[1, False].items()}
        for (ranks, halves), m in measured.items():
            step, sample = (statistics.median(m["step_ms"]), min(m["step_ms"])), (statistics.median(m["sample_seconds"]), min(m["sample_seconds"]))
            rows.append({
                "kind": "speed", "layout": name, "ranks": ranks, "halves_alone": halves, "latent_frames": SPEED_FRAMES, "preset": "tiny",
                "dtype": "float32", "threads_per_process": runs[ranks, halves][0][0]["threads"], "steps": SPEED_STEPS,
                "t_alpha": SPEED_T_ALPHA, "step_ms": m["step_ms"], "sample_seconds": m["sample_seconds"],
                "step_ms_median": step[0], "step_ms_best": step[1], "sample_seconds_median": sample[0], "sample_seconds_best": sample[1],
                "step_speedup_median": base["step_ms"][0] / step[0], "step_speedup_best": base["step_ms"][1] / step[1],
                "sample_speedup_median": base["sample_seconds"][0] / sample[0], "sample_speedup_best": base["sample_seconds"][1] / sample[1],
                "bitwise_equal": None if halves else equal, "load_average_before": load_before, "load_average_after": load_after,
            })  # fmt: skip
        ceiling = rows[-1]
        rows[-2]["step_speedup_share_of_ceiling"] = rows[-2]["step_speedup_median"] / ceiling["step_speedup_median"]
    bar.close()
    return rows


def _model_rows() -> list[dict]:
    preset = vin.presets.paper()
    dit, cfg = preset.dit, preset.vin
    net_vin = preset.build(device="meta")[1]
    rows = []
    for video_frames in MODEL_VIDEO_FRAMES:
        latent = latent_frames(video_frames)
        for name in LAYOUTS:
            layout = _layout(preset, name, latent)
            step = vin.flops.step_flops(preset, latent, layout)
            dit_flops = step.total - step.vin
            for gpus in MODEL_GPUS:
                row = {"kind": "model", "layout": name, "ranks": gpus, "latent_frames": latent, "video_frames": video_frames,
                       "preset": "paper", "dtype": "bfloat16", "chunks": layout.num_chunks}  # fmt: skip
                try:
                    plan = parallel.Plan(layout, gpus, net_vin.keyframe_stride)
                except ValueError as error:
                    rows.append(row | {"error": str(error)})
                    continue
                planned = plan.step_bytes(**_sizes(dit, MODEL_ITEMSIZE, MODEL_ITEMSIZE))
                worst = "fused" if layout.is_windows else "context"
                most = max(len(s.chunks) for s in plan.shards)
                # Per rank: its share of the DiT (plus one chunk of attention for the context prefix) and the whole VIN.
                prefix = step.components["self_attention"] / layout.num_chunks if not layout.is_windows else 0
                rank_flops = dit_flops * most / layout.num_chunks + prefix + step.vin
                ulysses = ulysses_step_bytes(dit, latent, gpus, MODEL_ITEMSIZE)
                keyframes = len(plan.keyframes)
                merge = gpus * (gpus - 1) * (cfg.num_global_tokens * cfg.dim * MODEL_ITEMSIZE + cfg.heads * cfg.num_global_tokens * 4)
                frame_bytes = dit.in_channels * dit.height * dit.width * MODEL_ITEMSIZE
                gather = gpus * (gpus - 1) * max(len(plan.keyframes_of(r)) for r in range(gpus)) * frame_bytes
                rows.append(row | {
                    "split": sorted(set(len(s.chunks) for s in plan.shards)),
                    "bytes_per_step": planned[worst], "step": worst, "independent_bytes_per_step": planned.get("independent"),
                    "ulysses_bytes_per_step": ulysses, "ratio_to_ulysses": planned[worst] / ulysses,
                    "activation_bytes_per_step": activation_bytes(dit, latent, MODEL_ITEMSIZE),
                    "step_flops": step.total, "rank_flops": int(rank_flops), "vin_flops_replicated": step.vin,
                    "ideal_speedup": step.total / rank_flops, "rank_flops_per_byte": rank_flops / (planned[worst] / gpus),
                    "keyframes": keyframes, "vin_read_gather_bytes": gather, "vin_read_merge_bytes": merge,
                })  # fmt: skip
    return rows


def run(ctx: Context) -> dict:
    rows = _bytes_rows(ctx) + _speed_rows(ctx) + _model_rows()
    return {"rows": rows, "cpu_count": os.cpu_count(), "quick": ctx.quick, "full": ctx.full}


def headline(result: dict) -> list[str]:
    """The summary lines: bytes per step against Ulysses, and (``--full``) the two-process speedup."""
    lines = []
    model = [r for r in result["rows"] if r["kind"] == "model" and "error" not in r and r["layout"] == "windows"]
    if model:
        r = model[0]
        lines.append(
            f"paper preset, {r['video_frames']} video frames on {r['ranks']} GPUs (windows): "
            f"{100 * r['ratio_to_ulysses']:.3f}% of Ulysses' bytes per step (computed from the plan)"
        )
    speed = [r for r in result["rows"] if r["kind"] == "speed" and r["ranks"] == 2 and not r.get("halves_alone")]
    if speed:
        lines.append("2 processes, step speedup (share of the machine's two-process ceiling): " + ", ".join(
            f"{r['layout']} {r['step_speedup_median']:.2f}x ({100 * r.get('step_speedup_share_of_ceiling', float('nan')):.0f}%)"
            for r in speed))
    return lines


# ------------------------------------------------------------------------------------ report
def _size(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "Bytes all ranks send per step, measured on gloo ranks (tiny preset, float32, 40 latent frames); "
        "Ulysses: the q, k, v and output all-to-all of full attention over the same video.",
        "",
        "| layout | ranks | split | step | measured | = plan | Ulysses | ratio |",
        "| --- | ---: | --- | --- | ---: | --- | ---: | ---: |",
    ]
    for r in (r for r in rows if r["kind"] == "bytes"):
        lines.append(
            f"| {r['layout']} | {r['ranks']} | {'+'.join(map(str, r['split']))} | {r['step']} | {_size(r['measured_bytes_per_step'])} | "
            f"{'yes' if r['matches_plan'] else 'NO'} | {_size(r['ulysses_bytes_per_step'])} | {100 * r['ratio_to_ulysses']:.2f}% |"
        )
    speed = [r for r in rows if r["kind"] == "speed"]
    if not speed and not result.get("quick"):
        lines += ["", "Speed (one process against two): not measured in this run (`--full` measures it, about 5 minutes)."]
    if speed:
        s = speed[0]
        lines += [
            "",
            f"One process against two, {s['threads_per_process']} thread each, tiny preset, {s['latent_frames']} latent frames, "
            f"{s['steps']} steps, {len(s['sample_seconds'])} alternating runs each, median / best run "
            f"({result['cpu_count']} cores shared with other work: see the load average). *2, halves alone*: the "
            "machine's ceiling, two processes each sampling half the video with no communication; *share of "
            "ceiling*: the median step speedup of vin.parallel over the ceiling's:",
            "",
            "| layout | processes | step ms | step speedup | share of ceiling | sample s | sample speedup | bitwise equal | load avg before → after |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in speed:
            halves = r.get("halves_alone", False)
            share = f"{100 * r['step_speedup_share_of_ceiling']:.0f}%" if "step_speedup_share_of_ceiling" in r else ""
            lines.append(
                f"| {r['layout']} | {r['ranks']}{', halves alone' if halves else ''} | {r['step_ms_median']:.1f} / {r['step_ms_best']:.1f} | "
                f"{r['step_speedup_median']:.2f}x / {r['step_speedup_best']:.2f}x | {share} | {r['sample_seconds_median']:.2f} / "
                f"{r['sample_seconds_best']:.2f} | {r['sample_speedup_median']:.2f}x / {r['sample_speedup_best']:.2f}x | "
                f"{'-' if halves else 'yes' if r['bitwise_equal'] else 'NO'} | {r['load_average_before']:.1f} → {r['load_average_after']:.1f} |"
            )
    lines += [
        "",
        "**Model** (computed, not measured): the paper preset in bf16, bytes per step from the plan (its counts equal "
        "the measured ones above), FLOPs from `vin.flops` (per rank: its share of the DiT plus the replicated VIN). "
        "Windows: a fused step (the heavier kind). VIN read: keyframe all-gather vs partial reads merged by log-sum-exp.",
        "",
        "| video frames | layout | GPUs | chunks per GPU | bytes/step | Ulysses bytes/step | ratio | TFLOP/GPU/step | ideal speedup | VIN read: gather / merge |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in (r for r in rows if r["kind"] == "model"):
        if "error" in r:
            lines.append(f"| {r['video_frames']} | {r['layout']} | {r['ranks']} | {r['chunks']} chunks: too few | | | | | | |")
            continue
        lines.append(
            f"| {r['video_frames']} | {r['layout']} | {r['ranks']} | {'/'.join(map(str, r['split']))} | {_size(r['bytes_per_step'])} | "
            f"{_size(r['ulysses_bytes_per_step'])} | {100 * r['ratio_to_ulysses']:.3f}% | {r['rank_flops'] / 1e12:.1f} | "
            f"{r['ideal_speedup']:.1f}x | {_size(r['vin_read_gather_bytes'])} / {_size(r['vin_read_merge_bytes'])} |"
        )
    return "\n".join(lines)
