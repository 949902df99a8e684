"""PNG plots of a result (matplotlib, headless). Each returns the file it wrote, or None."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _lines(rows: list[dict], y, ylabel: str, title: str, path: Path) -> Path | None:
    """One line per ``mode`` of ``y(row)`` against video frames (log-log)."""
    plt = _pyplot()
    if plt is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        own = [r for r in rows if r["mode"] == mode]
        ax.plot([r["video_frames"] for r in own], [y(r) for r in own], marker="o", label=mode)
    ax.set(xscale="log", yscale="log", xlabel="video frames", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def flops_plot(result: dict, path: Path) -> Path | None:
    """TFLOP per denoising step against video frames, one line per mode."""
    return _lines(result["rows"], lambda r: r["step_flops"] / 1e12, "TFLOP per denoising step", "Paper preset: FLOPs per step", path)


def model_plot(result: dict, path: Path) -> Path | None:
    """Median step latency against video frames, one line per mode."""
    rows = [r for r in result["rows"] if "step_median_ms" in r]
    return _lines(rows, lambda r: r["step_median_ms"], "ms per denoising step", f"{result['preset']} preset: step latency", path)


def kernels_plot(result: dict, path: Path) -> Path | None:
    """Median ms of every implementation of each (op, shape, pass), as grouped horizontal bars."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if "median_ms" in r]
    if plt is None or not rows:
        return None
    labels = [f"{r['op']} {r['shape']} {r['pass']} | {r['impl']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(rows) + 1))
    colors = ["tab:orange" if r["kind"] == "vin" else "tab:blue" for r in rows]
    ax.barh(range(len(rows)), [r["median_ms"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="median ms (orange: vin_kernels)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


PLOTS = {"flops": flops_plot, "kernels": kernels_plot, "model": model_plot}
