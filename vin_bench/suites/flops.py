"""flops suite (runs anywhere): VIN (context mode and overlapping windows) vs full attention.

For the paper preset at each video length: FLOPs per denoising step and per 50-step sample, the
ratio to full attention, the split into attention / linear / VIN, both analytic (:mod:`vin.flops`)
and counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import vin

from . import Context, latent_frames

MODES = ("full", "vin_context", "vin_windows")


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
    items = [(f, mode) for f in ctx.video_frames for mode in MODES]
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
    return {"preset": "paper", "steps": preset.steps, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"FLOPs of the paper preset per denoising step and per {result['steps']}-step sample (batch 1; "
        "analytic `vin.flops`, equal to `FlopCounterMode` on the meta device: column *counted = analytic*).",
        "",
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
