"""PNG plots of a result (matplotlib, headless): :func:`plot` writes a suite's plot, if it has one.

Line plots (flops, model) put every measured video length on the x axis as a tick, labelled with its
video frames over its latent frames; when there are more lengths than fit, the labels are thinned
(every point keeps its marker and an unlabelled tick). Their log y axis labels 1, 2 and 5 of every
decade in plain numbers (more where fewer than 3 would show). The model plot draws p20-p80 bars and says in its caption what ran (preset,
dtype, threads, random weights, steps timed). The kernels plot groups one bar per implementation
under each (op, shape, pass), one colour per implementation, with a legend, and writes beside
vin_kernels' bars its time / full attention's and the FLOP ratio (bold green below 1: faster).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

FONT_SIZE = 9  # tick labels and legends: readable in the README at 100%
MAX_TICK_LABELS = 10  # per line plot's x axis of 7 inches


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def labelled_ticks(values: list[float], max_labels: int = MAX_TICK_LABELS) -> list[float]:
    """The subset of sorted distinct ``values`` to label on a log axis: the first, the last, and in
    between every value at least 1/``max_labels`` of the axis' decades away from the last one kept."""
    values = sorted(set(values))
    if len(values) <= max_labels:
        return values
    gap = math.log10(values[-1] / values[0]) / max_labels
    kept = [values[0]]
    for v in values[1:-1]:
        if math.log10(v / kept[-1]) >= gap and math.log10(values[-1] / v) >= gap:
            kept.append(v)
    return kept + [values[-1]]


