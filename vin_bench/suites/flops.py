"""flops suite (runs anywhere): VIN (context mode and overlapping windows) vs full attention.

For the paper preset at each video length: FLOPs per denoising step and per 50-step sample, the
ratio to full attention, the split into attention / linear / VIN, both analytic (:mod:`vin.flops`)
and counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device; and from which
video length on each VIN mode needs fewer FLOPs than full attention (:func:`wins_from`). About 1.5 s
per length up to 1024 video frames on a 2-core CPU; at most :data:`MAX_VIDEO_FRAMES` video frames.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import vin

from . import Context, latent_frames, layout_definitions, mode_caption

MODES = ("full", "vin_context", "vin_windows")
# The longest --frames length: the counted pass builds the layouts (O(frames) Python) and the meta
# graph; measured on a 2-core CPU per length: 1024 video frames 1.7 s, 16384 6 s, 65536 (20480
# latent) 23 s and 0.5 GiB peak, 262144 99 s and 1.1 GiB.
MAX_VIDEO_FRAMES = 65536
QUICK_VIDEO_FRAMES = (64, 256, 1024)  # --quick
WINS_SCAN_VIDEO_FRAMES = 2048  # wins_from scans lengths up to this, every 16 video frames


def max_video_frames(device) -> int:
    """The longest video (in video frames) the suite takes (the CLI refuses longer ``--frames``)."""
    return MAX_VIDEO_FRAMES


def wins_from(preset, mode: str, upto: int = WINS_SCAN_VIDEO_FRAMES) -> int | None:
    """The shortest video, in video frames (a multiple of 16, the paper VAE's 16 video frames per 5
    latent frames), from which on ``mode`` (``vin_context`` / ``vin_windows``) needs fewer FLOPs per
    denoising step than full attention at every length up to ``upto`` (:mod:`vin.flops`); None if it
    never does there."""
    wins = None
    for video_frames in range(upto, 0, -16):
        frames = latent_frames(video_frames)
        if not frames:
            break
        ratio = vin.flops.step_flops(preset, frames, _layout(preset, mode, frames)).total / vin.flops.step_flops(preset, frames, None).total
        if ratio >= 1:
            break
        wins = video_frames
    return wins


def wins_sentence(wins: dict[str, int | None]) -> str:
    """``VIN needs fewer FLOPs than full attention from 96 video frames on (vin_context) ...``."""
    parts = [
        f"*{mode}* from {frames} video frames ({latent_frames(frames)} latent) on" if frames else f"*{mode}* at no length up to {WINS_SCAN_VIDEO_FRAMES} video frames"
        for mode, frames in wins.items()
    ]
    return f"Fewer FLOPs per step than full attention (`vin.flops`, every 16 video frames up to {WINS_SCAN_VIDEO_FRAMES}): {'; '.join(parts)}."


def _layout(preset, mode: str, frames: int):
    return {"full": None, "vin_context": preset.context_layout(frames), "vin_windows": preset.window_layout(frames)}[mode]


def counted_step_flops(preset, model, net_vin, frames: int, layout) -> int:
    """One denoising step's FLOPs as FlopCounterMode counts them (meta tensors: nothing is computed)."""
    dit = preset.dit
    x = torch.empty(1, frames, dit.in_channels, dit.height, dit.width, device="meta")
    text = torch.empty(1, dit.text_len, dit.text_dim, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        global_kv = net_vin(x, t, text) if layout is not None else None
        if layout is not None and layout.is_windows:
            x = layout.cut_windows(x)
        model(x, t, text, layout=layout, global_kv=global_kv)
    return counter.get_total_flops()


def run(ctx: Context) -> dict:
    preset = vin.presets.paper()
    model, net_vin = preset.build(device="meta", backend="triton")
    rows = []
    lengths = QUICK_VIDEO_FRAMES if ctx.quick and not ctx.frames_given else ctx.video_frames
    items = [(f, mode) for f in lengths for mode in MODES]
    for video_frames, mode in ctx.progress(items, desc="flops"):
        frames = latent_frames(video_frames)
        layout = _layout(preset, mode, frames)
        step = vin.flops.step_flops(preset, frames, layout)
        full = vin.flops.step_flops(preset, frames, None)
        rows.append(
            {
                "video_frames": video_frames,
                "latent_frames": frames,
                "tokens": frames * preset.dit.tokens_per_frame,
                "mode": mode,
                "layout": None if layout is None else repr(layout),
                "step_flops": step.total,
                "sample_flops": step.total * preset.steps,
                "ratio_to_full": step.total / full.total,
                "attention_flops": step.attention,
                "linear_flops": step.linear,
                "vin_flops": step.vin,
                "components": step.components,
                "counted_step_flops": counted_step_flops(preset, model, net_vin, frames, layout),
            }
        )
    wins = {mode: wins_from(preset, mode) for mode in MODES[1:]}
    return {"preset": "paper", "steps": preset.steps, "definitions": layout_definitions(preset),
            "mode_caption": mode_caption(preset), "wins_from_video_frames": wins, "rows": rows}


def headline(result: dict) -> list[str]:
    """The summary lines: the VIN modes' FLOPs against full attention at the longest length."""
    rows = result["rows"]
    longest = max(r["video_frames"] for r in rows)
    ratios = ", ".join(f"{r['mode']} {r['ratio_to_full']:.0%}" for r in rows if r["video_frames"] == longest and r["mode"] != "full")
    wins = result.get("wins_from_video_frames", {})
    since = ", ".join(f"{f} video frames for {m}" for m, f in wins.items() if f)
    return [f"paper preset at {longest} video frames: FLOPs of full attention's: {ratios}" + (f" (fewer from {since})" if since else "")]


def markdown(result: dict) -> str:
    lines = [
        f"FLOPs of the paper preset per denoising step and per {result['steps']}-step sample (batch 1; "
        "analytic `vin.flops`, equal to `FlopCounterMode` on the meta device: column *counted = analytic*). "
        + result.get("definitions", ""),
        "",
        *([wins_sentence(result["wins_from_video_frames"]), ""] if "wins_from_video_frames" in result else []),
        "| video frames | latent frames | mode | TFLOP / step | PFLOP / sample | vs full | attention | linear | VIN | counted = analytic |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['video_frames']} | {r['latent_frames']} | {r['mode']} | {r['step_flops'] / 1e12:.1f} | "
            f"{r['sample_flops'] / 1e15:.2f} | {r['ratio_to_full']:.0%} | {r['attention_flops'] / 1e12:.1f} | "
            f"{r['linear_flops'] / 1e12:.1f} | {r['vin_flops'] / 1e12:.2f} | "
            f"{'yes' if r['counted_step_flops'] == r['step_flops'] else 'NO'} |"
        )
    return "\n".join(lines)
