"""GPU evidence in one short window: what ``bash bench/gpu_check.sh`` runs.

A GPU may be lent for about 15 minutes in all, machine start included (docs/design.md, "GPU check").
The driver runs the most valuable checks first, each step in its own processes with a time box, all
under one budget (default :data:`BUDGET_S`, so the whole run ends within 8 minutes), and keeps ONE
JSON file current while results come in: a step killed at its time box, or a run cut short, still
leaves every result measured before.

Usage (from the repository root; ``bash bench/gpu_check.sh ARGS`` is ``python -m vin_bench.gpu_check ARGS``)::

    bash bench/gpu_check.sh [OUT_DIR] [STEP ...] [--dry-run] [--budget SECONDS] [--step-timeout SECONDS] [--workers N]
    python -m vin_bench.gpu_check --validate OUT_DIR/gpu_check.json

``OUT_DIR`` defaults to ``$OUT`` or ``./gpu_check_out``; it receives ``gpu_check.json`` and
``gpu_check.log`` (every step's output, in order). Steps, the default ones in this order:

``build``
    ``pip install --no-build-isolation --no-deps -e .`` with ``VIN_KERNELS_CUDA=1`` (the default
    ``CUDA_ARCHS``), so the ``cuda`` backend is the one in this tree.
``correct_paper``
    fwd + bwd of every kernel at the paper shape (80 latent frames x 240 tokens, 16 heads, 512
    globals, chunks of 20 frames with 8 of context, ``context_grad=False``, with ``return_lse``; D 128
    and 72 as the kernels suite uses), bf16 first, then fp16 and fp32: ``chunk_attention``,
    ``global_attention``, ``merge_attention`` (Triton) and ``overlap_fuse`` (Triton and CUDA).
``perf``
    ``chunk_attention`` fwd and fwd+bwd at the paper shape (bf16, D 128 then 72, autotuned): the
    Triton kernels, dense SDPA over the whole sequence with the flash and the cuDNN backend forced
    (``torch.nn.attention.sdpa_kernel``), the same work as dense problems (the chunk windows gathered
    beforehand), the ``sdpa`` composite and FlexAttention (``torch.compile``'d, the same block mask);
    TFLOP/s and % of dense, the device's ceilings, and the timed kernels' outputs checked.
``correct_awkward``
    the same checks on awkward sizes: lengths no block size divides, one chunk, a short last chunk,
    context longer than a chunk, globals shared by a batch, few global queries, D 64/72/80/96,
    ``overlap_fuse`` with windows and frames; bf16, fp16, fp32.
``memcheck``
    ``compute-sanitizer --tool memcheck`` over :mod:`vin_bench.sanitize` (tiny cases of every
    kernel, PyTorch's caching allocator off so an out-of-bounds access leaves its allocation).

More steps, run only when named: ``racecheck``, ``sanitize`` (= memcheck racecheck), ``tests``
(``pytest -m gpu``), ``alltests`` (every kernel and model test, autotuning off) and ``bench``
(``python -m bench --out OUT_DIR/results``; several files, more than the device tool returns).

Correctness (both correctness steps and the perf step's check): the output and every input's
gradient (random upstream gradients, the log-sum-exp's too) of the backend under test against the
``sdpa`` backend on the same inputs upcast to float32 (the public ops take no float64), SDPA's math
backend forced on CUDA and tf32 off (its ``return_lse`` path computes the scores explicitly), as relative errors
``||out - ref|| / ||ref||`` within ``vin_kernels.testing.tolerance(dtype)``. The correctness steps
run with ``VIN_KERNELS_AUTOTUNE=0`` (one compile per kernel); the perf step autotunes and checks the
option it timed. Before each run the allocator's free memory is filled with NaN (best effort), so an
output element a kernel never writes shows up as non-finite.

``--dry-run`` runs the same steps on the CPU with tiny shapes: Triton under ``TRITON_INTERPRET=1``,
``sdpa`` on the CPU as the stand-in for the GPU's, fp32 timings; ``build``, the ``cuda`` backend,
the bf16 attention kernels (``tl.dot`` on bf16 is wrong in the interpreter) and FlexAttention's
backward (it has none on a CPU) are reported as skipped or as an error with the reason; the
sanitizer cases run without compute-sanitizer. It proves every step is reached and every field written.

The JSON file (``SCHEMA``, checked by :func:`validate`)::

    schema        "vin-kernels-gpu-check/1"
    dry_run       bool
    command       str: the command line
    started, finished   ISO times (finished: null while running)
    budget_s      float
    environment   null until a step has run, then vin_bench.environment.describe() plus
                  compiled_archs (str|null), extension (str: "built" or why not), sanitizer (str|null:
                  compute-sanitizer's path), gpu ({name, capability, memory_gib, multiprocessors}|null)
    steps         {name: {status, seconds, timeout_s, reason, exit_code}} for every requested step,
                  in run order; status: pending, running, ok, failed, timeout, skipped
    correctness   {reference: str, rows: [row]}; row: step, case, op, backend, dtype, then either
                  "skipped" (str) or "error" (str), or shape ({size: value}), tolerance, errors
                  ({output or d<input>: relative error, or "non-finite"}), max_error, passed, seconds
    performance   {ceilings: {bf16_matmul_tflops, copy_gbps, ...}|null, rows: [row]}; row: op, shape,
                  head_dim, dtype, pass ("fwd"|"fwd+bwd"), impl, kind ("vin", "composite", "dense",
                  "same_work", "flex"), then "error" (str) or flops, times_ms, median_ms, p20_ms,
                  p80_ms, tflops, first_call_s, pct_of_dense (TFLOP/s / the best dense row's of the
                  same head dim and pass; null until one ran), pct_of_ceiling (null on a CPU); vin
                  rows also check ({tolerance, errors, max_error, passed})
    sanitizer     {tool: {status, tool (path|null), errors (int|null: its ERROR SUMMARY), cases
                  ({case: "ok"|"NON-FINITE"}), exit_code}}
    summary       passed (bool), checks, failed_checks ([str]), skipped_checks, not_reached,
                  steps ({status: count}), headline ([str])

Exit code 0 when every step ran (or was skipped for a stated reason in a dry run) and every check
passed; 1 otherwise; 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = "vin-kernels-gpu-check/1"
ROOT = Path(__file__).resolve().parents[1]  # the checkout (the build step installs it)
JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"

DEFAULT_STEPS = ("build", "correct_paper", "perf", "correct_awkward", "memcheck")
EXTRA_STEPS = ("racecheck", "tests", "alltests", "bench")
ALIASES = {"sanitize": ("memcheck", "racecheck")}
# Seconds each step may take at most (the budget may leave it less). Expected on an H200 (estimated,
# not yet measured): build 30-60, correct_paper 60-90, perf 90-120, correct_awkward 40-60, memcheck 30-60.
STEP_TIMEOUT_S = {"build": 150, "correct_paper": 120, "perf": 150, "correct_awkward": 100, "memcheck": 90,
                  "racecheck": 120, "tests": 580, "alltests": 580, "bench": 580}  # fmt: skip
BUDGET_S = 470.0  # the whole run: 8 minutes less a margin for the driver
MIN_STEP_S = 20.0  # a step that would get less than this is skipped
POLL_S = 2.0  # the driver merges new rows into the JSON this often
NO_GPU_EXIT = 4  # a worker's exit code when it finds no CUDA device


# ------------------------------------------------------------------------------------ the checks
@dataclass(frozen=True)
class Case:
    """One correctness problem: ``op`` on ``sizes`` (GPU), ``dry`` overriding sizes in a dry run."""

    name: str
    op: str
    sizes: dict
    dry: dict = field(default_factory=dict)
    backends: tuple[str, ...] = ("triton",)

    def shape(self, dry_run: bool) -> dict:
        return {**self.sizes, **(self.dry if dry_run else {})}


@dataclass(frozen=True)
class Unit:
    """One check: a case in one dtype through one backend."""

    step: str
    case: Case
    dtype: str
    backend: str

    @property
    def label(self) -> str:
        return f"{self.case.name} {self.dtype} {self.backend}"


_PAPER_CHUNK = dict(B=1, F=80, T=240, H=16, G=512, Bg=1, chunk=20, context=8, context_grad=False, return_lse=True)
_PAPER_CHUNK_DRY = dict(F=6, T=5, H=1, G=4, chunk=2, context=1)  # the interpreter runs every program in Python
_PAPER_GLOBAL = dict(B=1, G=512, F=80, T=240, H=16, stride=5, offset=0, return_lse=True)  # stride: 1 s of video
_PAPER_GLOBAL_DRY = dict(G=4, F=6, T=5, H=1, stride=2)


def _paper_chunk(D: int) -> Case:
    return Case(f"chunk_attention paper D={D}", "chunk_attention", {**_PAPER_CHUNK, "D": D}, _PAPER_CHUNK_DRY)


def _paper_global(D: int) -> Case:
    return Case(f"global_attention paper D={D}", "global_attention", {**_PAPER_GLOBAL, "D": D}, _PAPER_GLOBAL_DRY)


_PAPER_MERGE = Case("merge_attention paper D=128", "merge_attention", dict(B=1, N=19200, H=16, D=128), dict(N=30, H=1))
_PAPER_FUSE = Case(
    "overlap_fuse paper latent, windowed sampler step", "overlap_fuse",
    dict(B=1, frames=80, window=32, overlap=12, feat=(4, 24, 40), x="windows", out_windows=True),
    dict(frames=10, window=4, overlap=2, feat=(2, 3, 4)), backends=("triton", "cuda"),
)  # fmt: skip

# In order of value: bf16 (what models train and sample in) first, then fp16, then fp32.
PAPER_PLAN = (
    ("bfloat16", (_paper_chunk(128), _paper_chunk(72), _paper_global(128), _paper_global(72), _PAPER_MERGE, _PAPER_FUSE)),
    ("float16", (_paper_chunk(128), _paper_global(128), _PAPER_MERGE, _PAPER_FUSE)),
    ("float32", (_paper_chunk(128), _paper_chunk(72), _paper_global(72), _PAPER_MERGE, _PAPER_FUSE)),
)

_AWKWARD_T = dict(T=4, H=1)  # dry run: fewer tokens per frame, same frame counts (the chunk structure stays)
AWKWARD_CASES = (
    Case("chunk_attention short last chunk, 2 videos sharing globals, D=72", "chunk_attention",
         dict(B=2, F=7, T=37, H=3, D=72, G=37, Bg=1, chunk=3, context=1, context_grad=False, return_lse=True), _AWKWARD_T),
    Case("chunk_attention one chunk, no globals, D=96", "chunk_attention",
         dict(B=1, F=5, T=37, H=2, D=96, G=0, Bg=1, chunk=5, context=0, context_grad=True, return_lse=False), _AWKWARD_T),
    Case("chunk_attention context longer than a chunk, D=80", "chunk_attention",
         dict(B=1, F=9, T=29, H=2, D=80, G=5, Bg=1, chunk=2, context=3, context_grad=True, return_lse=True), _AWKWARD_T),
    Case("chunk_attention globals per video, context_grad=False, D=64", "chunk_attention",
         dict(B=2, F=6, T=23, H=2, D=64, G=16, Bg=2, chunk=4, context=2, context_grad=False, return_lse=False), _AWKWARD_T),
    Case("global_attention 40 queries, keyframe offset, D=96", "global_attention",
         dict(B=2, G=40, F=7, T=37, H=3, D=96, stride=3, offset=1, return_lse=True), _AWKWARD_T),
    Case("global_attention 3 queries (split keys), D=72", "global_attention",
         dict(B=1, G=3, F=11, T=37, H=2, D=72, stride=2, offset=0, return_lse=True), dict(H=1)),  # 222 keys: 2 splits
    Case("merge_attention N=999, D=72", "merge_attention", dict(B=2, N=999, H=3, D=72), dict(N=37, H=1)),
    Case("merge_attention N=77, D=96", "merge_attention", dict(B=1, N=77, H=5, D=96), dict(H=1)),
    Case("overlap_fuse blend, odd features", "overlap_fuse",
         dict(B=2, frames=30, window=12, overlap=5, feat=(3, 7), x=None, out_windows=False), {}, ("triton", "cuda")),
    Case("overlap_fuse windows in, windows out, odd features", "overlap_fuse",
         dict(B=2, frames=30, window=12, overlap=5, feat=(3, 7), x="windows", out_windows=True), {}, ("triton", "cuda")),
    Case("overlap_fuse one window shorter than the window size", "overlap_fuse",
         dict(B=1, frames=7, window=12, overlap=5, feat=(8,), x="frames", out_windows=False), {}, ("triton", "cuda")),
)  # fmt: skip


def units(step: str) -> list[Unit]:
    """The checks of a correctness step, most valuable first."""
    if step == "correct_paper":
        return [Unit(step, c, dtype, b) for dtype, cases in PAPER_PLAN for c in cases for b in c.backends]
    if step == "correct_awkward":
        return [Unit(step, c, dtype, b) for dtype in ("bfloat16", "float16", "float32") for c in AWKWARD_CASES for b in c.backends]
    raise ValueError(f"{step} is not a correctness step")


PERF_HEAD_DIMS = (128, 72)
PERF_IMPLS = (  # (impl, kind), in run order per head dim
    ("vin_triton", "vin"), ("dense_flash", "dense"), ("dense_cudnn", "dense"), ("same_work_flash", "same_work"),
    ("same_work_cudnn", "same_work"), ("vin_sdpa", "composite"), ("flex_compiled", "flex"),
)  # fmt: skip
PASSES = ("fwd", "fwd+bwd")


# ------------------------------------------------------------------------------------ worker side (imports torch)
def _inputs(case: Case, shape: dict, dtype, device, gen):
    """``(leaves, call)``: the inputs that get gradients, and ``call(leaves, backend) -> [outputs]``."""
    import torch

    import vin_kernels as vk

    def randn(*size, dt=dtype):
        return torch.randn(*size, generator=gen, device=device, dtype=dt).requires_grad_()

    s = shape
    if case.op == "chunk_attention":
        N = s["F"] * s["T"]
        leaves = {n: randn(s["B"], N, s["H"], s["D"]) for n in ("q", "k", "v")}
        if s["G"]:
            leaves |= {n: randn(s["Bg"], s["G"], s["H"], s["D"]) for n in ("global_k", "global_v")}
        kw = dict(chunk_size=s["chunk"] * s["T"], context_size=s["context"] * s["T"], context_grad=s["context_grad"], return_lse=s["return_lse"])

        def call(t, backend):
            out = vk.chunk_attention(t["q"], t["k"], t["v"], global_k=t.get("global_k"), global_v=t.get("global_v"), backend=backend, **kw)
            return list(out) if s["return_lse"] else [out]

    elif case.op == "global_attention":
        N = s["F"] * s["T"]
        leaves = {"gq": randn(s["B"], s["G"], s["H"], s["D"]), "k": randn(s["B"], N, s["H"], s["D"]), "v": randn(s["B"], N, s["H"], s["D"])}
        kw = dict(tokens_per_frame=s["T"], keyframe_stride=s["stride"], keyframe_offset=s["offset"], return_lse=s["return_lse"])

        def call(t, backend):
            out = vk.global_attention(t["gq"], t["k"], t["v"], backend=backend, **kw)
            return list(out) if s["return_lse"] else [out]

    elif case.op == "merge_attention":
        B, N, H, D = s["B"], s["N"], s["H"], s["D"]
        leaves = {"o_a": randn(B, N, H, D), "lse_a": randn(B, H, N, dt=torch.float32),
                  "o_b": randn(B, N, H, D), "lse_b": randn(B, H, N, dt=torch.float32)}  # fmt: skip

        def call(t, backend):
            return list(vk.merge_attention(t["o_a"], t["lse_a"], t["o_b"], t["lse_b"], backend=backend))

    elif case.op == "overlap_fuse":
        layout = vk.ChunkLayout.windows(s["frames"], s["window"], s["overlap"])
        feat = tuple(s["feat"])
        leaves = {"eps": randn(s["B"], layout.num_chunks, layout.chunk_len, *feat)}
        if s["x"] == "frames":
            leaves["x"] = randn(s["B"], s["frames"], *feat)
        elif s["x"] == "windows":  # a windowed state: overlapping frames are copies
            frames = torch.randn(s["B"], s["frames"], *feat, generator=gen, device=device, dtype=dtype)
            leaves["x"] = layout.cut_windows(frames).contiguous().requires_grad_()
        coeffs = (0.9, -0.2) if s["x"] else None

        def call(t, backend):
            return [vk.overlap_fuse(t["eps"], layout, x=t.get("x"), coeffs=coeffs, out_windows=s["out_windows"], backend=backend)]

    else:
        raise ValueError(f"unknown op {case.op}")
    return leaves, call


def _poison_free_memory(device) -> None:
    """Fill the caching allocator's free memory with NaN (best effort: one large and some small blocks),
    so outputs allocated next that a kernel never writes show up as non-finite. No-op on a CPU."""
    import torch

    if device.type != "cuda":
        return
    blocks = [torch.empty(1 << 28, device=device)] + [torch.empty(1 << 17, device=device) for _ in range(32)]  # 1 GiB + 32 x 512 KiB
    for b in blocks:
        b.fill_(float("nan"))
    del blocks


def _reference_context(device):
    """SDPA's math backend on CUDA (exact fp32 with tf32 off); on a CPU SDPA's fp32 flash kernel is exact."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH) if device.type == "cuda" else contextlib.nullcontext()


