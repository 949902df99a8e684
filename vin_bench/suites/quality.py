"""quality suite (opt-in: ``python -m bench --suite quality``): the paper's ablation at toy scale.

Trains the ``quality`` preset (:func:`vin.presets.quality`, v prediction) with :func:`vin.train.train`
on clips of :mod:`vin.data` four times, with the same seed, data, noise and number of steps: with
global tokens (the default), without them, with local context 0, and with full attention (one chunk
over the whole clip, no VIN: the ceiling the chunked models are measured against). Each variant then
samples the same long videos (:data:`EVAL_VIDEOS` videos of :data:`EVAL_FRAMES` latent frames, the
same initial noise) with :func:`vin.sample` and is scored with :mod:`vin.metrics` (MAWE from Farneback
flow, identity drift across chunk borders, scene-cut rate), next to the same metrics on real videos:

============== =============================== ==========================================
variant        trained                         sampled
============== =============================== ==========================================
full           VIN, context 4                  windows of 12 overlapping by 4, early fusion
no_global      no VIN, context 4               as full
no_fusion      the full model                  windows never fused; each frame from its owner
late_fusion    the full model                  windows fused only while step <= t_alpha
context_0      VIN, context 0                  windows of 8 without overlap (chunks share only the VIN)
full_attention no VIN, one chunk over the clip one chunk over the whole video
============== =============================== ==========================================

Beside the metrics, for every model: the denoising diagnostic of :func:`vin.train.denoising_errors`
(x0-MSE at t = 200, 500, 900 on held-out clips against the best linear denoiser and the data mean)
during training, the full-attention model's MAWE at those points (short samples), and for the chunked
models the loss through the training layout and through the inference windows on the same noisy
clips (docs/design.md, Time positions and the prediction target).

On a CPU the four trainings run in two spawned processes of one thread each (two cores; a process
trains and samples one model, then the next). ``--quick``: a few steps, 2 videos, 10 sampling steps
(a smoke run, not a measurement).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

import vin
from vin import data, metrics
from vin.train import (
    DIAGNOSTIC_TIMESTEPS,
    TrainSettings,
    data_baselines,
    eval_layout,
    sample_videos,
    train,
    train_layout,
    unconditional_text,
)
from vin.training import predict
from vin_kernels import ChunkLayout

from . import Context

OPT_IN = "it trains four models (25 minutes on 2 cores, measured)"

# model -> (with global tokens, training context (None: the preset's), full attention)
MODELS = {
    "vin": (True, None, False),
    "no_vin": (False, None, False),
    "vin_context_0": (True, 0, False),
    "full_attention": (False, None, True),
}
# variant -> (model, fusion, description)
VARIANTS = {
    "full": ("vin", "early", "VIN, context 4, early fusion (the paper's model)"),
    "no_global": ("no_vin", "early", "without global tokens"),
    "no_fusion": ("vin", "none", "windows never fused, each frame from its owning window"),
    "late_fusion": ("vin", "late", "fusion only in the last t_alpha steps"),
    "context_0": ("vin_context_0", "early", "trained with context 0, chunks of 8 without overlap"),
    "full_attention": ("full_attention", "early", "full attention over the whole video, no VIN (the ceiling)"),
}
DATA_ROW = "data"
TRAIN = TrainSettings()  # python -m vin.train's defaults
EVAL_VIDEOS, EVAL_FRAMES, STRIP_EVERY, STRIP_ZOOM = 8, 96, 6, 4
CURVE_POINTS, CURVE_VIDEOS = 4, 2  # the full-attention model's MAWE during training
METRICS = ("mawe", "warp_error", "motion", "valid_fraction", "drift", "drift_first_last", "chunks_with_objects",
           "cut_rate", "inside_rate", "border_ratio")


def loss_label(model: str) -> str:
    """A model's name in the loss legend: the variants (bars) it is sampled as."""
    return ", ".join(v for v, (m, _, _) in VARIANTS.items() if m == model)


