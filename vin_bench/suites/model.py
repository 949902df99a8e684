"""model suite: one denoising step and a full sample, VIN vs full attention, as videos grow.

GPU: the paper preset with random bf16 weights at 256 and 1024 video frames (``--full``: 64 to 1024,
or the ``--frames`` lengths; a mode stops at its first out-of-memory): median step latency, peak
memory (``torch.cuda.max_memory_allocated`` and NVML's device memory), mean power and SM clock while
stepping (nvidia-ml-py), and (``--full``) the latency of one whole 50-step sample for videos up to
``SAMPLE_MAX_FRAMES`` frames.

CPU: the ``cpu`` preset (fp32, random weights) at 256 and 512 video frames (80 and 160 latent
frames; ``--full``: 64 to 512; or the ``--frames`` lengths, at most :data:`CPU_MAX_VIDEO_FRAMES_GIVEN`):
the median of 3 steps (``--full``: 5) after a warm-up, the modes of a length timed in alternation
(rounds of one step per mode: load from other work hits all alike), the step time per latent frame,
and the peak resident memory above the pre-step level (sampled every 5 ms from /proc/self/statm). Full attention
runs on the same ``sdpa`` backend, the fastest CPU path. ``--quick`` on a CPU: the tiny preset at two
lengths, latency only.

Training (``--full``, any device): one step of :func:`vin.training_loss` and its backward at
:data:`TRAIN_VIDEO_FRAMES` video frames, the training layout with the VIN against full attention
without it (the same DiT, ``layout=None``), timed in alternation like the CPU steps, beside
:func:`vin.flops.training_step_flops`.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import torch

import vin
from vin_kernels import ChunkLayout

from ..timing import measure, summary, sync
from . import Context, latent_frames, layout_definitions, mode_caption, ratio_cell
from .flops import max_video_frames as flops_max_video_frames
from .flops import wins_from

MODES = ("full", "vin_context", "vin_windows")
SAMPLE_MAX_FRAMES = 256  # whole 50-step samples above this take minutes per mode (GPU)
GPU_DEFAULT_VIDEO_FRAMES = (256, 1024)
CPU_DEFAULT_VIDEO_FRAMES = (256, 512)  # the default run: 80 and 160 latent frames
CPU_FULL_VIDEO_FRAMES = (64, 128, 256, 512)  # --full; a full-attention step at 512 takes ~5 s (2 cores)
# The longest --frames length on a CPU: a full-attention step at 1024 video frames (320 latent) is
# about 4x the 5 s measured at 512, so 6 steps per mode and the memory pass take minutes.
CPU_MAX_VIDEO_FRAMES_GIVEN = 1024
TRAIN_VIDEO_FRAMES = 256  # --full: a training step at 80 latent frames (cpu preset: ~2 s fwd+bwd with full attention, 2 cores)
TRAIN_MODES = ("full", "vin_context")


def supported(device: torch.device) -> bool:
    """Runs on any device: the paper preset on a GPU, the cpu preset on a CPU."""
    return True


def max_video_frames(device: torch.device) -> int:
    """The longest ``--frames`` length the suite takes (a GPU stops each mode at its first out-of-memory)."""
    return flops_max_video_frames(device) if device.type == "cuda" else CPU_MAX_VIDEO_FRAMES_GIVEN


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class RssSampler:
    """Peak resident set size above the level at entry, sampled every ``interval`` s (Linux /proc).

    glibc keeps freed heap memory resident, so a mode measured after a bigger one would show no
    growth. :meth:`track_live_memory` makes every allocation of 1 MiB or more an mmap that is
    returned on free (measured: a 256 MiB tensor raises RSS by 256 MiB, its deletion lowers it back),
    and each measurement starts from ``malloc_trim(0)``.
    """

    M_MMAP_THRESHOLD = -3

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, 0

    @classmethod
    def track_live_memory(cls) -> bool:
        libc = _glibc()
        return bool(libc and libc.mallopt(cls.M_MMAP_THRESHOLD, 1 << 20))

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)
        self.base = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class NvmlSampler:
    """Samples device memory used, power and SM clock every ``interval`` s in a background thread."""

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.interval = interval
        self.samples: list[tuple[int, float, float]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception:  # noqa: BLE001 - no NVML: the fields stay empty
            self._nvml = None

    def __enter__(self):
        if self._nvml is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        nvml, handle = self._nvml, self._handle
        while not self._stop.is_set():
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).used
            power = nvml.nvmlDeviceGetPowerUsage(handle) / 1e3
            clock = nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
            self.samples.append((memory, power, clock))
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self._nvml is not None:
            self._stop.set()
            self._thread.join()

    def report(self) -> dict:
        if not self.samples:
            return {}
        memory, power, clock = zip(*self.samples)
        return {
            "nvml_peak_memory_bytes": max(memory),
            "mean_power_w": sum(power) / len(power),
            "mean_sm_clock_mhz": sum(clock) / len(clock),
            "nvml_samples": len(self.samples),
        }


def _setup(preset, mode: str, frames: int):
    if mode == "full":
        return ChunkLayout.full(frames), False
    return (preset.context_layout(frames) if mode == "vin_context" else preset.window_layout(frames)), True


def _step(preset, model, net_vin, mode: str, frames: int, device, bar=None):
    """``(step, layout, with_vin, text)``: one DDIM step of ``mode`` on a random ``frames``-frame video."""
    layout, with_vin = _setup(preset, mode, frames)
    dit = preset.dit
    text = torch.randn(1, dit.text_len, dit.text_dim, device=device)
    state = torch.randn(1, frames, dit.in_channels, dit.height, dit.width, device=device)
    if layout.is_windows:
        state = layout.cut_windows(state)  # the sampler's state of a window layout
    schedule = vin.DiffusionSchedule()
    step_vin = net_vin if with_vin else None

    def step():
        out = vin.sampling.denoise_step(model, step_vin, state, text, 980, 960, layout, fuse=layout.is_windows, schedule=schedule)
        if bar is not None:
            bar.update()
        return out

    return step, layout, with_vin, text


def _train_step(preset, model, net_vin, mode: str, frames: int, device, bar=None):
    """One training step of ``mode`` (loss and backward, gradients dropped) on a random video."""
    dit = preset.dit
    generator = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(1, frames, dit.in_channels, dit.height, dit.width, device=device, generator=generator)
    text = torch.randn(1, dit.text_len, dit.text_dim, device=device, generator=generator)
    layout, step_vin = (None, None) if mode == "full" else (preset.train_layout(frames), net_vin)
    params = [p for net in (model, step_vin) if net is not None for p in net.parameters()]

    def step():
        loss = vin.training_loss(model, step_vin, x0, text, layout, generator)
        torch.autograd.grad(loss, params)
        if bar is not None:
            bar.update()

    return step, layout, step_vin is not None


def _alternated(ctx: Context, steps: dict) -> dict[str, list[float]]:
    """Times (ms) of each ``steps[mode]()``: every mode's warm-up, then rounds of one call per mode, so
    that other work on a shared machine slows the modes of a round alike and their ratios stay comparable."""
    warmup, iters = _iterations(ctx)
    for step in steps.values():
        measure(step, ctx.device, warmup=warmup, iters=0)
    times = {mode: [] for mode in steps}
    for _ in range(iters):
        for mode, step in steps.items():
            times[mode] += measure(step, ctx.device, warmup=0, iters=1)
    return times


def _measure_training(ctx: Context, preset, model, net_vin, bar=None) -> list[dict]:
    """``--full``: a training step of each of :data:`TRAIN_MODES` at :data:`TRAIN_VIDEO_FRAMES`, timed in
    alternation (each mode's warm-up, then rounds of one step per mode); ratios to full attention's."""
    frames = latent_frames(TRAIN_VIDEO_FRAMES)
    prepared = {mode: _train_step(preset, model, net_vin, mode, frames, ctx.device, bar) for mode in TRAIN_MODES}
    times = _alternated(ctx, {mode: p[0] for mode, p in prepared.items()})
    rows = []
    for mode in TRAIN_MODES:
        _, layout, with_vin = prepared[mode]
        flops = vin.flops.training_step_flops(preset, frames, layout, with_vin=with_vin).total
        rows.append({"mode": mode, "video_frames": TRAIN_VIDEO_FRAMES, "latent_frames": frames, "layout": repr(layout),
                     "flops_per_step": flops, "step_times_ms": times[mode], **{f"step_{k}": v for k, v in summary(times[mode]).items()}})
    full = rows[0]
    for r in rows[1:]:
        r["time_ratio_to_full"] = r["step_median_ms"] / full["step_median_ms"]
        r["flop_ratio_to_full"] = r["flops_per_step"] / full["flops_per_step"]
    return rows


def _iterations(ctx: Context) -> tuple[int, int]:
    """``(warm-up, timed)`` steps per mode and length."""
    if ctx.device.type == "cuda":
        return (1, 3) if ctx.quick else (2, 10)
    return (1, 3) if ctx.quick or not ctx.full else (1, 5)


def _sample_steps(ctx: Context, preset) -> int:
    """Steps of a whole sample: the preset's (50); 4 in a ``--quick`` run (a smoke test of the path)."""
    return 4 if ctx.quick else preset.steps


def _row(ctx: Context, preset, model, net_vin, mode: str, video_frames: int, prepared, times: list[float], sample: bool, bar=None) -> dict:
    """The row of one mode and length from its step times (ms); a whole sample too when ``sample``."""
    device = ctx.device
    frames = latent_frames(video_frames)
    step, layout, with_vin, text = prepared
    step_vin = net_vin if with_vin else None
    row = {"mode": mode, "video_frames": video_frames, "latent_frames": frames, "layout": repr(layout)}
    row["flops_per_step"] = vin.flops.step_flops(preset, frames, None if mode == "full" else layout, with_vin=with_vin).total
    row |= {"step_times_ms": times, **{f"step_{k}": v for k, v in summary(times).items()}}
    row["step_ms_per_latent_frame"] = row["step_median_ms"] / frames
    if sample:
        generator = torch.Generator(device=device).manual_seed(0)
        sync(device)
        start = time.perf_counter()
        steps = _sample_steps(ctx, preset)
        vin.sample(model, step_vin, text, layout=layout, steps=steps, t_alpha=min(preset.t_alpha, steps // 2), generator=generator)
        sync(device)
        row["sample_seconds"] = time.perf_counter() - start
        if bar is not None:
            bar.update(steps)
        row["sample_steps"] = steps
    return row


def _measure_mode(ctx: Context, preset, model, net_vin, mode: str, video_frames: int, sample: bool, bar=None) -> dict:
    """GPU: one mode at one length (CUDA events, L2 flushed), with peak memory, power and clock."""
    device = ctx.device
    prepared = _step(preset, model, net_vin, mode, latent_frames(video_frames), device, bar)
    torch.cuda.reset_peak_memory_stats(device)
    warmup, iters = _iterations(ctx)
    with NvmlSampler(device) as sampler:
        times = measure(prepared[0], device, warmup=warmup, iters=iters)
    row = _row(ctx, preset, model, net_vin, mode, video_frames, prepared, times, sample, bar)
    row["peak_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    row |= sampler.report()
    row["step_tflops"] = row["flops_per_step"] / (row["step_median_ms"] * 1e-3) / 1e12
    return row


def _measure_length(ctx: Context, preset, model, net_vin, video_frames: int, sample: bool, bar=None) -> list[dict]:
    """CPU: every mode at one length, timed in alternation (each mode's warm-up, then rounds of one
    step per mode), so that other work on a shared machine slows all modes of a round alike and the
    ratios to full attention stay comparable."""
    frames = latent_frames(video_frames)
    prepared = {mode: _step(preset, model, net_vin, mode, frames, ctx.device, bar) for mode in MODES}
    times = _alternated(ctx, {mode: p[0] for mode, p in prepared.items()})
    return [_row(ctx, preset, model, net_vin, mode, video_frames, prepared[mode], times[mode], sample, bar) for mode in MODES]


def _frame_lengths(ctx: Context, gpu: bool) -> tuple[int, ...]:
    if ctx.quick:
        short = tuple(f for f in ctx.video_frames if f <= 128) or ctx.video_frames[:1]
        return short if gpu else short[:2]
    if ctx.frames_given:
        return ctx.video_frames
    if gpu:
        return ctx.video_frames if ctx.full else GPU_DEFAULT_VIDEO_FRAMES
    return CPU_FULL_VIDEO_FRAMES if ctx.full else CPU_DEFAULT_VIDEO_FRAMES


def _flop_ratios(rows: list[dict]) -> None:
    """Per VIN row: its step time and FLOPs as fractions of full attention's at the same length."""
    full = {r["video_frames"]: r for r in rows if r["mode"] == "full" and "step_median_ms" in r}
    for r in rows:
        if r["mode"] != "full" and "step_median_ms" in r and r["video_frames"] in full:
            base = full[r["video_frames"]]
            r["time_ratio_to_full"] = r["step_median_ms"] / base["step_median_ms"]
            r["flop_ratio_to_full"] = r["flops_per_step"] / base["flops_per_step"]


def run(ctx: Context) -> dict:
    device = ctx.device
    gpu = device.type == "cuda"
    name = "paper" if gpu else ("tiny" if ctx.quick else "cpu")
    preset = getattr(vin.presets, name)()
    model, net_vin = preset.build(device=device, dtype=torch.bfloat16 if gpu else None)
    model.eval()
    net_vin.eval()
    rows, stopped = [], set()
    items = [(f, mode) for f in _frame_lengths(ctx, gpu) for mode in MODES]
    warmup, iters = _iterations(ctx)
    samples = {f: gpu and f <= SAMPLE_MAX_FRAMES and ctx.full and not ctx.quick or not gpu and ctx.quick for f, _ in items}
    # One count per denoising step: warm-up and timed steps, whole samples, and (CPU) the memory pass.
    train = ctx.full and not ctx.quick
    total = len(items) * (warmup + iters + (0 if gpu else 1)) + sum(_sample_steps(ctx, preset) for f, _ in items if samples[f])
    total += len(TRAIN_MODES) * (warmup + iters) if train else 0
    with ctx.progress.bar(total, desc=f"model: {name} preset, denoising steps") as bar:
        for video_frames in dict.fromkeys(f for f, _ in items):
            if not gpu:
                rows += _measure_length(ctx, preset, model, net_vin, video_frames, samples[video_frames], bar)
                continue
            for mode in MODES:
                if mode in stopped:
                    continue
                try:
                    rows.append(_measure_mode(ctx, preset, model, net_vin, mode, video_frames, samples[video_frames], bar))
                except torch.cuda.OutOfMemoryError:
                    rows.append({"mode": mode, "video_frames": video_frames, "error": "out of memory"})
                    stopped.add(mode)
                torch.cuda.empty_cache()
        _flop_ratios(rows)
        training = _measure_training(ctx, preset, model, net_vin, bar) if train else []
        live_memory = not gpu and _cpu_memory(preset, model, net_vin, rows, bar)  # last: it makes glibc mmap large blocks
    return {
        "preset": name, "dtype": "bfloat16" if gpu else "float32", "steps": preset.steps, "iterations": [warmup, iters],
        "threads": torch.get_num_threads(), "device_kind": device.type, "rss_tracks_live_memory": live_memory,
        "definitions": layout_definitions(preset), "mode_caption": mode_caption(preset), "wins_from_video_frames": {m: wins_from(preset, m) for m in MODES[1:]},
        "full": ctx.full, "rows": rows, "training": training,
    }  # fmt: skip


def _cpu_memory(preset, model, net_vin, rows: list[dict], bar=None) -> bool:
    """After all timings (mmapping every large allocation slows a step down ~2.5x): one step per row
    under :class:`RssSampler`, its peak RSS growth into ``peak_rss_growth_bytes``. False when glibc's
    mallopt is unavailable (the growth then undercounts what earlier steps left in the heap)."""
    live = RssSampler.track_live_memory()
    device = torch.device("cpu")
    for row in rows:
        if "step_median_ms" in row:
            step = _step(preset, model, net_vin, row["mode"], row["latent_frames"], device, bar)[0]
            with RssSampler() as sampler:
                step()
            row["peak_rss_growth_bytes"] = sampler.peak
    return live


def _definitions(result: dict) -> list[str]:
    """The modes' definitions and from which length they need fewer FLOPs (results of older runs lack them)."""
    if "definitions" not in result:
        return []
    wins = "; ".join(
        f"*{m}* from {f} video frames ({latent_frames(f)} latent) on" if f else f"*{m}* at no length scanned"
        for m, f in result["wins_from_video_frames"].items()
    )
    return ["", f"{result['definitions']} Fewer FLOPs per step than full attention (`vin.flops`, this preset): {wins}."]


def headline(result: dict) -> list[str]:
    """The summary line: per VIN mode, its step time and FLOPs against full attention's at every length."""
    rows = [r for r in result["rows"] if "time_ratio_to_full" in r]
    if not rows:
        return []
    lengths = sorted({r["video_frames"] for r in rows})
    modes = {m: {r["video_frames"]: r for r in rows if r["mode"] == m} for m in dict.fromkeys(r["mode"] for r in rows)}
    parts = [
        f"{mode} " + " / ".join(f"{by[f]['time_ratio_to_full']:.2f}x ({by[f]['flop_ratio_to_full']:.2f}x)" if f in by else "-" for f in lengths)
        for mode, by in modes.items()
    ]
    line = (f"{result['preset']} preset, one denoising step, time of full attention's (FLOPs) at "
            f"{' / '.join(map(str, lengths))} video frames: {'; '.join(parts)}")
    line += "".join(f"; a training step at {r['video_frames']} video frames: {r['mode']} {r['time_ratio_to_full']:.2f}x "
                    f"({r['flop_ratio_to_full']:.2f}x)" for r in result.get("training", []) if "time_ratio_to_full" in r)
    return [line]


def training_markdown(result: dict) -> list[str]:
    """The training-step table (``--full``), or nothing."""
    rows = result.get("training", [])
    if not rows:
        return []
    lines = ["", f"One training step (`vin.training_loss` and its backward, batch 1, median of {len(rows[0]['step_times_ms'])} "
             "alternated steps after a warm-up): *vin_context* trains chunks with context and the VIN, *full* the same "
             "DiT with full attention and no VIN. FLOPs: `vin.flops.training_step_flops`.", "",
             "| video frames | latent frames | mode | step ms | time / full | FLOPs / full |", "| ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        flops = f"{r['flop_ratio_to_full']:.2f}" if "flop_ratio_to_full" in r else "-"
        lines.append(f"| {r['video_frames']} | {r['latent_frames']} | {r['mode']} | {r['step_median_ms']:.0f} "
                     f"[{r['step_p20_ms']:.0f}-{r['step_p80_ms']:.0f}] | {ratio_cell(r.get('time_ratio_to_full')) or '-'} | {flops} |")
    return lines


def markdown(result: dict) -> str:
    if result.get("device_kind", "cuda") != "cuda":
        return _cpu_markdown(result)
    lines = [
        f"One DDIM step (median) and one whole {result['steps']}-step sample of the {result['preset']} preset "
        f"({result['dtype']}, random weights, batch 1); memory is the peak while stepping.",
        *_definitions(result),
        "",
        "| video frames | mode | step ms | time / full | FLOPs / full | TFLOP/s | sample s | peak alloc GiB | NVML peak GiB | power W | SM MHz |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def fmt(value, scale=1.0, digits=1):
        return "-" if value is None else f"{value / scale:.{digits}f}"

    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['video_frames']} | {r['mode']} | {r['error']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['video_frames']} | {r['mode']} | {fmt(r['step_median_ms'])} | {ratio_cell(r.get('time_ratio_to_full'))} | "
            f"{fmt(r.get('flop_ratio_to_full'), digits=2)} | {fmt(r.get('step_tflops'))} | "
            f"{fmt(r.get('sample_seconds'), digits=2)} | {fmt(r.get('peak_memory_allocated_bytes'), 2**30, 2)} | "
            f"{fmt(r.get('nvml_peak_memory_bytes'), 2**30, 2)} | {fmt(r.get('mean_power_w'), digits=0)} | "
            f"{fmt(r.get('mean_sm_clock_mhz'), digits=0)} |"
        )
    return "\n".join(lines + training_markdown(result))


def _cpu_markdown(result: dict) -> str:
    runs = max((len(r["step_times_ms"]) for r in result["rows"] if "step_times_ms" in r), default=0)
    lines = [
        f"One DDIM step of the {result['preset']} preset on a CPU ({result['dtype']}, random weights, batch 1, "
        f"{result['threads']} threads): median wall-clock ms of {runs} steps after a warm-up, the modes of a length "
        "alternated step by step (p20-p80 in brackets), "
        "the same per latent frame, and the peak resident memory above the pre-step level (allocations of 1 MiB "
        "and more mmapped, so freed memory leaves the resident set). *time / full* and "
        "*FLOPs / full* compare with full attention at the same length (full attention: the same DiT with one "
        "chunk and no VIN, on the same sdpa backend); **bold**: below 1, faster than full attention.",
        *_definitions(result),
        "",
        "| video frames | latent frames | mode | step ms | ms per latent frame | time / full | FLOPs / full | peak RSS growth MiB |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['video_frames']} | | {r['mode']} | {r['error']} | | | | |")
            continue
        time_ratio = ratio_cell(r["time_ratio_to_full"]) if "time_ratio_to_full" in r else "-"
        flop_ratio = f"{r['flop_ratio_to_full']:.2f}" if "flop_ratio_to_full" in r else "-"
        rss = f"{r['peak_rss_growth_bytes'] / 2**20:.0f}" if "peak_rss_growth_bytes" in r else "-"
        lines.append(
            f"| {r['video_frames']} | {r['latent_frames']} | {r['mode']} | "
            f"{r['step_median_ms']:.0f} [{r['step_p20_ms']:.0f}-{r['step_p80_ms']:.0f}] | "
            f"{r['step_ms_per_latent_frame']:.1f} | {time_ratio} | {flop_ratio} | {rss} |"
        )
    return "\n".join(lines + training_markdown(result))