def _json_error(value: float):
    return value if math.isfinite(value) else "non-finite"


def _compare(got: list, want: list, names: list[str], dtype) -> dict:
    """``{tolerance, errors, max_error, passed}``: relative errors of ``got`` against ``want``, by name."""
    from vin_kernels.testing import rel_error, tolerance

    tol = tolerance(dtype)
    errors = {name: rel_error(g, w) for name, g, w in zip(names, got, want)}
    worst = max(errors.values(), default=0.0)
    return {"tolerance": tol, "errors": {n: _json_error(e) for n, e in errors.items()}, "max_error": _json_error(worst),
            "passed": all(e <= tol for e in errors.values())}  # fmt: skip


def _run_and_grad(leaves: dict, call, backend: str, upstream: list | int):
    """``(outputs, gradients of every leaf, upstream gradients)``. ``upstream``: the upstream gradients
    (cast to each output's dtype), or a seed to draw them (float32 normal, rounded to the output's dtype)."""
    import torch

    outputs = call(leaves, backend)
    if isinstance(upstream, int):
        gen = torch.Generator(device=outputs[0].device).manual_seed(upstream)
        upstream = [torch.randn(o.shape, generator=gen, device=o.device).to(o.dtype) for o in outputs]
    ups = [u.to(o.dtype) for u, o in zip(upstream, outputs)]
    grads = torch.autograd.grad(outputs, list(leaves.values()), ups, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves.values(), grads)]
    return [o.detach() for o in outputs], [g.detach() for g in grads], upstream