def _model_setup(preset, settings: TrainSettings, model: str):
    with_vin, context, full = MODELS[model]
    if context is not None:
        preset = dataclasses.replace(preset, context=context)
    return preset, dataclasses.replace(settings, with_vin=with_vin, full_attention=full)


def _keyed(errors: dict) -> dict[str, float]:
    """``{t: x0-MSE}`` with string keys (as JSON gives them back)."""
    return {str(t): float(e) for t, e in errors.items()}


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


@torch.no_grad()
def layout_losses(trained, frames: int, seed: int) -> dict:
    """The model's loss (v-MSE) on the same noisy held-out clips at uniform t, through the training layout
    (chunks with context) and through the inference windows (each frame from its owning window)."""
    preset, settings = trained.preset, trained.settings
    clips = data.generate(8, frames, seed=seed + 1, split="eval").video
    generator = torch.Generator().manual_seed(seed)
    t = torch.randint(0, preset.schedule.num_train_steps, (len(clips),), generator=generator)
    noise = torch.randn(clips.shape, generator=generator)
    x_t, target = preset.schedule.add_noise(clips, noise, t), preset.schedule.target(clips, noise, t)
    text = unconditional_text(preset, len(clips))
    out = {}
    for name, layout in (("training", train_layout(preset, settings, frames)), ("windows", preset.window_layout(frames))):
        out[name] = float((predict(trained.model, trained.vin, x_t, t, text, layout) - target).square().mean())
    return out


