"""quality suite (opt-in: ``python -m bench --suite quality``): the paper's ablation at toy scale.

Trains the ``quality`` preset (:func:`vin.presets.quality`) with :func:`vin.train.train` on clips of
24 latent frames of :mod:`vin.data` three times, with the same seed, data, noise and number of
steps: with global tokens (the default), without them, and with local context 0. Each variant then
samples the same long videos (96 latent frames, 4x the clips, the same initial noise) with
:func:`vin.sample` and is scored with :mod:`vin.metrics` (MAWE from Farneback flow, identity drift
across chunk borders, scene-cut rate), next to the same metrics on real videos of the generator:

============== =========================== ==========================================
variant        trained                     sampled
============== =========================== ==========================================
full           VIN, context 4              windows of 12 overlapping by 4, early fusion
no_global      no VIN, context 4           as full
no_fusion      the full model              windows never fused; each frame from its owner
late_fusion    the full model              windows fused only while step <= t_alpha
context_0      VIN, context 0              windows of 8 without overlap (chunks share only the VIN)
============== =========================== ==========================================

On a CPU the three trainings run at once in spawned processes of one thread each (on 2 cores one
thread runs a training step in 296 ms and two threads in 234 ms, so three one-thread processes
finish ~1.6x sooner than three two-thread runs in a row). ``--quick``: 20 steps, 2 videos, 10
sampling steps (a smoke run, not a measurement).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

import vin
from vin import data, metrics
from vin.train import TrainSettings, sample_videos, train
from vin_kernels import ChunkLayout

from . import Context

OPT_IN = "it trains three models (about 25 minutes on 2 cores)"

# model -> (with global tokens, training context; None: the preset's)
MODELS = {"vin": (True, None), "no_vin": (False, None), "vin_context_0": (True, 0)}
# variant -> (model, fusion, description)
VARIANTS = {
    "full": ("vin", "early", "VIN, context 4, early fusion (the paper's model)"),
    "no_global": ("no_vin", "early", "without global tokens"),
    "no_fusion": ("vin", "none", "windows never fused, each frame from its owning window"),
    "late_fusion": ("vin", "late", "fusion only in the last t_alpha steps"),
    "context_0": ("vin_context_0", "early", "trained with context 0, chunks of 8 without overlap"),
}
DATA_ROW = "data"
TRAIN = TrainSettings(steps=2000, batch=8, clip_frames=24, lr=2e-3, warmup=100, seed=0)
EVAL_VIDEOS, EVAL_FRAMES, STRIP_EVERY, STRIP_ZOOM = 8, 96, 6, 4
METRICS = ("mawe", "warp_error", "motion", "valid_fraction", "drift", "drift_first_last", "chunks_with_objects",
           "cut_rate", "inside_rate", "border_ratio")


def _eval_layout(preset, model: str, frames: int) -> ChunkLayout:
    if MODELS[model][1] == 0:  # no context: chunks share nothing but the global tokens
        return ChunkLayout.windows(frames, preset.chunk, 0)
    return preset.window_layout(frames)


def _finite(value):
    """JSON has no NaN: None instead."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _summarize(scores: dict) -> dict:
    """Means (NaN-aware) and standard errors over the videos of :func:`vin.metrics.evaluate`."""
    out = {}
    for key in METRICS:
        values = np.array([v[key] for v in scores["per_video"]], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[key] = _finite(float(values.mean())) if len(values) else None
        out[f"{key}_sem"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return out


def _train_and_sample(job: dict) -> dict:
    """Train one model and sample + score each of its variants (runs in a worker process on a CPU)."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    with_vin, context = MODELS[job["model"]]
    preset = job["preset"] if context is None else dataclasses.replace(job["preset"], context=context)
    settings = dataclasses.replace(job["settings"], with_vin=with_vin)
    trained = train(preset, settings, device=job["device"], progress=job["progress"], desc=f"train {job['model']}")
    result = {"model": job["model"], "losses": trained.losses, "train_seconds": trained.seconds, "threads": trained.threads,
              "variants": {}}
    layout = _eval_layout(preset, job["model"], job["frames"])
    for variant in job["variants"]:
        start = time.perf_counter()
        videos = sample_videos(trained, layout, num_videos=job["videos"], seed=job["sample_seed"], fusion=VARIANTS[variant][1])
        sample_seconds = time.perf_counter() - start
        result["variants"][variant] = {
            "scores": metrics.evaluate(videos, layout),
            "sample_seconds": sample_seconds,
            "layout": repr(layout),
            "strip_video": videos[0].cpu(),
        }
    return result


def _strip_png(videos: dict[str, torch.Tensor], every: int) -> tuple[str, list[int]]:
    """Rows of frames ``0, every, 2*every, ...`` of one video per row at latent resolution, as base64 PNG."""
    import cv2

    frames = list(range(0, next(iter(videos.values())).shape[0], every))
    rows = [np.concatenate(list(data.to_rgb(v[frames])), axis=1) for v in videos.values()]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    assert ok, "cv2.imencode failed"
    return base64.b64encode(png.tobytes()).decode("ascii"), frames


def run(ctx: Context) -> dict:
    start = time.perf_counter()
    preset = vin.presets.quality()
    settings, videos, frames = TRAIN, EVAL_VIDEOS, EVAL_FRAMES
    if ctx.quick:
        preset = dataclasses.replace(preset, steps=10, t_alpha=4)
        settings, videos = dataclasses.replace(TRAIN, steps=20, warmup=5), 2
    cpu = ctx.device.type == "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parallel = cpu and cores > 1
    jobs = [
        {"model": model, "preset": preset, "settings": settings, "device": str(ctx.device), "frames": frames,
         "videos": videos, "sample_seed": 1, "threads": max(1, cores // len(MODELS)) if parallel else 0,
         "progress": True, "variants": [v for v, (m, _, _) in VARIANTS.items() if m == model]}
        for model in MODELS
    ]
    if parallel:
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_train_and_sample, job) for job in jobs]
            reference = data.generate(videos, frames, seed=settings.seed, split="eval")
            data_scores = metrics.evaluate(reference.video, preset.window_layout(frames))
            results = [f.result() for f in futures]
    else:
        results = [_train_and_sample(job) for job in ctx.progress(jobs, desc="quality")]
        reference = data.generate(videos, frames, seed=settings.seed, split="eval")
        data_scores = metrics.evaluate(reference.video, preset.window_layout(frames))

    by_model = {r["model"]: r for r in results}
    rows = [{"variant": DATA_ROW, "description": "generated ground-truth videos (eval split)",
             "layout": repr(preset.window_layout(frames)), **_summarize(data_scores)}]
    strip = {DATA_ROW: reference.video[0]}
    for variant, (model, fusion, description) in VARIANTS.items():
        trained, sampled = by_model[model], by_model[model]["variants"][variant]
        tail = trained["losses"][-100:]
        rows.append({
            "variant": variant, "description": description, "model": model, "fusion": fusion,
            "with_vin": MODELS[model][0], "context": preset.context if MODELS[model][1] is None else MODELS[model][1],
            "layout": sampled["layout"], "train_steps": settings.steps, "final_loss": sum(tail) / len(tail),
            "train_seconds": trained["train_seconds"], "train_threads": trained["threads"],
            "sample_seconds": sampled["sample_seconds"], **_summarize(sampled["scores"]),
        })
        strip[variant] = sampled["strip_video"]
    png, strip_frames = _strip_png(strip, STRIP_EVERY)
    by_variant = {r["variant"]: r for r in rows}
    return {
        "preset": "quality" + (" (quick)" if ctx.quick else ""),
        "train": dataclasses.asdict(settings),
        "eval": {"videos": videos, "frames": frames, "sampling_steps": preset.steps, "t_alpha": preset.t_alpha,
                 "flow": "OpenCV Farneback on the RGB images of the latent frames, 4x upsampled"},
        "threads": {"parallel_processes": len(jobs) if parallel else 1, "per_process": results[0]["threads"]},
        "total_seconds": time.perf_counter() - start,
        "rows": rows,
        "directions": directions(by_variant),
        "losses": {m: _smooth(r["losses"]) for m, r in by_model.items()},
        "strip": {"rows": list(strip), "frames": strip_frames, "png_base64": png},
    }


def _smooth(losses: list[float], points: int = 100) -> list[float]:
    """The loss curve averaged over ``len / points`` consecutive steps (for the plot)."""
    size = max(1, len(losses) // points)
    return [float(np.mean(losses[i : i + size])) for i in range(0, len(losses), size)]


PAPER_ABLATION = ("no_global", "no_fusion", "late_fusion")  # the variants of the paper's ablation table


def directions(rows: dict[str, dict]) -> dict:
    """The paper's ablation directions, checked on the measured means (True where they hold).

    Paper (ablation table): MAWE 1.09 full, 1.69 without global tokens (the worst), 1.13 without
    fusion, 1.22 late fusion; scene cuts 0.21 full, 0.33 without global tokens, 1.00 without fusion,
    0.74 late fusion. "Worst" is taken over those three variants; ``context_0`` (no local context
    and no overlap at all, a setting the paper does not ablate) is reported beside them.
    """

    def worst(metric, variants):
        values = {v: rows[v][metric] for v in variants if rows[v][metric] is not None}
        return max(values, key=values.get) if values else None

    def less(a, b, metric):
        x, y = rows[a][metric], rows[b][metric]
        return None if x is None or y is None else bool(x < y)

    return {
        "worst_mawe": worst("mawe", PAPER_ABLATION),
        "worst_drift": worst("drift", PAPER_ABLATION),
        "worst_mawe_with_context_0": worst("mawe", [*PAPER_ABLATION, "context_0"]),
        "no_global_hurts_mawe_most": worst("mawe", PAPER_ABLATION) == "no_global",
        "no_global_hurts_drift_most": worst("drift", PAPER_ABLATION) == "no_global",
        "early_fewer_cuts_than_late": less("full", "late_fusion", "cut_rate"),
        "early_fewer_cuts_than_none": less("full", "no_fusion", "cut_rate"),
    }


def _fmt(value, sem=None, digits=2):
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text + (f" ± {sem:.{digits}f}" if sem is not None else "")


def markdown(result: dict) -> str:
    train, ev = result["train"], result["eval"]
    lines = [
        f"The {result['preset']} preset trained {train['steps']} steps (batch {train['batch']} clips of "
        f"{train['clip_frames']} latent frames, seed {train['seed']}) per model; {ev['videos']} sampled videos of "
        f"{ev['frames']} latent frames per variant ({ev['sampling_steps']} DDIM steps, t_alpha {ev['t_alpha']}); "
        f"mean ± standard error over the videos. MAWE: {ev['flow']} (lower is better; *motion* in latent px "
        f"per latent frame: a frozen video has MAWE 0). Drift: object-colour Chamfer distance between consecutive "
        f"chunks (*first-last*: first vs last chunk). Cuts: fraction of chunk borders with a spike of the difference "
        f"between consecutive latent frames (*inside*: spikes inside chunks). Whole run: {result['total_seconds'] / 60:.1f} min, "
        f"{result['threads']['parallel_processes']} process(es) x {result['threads']['per_process']} thread(s).",
        "",
        "| variant | MAWE ↓ | motion | drift ↓ | drift first-last ↓ | cuts ↓ | cuts inside | final loss | train s | sample s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {_fmt(r['mawe'], r['mawe_sem'])} | {_fmt(r['motion'])} | "
            f"{_fmt(r['drift'], r['drift_sem'], 3)} | {_fmt(r['drift_first_last'], r['drift_first_last_sem'], 3)} | "
            f"{_fmt(r['cut_rate'], r['cut_rate_sem'])} | {_fmt(r['inside_rate'])} | "
            f"{_fmt(r.get('final_loss'), digits=4)} | {_fmt(r.get('train_seconds'), digits=0)} | "
            f"{_fmt(r.get('sample_seconds'), digits=0)} |"
        )
    d = directions({r["variant"]: r for r in result["rows"]})
    lines += [
        "",
        "Paper directions, over its ablation variants (no_global, no_fusion, late_fusion): removing the global "
        f"tokens hurts MAWE the most — **{'yes' if d['no_global_hurts_mawe_most'] else 'no'}** (worst: {d['worst_mawe']}; "
        f"with context_0 too: {d['worst_mawe_with_context_0']}); hurts identity drift the most — "
        f"**{'yes' if d['no_global_hurts_drift_most'] else 'no'}** (worst: {d['worst_drift']}); early fusion has fewer "
        f"scene cuts than late fusion — **{_yes(d['early_fewer_cuts_than_late'])}**, than no fusion — "
        f"**{_yes(d['early_fewer_cuts_than_none'])}**.",
    ]
    return "\n".join(lines)


def _yes(flag) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def files(result: dict, out, stem: str) -> list:
    """The frame strip: one row per variant (the first row: a generated ground-truth video), frames
    0, 6, 12, ... of the first evaluation video, each latent pixel drawn as a 4x4 block, ``<stem>-strip.png``."""
    import cv2

    path = out / f"{stem}-strip.png"
    image = cv2.imdecode(np.frombuffer(base64.b64decode(result["strip"]["png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(path), cv2.resize(image, None, fx=STRIP_ZOOM, fy=STRIP_ZOOM, interpolation=cv2.INTER_NEAREST))
    return [path]
