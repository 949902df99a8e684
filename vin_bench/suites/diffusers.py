"""diffusers suite (opt-in: ``python -m bench --suite diffusers``): what chunked attention buys a Wan model.

A diffusers ``WanTransformer3DModel`` with Wan 2.1 T2V 1.3B's shape (:data:`WAN_2_1_1_3B`: hidden 1536,
12 heads of 128, FFN 8960, 512 text tokens of 4096 channels, patch 1x2x2; random fp32 weights) but
``--wan-layers`` blocks (default 2 of the model's 30: every per-block cost, time, FLOPs and memory
alike, scales linearly with the blocks; the embeddings and the output projection are once per step),
at a CPU-feasible latent size (``--wan-latent-size``, default 16x28 latent pixels = 128x224 video
pixels = 8x14 tokens per latent frame, the aspect of Wan's 480x832). One transformer forward (a
denoising step without classifier-free guidance, batch 1, under ``no_grad``) at 1x, 2x and 4x the
native length (81, 161, 321 video frames = 21, 41, 81 latent frames), three ways:

* ``stock``: the unmodified model (diffusers' Wan processor, full attention by SDPA);
* ``chunked``: :func:`vin.diffusers.chunked_attention` with chunk 13 and context 8 latent frames,
  i.e. LongVideo's window (21) and overlap (8): every query sees at most 21 latent frames, what the
  model was trained on, and the chunk grid is the window stride;
* ``long_video``: :class:`vin.diffusers.LongVideo` with windows of 21 overlapping by 8, all windows
  in one batched forward, blended by ``overlap_fuse`` (at 1x the video fits one window and passes
  through: the stock model, not measured again).

Per row: the median of 5 steps after a warm-up, wall clock, the modes of a length taking
turns step by step (a burst of load on a shared machine hits all of them; time ratios are the median
of the turns' ratios; the load average at each length's start is recorded); the peak resident memory
above the pre-step level (:class:`vin_bench.suites.model.RssSampler`) of a step in a fresh process
per row (:func:`memory_of_a_step`); FLOPs per step counted
analytically (:func:`wan_step_flops`: every matrix product as ``2*M*K*N``, the attention products
with :mod:`vin_kernels.flops`) and cross-checked against ``torch.utils.flop_counter.FlopCounterMode``
on the meta device (SDPA forced to its math path, whose matrix products it counts); and the
self-attention share of the step: of its FLOPs, and of its time (the self-attention op alone on
tensors of the step's shapes right after each timed step, times the blocks, over that step's time;
the median over the steps). The FLOP model also gives every mode at the real model's size (30
blocks, 480x832: 1560 tokens per latent frame), where stock attention at 4x (126k tokens) would take
hours on this CPU (2.9 PFLOP of self-attention per step).
``--quick``: 1 block at 4x8 latent pixels, 1x and 2x, one timed step (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics

import torch
import torch.nn.functional as F

import vin_kernels
from vin_kernels import ChunkLayout
from vin_kernels.flops import chunk_attention_flops, global_attention_flops

from ..timing import measure, summary
from . import Context
from .model import RssSampler

OPT_IN = "a Wan 2.1 1.3B-shaped transformer at 1x, 2x and 4x its native length (11 minutes on 2 cores, measured)"

# diffusers' config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers but the block count (num_layers=30 there)
WAN_2_1_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024,
)  # fmt: skip
WAN_LAYERS = 30
TEXT_LEN = 512  # umT5 tokens Wan's pipeline pads every prompt to
NATIVE_VIDEO_FRAMES = 81  # Wan 2.1's length: 21 latent frames (its VAE: 4k + 1 video frames -> k + 1)
NATIVE_PIXELS = (480, 832)
VAE_STRIDE = (4, 8, 8)
WINDOW, OVERLAP = 21, 8  # LongVideo: the native length, overlapping by 8 latent frames (~2 s of video)
CHUNK, CONTEXT = WINDOW - OVERLAP, OVERLAP  # chunked_attention with the same key span and grid
MULTIPLES = (1, 2, 4)
MODES = ("stock", "chunked", "long_video")
DEFAULT_LAYERS, DEFAULT_LATENT_SIZE = 2, (16, 28)
QUICK_LAYERS, QUICK_LATENT_SIZE = 1, (4, 8)
# Warm-up and timed steps per mode and length: 5 turns, so that the medians leave out two turns a
# burst of load on the shared machine slowed (the fifth run's 4x turns with 3: 2 of 3 disturbed).
WARMUP, TIMED = 1, 5


def add_arguments(group) -> None:
    group.add_argument(
        "--wan-layers", type=_layers, default=DEFAULT_LAYERS, metavar="N",
        help=f"blocks of the Wan-shaped model (default {DEFAULT_LAYERS}; the 1.3B model has {WAN_LAYERS}; "
        "per-block costs scale linearly)",
    )  # fmt: skip
    group.add_argument(
        "--wan-latent-size", type=_latent_size, default=DEFAULT_LATENT_SIZE, metavar="HxW",
        help="latent height x width, even (default 16x28 = 128x224 pixels; Wan's native 480x832 is 60x104)",
    )  # fmt: skip


def _layers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--wan-layers takes an integer, got {text!r}") from None
    if not 1 <= value <= WAN_LAYERS:
        raise argparse.ArgumentTypeError(f"--wan-layers must be 1..{WAN_LAYERS}, got {value}")
    return value


def _latent_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--wan-latent-size takes HxW latent pixels (e.g. 16x28), got {text!r}") from None
    if min(height, width) < 2 or height % 2 or width % 2 or height * width > 60 * 104:
        raise argparse.ArgumentTypeError(
            f"--wan-latent-size needs even sizes of at least 2 and at most Wan's 60x104 in area, got {text!r}"
        )
    return height, width


def video_frames(multiple: int) -> int:
    """Video frames of ``multiple`` times Wan's native length (4k + 1 frames: 81, 161, 321)."""
    return (NATIVE_VIDEO_FRAMES - 1) * multiple + 1


