"""The device's measured ceilings, taken at the start of a run: a large bf16 matmul and a large copy."""

from __future__ import annotations

import torch

from .timing import measure, summary


def _matmul_ms(device: torch.device, n: int) -> list[float]:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return measure(lambda: a @ b, device, warmup=3, iters=20)


def _copy_ms(device: torch.device, elements: int) -> list[float]:
    src = torch.randn(elements, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device, warmup=3, iters=20)


def measure_ceilings(device: torch.device) -> dict | None:
    """``{"bf16_matmul_tflops", "copy_gbps", ...raw}`` on a GPU; None on a CPU (no ceiling is claimed)."""
    if device.type != "cuda":
        return None
    n, elements = 8192, 1 << 30  # an 8192^3 bf16 product; 2 GiB of bf16 read and 2 GiB written
    matmul_ms, copy_ms = _matmul_ms(device, n), _copy_ms(device, elements)
    torch.cuda.empty_cache()
    matmul, copy = summary(matmul_ms)["median_ms"], summary(copy_ms)["median_ms"]
    return {
        "bf16_matmul_tflops": 2 * n**3 / (matmul * 1e-3) / 1e12,
        "copy_gbps": 2 * elements * 2 / (copy * 1e-3) / 1e9,
        "matmul_shape": [n, n, n],
        "copy_bytes": 2 * elements * 2,
        "matmul_times_ms": matmul_ms,
        "copy_times_ms": copy_ms,
    }