def _train_and_sample(job: dict) -> dict:
    """Train one model and sample + score each of its variants (runs in a worker process on a CPU)."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    preset, settings = _model_setup(job["preset"], job["settings"], job["model"])
    curve = {}

    def checkpoint(step, model, net_vin):
        if not settings.full_attention:
            return
        layout = ChunkLayout.full(settings.clip_frames)
        generator = torch.Generator().manual_seed(job["sample_seed"])
        videos = vin.sample(model, None, unconditional_text(preset, CURVE_VIDEOS), layout=layout, steps=preset.steps,
                            generator=generator, schedule=preset.schedule)  # fmt: skip
        curve[step] = metrics.evaluate(videos, layout)["mawe"]

    def log(line: str) -> None:  # without a terminal: a line per tenth of the training, not a bar redrawn per step
        print(f"  quality: train {job['model']}: {line}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    trained = train(preset, settings, device=job["device"], progress=job["progress"], desc=f"train {job['model']}",
                    log=None if job["progress"] else log, diagnose=CURVE_POINTS, checkpoint=checkpoint)  # fmt: skip
    result = {"model": job["model"], "losses": trained.losses, "train_seconds": trained.seconds, "threads": trained.threads,
              "diagnostics": trained.diagnostics, "mawe_curve": curve, "variants": {}}  # fmt: skip
    if not settings.full_attention:
        result["layout_losses"] = layout_losses(trained, settings.clip_frames, job["sample_seed"])
    layout = eval_layout(preset, settings, job["frames"])
    # Drift and cuts are measured at chunk borders: one chunk has none, so the full-attention videos are
    # scored at the borders of the full model's windows, as the generated data are.
    scored_at = job["preset"].window_layout(job["frames"]) if settings.full_attention else layout
    for variant in job["variants"]:
        begin = time.perf_counter()
        videos = sample_videos(trained, layout, num_videos=job["videos"], seed=job["sample_seed"], fusion=VARIANTS[variant][1])
        sample_seconds = time.perf_counter() - begin
        result["variants"][variant] = {
            "scores": metrics.evaluate(videos, scored_at),
            "sample_seconds": sample_seconds,
            "layout": repr(layout),
            "strip_video": videos[0].cpu(),
        }
    result["seconds"] = time.perf_counter() - start
    return result


def _label(image: np.ndarray, names: list[str], row_height: int, margin: int) -> np.ndarray:
    """The strip with each row's name written in a white margin on its left."""
    import cv2

    labelled = np.full((image.shape[0], image.shape[1] + margin, 3), 255, np.uint8)
    labelled[:, margin:] = image
    for i, name in enumerate(names):
        y = i * row_height + row_height // 2 + 4
        cv2.putText(labelled, name, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return labelled


def _strip_png(videos: dict[str, torch.Tensor], every: int) -> tuple[str, list[int]]:
    """Rows of frames ``0, every, 2*every, ...`` of one video per row, zoomed :data:`STRIP_ZOOM` x, each
    row labelled with its variant on the left; base64 PNG."""
    import cv2

    frames = list(range(0, next(iter(videos.values())).shape[0], every))
    rows = [np.concatenate(list(data.to_rgb(v[frames])), axis=1) for v in videos.values()]
    image = np.concatenate(rows, axis=0)
    image = cv2.resize(image, None, fx=STRIP_ZOOM, fy=STRIP_ZOOM, interpolation=cv2.INTER_NEAREST)
    image = _label(image, list(videos), image.shape[0] // len(rows), margin=110)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok, "cv2.imencode failed"
    return base64.b64encode(png.tobytes()).decode("ascii"), frames


def run(ctx: Context) -> dict:
    start = time.perf_counter()
    preset = vin.presets.quality()
    settings, videos, frames = TRAIN, EVAL_VIDEOS, EVAL_FRAMES
    if ctx.quick:
        preset = dataclasses.replace(preset, steps=10, t_alpha=4)
        settings, videos = dataclasses.replace(TRAIN, steps=8, warmup=2), 2
    cpu = ctx.device.type == "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(2, cores) if cpu else 1
    jobs = [
        {"model": model, "preset": preset, "settings": settings, "device": str(ctx.device), "frames": frames,
         "videos": videos, "sample_seed": 1, "threads": max(1, cores // workers) if cpu else 0,
         "progress": sys.stderr.isatty(), "variants": [v for v, (m, _, _) in VARIANTS.items() if m == model]}
        for model in ("vin", "full_attention", "no_vin", "vin_context_0")  # the longest first: two workers finish together
    ]  # fmt: skip
    reference = data.generate(videos, frames, seed=settings.seed, split="eval")
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_train_and_sample, job) for job in jobs]
            data_scores = metrics.evaluate(reference.video, preset.window_layout(frames))
            baselines = data_baselines(data.SceneConfig())
            results = [f.result() for f in ctx.progress(futures, desc="quality: 4 models on 2 processes")]
    else:
        results = [_train_and_sample(job) for job in ctx.progress(jobs, desc="quality")]
        data_scores = metrics.evaluate(reference.video, preset.window_layout(frames))
        baselines = data_baselines(data.SceneConfig())

    by_model = {r["model"]: r for r in results}
    rows = [{"variant": DATA_ROW, "description": "generated ground-truth videos (eval split)",
             "layout": repr(preset.window_layout(frames)), **_summarize(data_scores)}]  # fmt: skip
    strip = {DATA_ROW: reference.video[0]}
    for variant, (model, fusion, description) in VARIANTS.items():
        trained, sampled = by_model[model], by_model[model]["variants"][variant]
        with_vin, context, full = MODELS[model]
        tail = trained["losses"][-100:]
        last = max(trained["diagnostics"])  # the last diagnosed step
        rows.append({
            "variant": variant, "description": description, "model": model, "fusion": None if full else fusion,
            "with_vin": with_vin, "context": None if full else (preset.context if context is None else context),
            "layout": sampled["layout"], "train_steps": settings.steps, "final_loss": sum(tail) / len(tail),
            "x0_mse": _keyed(trained["diagnostics"][last]), "train_seconds": trained["train_seconds"],
            "train_threads": trained["threads"], "sample_seconds": sampled["sample_seconds"],
            **_summarize(sampled["scores"]),
        })  # fmt: skip
        strip[variant] = sampled["strip_video"]
    png, strip_frames = _strip_png(strip, STRIP_EVERY)
    by_variant = {r["variant"]: r for r in rows}
    return {
        "preset": "quality" + (" (quick)" if ctx.quick else ""),
        "prediction": preset.prediction,
        "train": dataclasses.asdict(settings),
        "eval": {"videos": videos, "frames": frames, "sampling_steps": preset.steps, "t_alpha": preset.t_alpha,
                 "flow": "OpenCV Farneback on the RGB images of the latent frames, 4x upsampled"},  # fmt: skip
        "threads": {"parallel_processes": workers, "per_process": results[0]["threads"]},
        "total_seconds": time.perf_counter() - start,
        "rows": rows,
        "directions": directions(by_variant),
        "diagnostics": {
            "timesteps": list(DIAGNOSTIC_TIMESTEPS),
            "baselines": {"best_linear": _keyed(baselines["linear"]), "data_mean": _keyed(baselines["mean"])},
            "models": {loss_label(m): {str(s): _keyed(e) for s, e in r["diagnostics"].items()} for m, r in by_model.items()},
        },
        "full_attention_mawe_curve": {"frames": settings.clip_frames, "videos": CURVE_VIDEOS,
                                      "mawe": {str(s): m for s, m in by_model["full_attention"]["mawe_curve"].items()}},
        "layout_losses": {loss_label(m): r["layout_losses"] for m, r in by_model.items() if "layout_losses" in r},
        "process_seconds": {m: r["seconds"] for m, r in by_model.items()},
        "losses": {loss_label(m): _smooth(r["losses"]) for m, r in by_model.items()},
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
    and no overlap at all, a setting the paper does not ablate) is reported beside them, and
    ``full_attention`` is the ceiling: how close the full model comes to it.
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
        "full_below_twice_data_mawe": None if rows["full"]["mawe"] is None else rows["full"]["mawe"] <= 2 * rows[DATA_ROW]["mawe"],
        "full_attention_below_twice_data_mawe": None if rows["full_attention"]["mawe"] is None
        else rows["full_attention"]["mawe"] <= 2 * rows[DATA_ROW]["mawe"],
    }  # fmt: skip