def latent_frames_of(video: int) -> int:
    return (video - 1) // VAE_STRIDE[0] + 1


def wan_step_flops(layers: int, frames: int, tokens_per_frame: int, mode: str, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of one ``WanTransformer3DModel`` forward with :data:`WAN_2_1_1_3B`'s shape, per component.

    ``frames`` latent frames of ``tokens_per_frame`` tokens (after the 1x2x2 patch), ``mode`` one of
    :data:`MODES` (``long_video``: the layout's windows as a batch of short videos, text and
    timestep repeated per window, as :class:`vin.diffusers.LongVideo` runs them). Matrix products
    count ``2*M*K*N`` (the patch Conv3d as one); elementwise work (norms, RoPE, softmax, blending)
    is not counted, as ``FlopCounterMode`` does not.
    """
    c = WAN_2_1_1_3B
    heads, head_dim = c["num_attention_heads"], c["attention_head_dim"]
    h, L, patch = heads * head_dim, TEXT_LEN, math.prod(c["patch_size"])
    rows, F = batch, frames
    if mode == "long_video" and frames > WINDOW:
        layout = ChunkLayout.windows(frames, WINDOW, OVERLAP)
        rows, F = batch * layout.num_chunks, layout.chunk_len
    S = F * tokens_per_frame  # tokens per sequence
    M = rows * S
    if mode == "chunked":
        sizes = ChunkLayout.context(F, CHUNK, CONTEXT).attention_sizes(tokens_per_frame)
    else:
        sizes = {"chunk_size": S, "context_size": 0}

    def mm(m, k, n):
        return 2 * m * k * n

    return {
        "patch_embed": mm(M, c["in_channels"] * patch, h),
        "conditioning": mm(rows, c["freq_dim"], h) + mm(rows, h, h) + mm(rows, h, 6 * h)  # timestep MLP, adaLN
        + mm(rows * L, c["text_dim"], h) + mm(rows * L, h, h),  # text projection
        "self_attention_proj": layers * 4 * mm(M, h, h),
        "self_attention": layers * chunk_attention_flops(rows, S, heads, head_dim, sizes["chunk_size"], sizes["context_size"], 0),
        "cross_attention_proj": layers * (2 * mm(M, h, h) + 2 * mm(rows * L, h, h)),
        "cross_attention": layers * global_attention_flops(rows, S, heads, head_dim, L, L, 1, 0),
        "ffn": layers * 2 * mm(M, h, c["ffn_dim"]),
        "proj_out": mm(M, h, c["out_channels"] * patch),
    }  # fmt: skip


def _build(layers: int, device="cpu"):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        return WanTransformer3DModel(num_layers=layers, **WAN_2_1_1_3B).eval()


def _inputs(frames: int, latent_size: tuple[int, int], device="cpu") -> dict:
    generator = torch.Generator().manual_seed(frames)
    make = (lambda *shape: torch.empty(*shape, device="meta")) if str(device) == "meta" else (
        lambda *shape: torch.randn(*shape, generator=generator)
    )  # fmt: skip
    return {
        "hidden_states": make(1, WAN_2_1_1_3B["in_channels"], frames, *latent_size),
        "timestep": torch.full((1,), 980.0, device=device),
        "encoder_hidden_states": make(1, TEXT_LEN, WAN_2_1_1_3B["text_dim"]),
        "return_dict": False,
    }


@contextlib.contextmanager
def installed(model, mode: str):
    """``model`` set up for ``mode`` (:data:`MODES`) inside the block, stock again after it."""
    import vin.diffusers as vd

    if mode == "stock":
        yield
    elif mode == "chunked":
        with vd.chunked_attention(model, chunk=CHUNK, context=CONTEXT):
            yield
    else:
        with vd.LongVideo(model, window=WINDOW, overlap=OVERLAP):
            yield


def counted_flops(model_meta, frames: int, latent_size: tuple[int, int], mode: str) -> int:
    """One forward's FLOPs as ``FlopCounterMode`` counts them on the meta device (nothing computed);
    SDPA runs its math path there, two counted matrix products."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    inputs = _inputs(frames, latent_size, device="meta")
    with installed(model_meta, mode), torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model_meta(**inputs)
    return counter.get_total_flops()


def _self_attention_call(mode: str, frames: int, tokens_per_frame: int):
    """The self-attention op of one block on random tensors of the step's shapes, as the step runs it:
    stock and LongVideo windows through diffusers' native backend (SDPA on ``[B, H, N, D]``
    permuted views of ``[B, N, H, D]``), chunked through :func:`vin_kernels.chunk_attention`."""
    c = WAN_2_1_1_3B
    rows, F_ = 1, frames
    if mode == "long_video" and frames > WINDOW:
        rows, F_ = ChunkLayout.windows(frames, WINDOW, OVERLAP).num_chunks, WINDOW
    shape = (rows, F_ * tokens_per_frame, c["num_attention_heads"], c["attention_head_dim"])
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    if mode == "chunked":
        sizes = ChunkLayout.context(F_, CHUNK, CONTEXT).attention_sizes(tokens_per_frame)
        return lambda: vin_kernels.chunk_attention(q, k, v, **sizes)
    return lambda: F.scaled_dot_product_attention(*(t.permute(0, 2, 1, 3) for t in (q, k, v))).permute(0, 2, 1, 3)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _bar(ctx: Context, total: int, desc: str):
    """``ctx.progress.bar`` (a line every few seconds, or a tqdm bar), or nothing where the harness has none."""
    bar = getattr(ctx.progress, "bar", None)
    return bar(total, desc) if bar is not None else contextlib.nullcontext(_NoBar())


def _items(multiples) -> list[tuple[int, str]]:
    """``(multiple, mode)`` pairs to measure: LongVideo from 2x (at 1x it passes the video through)."""
    return [(m, mode) for m in multiples for mode in MODES if not (mode == "long_video" and m == 1)]


def run(ctx: Context) -> dict:
    quick = ctx.quick
    options = ctx.options
    layers = QUICK_LAYERS if quick else getattr(options, "wan_layers", DEFAULT_LAYERS)
    latent_size = QUICK_LATENT_SIZE if quick else tuple(getattr(options, "wan_latent_size", DEFAULT_LATENT_SIZE))
    multiples = MULTIPLES[:2] if quick else MULTIPLES
    warmup = 0 if quick else WARMUP
    timed = {m: 1 if quick else TIMED for m in multiples}
    tokens_per_frame = (latent_size[0] // 2) * (latent_size[1] // 2)
    load_before = list(os.getloadavg())
    model, model_meta = _build(layers), _build(layers, "meta")
    items = _items(multiples)
    rows = []
    total = sum(warmup + timed[m] + 2 for m, _ in items)  # + the memory pass's two steps
    with torch.no_grad(), _bar(ctx, total, "diffusers (Wan steps)") as bar:

        def step(inputs):
            out = model(**inputs)
            bar.update()
            return out

        for multiple in multiples:
            video = video_frames(multiple)
            frames = latent_frames_of(video)
            inputs = _inputs(frames, latent_size)
            modes = [mode for m, mode in items if m == multiple]
            here = {}
            for mode in modes:
                flops = wan_step_flops(layers, frames, tokens_per_frame, mode)
                here[mode] = {
                    "mode": mode, "multiple": multiple, "video_frames": video, "latent_frames": frames,
                    "load_average": list(os.getloadavg()), "tokens": frames * tokens_per_frame,
                    "flops": sum(flops.values()), "flop_components": flops,
                    "counted_flops": counted_flops(model_meta, frames, latent_size, mode), "step_times_ms": [],
                }  # fmt: skip
            attention = {mode: _self_attention_call(mode, frames, tokens_per_frame) for mode in modes}
            # The modes take turns, step by step, each step followed by its self-attention op alone: a
            # burst of load on the shared machine hits a turn, which the medians then leave out.
            for turn in range(warmup + timed[multiple]):
                for mode in modes:
                    with installed(model, mode):
                        (ms,) = measure(lambda: step(inputs), ctx.device, warmup=0, iters=1)
                    (op_ms,) = measure(attention[mode], ctx.device, warmup=0, iters=1)
                    if turn >= warmup:
                        here[mode]["step_times_ms"].append(ms)
                        here[mode].setdefault("self_attention_op_times_ms", []).append(op_ms)
            del attention
            for row in here.values():
                row |= {f"step_{k}": v for k, v in summary(row["step_times_ms"]).items()}
                row["self_attention_ms"] = summary(row["self_attention_op_times_ms"])["median_ms"] * layers
                shares = [layers * op / step for op, step in zip(row["self_attention_op_times_ms"], row["step_times_ms"])]
                row["self_attention_time_share"] = statistics.median(shares)
                rows.append(row)
        with _memory_runner(model if quick else None) as memory:
            del model
            for row in rows:
                measured = memory(layers, latent_size, row["latent_frames"], row["mode"], torch.get_num_threads())
                bar.update(2)
                row["output_finite"], live_memory = measured["finite"], measured["live_memory"]
                row["peak_rss_growth_bytes"] = measured["peak"]
                row["rss_growth_per_latent_frame"] = measured["peak"] / row["latent_frames"]
    _ratios(rows)
    return {
        "model": "WanTransformer3DModel", "config": {**WAN_2_1_1_3B, "num_layers": layers}, "layers": layers,
        "text_len": TEXT_LEN, "latent_size": list(latent_size), "tokens_per_frame": tokens_per_frame,
        "window": WINDOW, "overlap": OVERLAP, "chunk": CHUNK, "context": CONTEXT, "dtype": "float32",
        "threads": torch.get_num_threads(), "warmup": warmup, "timed": {str(m): n for m, n in timed.items()},
        "rss_tracks_live_memory": live_memory, "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()), "rows": rows, "native": native_flop_model(),
    }  # fmt: skip


def memory_of_a_step(layers: int, latent_size, frames: int, mode: str, threads: int, model=None) -> dict:
    """Peak RSS growth of one step of ``mode`` in a process that has done nothing else: allocations of
    1 MiB and more mmapped from the start (:meth:`RssSampler.track_live_memory`), the model built,
    one untracked step (lazy initialization), then the step under :class:`RssSampler`.

    Run in a fresh spawned process per row (:func:`_memory_runner`): in one process the growth
    depended on what ran before the mmap threshold was set (measured: 220 MiB for a 1x stock step
    after nothing, 297 MiB after two untracked steps, each repeatable to 1%).
    """
    torch.set_num_threads(threads)
    live = RssSampler.track_live_memory()
    model = _build(layers) if model is None else model
    inputs = _inputs(frames, latent_size)
    with torch.no_grad(), installed(model, mode):
        model(**inputs)
        with RssSampler() as sampler:
            out = model(**inputs)[0]
    return {"peak": sampler.peak, "finite": bool(torch.isfinite(out).all()), "live_memory": live}


@contextlib.contextmanager
def _memory_runner(model=None):
    """``memory(*args)``: :func:`memory_of_a_step` in a fresh spawned process per call, or (``model``
    given: ``--quick``, a smoke run) here, on that model."""
    if model is not None:
        yield lambda *args: memory_of_a_step(*args, model=model)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        yield lambda *args: pool.submit(memory_of_a_step, *args).result()


def _ratios(rows: list[dict]) -> None:
    """Per row: self-attention shares; chunked and long_video rows: time, FLOPs and memory over stock's.

    The modes of a length took turns, so the time ratio is the median over the turns of the mode's
    step time over stock's in the same turn (a burst of load that slows one turn slows both).
    """
    stock = {r["multiple"]: r for r in rows if r["mode"] == "stock"}
    for r in rows:
        components = r["flop_components"]
        r["self_attention_flop_share"] = components["self_attention"] / r["flops"]
        base = stock.get(r["multiple"])
        if r["mode"] != "stock" and base is not None:
            r["time_ratio_to_stock"] = statistics.median(a / b for a, b in zip(r["step_times_ms"], base["step_times_ms"]))
            r["flop_ratio_to_stock"] = r["flops"] / base["flops"]
            r["time_over_flop_ratio"] = r["time_ratio_to_stock"] / r["flop_ratio_to_stock"]
            if "peak_rss_growth_bytes" in r and base.get("peak_rss_growth_bytes"):
                r["memory_ratio_to_stock"] = r["peak_rss_growth_bytes"] / base["peak_rss_growth_bytes"]


def native_flop_model(multiples=(1, 2, 4, 8)) -> list[dict]:
    """:func:`wan_step_flops` of the real model: 30 blocks at 480x832 (1560 tokens per latent frame)."""
    tokens = math.prod(p // VAE_STRIDE[1] // 2 for p in NATIVE_PIXELS)
    out = []
    for multiple in multiples:
        frames = latent_frames_of(video_frames(multiple))
        per_mode = {mode: wan_step_flops(WAN_LAYERS, frames, tokens, mode) for mode in MODES}
        stock = sum(per_mode["stock"].values())
        for mode, flops in per_mode.items():
            total = sum(flops.values())
            out.append({
                "mode": mode, "multiple": multiple, "latent_frames": frames, "tokens": frames * tokens,
                "flops": total, "flop_ratio_to_stock": total / stock, "self_attention_flop_share": flops["self_attention"] / total,
            })  # fmt: skip
    return out


def _mib(value) -> str:
    return f"{value / 2**20:.0f}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    layers, (lh, lw) = result["layers"], result["latent_size"]
    T = result["tokens_per_frame"]
    timed = ", ".join(f"{n} at {m}x" for m, n in result["timed"].items())
    lines = [
        f"One forward of a `WanTransformer3DModel` with Wan 2.1 1.3B's shape (hidden 1536, 12 heads x 128, FFN 8960, "
        f"{result['text_len']} text tokens) and {layers} of its {WAN_LAYERS} blocks, random {result['dtype']} weights, "
        f"batch 1, no CFG, at {lh}x{lw} latent pixels ({T} tokens per latent frame), {result['threads']} threads: "
        f"median of {timed} timed steps after {result['warmup']} warm-up, the modes of a length taking turns step by step. *chunked*: `chunked_attention(chunk="
        f"{result['chunk']}, context={result['context']})`; *long_video*: `LongVideo(window={result['window']}, "
        f"overlap={result['overlap']})` (at 1x it passes the video through). Ratios are to *stock* at the same length; "
        "*time / stock* is the median over the turns of the step's time over stock's in the same turn; "
        "*time / FLOP ratio* <= 1.1 means the step runs at its FLOP ratio. Peak RSS: the growth during one step, "
        "in a fresh process per row after one untracked step. FLOPs: analytic, "
        f"{'equal to' if all(r['flops'] == r['counted_flops'] for r in rows) else 'NOT equal to'} FlopCounterMode's "
        "count on the meta device. Self-attention share: of the step's FLOPs / of its time (the op timed alone after each step). "
        f"Load average {result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after "
        "(a shared machine).",
        "",
        "| video frames | latent frames | mode | step s | time / stock | FLOPs / stock | time / FLOP ratio | "
        "GFLOP | self-attn share FLOPs / time | peak RSS MiB | MiB per latent frame |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        def ratio(key):
            return f"{r[key]:.2f}" if key in r else "-"

        lines.append(
            f"| {r['video_frames']} | {r['latent_frames']} | {r['mode']} | {r['step_median_ms'] / 1e3:.2f} "
            f"[{r['step_p20_ms'] / 1e3:.2f}-{r['step_p80_ms'] / 1e3:.2f}] | {ratio('time_ratio_to_stock')} | "
            f"{ratio('flop_ratio_to_stock')} | {ratio('time_over_flop_ratio')} | {r['flops'] / 1e9:.0f} | "
            f"{r['self_attention_flop_share']:.0%} / {r['self_attention_time_share']:.0%} | "
            f"{_mib(r.get('peak_rss_growth_bytes', 0))} | {r.get('rss_growth_per_latent_frame', 0) / 2**20:.1f} |"
        )
    lines += ["", memory_verdict(result), "", "FLOP model of the real model (30 blocks, 480x832 = 1560 tokens per latent frame):", "",
              "| latent frames | stock TFLOP | chunked / stock | long_video / stock | stock self-attention share |",
              "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    native = {(r["multiple"], r["mode"]): r for r in result["native"]}
    for multiple in sorted({r["multiple"] for r in result["native"]}):
        stock = native[(multiple, "stock")]
        lines.append(
            f"| {stock['latent_frames']} ({multiple}x) | {stock['flops'] / 1e12:.0f} | "
            f"{native[(multiple, 'chunked')]['flop_ratio_to_stock']:.2f} | {native[(multiple, 'long_video')]['flop_ratio_to_stock']:.2f} | "
            f"{stock['self_attention_flop_share']:.0%} |"
        )
    return "\n".join(lines)


def memory_verdict(result: dict) -> str:
    """Per mode: peak RSS growth per latent frame at its shortest and longest measured length, and the spread."""
    parts = []
    for mode in MODES:
        own = sorted((r for r in result["rows"] if r["mode"] == mode and r.get("peak_rss_growth_bytes")), key=lambda r: r["latent_frames"])
        if len(own) < 2:
            continue
        per = [r["rss_growth_per_latent_frame"] / 2**20 for r in own]
        added = [
            (b["peak_rss_growth_bytes"] - a["peak_rss_growth_bytes"]) / 2**20 / (b["latent_frames"] - a["latent_frames"])
            for a, b in zip(own, own[1:])
        ]  # fmt: skip
        parts.append(
            f"*{mode}* {' / '.join(f'{v:.1f}' for v in per)} MiB per latent frame at "
            f"{' / '.join(str(r['latent_frames']) for r in own)} latent frames (max/min {max(per) / min(per):.2f}), "
            f"{' / '.join(f'{v:.1f}' for v in added)} MiB per added latent frame"
        )
    if not parts:
        return ""
    longest = max(r["latent_frames"] for r in result["rows"])
    held = ChunkLayout.windows(longest, WINDOW, OVERLAP).num_chunks * WINDOW
    ffn_kib = WAN_2_1_1_3B["ffn_dim"] * 4 / 1024
    return (
        "Peak RSS growth per latent frame: " + "; ".join(parts) + ". PyTorch's CPU SDPA (the flash kernel) "
        "never holds the N x N scores, so the stock step's memory is linear in the length too; it is mostly "
        f"the blocks' activations (the FFN's hidden layer: {ffn_kib:.0f} KiB per token). LongVideo's windows "
        f"hold {held} latent frames for a video of {longest}."
    )


def headline(result: dict) -> list[str]:
    """The summary line: each mode's step time and FLOPs against stock's at the longest length, and
    the spread of its peak memory per latent frame over the lengths."""
    longest = max(r["multiple"] for r in result["rows"])
    at = [r for r in result["rows"] if r["multiple"] == longest and "time_ratio_to_stock" in r]
    if not at:
        return []
    line = (f"Wan 1.3B-shaped at {at[0]['latent_frames']} latent frames ({longest}x native): "
            + ", ".join(f"{r['mode']} {r['time_ratio_to_stock']:.2f}x stock's time for {r['flop_ratio_to_stock']:.2f}x its FLOPs" for r in at))
    spreads = []
    for mode in MODES:
        per = [r["rss_growth_per_latent_frame"] for r in result["rows"] if r["mode"] == mode and r.get("peak_rss_growth_bytes")]
        if len(per) >= 2:
            spreads.append(f"{mode} {max(per) / min(per):.2f}")
    if spreads:
        line += "; peak memory per latent frame, max/min over the lengths: " + ", ".join(spreads)
    return [line]


def files(result: dict, out, stem: str) -> list:
    """``<stem>.png``: step time, memory per latent frame (measured) and the FLOP model of the real model."""
    from ..plots import _pyplot

    plt = _pyplot()
    if plt is None or not result["rows"]:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    colors = {"stock": "tab:red", "chunked": "tab:blue", "long_video": "tab:green"}
    rows = result["rows"]
    for mode in MODES:
        own = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["latent_frames"])
        if not own:
            continue
        notes = []
        if mode == "long_video":  # at 1x the video fits one window: LongVideo passes it through to the stock model
            own = [r for r in rows if r["mode"] == "stock" and r["multiple"] == 1] + own
            notes.append("1x = stock")
        x = [r["latent_frames"] for r in own]
        if own[-1].get("time_ratio_to_stock") is not None:
            notes.append(f"{own[-1]['time_ratio_to_stock']:.2f}x time, {own[-1]['flop_ratio_to_stock']:.2f}x FLOPs at {x[-1]}")
        label = mode + (f" ({'; '.join(notes)})" if notes else "")
        axes[0].plot(x, [r["step_median_ms"] / 1e3 for r in own], marker="o", color=colors[mode], label=label)
        if all("rss_growth_per_latent_frame" in r for r in own):
            axes[1].plot(x, [r["rss_growth_per_latent_frame"] / 2**20 for r in own], marker="o", color=colors[mode], label=mode)
        native = sorted((r for r in result["native"] if r["mode"] == mode), key=lambda r: r["latent_frames"])
        axes[2].plot([r["latent_frames"] for r in native], [r["flops"] / 1e15 for r in native], marker="o", color=colors[mode], label=mode)
    (lh, lw), layers = result["latent_size"], result["layers"]
    axes[0].set(title=f"measured: one step, {layers} blocks, {lh}x{lw} latent", xlabel="latent frames", ylabel="seconds (median)")
    axes[1].set(title="measured: peak RSS growth per latent frame", xlabel="latent frames", ylabel="MiB per latent frame")
    axes[1].set_ylim(bottom=0)
    axes[2].set(title="FLOP model: the real model (30 blocks, 480x832)", xlabel="latent frames", ylabel="PFLOP per step")
    for ax in axes:
        ax.set_xticks(sorted({r["latent_frames"] for r in rows} | {r["latent_frames"] for r in result["native"]} if ax is axes[2] else {r["latent_frames"] for r in rows}))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"What chunked attention buys a Wan 2.1 1.3B-shaped transformer (random fp32 weights, CPU, {result['threads']} threads; "
        f"chunked: chunk {result['chunk']} + context {result['context']}; long_video: window {result['window']}, overlap {result['overlap']})",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
