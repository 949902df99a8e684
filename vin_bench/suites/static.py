"""static suite (any machine with the triton package, no GPU): the code a GPU would run, read off the compiler.

Every Triton kernel of vin_kernels, and the dense FlashAttention-2 forward anchor of
:mod:`vin_bench.anchors.flash_attention`, is compiled with Triton's own launch path for each target
of :data:`vin_kernels.triton.archs.ARCHS` (sm_80, sm_86, sm_89, sm_90, sm_100, sm_120), exactly as
a launch on such a GPU would compile it:

* the kernel's own launcher (``vin_kernels.triton.<op>.forward/backward``) is called on meta tensors
  of a paper-sized problem (:data:`SHAPE`) with the kernel's ``run`` replaced by a recorder, so the
  arguments are the launcher's own;
* each option the kernel lists for the dtype is marked as the device-aware pruning of
  :mod:`vin_kernels.triton.tiles` would (*pickable*: its shared-memory estimate fits the arch;
  *pick*: the first pickable one, what ``VIN_KERNELS_AUTOTUNE=0`` runs);
* ``JITFunction.run(..., warmup=True)`` compiles it with a stand-in driver whose target is the arch
  (no GPU): types, constexprs and ``tt.divisibility`` come from Triton's own binder, as on a GPU
  (meta tensors report address 0, so pointers count as 16-byte aligned; integers divisible by 16
  get ``tt.divisibility = 16``). This path is the same in Triton 3.4 to 3.9.

From each compiled kernel: registers per thread, spill bytes (``STACK``) from ``cuobjdump
-res-usage``; local loads/stores (``LDL``/``STL``), ``HGMMA`` (wgmma) and ``HMMA`` (mma.sync) from
``cuobjdump -sass``, ``tcgen05.mma``, ``cp.async`` and ``cp.async.bulk.tensor`` (TMA) from the PTX;
which loops have every tensor load turned into an async copy (software-pipelined) from the TTGIR; the
dynamic shared memory from ``metadata.shared`` against the arch's limit and the tile model's estimate;
and the occupancy (resident warps per SM) of the CUDA occupancy calculator. ptxas and cuobjdump ship
in the triton wheel.

Compiles run in ``python -m vin_bench.suites.static`` subprocesses (one per Triton version:
``--triton-versions`` names virtual environments built by ``bench/triton_versions.sh``), each with a
pool of one worker per CPU, started without ``TRITON_INTERPRET`` (kernel modules read it at import).
Results are cached per compiled kernel under ``$XDG_CACHE_HOME/vin-kernels/static`` (``~/.cache``
by default; ``VIN_BENCH_STATIC_CACHE`` overrides), keyed by the kernel's source hash (Triton's
``JITFunction.cache_key``, which covers every ``@triton.jit`` function it calls), Triton's own
specialization data (signature, constexprs, attributes, options), the target and the Triton version.

Matrices: without ``--full`` the headline slice :data:`HEADLINE_MATRIX` and ``--quick``
:data:`QUICK_MATRIX`, each with the option every kernel picks without autotuning; ``--full``
:data:`DEFAULT_MATRIX` with the options autotuning chooses from; ``--full-matrix`` (or
``VIN_BENCH_STATIC=full``) :data:`FULL_MATRIX` with every listed option (those the pruning drops
too, to check the shared-memory estimate against the compiler); ``--arch`` narrows any of them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vin_kernels.triton.archs import ARCHS, occupancy

from . import Context

ARCH_NAMES = tuple(ARCHS)
DTYPES = ("bf16", "fp16", "fp32")
HEAD_DIMS = (32, 64, 72, 80, 96, 128)  # vin_kernels.checks.TRITON_HEAD_DIMS
# Per run size, blocks of (archs, dtypes, head dims), each compiled as their product. fp16 compiles to
# the same code as bf16 but for the conversions; an fp32 option (exact dots on FMA units) takes 3-50 s
# to compile on a 2-core CPU, a 16-bit one 1-3 s, so fp32 runs at D = 72 (a 64 + 16 split tile) and
# 128 (the most shared memory) only.
FULL_MATRIX = ((ARCH_NAMES, ("bf16",), HEAD_DIMS), (ARCH_NAMES, ("fp32",), (72, 128)),
               (("sm_86", "sm_90"), ("fp16",), (128,)))
DEFAULT_MATRIX = ((ARCH_NAMES, ("bf16",), (72, 128)), (("sm_86", "sm_90"), ("fp32",), (128,)))
HEADLINE_MATRIX = ((("sm_90", "sm_86"), ("bf16",), (128,)),)
QUICK_MATRIX = ((("sm_90",), ("bf16",), (128,)),)
# What tests/build/test_triton_compile.py enforces on the installed Triton: the pickable 16-bit
# options and the fp32 picks.
ENFORCED_MATRIX = ((("sm_86", "sm_90"), ("bf16",), HEAD_DIMS), (("sm_86", "sm_90"), ("fp32",), (128,)))
# fp32 options (exact dots on FMA units, no tensor cores) may spill up to this many bytes per thread:
# measured at most 16 B (chunk dq 32x32/8/2 at D = 72 on sm_80/86/89, Triton 3.9; global dk/dv 8 B),
# python -m bench --suite static --full-matrix, Triton 3.6 and 3.9, every arch. See problems().
FP32_SPILL_BOUND = 16

# The problem the launchers are called with: the paper preset's attention (240 tokens per latent
# frame, 40 latent frames, chunks of 20 frames with 8 frames of context, 512 global tokens,
# keyframes every 5th frame), batch 2, 16 heads. Only divisibility by 16 and equality to 1 of the
# integer arguments reach the compiler.
SHAPE = dict(batch=2, heads=16, tokens_per_frame=240, frames=40, chunk_frames=20, context_frames=8, globals=512,
             keyframe_stride=5)
VENVS = Path(os.environ.get("VIN_TRITON_VENVS", "/work/venvs"))  # bench/triton_versions.sh builds triton-X there


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--arch", type=_archs, default=None, metavar="SM[,SM...]",
        help=f"static suite: compile for these targets only ({', '.join(ARCH_NAMES)}; default: the matrix's)",
    )  # fmt: skip
    group.add_argument(
        "--triton-versions", type=_versions, default=None, metavar="X[,X...]",
        help="static suite: compile with each of these Triton versions ('installed' = this environment's; X = the "
        f"venv {VENVS}/triton-X that bash bench/triton_versions.sh X builds) and merge the results",
    )  # fmt: skip


def _archs(text: str) -> tuple[str, ...]:
    archs = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in archs if a not in ARCHS]
    if not archs or unknown:
        raise argparse.ArgumentTypeError(f"unknown arch(s) {unknown or text!r}; choose from {', '.join(ARCH_NAMES)}")
    return archs


def _versions(text: str) -> tuple[str, ...]:
    versions = tuple(v.strip() for v in text.split(",") if v.strip())
    missing = [v for v in versions if v != "installed" and not (VENVS / f"triton-{v}" / "bin" / "python").exists()]
    if not versions or missing:
        raise argparse.ArgumentTypeError(
            f"no venv for Triton {', '.join(missing) or repr(text)} under {VENVS}: run bash bench/triton_versions.sh "
            f"{' '.join(missing)}"
        )
    return versions


def _python(version: str) -> str:
    return sys.executable if version == "installed" else str(VENVS / f"triton-{version}" / "bin" / "python")


# ------------------------------------------------------------------------------------ kernels
@dataclass(frozen=True)
class Kernel:
    """A kernel of the matrix: ``module.attr`` launched by ``recipe`` (a function of this module)."""

    name: str
    module: str
    attr: str
    recipe: str
    uses_dot: bool = True  # the attention kernels: must use tensor cores and pipeline their loops
    per_head_dim: bool = True
    variant: dict | None = None


KERNELS = (
    Kernel("chunk fwd", "vin_kernels.triton.chunk_attention", "_fwd_kernel", "chunk"),
    Kernel("chunk bwd dq", "vin_kernels.triton.chunk_attention", "_bwd_dq_kernel", "chunk"),
    Kernel("chunk bwd dk/dv", "vin_kernels.triton.chunk_attention", "_bwd_dkdv_kernel", "chunk"),
    Kernel("chunk bwd dk/dv, context_grad=False", "vin_kernels.triton.chunk_attention", "_bwd_dkdv_kernel", "chunk",
           variant={"context_grad": False}),
    Kernel("chunk bwd dglobal", "vin_kernels.triton.chunk_attention", "_bwd_dglobal_kernel", "chunk"),
    Kernel("global fwd", "vin_kernels.triton.global_attention", "_fwd_kernel", "global"),
    Kernel("global bwd dq", "vin_kernels.triton.global_attention", "_bwd_dq_kernel", "global"),
    Kernel("global bwd dk/dv", "vin_kernels.triton.global_attention", "_bwd_dkdv_kernel", "global"),
    Kernel("merge", "vin_kernels.triton.merge_attention", "_merge_kernel", "merge", uses_dot=False),
    Kernel("overlap_fuse", "vin_kernels.triton.overlap_fuse", "_overlap_fuse_kernel", "overlap_fuse",
           uses_dot=False, per_head_dim=False),
    Kernel("anchor: dense FA2 fwd", "vin_bench.anchors.flash_attention", "_fwd_kernel", "anchor"),
)
KERNELS_BY_NAME = {k.name: k for k in KERNELS}
ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _meta(*shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


# ------------------------------------------------------------------------------------ recipes
def _recipe_chunk(head_dim: int, dtype, variant: dict) -> None:
    from vin_kernels.triton import chunk_attention

    s = SHAPE
    T, B, H = s["tokens_per_frame"], s["batch"], s["heads"]
    q = _meta(B, s["frames"] * T, H, head_dim, dtype=dtype)
    g = _meta(B, s["globals"], H, head_dim, dtype=dtype)
    cs, ctx, scale = s["chunk_frames"] * T, s["context_frames"] * T, head_dim**-0.5
    o, lse = chunk_attention.forward(q, q, q, g, g, cs, ctx, scale)
    chunk_attention.backward(q, None, q, q, q, g, g, o, lse, cs, ctx, variant.get("context_grad", True), scale)


def _recipe_global(head_dim: int, dtype, variant: dict) -> None:
    from vin_kernels.triton import global_attention

    s = SHAPE
    T, B, H = s["tokens_per_frame"], s["batch"], s["heads"]
    gq = _meta(B, s["globals"], H, head_dim, dtype=dtype)
    k = _meta(B, s["frames"] * T, H, head_dim, dtype=dtype)
    o, lse = global_attention.forward(gq, k, k, T, s["keyframe_stride"], 0, head_dim**-0.5)
    global_attention.backward(gq, None, gq, k, k, o, lse, T, s["keyframe_stride"], 0, head_dim**-0.5)


def _recipe_merge(head_dim: int, dtype, variant: dict) -> None:
    import torch

    from vin_kernels.triton import merge_attention

    s = SHAPE
    B, N, H = s["batch"], s["globals"], s["heads"]
    o = _meta(B, N, H, head_dim, dtype=dtype)
    lse = _meta(B, H, N, dtype=torch.float32)
    merge_attention.forward(o, lse, o, lse)


def _recipe_overlap_fuse(head_dim: int, dtype, variant: dict) -> None:
    import torch

    from vin_kernels.triton import overlap_fuse

    B, n, W, C = 1, 4, 20, 16 * 24 * 40  # 4 windows of 20 latent frames, 16 channels of 24 x 40
    eps = _meta(B, n, W, C, dtype=dtype)
    table = (_meta(73, dtype=torch.int32), _meta(96, dtype=torch.int32), _meta(96, dtype=torch.int32),
             _meta(96, dtype=torch.float32))
    out = _meta(B, 72, C, dtype=dtype)
    overlap_fuse.overlap_fuse(eps, table, out, (0.9, 0.1), out, False)


def _recipe_anchor(head_dim: int, dtype, variant: dict) -> None:
    """The anchor with every tile option the chunk forward may pick for this dtype."""
    from vin_bench.anchors import flash_attention
    from vin_kernels.triton import chunk_attention

    s = SHAPE
    q = _meta(s["batch"], s["frames"] * s["tokens_per_frame"], s["heads"], head_dim, dtype=dtype)
    for block_m, block_n, warps, stages in chunk_attention._fwd_kernel.vin_tuning.options[q.element_size()]:
        flash_attention.forward(q, q, q, head_dim**-0.5, block_m, block_n, warps, stages)


RECIPES = {"chunk": _recipe_chunk, "global": _recipe_global, "merge": _recipe_merge,
           "overlap_fuse": _recipe_overlap_fuse, "anchor": _recipe_anchor}


def _launch(kernel: Kernel, head_dim: int, dtype_name: str, index: int) -> tuple[object, tuple, dict]:
    """``(jit function, args, kwargs incl. num_warps/num_stages)`` of option ``index`` of a launch of ``kernel``."""
    import importlib

    from triton.runtime.autotuner import Autotuner

    objects = {k.name: getattr(importlib.import_module(k.module), k.attr) for k in KERNELS}
    calls: dict[int, list] = {id(obj): [] for obj in objects.values()}

    def recorder(obj):
        def record(*args, grid, warmup, **kwargs):
            calls[id(obj)].append((args, kwargs))

        return record

    for obj in objects.values():
        obj.run = recorder(obj)  # a launcher's obj[grid](...) calls obj.run: nothing runs or compiles
    try:
        RECIPES[kernel.recipe](head_dim, _torch_dtype(dtype_name), kernel.variant or {})
    finally:
        for obj in objects.values():
            obj.__dict__.pop("run", None)
    obj = objects[kernel.name]
    if isinstance(obj, Autotuner):
        args, kwargs = calls[id(obj)][0]
        block_m, block_n, warps, stages = obj.vin_tuning.options[ELEMENT_BYTES[dtype_name]][index]
        return obj.fn, args, {**kwargs, "BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps,
                              "num_stages": stages}
    args, kwargs = calls[id(obj)][index]
    return obj, args, kwargs


def kernel_options(kernel: Kernel, dtype: str, head_dim: int, arch: str) -> list[dict]:
    """The options a launch of ``kernel`` chooses from, marked as the device-aware pruning of
    :mod:`vin_kernels.triton.tiles` marks them for ``arch``: ``option`` (BLOCK_M, BLOCK_N, warps,
    stages; None for kernels with one fixed launch), ``shared_estimate`` (the tile model's bytes),
    ``pickable`` (fits the arch), ``pick`` (the first pickable: what ``VIN_KERNELS_AUTOTUNE=0`` runs)."""
    import importlib

    import triton

    from vin_kernels.triton import tiles

    elem = ELEMENT_BYTES[dtype]
    if kernel.recipe == "anchor":  # the chunk forward's options on a head dim padded to a power of two
        tuning = importlib.import_module("vin_kernels.triton.chunk_attention")._fwd_kernel.vin_tuning
        d = triton.next_power_of_2(head_dim)
        options = [(o, tiles.shared_fwd(o, d, 0, elem, ARCHS[arch])) for o in tuning.options[elem]]
        fitting = [o for o, need in options if need <= ARCHS[arch].shared_per_block]
    elif (tuning := getattr(getattr(importlib.import_module(kernel.module), kernel.attr), "vin_tuning", None)):
        options = tuning.estimates(ARCHS[arch], elem, head_dim)
        fitting = tuning.fitting(ARCHS[arch], elem, head_dim)
    else:
        return [{"option": None, "shared_estimate": None, "pickable": True, "pick": True}]
    first = fitting[0] if fitting else None
    return [{"option": list(o), "shared_estimate": need, "pickable": o in fitting, "pick": o == first}
            for o, need in options]


OPTION_SETS = ("all", "pickable", "pick")


def matrix_jobs(matrix, options: str = "all", kernels=KERNELS) -> list[dict]:
    """One job per kernel option of the matrix's blocks (archs, dtypes, head dims). ``options``:
    ``"all"`` listed (those the pruning drops are compiled to check the shared-memory estimate),
    ``"pickable"`` (what autotuning chooses from) or ``"pick"`` (what ``VIN_KERNELS_AUTOTUNE=0`` runs)."""
    if options not in OPTION_SETS:
        raise ValueError(f"options must be one of {OPTION_SETS}, got {options!r}")
    jobs = []
    for archs, dtypes, head_dims in matrix:
        for arch in archs:
            for dtype in dtypes:
                for kernel in kernels:
                    for head_dim in head_dims if kernel.per_head_dim else head_dims[:1]:
                        for index, option in enumerate(kernel_options(kernel, dtype, head_dim, arch)):
                            if options == "all" or option[options]:
                                jobs.append(dict(kernel=kernel.name, head_dim=head_dim, dtype=dtype, arch=arch,
                                                 index=index, **option))
    return jobs


# ------------------------------------------------------------------------------------ compile + read
def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def supported(device) -> bool | str:
    """Any device: only the triton package with its CUDA backend's ptxas and cuobjdump is needed."""
    try:
        found = all(Path(_tool(name)).exists() for name in ("ptxas", "cuobjdump"))
    except ImportError:
        found = False
    return True if found else "needs the triton package with its CUDA backend (ptxas, cuobjdump)"


_SASS_OP = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9]*)")


