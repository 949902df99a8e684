"""Helpers for checking an implementation against the reference: tolerances, relative error, poisoning.

Used by the test suite and the benchmarks; shipped so users can check their own backends the same way.
"""

from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "tolerance", "rel_error", "assert_close", "poison_"]

# Relative error ||out - ref|| / ||ref|| allowed against a float64 computation (docs/design.md, Numerics).
TOLERANCES = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# fp32 through tensor-core dots with tf32 inputs.
TF32_TOLERANCE = 1e-3


def tolerance(dtype: torch.dtype, tf32: bool = False) -> float:
    """Allowed relative error for outputs of ``dtype`` (``tf32`` for fp32 computed with tf32 dots)."""
    return TF32_TOLERANCE if tf32 and dtype == torch.float32 else TOLERANCES[dtype]


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64; ``inf`` if ``actual`` has a NaN or inf."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    denom = e.norm().item()
    diff = (a - e).norm().item()
    if denom == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / denom


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "output") -> None:
    """Assert same shape and ``rel_error <= tol``; the message says where the worst element is."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    err = rel_error(actual, expected)
    if err <= tol:
        return
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    bad = ~torch.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{name}: {int(bad.sum())} non-finite elements, first at {where}")
    diff = (a - e).abs()
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    raise AssertionError(
        f"{name}: relative error {err:.3e} > {tol:.1e}; max |diff| {diff.max().item():.3e} at {where} "
        f"(got {a[where].item():.6g}, expected {e[where].item():.6g})"
    )


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN in place (so an element a kernel forgets to write shows up)."""
    return t.fill_(float("nan"))
