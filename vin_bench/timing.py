"""Timing: warm-up, then the median of many runs, with the L2 cache flushed before each GPU run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any L2 (H100: 50 MB, H200: 60 MB)


class _Flusher:
    """Overwrites a buffer larger than the L2 so every timed run starts with a cold cache."""

    def __init__(self, device: torch.device):
        self.buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def __call__(self):
        self.buffer.zero_()


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 5, iters: int = 30) -> list[float]:
    """Milliseconds of ``iters`` calls of ``fn`` after ``warmup`` calls (raw, in call order).

    CUDA: each call between two CUDA events, after an L2 flush outside the events. CPU: wall clock.
    """
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    flush = _Flusher(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    torch.cuda.synchronize(device)
    for start, end in zip(starts, ends):
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def summary(times_ms: list[float]) -> dict:
    """Median, p20 and p80 of raw times (ms)."""
    ordered = sorted(times_ms)
    q = statistics.quantiles(ordered, n=5) if len(ordered) >= 2 else [ordered[0]] * 4
    return {"median_ms": statistics.median(ordered), "p20_ms": q[0], "p80_ms": q[3]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