def _loops(ttgir: str) -> tuple[int, int]:
    """``(loops with tensor loads from global memory, those whose every such load is an async copy)``.

    A load is a ``tt.load`` of a tensor of pointers (or a TMA ``descriptor_load``) in the body of an
    ``scf.for``; after Triton's software pipelining it becomes ``ttg.async_copy_global_to_local``
    (cp.async) or ``ttng.async_tma_copy_global_to_local`` (TMA), issued stages ahead of its use.
    """
    stack: list[list] = []  # [indent, plain loads, async loads]
    found = []
    for line in ttgir.splitlines():
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if stack and text.startswith("}") and indent == stack[-1][0]:
            found.append(stack.pop())
            continue
        if "scf.for" in text and text.endswith("{"):
            stack.append([indent, 0, 0])
            continue
        if not stack:
            continue
        if ("tt.load " in text and "tensor<" in text and "!tt.ptr" in text) or "tt.descriptor_load" in text:
            stack[-1][1] += 1
        elif "async_copy_global_to_local" in text or "async_tma_copy_global_to_local" in text:
            stack[-1][2] += 1
    with_loads = [f for f in found if f[1] + f[2] > 0]
    return len(with_loads), sum(1 for f in with_loads if f[1] == 0)


def _read_compiled(compiled, arch: str, num_warps: int) -> dict:
    asm = compiled.asm
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    ops: dict[str, int] = {}
    for op in _SASS_OP.findall(sass):
        ops[op] = ops.get(op, 0) + 1
    ptx = asm["ptx"]
    tma = len(re.findall(r"cp\.async\.bulk\.tensor", ptx))
    cp_async = len(re.findall(r"cp\.async\.(?:ca|cg)\.shared", ptx))
    tcgen05 = len(re.findall(r"tcgen05\.mma", ptx))
    loops, pipelined = _loops(asm["ttgir"])
    shared = int(compiled.metadata.shared)
    warps, limit = occupancy(ARCHS[arch], registers, shared, num_warps)
    return {
        "registers": registers,
        "spill_bytes": stack,
        "local_loads": ops.get("LDL", 0),
        "local_stores": ops.get("STL", 0),
        "shared_bytes": shared,
        "shared_limit_bytes": ARCHS[arch].shared_per_block,
        "tensor_core": ("tcgen05" if tcgen05 else "wgmma" if ops.get("HGMMA") else "mma.sync" if ops.get("HMMA")
                        else "none"),
        "wgmma": ops.get("HGMMA", 0),
        "mma_sync": ops.get("HMMA", 0),
        "tcgen05": tcgen05,
        "async_copy": "TMA" if tma else "cp.async" if cp_async else "none",
        "cp_async": cp_async,
        "tma": tma,
        "loops_with_loads": loops,
        "pipelined_loops": pipelined,
        "resident_warps": warps,
        "occupancy_limit": limit,
    }