def _fmt(value, sem=None, digits=2):
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text + (f" ± {sem:.{digits}f}" if sem is not None else "")


def _yes(flag) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def markdown(result: dict) -> str:
    train, ev = result["train"], result["eval"]
    lines = [
        f"The {result['preset']} preset ({result.get('prediction', 'epsilon')} prediction) trained {train['steps']} steps "
        f"(batch {train['batch']} clips of {train['clip_frames']} latent frames, EMA {train.get('ema', 0)}, seed "
        f"{train['seed']}) per model; {ev['videos']} sampled videos of {ev['frames']} latent frames per variant "
        f"({ev['sampling_steps']} DDIM steps, t_alpha {ev['t_alpha']}); mean ± standard error over the videos. MAWE: "
        f"{ev['flow']} (lower is better; *motion* in latent px per latent frame: a frozen video has MAWE 0). Drift: "
        f"object-colour Chamfer distance between consecutive chunks (*first-last*: first vs last chunk). Cuts: fraction "
        f"of chunk borders with a spike of the difference between consecutive latent frames (*inside*: spikes inside "
        f"chunks). *x0-MSE*: the x0 error the model implies on held-out clips noised at t = 200 / 500 / 900. Whole run: "
        f"{result['total_seconds'] / 60:.0f} min, {result['threads']['parallel_processes']} process(es) x "
        f"{result['threads']['per_process']} thread(s).",
        "",
        "| variant | MAWE ↓ | motion | drift ↓ | drift first-last ↓ | cuts ↓ | cuts inside | x0-MSE t=200/500/900 | final loss | train s | sample s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        x0 = r.get("x0_mse")
        x0_cell = " / ".join(f"{e:.3f}" for e in x0.values()) if x0 else "-"
        lines.append(
            f"| {r['variant']} | {_fmt(r['mawe'], r['mawe_sem'])} | {_fmt(r['motion'])} | "
            f"{_fmt(r['drift'], r['drift_sem'], 3)} | {_fmt(r['drift_first_last'], r['drift_first_last_sem'], 3)} | "
            f"{_fmt(r['cut_rate'], r['cut_rate_sem'])} | {_fmt(r['inside_rate'])} | {x0_cell} | "
            f"{_fmt(r.get('final_loss'), digits=4)} | {_fmt(r.get('train_seconds'), digits=0)} | "
            f"{_fmt(r.get('sample_seconds'), digits=0)} |"
        )
    d = directions({r["variant"]: r for r in result["rows"]})
    lines += [
        "",
        "Paper directions, over its ablation variants (no_global, no_fusion, late_fusion): removing the global "
        f"tokens hurts MAWE the most — **{_yes(d['no_global_hurts_mawe_most'])}** (worst: {d['worst_mawe']}; "
        f"with context_0 too: {d['worst_mawe_with_context_0']}); hurts identity drift the most — "
        f"**{_yes(d['no_global_hurts_drift_most'])}** (worst: {d['worst_drift']}); early fusion has fewer "
        f"scene cuts than late fusion — **{_yes(d['early_fewer_cuts_than_late'])}**, than no fusion — "
        f"**{_yes(d['early_fewer_cuts_than_none'])}**. MAWE within 2x the data's: full attention "
        f"**{_yes(d['full_attention_below_twice_data_mawe'])}**, full **{_yes(d['full_below_twice_data_mawe'])}**.",
    ]
    diag = result.get("diagnostics")
    if diag:
        ts = diag["timesteps"]
        lines += ["", "Denoising diagnostic (x0-MSE on held-out clips) during training, against two denoisers that know "
                  "only the data's first two moments:", "",
                  "| model | step | " + " | ".join(f"t={t}" for t in ts) + " |", "| --- | ---: |" + " ---: |" * len(ts)]  # fmt: skip
        for name, key in (("best linear (Wiener) denoiser", "best_linear"), ("data mean", "data_mean")):
            lines.append(f"| {name} | - | " + " | ".join(f"{diag['baselines'][key][str(t)]:.4f}" for t in ts) + " |")
        for name, points in diag["models"].items():
            for step, errors in points.items():
                lines.append(f"| {name} | {step} | " + " | ".join(f"{errors[str(t)]:.4f}" for t in ts) + " |")
    curve = result.get("full_attention_mawe_curve")
    if curve and curve["mawe"]:
        points = ", ".join(f"step {s}: {m:.2f}" for s, m in curve["mawe"].items())
        lines += ["", f"Full-attention MAWE during training ({curve['videos']} videos of {curve['frames']} latent frames): {points}."]
    layout_losses = result.get("layout_losses")
    if layout_losses:
        parts = "; ".join(f"{name}: {v['training']:.4f} through the training chunks, {v['windows']:.4f} through the "
                          "inference windows" for name, v in layout_losses.items())  # fmt: skip
        lines += ["", f"Loss of the chunked models on the same noisy held-out clips (uniform t): {parts}."]
    return "\n".join(lines)


def headline(result: dict) -> list[str]:
    rows = {r["variant"]: r for r in result["rows"]}
    return [
        f"MAWE: data {_fmt(rows[DATA_ROW]['mawe'])}, full attention {_fmt(rows['full_attention']['mawe'])}, "
        f"full (VIN) {_fmt(rows['full']['mawe'])}, no_global {_fmt(rows['no_global']['mawe'])} "
        f"({result['total_seconds'] / 60:.0f} min)"
    ]


def files(result: dict, out, stem: str) -> list:
    """The frame strip: one row per variant, labelled on the left (the first row: a generated ground-truth
    video), frames 0, 6, 12, ... of the first evaluation video, each latent pixel drawn as a 4x4 block,
    ``<stem>-strip.png``."""
    path = out / f"{stem}-strip.png"
    path.write_bytes(base64.b64decode(result["strip"]["png_base64"]))
    return [path]