def _reference(leaves: dict, call, device, upstream: list):
    """The sdpa backend on the leaves upcast to float32, for the same upstream gradients."""
    import torch

    ref_leaves = {n: t.detach().to(torch.float32).requires_grad_() for n, t in leaves.items()}
    with _reference_context(device):
        return _run_and_grad(ref_leaves, call, "sdpa", upstream)[:2]


def _skip_reason(unit: Unit, device) -> str | None:
    import vin_kernels as vk

    if device.type == "cpu":
        if unit.backend == "cuda":
            return "dry run: the cuda backend needs a CUDA device"
        if unit.backend == "triton" and unit.dtype == "bfloat16" and unit.case.op in ("chunk_attention", "global_attention"):
            return "dry run: tl.dot on bf16 is wrong in the Triton CPU interpreter (checked on a GPU)"
    status = vk.backends()[unit.backend]
    if not status.available:
        raise RuntimeError(f"the {unit.backend} backend is unavailable: {status.reason}")
    return None


def check_unit(unit: Unit, device, dry_run: bool, seed: int) -> dict:
    """One correctness row (see the module docstring)."""
    import torch

    row = {"step": unit.step, "case": unit.case.name, "op": unit.case.op, "backend": unit.backend, "dtype": unit.dtype}
    start = time.perf_counter()
    try:
        if (reason := _skip_reason(unit, device)) is not None:
            return row | {"skipped": reason, "seconds": 0.0}
        shape = unit.case.shape(dry_run)
        row["shape"] = {k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()}
        dtype = getattr(torch, unit.dtype)
        leaves, call = _inputs(unit.case, shape, dtype, device, torch.Generator(device=device).manual_seed(seed))
        _poison_free_memory(device)
        outputs, grads, upstream = _run_and_grad(leaves, call, unit.backend, seed + 1)
        ref_outputs, ref_grads = _reference(leaves, call, device, upstream)
        names = _output_names(unit.case.op)[: len(outputs)] + [f"d{n}" for n in leaves]
        row |= _compare([*outputs, *grads], [*ref_outputs, *ref_grads], names, dtype)
    except Exception as err:  # noqa: BLE001 - any failure of a check is its result
        row["error"] = _error_text(err)
    if device.type == "cuda":
        try:  # an asynchronous CUDA error surfaces here at the latest (and stays: the next checks fail too)
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001
            row.setdefault("error", _error_text(err))
    row["seconds"] = time.perf_counter() - start
    return row