def _save(fig, path: Path) -> Path | None:
    if fig is None:
        return None
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def log_y_axis(ax) -> None:
    """Label a log y axis in plain numbers (400, 0.5, 1000: not 4x10^2) at 1, 2 and 5 of every decade;
    where fewer than 3 of those fall in view, at 1, 2, 3, 5 and 7, and then at every integer multiple."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = ax.get_ylim()
    for subs in ((1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), tuple(float(i) for i in range(1, 10))):
        major = LogLocator(base=10, subs=subs, numticks=99)
        if sum(low <= t <= high for t in major.tick_values(low, high)) >= 3:
            break
    ax.yaxis.set_major_locator(major)
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(float(i) for i in range(1, 10)), numticks=99))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def line_figure(rows: list[dict], y, ylabel: str, title: str, yerr=None, caption: str | None = None):
    """One line per ``mode`` of ``y(row)`` against video frames (log-log), ticks at the measured
    lengths; ``yerr(row) -> (low, high)`` draws error bars; ``caption`` goes under the axes. None
    without rows or matplotlib."""
    plt = _pyplot()
    if plt is None or not rows:
        return None
    from matplotlib.ticker import FixedLocator, NullFormatter

    frames = sorted({r["video_frames"] for r in rows})
    latent = {r["video_frames"]: r.get("latent_frames") for r in rows}
    many = len(frames) > MAX_TICK_LABELS
    fig, ax = plt.subplots(figsize=(7, 4.5 + (0.45 if caption else 0)))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        own = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["video_frames"])
        xs, ys = [r["video_frames"] for r in own], [y(r) for r in own]
        if yerr is None:
            ax.plot(xs, ys, marker="o", markersize=3 if many else 5, label=mode)
        else:
            spans = [yerr(r) for r in own]
            errors = [[v - lo for v, (lo, _) in zip(ys, spans)], [hi - v for v, (_, hi) in zip(ys, spans)]]
            ax.errorbar(xs, ys, yerr=errors, marker="o", markersize=3 if many else 5, capsize=3, label=mode)
    ax.set(xscale="log", yscale="log", ylabel=ylabel, title=title)
    labelled = labelled_ticks(frames)
    ax.xaxis.set_major_locator(FixedLocator(labelled))
    ax.xaxis.set_minor_locator(FixedLocator([f for f in frames if f not in labelled]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if all(latent[f] is not None for f in frames):
        ax.set_xticklabels([f"{f}\n{latent[f]}" for f in labelled])
        ax.set_xlabel("video frames (upper) / latent frames (lower)")
    else:
        ax.set_xticklabels([str(f) for f in labelled])
        ax.set_xlabel("video frames")
    log_y_axis(ax)
    ax.tick_params(labelsize=FONT_SIZE)
    ax.tick_params(which="minor", labelsize=FONT_SIZE - 1)
    ax.legend(title="mode", fontsize=FONT_SIZE, title_fontsize=FONT_SIZE)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, axis="y", which="minor", alpha=0.15)
    if caption:
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(caption, 125)), fontsize=FONT_SIZE - 1, va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.09, 1, 1))
    else:
        fig.tight_layout()
    return fig


def flops_figure(result: dict):
    """TFLOP per denoising step against video frames, one line per mode."""
    return line_figure(
        result["rows"], lambda r: r["step_flops"] / 1e12, "TFLOP per denoising step", "Paper preset: FLOPs per denoising step",
        caption=result.get("mode_caption"),
    )  # fmt: skip


def model_figure(result: dict):
    """Median step latency against video frames with p20-p80 bars, one line per mode (rows that failed
    are left out); the caption says what ran."""
    rows = [r for r in result["rows"] if "step_median_ms" in r]
    runs = max((len(r["step_times_ms"]) for r in rows if "step_times_ms" in r), default=0)
    caption = (
        f"{result['preset']} preset, {result.get('dtype', '?')}, random weights, batch 1, {result.get('threads', '?')} threads; "
        f"median of {runs} steps after a warm-up, bars p20-p80. {result.get('mode_caption', '')}"
    )
    return line_figure(
        rows, lambda r: r["step_median_ms"], "ms per denoising step (median)", f"{result['preset']} preset: latency of one denoising step",
        yerr=(lambda r: (r.get("step_p20_ms", r["step_median_ms"]), r.get("step_p80_ms", r["step_median_ms"]))), caption=caption,
    )  # fmt: skip


def kernels_figure(result: dict):
    """Median ms of every implementation of each (op, shape, pass): a group of horizontal bars per
    (op, shape, pass), one colour per implementation (legend); beside vin_kernels' bars its time over
    SDPA full attention's and the FLOP ratio (bold green below 1, faster; red above)."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if "median_ms" in r]
    if plt is None or not rows:
        return None
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["pass"]), []).append(r)
    impls = list(dict.fromkeys(r["impl"] for r in sorted(rows, key=lambda r: r["kind"] != "vin")))
    palette = plt.get_cmap("tab10" if len(impls) <= 10 else "tab20")
    color = {impl: palette(i % palette.N) for i, impl in enumerate(impls)}
    labels = [f"{op} · {pass_}\n" + "\n".join(textwrap.wrap(shape, 44)) for op, shape, pass_ in groups]
    bar, gap = 0.8, 0.8  # bar height and the space between groups, in bar slots
    positions, centers, y = [], [], 0.0
    for members, label in zip(groups.values(), labels):
        slots = max(len(members), 0.55 * label.count("\n") + 0.6)  # room for the wrapped label
        ys = [y + (slots - len(members)) / 2 + i for i in range(len(members))]
        positions.append(ys)
        centers.append(sum(ys) / len(ys))
        y += slots + gap
    fig, ax = plt.subplots(figsize=(10, 0.22 * y + 1.8))
    for members, ys in zip(groups.values(), positions):
        for r, yy in zip(members, ys):
            ax.barh(yy, r["median_ms"], height=bar, color=color[r["impl"]])
            if r["kind"] == "vin" and "time_vs_full_attention" in r:
                ratio = r["time_vs_full_attention"]
                text = f"{ratio:.2f}x full (FLOPs {r['flop_ratio_to_full']:.2f}x)"
                ax.annotate(text, (r["median_ms"], yy), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=FONT_SIZE - 1, color="#1a7f37" if ratio < 1 else "#b42318",
                            fontweight="bold" if ratio < 1 else "normal")  # fmt: skip
            elif "ratio_to_best_baseline" in r:
                ax.annotate(f"{r['ratio_to_best_baseline']:.2f}x speed-up vs same work", (r["median_ms"], yy),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=FONT_SIZE - 1)  # fmt: skip
    ax.set_yticks(centers, labels, fontsize=FONT_SIZE - 1)
    ax.set_ylim(y - gap, -gap / 2)  # top to bottom in run order
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ax.set_xlim(low, high * (high / low) ** 0.45)  # room for the labels (~30% of the width) right of the longest bar
    ax.set_xlabel("median ms per call (log scale; lower is better)", fontsize=FONT_SIZE)
    where = f"{result.get('device_kind', 'cuda')}, {result.get('dtype', '?')}" + (
        f", {result['threads']} threads" if result.get("device_kind") == "cpu" and "threads" in result else ""
    )
    ax.set_title(
        f"Kernels vs SDPA full attention ({where})\nlabels: time / full attention's time (FLOPs / full attention's); bold green below 1 = faster",
        fontsize=FONT_SIZE + 1,
    )  # fmt: skip
    ax.tick_params(axis="x", labelsize=FONT_SIZE)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[i]) for i in impls]
    ax.legend(handles, impls, title="implementation", fontsize=FONT_SIZE, title_fontsize=FONT_SIZE,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.set_axisbelow(True)  # grid lines behind the bars
    fig.tight_layout()
    return fig


def quality_figure(result: dict):
    """The ablation: MAWE, identity drift and scene-cut rate per variant (mean, standard error bars;
    the generated ground truth as a dashed line), and each model's training loss."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if r.get("mawe") is not None]
    if plt is None or not rows:
        return None
    data_row = next((r for r in rows if r["variant"] == "data"), None)
    variants = [r for r in rows if r["variant"] != "data"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    for ax, (key, title) in zip(axes, [("mawe", "MAWE (lower is better)"), ("drift", "identity drift (lower)"), ("cut_rate", "scene-cut rate (lower)")]):
        values = [r[key] if r[key] is not None else float("nan") for r in variants]
        errors = [r.get(f"{key}_sem") or 0.0 for r in variants]
        ax.bar(range(len(variants)), values, yerr=errors, color=plt.get_cmap("tab10")(range(len(variants))), capsize=3)
        if data_row is not None and data_row.get(key) is not None:
            ax.axhline(data_row[key], color="k", linestyle="--", linewidth=1, label="generated data")
            ax.legend(fontsize=FONT_SIZE)
        ax.set_xticks(range(len(variants)), [r["variant"] for r in variants], rotation=30, ha="right", fontsize=FONT_SIZE)
        ax.set_title(title, fontsize=FONT_SIZE + 1)
        ax.tick_params(axis="y", labelsize=FONT_SIZE)
    ax = axes[-1]
    steps = result.get("train", {}).get("steps", 1)
    for model, curve in result.get("losses", {}).items():
        ax.plot([steps * (i + 0.5) / len(curve) for i in range(len(curve))], curve, label=model)
    ax.set(yscale="log", title="training loss (smoothed)", xlabel="training step")
    ax.legend(fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)
    fig.suptitle(f"{result['preset']} preset: the paper's ablation at toy scale", fontsize=FONT_SIZE + 2)
    fig.tight_layout()
    return fig


FIGURES = {"flops": flops_figure, "kernels": kernels_figure, "model": model_figure, "quality": quality_figure}


def plot(suite: str, result: dict, path: Path) -> Path | None:
    """Write the plot of ``suite``'s ``result`` to ``path``; None when the suite has no plot, the result
    no plottable rows, or matplotlib is not installed."""
    figure = FIGURES.get(suite)
    return None if figure is None else _save(figure(result), path)