def _cache_dir() -> Path:
    if "VIN_BENCH_STATIC_CACHE" in os.environ:
        return Path(os.environ["VIN_BENCH_STATIC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vin-kernels" / "static"


_READ_VERSION = "2"  # bump when _read_compiled changes what it reports


class _StaticDriver:
    """Triton's active driver in a compile worker: the target is the arch compiled for, no GPU is asked.

    ``JITFunction.run(..., warmup=True)`` asks the driver only for the device, its stream and its
    target, then specializes and compiles as on a GPU. The device number is the capability, so the
    kernels' per-device caches keep the archs apart.
    """

    def __init__(self, arch: str):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", ARCHS[arch].capability, 32)

    def get_current_device(self) -> int:
        return self.target.arch

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _compile_one(fn, args, kwargs, arch: str) -> dict:
    """Compile like a launch on ``arch`` (cached by source hash and Triton's specialization), read the result."""
    import triton
    from triton import knobs
    from triton.runtime.driver import driver

    found = {}

    def cache_hook(*, compile, **_):  # Triton calls it with the specialization just before compiling
        text = json.dumps([fn.cache_key, compile["specialization_data"], arch, triton.__version__, _READ_VERSION])
        found["path"] = _cache_dir() / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
        return found["path"].exists()  # True: skip the compile, the result is cached

    driver.set_active(_StaticDriver(arch))  # for the rest of this worker process's life
    knobs.runtime.jit_cache_hook = cache_hook
    fn.device_caches.clear()
    start = time.perf_counter()
    try:
        compiled = fn.run(*args, grid=(1,), warmup=True, **kwargs)
    finally:
        knobs.runtime.jit_cache_hook = None
    if compiled is None:
        return {**json.loads(found["path"].read_text()), "cached": True}
    seconds = time.perf_counter() - start
    info = {**_read_compiled(compiled, arch, compiled.metadata.num_warps), "num_warps": compiled.metadata.num_warps,
            "num_stages": compiled.metadata.num_stages, "compile_s": round(seconds, 2)}
    cache = found["path"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(cache)
    return {**info, "cached": False}


def compile_job(job: dict) -> dict:
    """The row of one job of :func:`matrix_jobs`: the option compiled and read (runs in a worker process)."""
    import triton

    kernel = KERNELS_BY_NAME[job["kernel"]]
    row = {"kernel": kernel.name, "head_dim": job["head_dim"] if kernel.per_head_dim else 0, "dtype": job["dtype"],
           "arch": job["arch"], "triton": triton.__version__, "uses_dot": kernel.uses_dot,
           **{k: job[k] for k in ("option", "shared_estimate", "pickable", "pick")}}
    try:
        fn, args, kwargs = _launch(kernel, job["head_dim"], job["dtype"], job["index"])
        bound = dict(zip(fn.arg_names, args), **kwargs)
        row["block_m"] = bound.get("BLOCK_M", bound.get("BLOCK_R", bound.get("BLOCK_C", 0)))
        row["block_n"] = bound.get("BLOCK_N", bound.get("BLOCK_D", 0))
        row.update(_compile_one(fn, args, kwargs, job["arch"]))
    except Exception as error:  # noqa: BLE001 - reported in the row
        row.update(num_warps=(job["option"] or [0, 0, 0])[2], num_stages=(job["option"] or [0] * 4)[3],
                   error=f"{type(error).__name__}: {str(error)[:300]}")
    row["config"] = f"{row.get('block_m', '?')}x{row.get('block_n', '?')}, {row['num_warps']} warps, {row['num_stages']} stages"
    return row


def _worker_init() -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning


def _serve() -> None:
    """``python -m vin_bench.suites.static``: read ``{"jobs": [...], "workers": n}`` from stdin, compile
    them in a pool of ``n`` worker processes, print one JSON line ``{"index": i, "row": ...}`` per job as
    it finishes."""
    from vin_bench.suites import static  # the workers unpickle compile_job from the module, not __main__

    request = json.load(sys.stdin)
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(request["workers"], mp_context=context, initializer=_worker_init) as pool:
        pending = {pool.submit(static.compile_job, job): i for i, job in enumerate(request["jobs"])}
        for future in futures.as_completed(pending):
            print(json.dumps({"index": pending[future], "row": future.result()}), flush=True)


def compile_matrix(jobs: list[dict], version: str = "installed", workers: int | None = None,
                   on_row=lambda row: None) -> list[dict]:
    """Compile ``jobs`` with Triton ``version`` (see ``--triton-versions``) in a subprocess of
    ``workers`` processes (default: one per CPU); ``on_row`` is called as each finishes. Rows in job order.

    The subprocess starts without TRITON_INTERPRET: kernel modules read it when imported (under
    pytest, tests/conftest.py sets it, and every compile failed with an empty AssertionError).
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rows: list[dict | None] = [None] * len(jobs)
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([_python(version), "-m", "vin_bench.suites.static"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        proc.stdin.write(json.dumps({"jobs": jobs, "workers": workers or os.cpu_count() or 1}))
        proc.stdin.close()
        for line in proc.stdout:
            message = json.loads(line)
            rows[message["index"]] = message["row"]
            on_row(message["row"])
        if proc.wait() != 0 or any(r is None for r in rows):
            errors.seek(0)
            raise RuntimeError(f"static compile with Triton {version} failed (exit {proc.returncode}):\n"
                               f"{errors.read()[-3000:]}")
    return rows


def problems(row: dict) -> list[str]:
    """What is wrong with one compiled option.

    Every option: compiles, and needs no more shared memory than the tile model estimated (the
    pruning relies on it). Pickable options (the pruning keeps them on this arch) also: shared memory
    within the block limit; 16-bit options of the attention kernels no spills or local memory, the
    arch's tensor-core instruction (mma.sync; wgmma on sm_90; tcgen05 on sm_100), every loop that loads
    tensors pipelined with async copies; fp32 options at most :data:`FP32_SPILL_BOUND` bytes of spills.
    """
    if "error" in row:
        return [row["error"]]
    found = []
    if row.get("shared_estimate") is not None and row["shared_bytes"] > row["shared_estimate"]:
        found.append(f"shared memory {row['shared_bytes']} B > the estimate {row['shared_estimate']} B")
    if not row["pickable"]:
        return found
    if row["shared_bytes"] > row["shared_limit_bytes"]:
        found.append(f"shared memory {row['shared_bytes']} B > {row['shared_limit_bytes']} B")
    if not row["uses_dot"] or row["kernel"].startswith("anchor"):
        return found
    if row["dtype"] == "fp32":
        if row["spill_bytes"] > FP32_SPILL_BOUND:
            found.append(f"fp32 spills {row['spill_bytes']} B > {FP32_SPILL_BOUND} B")
        return found
    if row["spill_bytes"] or row["local_loads"] or row["local_stores"]:
        found.append(f"spills {row['spill_bytes']} B ({row['local_loads']} LDL, {row['local_stores']} STL)")
    wanted = ARCHS[row["arch"]].tensor_core
    if row["tensor_core"] != wanted:
        found.append(f"tensor cores: {row['tensor_core']}, expected {wanted}")
    if row["loops_with_loads"] == 0 or row["pipelined_loops"] < row["loops_with_loads"]:
        found.append(f"pipelined loops {row['pipelined_loops']} of {row['loops_with_loads']}")
    return found


def _matrix(ctx: Context) -> tuple[str, tuple, str]:
    """``(name, blocks, option set)`` of the run (see the module docstring)."""
    if ctx.full_matrix or os.environ.get("VIN_BENCH_STATIC") == "full":
        name, matrix, options = "full", FULL_MATRIX, "all"
    elif ctx.quick:
        name, matrix, options = "quick", QUICK_MATRIX, "pick"
    elif getattr(ctx.options, "full", False):
        name, matrix, options = "default", DEFAULT_MATRIX, "pickable"
    else:
        name, matrix, options = "headline", HEADLINE_MATRIX, "pick"
    archs = getattr(ctx.options, "arch", None)
    if archs:  # --arch: the matrix's dtypes and head dims on these archs
        matrix = tuple(dict.fromkeys((tuple(archs),) + tuple(block[1:]) for block in matrix))
    return name, matrix, options


def run(ctx: Context) -> dict:
    name, matrix, option_set = _matrix(ctx)
    versions = getattr(ctx.options, "triton_versions", None) or ("installed",)
    start = time.perf_counter()
    jobs = matrix_jobs(matrix, option_set)
    ticks = iter(ctx.progress(range(len(jobs) * len(versions)), desc="static: kernel options"))
    rows = []
    for version in versions:
        rows += compile_matrix(jobs, version, on_row=lambda _: next(ticks, None))
    for _ in ticks:  # let the progress bar finish
        pass
    for row in rows:
        row["problems"] = problems(row)
    return {"matrix": name, "blocks": [[list(part) for part in block] for block in matrix], "shape": SHAPE,
            "triton_versions": sorted({r["triton"] for r in rows}, key=_version_key),
            "options": option_set, "fp32_spill_bound": FP32_SPILL_BOUND,
            "workers": os.cpu_count(), "seconds": round(time.perf_counter() - start, 1),
            "compiled": sum(1 for r in rows if r.get("cached") is False), "rows": rows}


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+]", version)[:3])


# ------------------------------------------------------------------------------------ report
def _short(row: dict) -> str:
    if row.get("option"):
        m, n, w, s = row["option"]
        return f"{m}x{n}/{w}w/{s}s"
    return row.get("config", "")


def _cell(row: dict) -> list[str]:
    if "error" in row:
        return [row["error"][:60]] + [""] * 6
    loops = f"{row['pipelined_loops']}/{row['loops_with_loads']}" if row["loops_with_loads"] else "-"
    estimate = f" (est. {row['shared_estimate'] / 1024:.0f})" if row.get("shared_estimate") is not None else ""
    return [
        str(row["registers"]),
        f"{row['spill_bytes']} B" + (f" ({row['local_loads']}/{row['local_stores']})" if row["spill_bytes"] else ""),
        f"{row['shared_bytes'] / 1024:.0f}{estimate} / {row['shared_limit_bytes'] / 1024:.0f} KB",
        row["tensor_core"],
        f"{row['async_copy']} {loops}",
        f"{row['resident_warps']} ({row['occupancy_limit']})",
        "; ".join(row["problems"]) or "ok",
    ]


def _by(rows, *keys) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def where_it_compiles(rows: list[dict]) -> str:
    """Per arch and Triton version: problems among the pickable 16-bit options, and the fp32 options'
    worst shared memory and spills (a markdown table)."""
    versions = sorted({r["triton"] for r in rows}, key=_version_key)
    head = "| arch (GPUs) | shared / block | " + " | ".join(f"Triton {v}: 16-bit | fp32" for v in versions) + " |"
    lines = [head, "| --- | ---: |" + " ---: | --- |" * len(versions)]
    for arch in [a for a in ARCH_NAMES if any(r["arch"] == a for r in rows)]:
        cells = []
        for version in versions:
            group = [r for r in rows if r["arch"] == arch and r["triton"] == version and r["pickable"]]
            half = [r for r in group if r["dtype"] != "fp32"]
            cells.append(f"{sum(1 for r in half if r['problems'])}/{len(half)} problems" if half else "-")
            full = [r for r in group if r["dtype"] == "fp32" and "error" not in r and r["uses_dot"]]
            bad = sum(1 for r in group if r["dtype"] == "fp32" and r["problems"])
            cells.append(f"{bad}/{len(full)} problems; <= {max(r['shared_bytes'] for r in full) / 1024:.0f} KB, "
                         f"spills <= {max(r['spill_bytes'] for r in full)} B" if full else "-")
        lines.append(f"| {arch} ({ARCHS[arch].gpus}) | {ARCHS[arch].shared_per_block / 1024:.0f} KB | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per kernel, arch, dtype and Triton version: the worst case over head dims and pickable options."""
    groups = _by([r for r in rows if "error" not in r and r["pickable"]], "kernel", "arch", "dtype", "triton")
    lines = ["| kernel | arch | dtype | Triton | options x D | registers | spill bytes | shared | tensor cores | "
             "pipelined loops | warps/SM |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for (kernel, arch, dtype, version), group in groups.items():
        cores = "/".join(sorted({r["tensor_core"] for r in group}))
        loops = [r for r in group if r["loops_with_loads"]]
        warps = sorted(r["resident_warps"] for r in group)
        lines.append(
            f"| {kernel} | {arch} | {dtype} | {version} | {len(group)} | {min(r['registers'] for r in group)}-"
            f"{max(r['registers'] for r in group)} | {max(r['spill_bytes'] for r in group)} | "
            f"{max(r['shared_bytes'] for r in group) / 1024:.0f} KB | {cores} | "
            f"{sum(r['pipelined_loops'] for r in loops)}/{sum(r['loops_with_loads'] for r in loops)} | "
            f"{warps[0]}-{warps[-1]} |"
        )
    return "\n".join(lines)


def markdown(result: dict, brief: bool = False) -> str:
    """The report; ``brief``: up to the worst-case table (what the README shows)."""
    rows = result["rows"]
    pickable = [r for r in rows if r["pickable"]]
    bad = [r for r in pickable if r["problems"]]
    estimate_bad = [r for r in rows if any("estimate" in p for p in r["problems"])]
    lines = [
        f"Every Triton kernel compiled as a launch on each arch specializes it (matrix *{result['matrix']}*: "
        + " + ".join(f"{'/'.join(a)} x {'/'.join(t)} x D in {d}" for a, t, d in result["blocks"])
        + f"; Triton {', '.join(result['triton_versions'])}; {len(rows)} kernel options, {result['compiled']} "
        f"compiled now, the rest from the cache; {result['seconds']} s with {result['workers']} CPUs). *Pickable*: "
        "the options the device-aware pruning keeps (shared-memory estimate within the arch's limit); *pick*: the "
        "first of them, what VIN_KERNELS_AUTOTUNE=0 runs. Registers per thread; spill bytes (local loads/stores in "
        "SASS); dynamic shared memory (the tile model's estimate) / the arch's limit per block; tensor-core "
        "instruction; async copies (loops whose every tensor load is pipelined / loops that load); resident warps "
        "per SM (limited by). *anchor*: a plain dense FlashAttention-2 forward (`vin_bench/anchors/flash_attention.py`) "
        "compiled the same way, with the chunk forward's options.",
        "",
        f"Problems among the pickable options (16-bit: spills, shared memory over the limit, no "
        f"mma.sync/wgmma/tcgen05, unpipelined loops; fp32: shared memory, spills over "
        f"{result['fp32_spill_bound']} B): **{len(bad)}** of {len(pickable)}. Shared memory over the tile "
        f"model's estimate: **{len(estimate_bad)}** of {len(rows)} options ("
        + {"all": "every listed option compiled, pickable or not).", "pickable": "the pickable options compiled).",
           "pick": "only the option each kernel picks without autotuning compiled)."}[result["options"]],
        "",
        "### Where it compiles",
        "",
        where_it_compiles(rows),
        "",
        "### Worst case per kernel over head dims and pickable options",
        "",
        summary(rows),
    ]
    if brief:
        return "\n".join(lines + ["", "Every option, one row each: the raw results' markdown."])
    for (version, arch, dtype), group in _by(rows, "triton", "arch", "dtype").items():
        lines += ["", f"### Triton {version}, {arch}, {dtype}", "",
                  "| kernel | D | option | pick | regs | spill (LDL/STL) | shared (est.) / limit | tensor cores "
                  "| async copies (pipelined loops) | warps/SM | problems |",
                  "| --- | ---: | --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- |"]
        for r in group:
            mark = "**pick**" if r["pick"] else "candidate" if r["pickable"] else "pruned"
            lines.append(f"| {r['kernel']} | {r['head_dim'] or '-'} | {_short(r)} | {mark} | " + " | ".join(_cell(r))
                         + " |")
    return "\n".join(lines)


MATRIX_COVERAGE = {"quick": 0, "headline": 1, "default": 2, "full": 3}


def coverage(result: dict) -> int:
    """How much of the matrix a run compiled (the report shows the widest run: the full matrix over a slice)."""
    return MATRIX_COVERAGE.get(result["matrix"], 0)


def headline(result: dict) -> list[str]:
    """The summary line: per Triton version, problems among the 16-bit options the archs may pick; the
    fp32 options' problems, worst shared memory and spills."""
    pickable = [r for r in result["rows"] if r["pickable"]]
    if not pickable:
        return []
    archs = sorted({r["arch"] for r in pickable}, key=ARCH_NAMES.index)
    where = f"{len(archs)} archs ({archs[0]}-{archs[-1]})" if len(archs) > 2 else ", ".join(archs)
    groups = sorted(_by(pickable, "triton").items(), key=lambda kv: _version_key(kv[0][0]))
    half = ", ".join(f"Triton {v} {sum(1 for r in g if r['dtype'] != 'fp32' and r['problems'])} of "
                     f"{sum(1 for r in g if r['dtype'] != 'fp32')}" for (v,), g in groups)
    line = f"16-bit options with problems on {where}: {half}"
    full = [r for r in pickable if r["dtype"] == "fp32" and "error" not in r and r["uses_dot"]]
    if full:
        line += (f"; fp32: {sum(1 for r in full if r['problems'])} of {len(full)} with problems, shared <= "
                 f"{max(r['shared_bytes'] for r in full) / 1024:.0f} KB, spills <= {max(r['spill_bytes'] for r in full)} B")
    return [line]


def readme_markdown(result: dict) -> str:
    """The README's part of the report: :func:`markdown` without the per-option tables."""
    return markdown(result, brief=True)


if __name__ == "__main__":
    _serve()