def _output_names(op: str) -> list[str]:
    return ["out"] if op == "overlap_fuse" else ["o", "lse"]


def _environment(device) -> dict:
    import torch

    import vin_kernels.cuda as vcuda

    from .environment import describe

    env = describe(["bash", "bench/gpu_check.sh"])
    env["compiled_archs"] = vcuda.compiled_archs() if vcuda.is_built() else None
    env["extension"] = "built" if vcuda.is_built() else vcuda.build_problem()
    env["sanitizer"] = find_sanitizer()
    env["gpu"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                      "multiprocessors": p.multi_processor_count}  # fmt: skip
    return env


class _Rows:
    """Appends JSON lines to the worker's rows file, flushed at once (a killed worker keeps what it wrote)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the worker's lifetime

    def __call__(self, kind: str, record: dict) -> None:
        self.file.write(json.dumps({"record": kind, "data": record}, allow_nan=False) + "\n")
        self.file.flush()


def _perf(emit: _Rows, device, dry_run: bool) -> None:
    """The perf step: rows in :data:`PERF_IMPLS` order per head dim (see the module docstring)."""
    import torch
    from torch.nn.attention import SDPBackend

    import vin_kernels as vk
    from vin_kernels import flops as kernel_flops

    from .ceilings import measure_ceilings
    from .flex import chunk_flex_attention
    from .suites.kernels import PAPER, PASS_FLOP_FACTOR, AttentionShape, _attend, _grad_of, materialize_chunks
    from .timing import measure, summary

    emit("ceilings", measure_ceilings(device))
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32  # fp32 in a dry run: the interpreter's bf16 dots are wrong
    warmup, iters = (2, 10) if gpu else (1, 2)
    gen = torch.Generator(device=device).manual_seed(0)
    for D in PERF_HEAD_DIMS:
        if gpu:
            shape = AttentionShape(f"paper D={D}", head_dim=D, **PAPER)
        else:
            shape = AttentionShape(f"dry run D={D}", batch=1, frames=6, tokens_per_frame=5, chunk=2, context=1, num_global=4, heads=1, head_dim=D)
        B, N, H, G = shape.batch, shape.tokens, shape.heads, shape.num_global
        sizes = shape.sizes
        leaves = [torch.randn(*s, generator=gen, device=device, dtype=dtype).requires_grad_() for s in [(B, N, H, D)] * 3 + [(B, G, H, D)] * 2]
        q, k, v, gk, gv = leaves
        plain = [t.detach() for t in leaves]
        do = torch.randn(B, N, H, D, generator=gen, device=device, dtype=dtype)
        chunk_flops = kernel_flops.chunk_attention_flops(B, N, H, D, sizes["chunk_size"], sizes["context_size"], G)
        dense_flops = kernel_flops.chunk_attention_flops(B, N, H, D, N, 0, G)  # every query over all N + G keys
        # Dense and Flex: heads-first q [B, H, N, D], keys and values [B, H, N + G, D] (the globals last).
        dense = [plain[0].transpose(1, 2).contiguous().requires_grad_()]
        dense += [torch.cat([t, g], 1).transpose(1, 2).contiguous().requires_grad_() for t, g in ((plain[1], plain[3]), (plain[2], plain[4]))]
        groups = [tuple(t.detach().requires_grad_() for t in g) for g in materialize_chunks(*plain, shape)]
        group_leaves = [t for g in groups for t in g]

        def vin(backend):
            fwd = lambda: vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, backend=backend, **sizes)  # noqa: E731
            return fwd, lambda: torch.autograd.grad(fwd(), leaves, do)

        def sdpa(backend, problems, problem_leaves):
            return lambda: _attend(backend, problems), lambda: _grad_of(_attend(backend, problems), problem_leaves)

        def flex():  # FlexAttention refuses inputs that require grad on a CPU, even under no_grad
            backend, cut = ("inductor" if gpu else "eager"), {n: sizes[n] for n in ("chunk_size", "context_size")}
            fwd, fwd_train = (chunk_flex_attention(*ts, **cut, compile_backend=backend) for ts in ([t.detach() for t in dense], dense))
            upstream = do.transpose(1, 2).contiguous()
            return fwd, lambda: torch.autograd.grad(fwd_train(), dense, upstream)

        makers = {
            "vin_triton": lambda: vin("triton"),
            "dense_flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION, [tuple(dense)], dense),
            "dense_cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION, [tuple(dense)], dense),
            "same_work_flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION, groups, group_leaves),
            "same_work_cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION, groups, group_leaves),
            "vin_sdpa": lambda: vin("sdpa"),
            "flex_compiled": flex,
        }
        for impl, kind in PERF_IMPLS:
            try:
                fns, problem = makers[impl](), None
            except Exception as err:  # noqa: BLE001
                fns, problem = (None, None), _error_text(err)
            for pass_, fn in zip(PASSES, fns):
                row = {"op": "chunk_attention", "shape": shape.name, "head_dim": D, "dtype": str(dtype).replace("torch.", ""),
                       "pass": pass_, "impl": impl, "kind": kind}  # fmt: skip
                try:
                    if problem is not None:
                        raise RuntimeError(problem)
                    with torch.no_grad() if pass_ == "fwd" else torch.enable_grad():
                        start = time.perf_counter()
                        first = fn()  # compiles, autotunes
                        if gpu:
                            torch.cuda.synchronize(device)
                        first_call_s = time.perf_counter() - start
                        times = measure(fn, device, warmup=warmup, iters=iters)
                    if impl == "vin_triton":
                        row["check"] = _perf_check(first, leaves, do, sizes, device, dtype, pass_)
                    del first
                    flops = int((dense_flops if kind == "dense" else chunk_flops) * PASS_FLOP_FACTOR[pass_])
                    row |= {"flops": flops, "times_ms": times, **summary(times), "first_call_s": first_call_s}
                    row["tflops"] = flops / (row["median_ms"] * 1e-3) / 1e12
                except Exception as err:  # noqa: BLE001 - a baseline that cannot run here is reported, not fatal
                    row["error"] = _error_text(err)
                emit("performance", row)
                if gpu:
                    torch.cuda.empty_cache()


def _error_text(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _perf_check(result, leaves, do, sizes, device, dtype, pass_) -> dict:
    """The timed Triton call's output (fwd) or gradients (fwd+bwd) against the reference."""
    import torch

    import vin_kernels as vk

    ref_leaves = [t.detach().to(torch.float32).requires_grad_() for t in leaves]
    with _reference_context(device):
        ref_out = vk.chunk_attention(*ref_leaves[:3], global_k=ref_leaves[3], global_v=ref_leaves[4], backend="sdpa", **sizes)
        if pass_ == "fwd":
            return _compare([result], [ref_out.detach()], ["o"], dtype)
        ref_grads = torch.autograd.grad(ref_out, ref_leaves, do.to(ref_out.dtype))
    return _compare(list(result), list(ref_grads), ["dq", "dk", "dv", "dglobal_k", "dglobal_v"], dtype)


def worker(step: str, rows_path: Path, dry_run: bool, shard: int, shards: int) -> int:
    """A step's process: writes its rows to ``rows_path`` (JSON lines)."""
    import torch

    if dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); on a CPU use --dry-run", file=sys.stderr)
        return NO_GPU_EXIT
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    emit = _Rows(rows_path)
    if shard == 0:
        emit("environment", _environment(device))
    if step == "perf":
        _perf(emit, device, dry_run)
        return 0
    for index, unit in enumerate(units(step)):
        if index % shards == shard:
            row = check_unit(unit, device, dry_run, seed=index)
            emit("correctness", row)
            print(f"{unit.label}: {_verdict(row)} ({row['seconds']:.1f} s)", flush=True)
    return 0


def _verdict(row: dict) -> str:
    if "skipped" in row:
        return "skipped"
    if "error" in row:
        return f"ERROR {row['error']}"
    return f"{'ok' if row['passed'] else 'FAILED'} (max error {row['max_error']}, tolerance {row['tolerance']:g})"


# ------------------------------------------------------------------------------------ driver side (no torch)
def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH or in the usual CUDA / Nsight folders, or None."""
    for candidate in ("compute-sanitizer", "/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if found := shutil.which(candidate):
            return found
    return next(iter(sorted(glob.glob("/opt/nvidia/*/compute-sanitizer/compute-sanitizer"))), None)


def parse_sanitizer_output(text: str) -> tuple[dict[str, str], int | None]:
    """``({case: "ok"|"NON-FINITE"}, errors)`` from the output of :mod:`vin_bench.sanitize` under
    compute-sanitizer (``========= ERROR SUMMARY: 3 errors``; None when there is no summary line)."""
    cases, errors = {}, None
    for line in text.splitlines():
        name, sep, verdict = line.rpartition(": ")
        if sep and verdict.strip() in ("ok", "NON-FINITE"):
            cases[name] = verdict.strip()
        if "ERROR SUMMARY:" in line:
            errors = int(line.split("ERROR SUMMARY:")[1].split()[0])
    return cases, errors


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Run:
    """The driver: runs the steps, merges the workers' rows, keeps ``OUT/gpu_check.json`` current."""

    def __init__(self, out: Path, steps: list[str], dry_run: bool, budget_s: float, workers: int, command: str,
                 step_timeout_s: float | None = None):  # fmt: skip
        self.out, self.steps, self.dry_run, self.workers = out, steps, dry_run, workers
        self.time_boxes = {s: STEP_TIMEOUT_S[s] if step_timeout_s is None else step_timeout_s for s in steps}
        self.deadline = time.monotonic() + budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="vin-gpu-check-"))
        self.offsets: dict[Path, int] = {}
        (out / LOG_NAME).write_text("")
        # Append mode (O_APPEND) for the driver and the steps it starts, which write to the same file.
        self.log = open(out / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115 - the run's lifetime
        self.no_gpu = False
        self.result = {
            "schema": SCHEMA, "dry_run": dry_run, "command": command, "started": _now(), "finished": None,
            "budget_s": budget_s, "environment": None,
            "steps": {s: {"status": "pending", "seconds": None, "timeout_s": None, "reason": "", "exit_code": None} for s in steps},
            "correctness": {"reference": _REFERENCE_TEXT[dry_run], "rows": []},
            "performance": {"ceilings": None, "rows": []},
            "sanitizer": {},
            "summary": {},
        }  # fmt: skip
        self.write()

    # -------------------------------------------------------------------------------- files
    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(f"== {text}\n")
        self.log.flush()

    def write(self) -> None:
        self.result["summary"] = summarize(self.result)
        path = self.out / JSON_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=1, allow_nan=False) + "\n")
        os.replace(tmp, path)

    def merge(self) -> bool:
        """Move complete new lines of every rows file into the result; True if any arrived."""
        arrived = False
        for path in sorted(self.scratch.glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[: data.rfind("\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete.encode("utf-8"))
            for line in complete.splitlines():
                try:
                    line = json.loads(line)
                except ValueError:
                    continue
                kind, record = line["record"], line["data"]
                if kind == "environment":
                    self.result["environment"] = record
                elif kind == "ceilings":
                    self.result["performance"]["ceilings"] = record
                elif kind == "correctness":
                    self.result["correctness"]["rows"].append(record)
                elif kind == "performance":
                    self.result["performance"]["rows"].append(record)
                arrived = True
        return arrived

    # -------------------------------------------------------------------------------- steps
    def run(self) -> int:
        for step in self.steps:
            entry = self.result["steps"][step]
            left = self.deadline - time.monotonic()
            if self.no_gpu and step != "build":
                entry |= {"status": "skipped", "reason": "no CUDA device (on a CPU use --dry-run)"}
            elif left < MIN_STEP_S:
                entry |= {"status": "skipped", "reason": f"time budget spent ({left:.0f} s left, a step needs {MIN_STEP_S:.0f})"}
            else:
                entry["timeout_s"] = round(min(self.time_boxes[step], left), 1)
                entry["status"] = "running"
                self.write()
                self.say(f"{step}: up to {entry['timeout_s']:.0f} s")
                start = time.monotonic()
                self._step(step, entry)
                entry["seconds"] = round(time.monotonic() - start, 1)
            self.say(f"{step}: {entry['status']}" + (f" ({entry['seconds']} s)" if entry["seconds"] is not None else "")
                     + (f": {entry['reason']}" if entry["reason"] else ""))  # fmt: skip
            self.write()
        self.result["finished"] = _now()
        self.write()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.log.close()
        print(report(self.result), flush=True)
        return 0 if self.result["summary"]["passed"] else 1

    def _step(self, step: str, entry: dict) -> None:
        python = sys.executable
        if step == "build":
            if self.dry_run:
                entry |= {"status": "skipped", "reason": "dry run: the extension is not rebuilt (the environment reports the installed one)"}
                return
            env = dict(os.environ, VIN_KERNELS_CUDA="1")
            self._processes(entry, [[python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(ROOT)]], env)
        elif step in ("correct_paper", "perf", "correct_awkward"):
            env = dict(os.environ, PYTHONUNBUFFERED="1", VIN_KERNELS_AUTOTUNE="1" if step == "perf" else "0")
            if self.dry_run:
                env["TRITON_INTERPRET"] = "1"
            shards = 1 if step == "perf" else (min(2, self.workers) if step == "correct_paper" else self.workers)
            commands = [
                [python, "-m", "vin_bench.gpu_check", "--worker", step, "--rows", str(self.scratch / f"{step}-{i}.jsonl"),
                 "--shard", f"{i}/{shards}", *(["--dry-run"] if self.dry_run else [])]
                for i in range(shards)
            ]  # fmt: skip
            self._processes(entry, commands, env)
            if entry["exit_code"] == NO_GPU_EXIT:
                self.no_gpu = True
                entry["reason"] = "no CUDA device (on a CPU use --dry-run)"
        elif step in ("memcheck", "racecheck"):
            self._sanitizer(step, entry)
        elif self.dry_run:
            entry |= {"status": "skipped", "reason": f"dry run: {step} needs a GPU"}
        elif step == "tests":
            self._processes(entry, [[python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]], dict(os.environ))
        elif step == "alltests":
            env = dict(os.environ, VIN_KERNELS_AUTOTUNE="0")
            self._processes(entry, [[python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels", "tests/model"]], env)
        elif step == "bench":
            self._processes(entry, [[python, "-m", "bench", "--out", str(self.out / "results")]], dict(os.environ))

    def _sanitizer(self, step: str, entry: dict) -> None:
        tool = find_sanitizer()
        record = {"status": "pending", "tool": tool, "errors": None, "cases": {}, "exit_code": None}
        self.result["sanitizer"][step] = record
        cases = [sys.executable, "-m", "vin_bench.sanitize"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", VIN_KERNELS_AUTOTUNE="0", PYTORCH_NO_CUDA_MEMORY_CACHING="1")
        if self.dry_run:  # the cases on the CPU, without the tool: the script's own logic is checked
            env["TRITON_INTERPRET"] = "1"
            cases += ["--device", "cpu"]
            reason = f"dry run: no GPU, compute-sanitizer {step} not run; its cases ran on the CPU (Triton interpreter)"
        elif tool is None:
            entry |= {"status": "failed", "reason": "compute-sanitizer not found (PATH, /usr/local/cuda, /opt/nvidia)"}
            record["status"] = "failed"
            return
        else:
            cases = [tool, "--tool", step, "--error-exitcode", "3", *cases]
        log_start = self.log.tell()
        self._processes(entry, [cases], env)
        self.log.flush()
        with open(self.out / LOG_NAME, encoding="utf-8", errors="replace") as f:
            f.seek(log_start)
            output = f.read()
        record["cases"], record["errors"] = parse_sanitizer_output(output)
        record["exit_code"] = entry["exit_code"]
        record["status"] = entry["status"]
        if self.dry_run and entry["status"] == "ok":
            entry |= {"status": "skipped", "reason": reason}
            record["status"] = "skipped"

    def _processes(self, entry: dict, commands: list[list[str]], env: dict) -> None:
        """Run ``commands`` side by side within the step's time box, output appended to the log; the
        step's status from their exit codes. Rows are merged into the JSON while they run."""
        procs = []
        for command in commands:
            self.log.write(f"$ {shlex.join(command)}\n")
            self.log.flush()
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True))
        stop = time.monotonic() + entry["timeout_s"]
        timed_out = False
        while running := [p for p in procs if p.poll() is None]:
            if time.monotonic() >= stop:
                timed_out = True
                for p in procs:
                    _kill(p)
                break
            try:
                running[0].wait(timeout=max(0.0, min(POLL_S, stop - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
            if self.merge():
                self.write()
        self.merge()
        codes = [p.wait() for p in procs]
        entry["exit_code"] = next((c for c in codes if c != 0), 0)
        if timed_out:
            entry |= {"status": "timeout", "reason": f"stopped at its time box of {entry['timeout_s']:.0f} s; results so far are kept"}
        elif entry["exit_code"] != 0:
            entry |= {"status": "failed", "reason": f"exit code {entry['exit_code']}; see {LOG_NAME}"}
        else:
            entry["status"] = "ok"


def _kill(proc: subprocess.Popen) -> None:
    """End a step's process group (it was started in a session of its own): TERM, then KILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


_REFERENCE_TEXT = {
    False: "the sdpa backend on the inputs upcast to float32, SDPA's math backend forced, tf32 off",
    True: "the sdpa backend on the inputs upcast to float32 (dry run: PyTorch's CPU flash kernel)",
}


# ------------------------------------------------------------------------------------ summary, report, validation
def summarize(result: dict) -> dict:
    """Derived fields: the perf rows' % of dense and of the ceiling, and the summary (see the docstring)."""
    perf = result["performance"]
    dense: dict[tuple, float] = {}
    for r in perf["rows"]:
        if r["kind"] == "dense" and "tflops" in r:
            key = (r["head_dim"], r["pass"])
            dense[key] = max(dense.get(key, 0.0), r["tflops"])
    ceiling = (perf["ceilings"] or {}).get("bf16_matmul_tflops")
    for r in perf["rows"]:
        if "tflops" in r:
            best = dense.get((r["head_dim"], r["pass"]))
            r["pct_of_dense"] = 100 * r["tflops"] / best if best else None
            r["pct_of_ceiling"] = 100 * r["tflops"] / ceiling if ceiling else None
    rows = result["correctness"]["rows"]
    checked = [r for r in rows if "skipped" not in r]
    failed = [f"{r['case']} {r['dtype']} {r['backend']}: {r.get('error') or 'max error ' + str(r['max_error'])}"
              for r in checked if "error" in r or not r["passed"]]  # fmt: skip
    failed += [f"{r['impl']} D={r['head_dim']} {r['pass']}: timed output off by {r['check']['max_error']}"
               for r in perf["rows"] if "check" in r and not r["check"]["passed"]]  # fmt: skip
    failed += [f"{tool}: {rec['errors']} errors" for tool, rec in result["sanitizer"].items() if rec.get("errors")]
    expected = sum(len(units(s)) for s in ("correct_paper", "correct_awkward") if s in result["steps"])
    statuses: dict[str, int] = {}
    for entry in result["steps"].values():
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    steps_ok = all(
        e["status"] == "ok" or (e["status"] == "skipped" and result["dry_run"] and e["reason"].startswith("dry run"))
        for e in result["steps"].values()
    )
    return {
        "passed": steps_ok and not failed and result["finished"] is not None,
        "checks": len(checked),
        "failed_checks": failed,
        "skipped_checks": len(rows) - len(checked),
        "not_reached": max(0, expected - len(rows)),
        "steps": statuses,
        "headline": _headline(perf["rows"]),
    }


def _headline(rows: list[dict]) -> list[str]:
    """One line per head dim and pass: Triton's TFLOP/s and % of dense beside dense and Flex."""
    lines = []
    for D in PERF_HEAD_DIMS:
        for pass_ in PASSES:
            got = {r["impl"]: r for r in rows if r["head_dim"] == D and r["pass"] == pass_ and "tflops" in r}
            if "vin_triton" not in got:
                continue
            triton = got["vin_triton"]
            parts = [f"chunk_attention D={D} {pass_}: triton {triton['median_ms']:.2f} ms, {triton['tflops']:.1f} TFLOP/s"]
            if triton.get("pct_of_dense") is not None:
                parts[0] += f" = {triton['pct_of_dense']:.0f}% of dense"
            for impl in ("dense_flash", "dense_cudnn", "same_work_flash", "flex_compiled"):
                if impl in got:
                    pct = got[impl].get("pct_of_dense")
                    parts.append(f"{impl} {got[impl]['tflops']:.1f}" + (f" ({pct:.0f}%)" if pct is not None else ""))
            lines.append("; ".join(parts))
    return lines


def report(result: dict) -> str:
    """The short table printed last (the device tool returns the end of the output)."""
    env = result["environment"] or {}
    lines = [f"gpu_check{' --dry-run' if result['dry_run'] else ''} on {env.get('device', '?')}: torch {env.get('torch', '?')}, "
             f"triton {env.get('triton', '?')}, commit {env.get('commit', '?')}, _C archs {env.get('compiled_archs')}"]  # fmt: skip
    for name, e in result["steps"].items():
        seconds = "" if e["seconds"] is None else f"{e['seconds']:.0f} s"
        lines.append(f"  {name:<16}{e['status']:<9}{seconds:>7}  {e['reason']}")
    s = result["summary"]
    lines.append(f"checks: {s['checks']} run, {len(s['failed_checks'])} failed, {s['skipped_checks']} skipped, {s['not_reached']} not reached")
    lines += [f"  FAILED {f}" for f in s["failed_checks"][:20]]
    lines += [f"  {h}" for h in s["headline"]]
    lines.append(f"{'PASSED' if s['passed'] else 'NOT PASSED'}: {JSON_NAME} and {LOG_NAME} written")
    return "\n".join(lines)


_STEP_FIELDS = {"status": str, "seconds": (int, float, type(None)), "timeout_s": (int, float, type(None)), "reason": str,
                "exit_code": (int, type(None))}  # fmt: skip
_STATUSES = ("pending", "running", "ok", "failed", "timeout", "skipped")
_CORRECTNESS_IDS = {"step": str, "case": str, "op": str, "backend": str, "dtype": str}
_CORRECTNESS_FIELDS = {"shape": dict, "tolerance": float, "errors": dict, "max_error": (float, str), "passed": bool, "seconds": float}
_PERF_IDS = {"op": str, "shape": str, "head_dim": int, "dtype": str, "pass": str, "impl": str, "kind": str}
_PERF_FIELDS = {"flops": int, "times_ms": list, "median_ms": float, "p20_ms": float, "p80_ms": float, "tflops": float,
                "first_call_s": float, "pct_of_dense": (float, type(None)), "pct_of_ceiling": (float, type(None))}  # fmt: skip
_CHECK_FIELDS = {"tolerance": float, "errors": dict, "max_error": (float, str), "passed": bool}
_SANITIZER_FIELDS = {"status": str, "tool": (str, type(None)), "errors": (int, type(None)), "cases": dict, "exit_code": (int, type(None))}
_SUMMARY_FIELDS = {"passed": bool, "checks": int, "failed_checks": list, "skipped_checks": int, "not_reached": int, "steps": dict, "headline": list}
_ENV_EXTRA = {"compiled_archs": (str, type(None)), "extension": str, "sanitizer": (str, type(None)), "gpu": (dict, type(None))}


def _fields(errors: list[str], where: str, record, fields: dict) -> None:
    if not isinstance(record, dict):
        errors.append(f"{where}: expected an object")
        return
    for name, kind in fields.items():
        if name not in record:
            errors.append(f"{where}.{name}: missing")
            continue
        value, kinds = record[name], kind if isinstance(kind, tuple) else (kind,)
        kinds = tuple(k for k in kinds) + ((int,) if float in kinds else ())
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            errors.append(f"{where}.{name}: expected {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}")


def validate(result) -> list[str]:
    """Every problem with a gpu_check JSON (empty when it is valid)."""
    from .schema import ENVIRONMENT_FIELDS

    errors: list[str] = []
    top = {"schema": str, "dry_run": bool, "command": str, "started": str, "finished": (str, type(None)), "budget_s": float,
           "environment": (dict, type(None)), "steps": dict, "correctness": dict, "performance": dict, "sanitizer": dict, "summary": dict}  # fmt: skip
    _fields(errors, "result", result, top)
    if errors:
        return errors
    if result["schema"] != SCHEMA:
        errors.append(f"schema: expected {SCHEMA!r}, got {result['schema']!r}")
    if result["environment"] is not None:
        _fields(errors, "environment", result["environment"], {**ENVIRONMENT_FIELDS, **_ENV_EXTRA})
    for name, entry in result["steps"].items():
        _fields(errors, f"steps.{name}", entry, _STEP_FIELDS)
        if isinstance(entry, dict) and entry.get("status") not in _STATUSES:
            errors.append(f"steps.{name}.status: {entry.get('status')!r} is not one of {_STATUSES}")
    _fields(errors, "correctness", result["correctness"], {"reference": str, "rows": list})
    for i, row in enumerate(result["correctness"].get("rows", [])):
        where = f"correctness.rows[{i}]"
        _fields(errors, where, row, _CORRECTNESS_IDS)
        if isinstance(row, dict) and "skipped" not in row and "error" not in row:
            _fields(errors, where, row, _CORRECTNESS_FIELDS)
    _fields(errors, "performance", result["performance"], {"ceilings": (dict, type(None)), "rows": list})
    for i, row in enumerate(result["performance"].get("rows", [])):
        where = f"performance.rows[{i}]"
        _fields(errors, where, row, _PERF_IDS)
        if isinstance(row, dict) and "error" not in row:
            _fields(errors, where, row, _PERF_FIELDS)
            if row.get("kind") == "vin" and row.get("impl") == "vin_triton":
                _fields(errors, f"{where}.check", row.get("check"), _CHECK_FIELDS)
    for tool, record in result["sanitizer"].items():
        _fields(errors, f"sanitizer.{tool}", record, _SANITIZER_FIELDS)
    _fields(errors, "summary", result["summary"], _SUMMARY_FIELDS)
    return errors


# ------------------------------------------------------------------------------------ command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block (the project's CLI rule)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(i), int(n)


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="bash bench/gpu_check.sh", description="GPU evidence in one short window (see vin_bench/gpu_check.py).")
    p.add_argument("args", nargs="*", metavar="[OUT_DIR] [STEP ...]",
                   help=f"output folder (default: $OUT or ./gpu_check_out), then steps: {', '.join([*DEFAULT_STEPS, *EXTRA_STEPS, *ALIASES])} "
                   f"(default: {' '.join(DEFAULT_STEPS)})")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    p.add_argument("--budget", type=_positive, default=BUDGET_S, help=f"seconds for the whole run (default {BUDGET_S:.0f})")
    p.add_argument("--step-timeout", type=_positive, default=None, metavar="SECONDS",
                   help="the time box of every step (default: each step's own, see STEP_TIMEOUT_S)")
    p.add_argument("--workers", type=int, default=None, help="processes per correctness step (default: 4 on a GPU, 1 in a dry run)")
    p.add_argument("--validate", type=Path, metavar="JSON", help="check a gpu_check JSON file and exit")
    p.add_argument("--worker", choices=["correct_paper", "perf", "correct_awkward"], help=argparse.SUPPRESS)
    p.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--shard", type=_shard, default=(0, 1), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    known = {*DEFAULT_STEPS, *EXTRA_STEPS, *ALIASES}
    out, steps = None, []
    for i, arg in enumerate(args.args):
        if arg in known:
            steps += ALIASES.get(arg, (arg,))
        elif i == 0:
            out = arg
        else:
            p.error(f"STEP: unknown step {arg!r}; choose from {', '.join(sorted(known))}")
    args.out = Path(out or os.environ.get("OUT") or "gpu_check_out")
    args.steps = list(dict.fromkeys(steps or DEFAULT_STEPS))
    if args.workers is None:
        args.workers = 1 if args.dry_run else 4
    if args.workers < 1:
        p.error(f"--workers: must be >= 1, got {args.workers}")
    if args.worker and args.rows is None:
        p.error("--worker needs --rows")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.validate:
        try:
            problems = validate(json.loads(args.validate.read_text()))
        except (OSError, ValueError) as err:
            print(f"gpu_check: error: --validate {args.validate}: {err}", file=sys.stderr)
            return 2
        print("\n".join(problems) or f"{args.validate}: valid {SCHEMA}")
        return 1 if problems else 0
    if args.worker:
        return worker(args.worker, args.rows, args.dry_run, *args.shard)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / ".gpu_check-write-test").touch()
        (args.out / ".gpu_check-write-test").unlink()
    except OSError as err:
        print(f"bash bench/gpu_check.sh: error: OUT_DIR {args.out}: cannot write there: {err.strerror or err}", file=sys.stderr)
        return 2
    command = shlex.join(["bash", "bench/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])])
    return Run(args.out, args.steps, args.dry_run, args.budget, args.workers, command, args.step_timeout).run()


if __name__ == "__main__":
    raise SystemExit(main())
