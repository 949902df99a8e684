"""static suite (any machine with the triton package, no GPU): the code a GPU would run, read off the compiler.

Every Triton kernel of vin_kernels, and the dense FlashAttention-2 forward anchor of
:mod:`vin_bench.anchors.flash_attention`, is compiled for sm_90 (H100/H200) and sm_80 (A100) with
``triton.compile`` exactly as a launch on a GPU would compile it:

* the kernel's own launcher (``vin_kernels.triton.<op>.forward/backward``) is called on meta tensors
  of a paper-sized problem (:data:`SHAPE`) with the kernel's ``run`` replaced by a recorder, so the
  arguments are the launcher's own;
* the autotuner's pruner (``prune_configs``, with ``attention_core.prune_by_element_size``) picks the
  options a launch would try, and each is compiled;
* types, constexprs and ``tt.divisibility`` attributes come from Triton's launch path itself
  (``create_function_from_signature`` + ``JITFunction._pack_args``, the two steps
  ``JITFunction.run`` takes before ``triton.compile``): 16-byte aligned pointers (meta tensors report
  address 0) and integers divisible by 16 get ``tt.divisibility = 16``, integers equal to 1 become
  constants. Without these attributes nothing is pipelined and shared memory reads 2-3x low.

From each compiled kernel: registers per thread, spill bytes (``STACK``) from ``cuobjdump
-res-usage``; local loads/stores (``LDL``/``STL``), ``HGMMA`` (wgmma) and ``HMMA`` (mma.sync) from
``cuobjdump -sass``; ``cp.async`` and ``cp.async.bulk.tensor`` (TMA) from the PTX; which loops have
every tensor load turned into an async copy (software-pipelined) from the TTGIR; the dynamic shared
memory from ``metadata.shared``; and the occupancy (resident warps per SM) of the CUDA occupancy
calculator. ptxas and cuobjdump ship in the triton wheel.

One compile takes 1.5-3 s on a 2-core CPU. Results are cached per compiled kernel under
``$XDG_CACHE_HOME/vin-kernels/static`` (``~/.cache`` by default; ``VIN_BENCH_STATIC_CACHE``
overrides), keyed by the kernel's source hash (Triton's ``JITFunction.cache_key``, which covers
every ``@triton.jit`` function it calls), its specialization, options, target and the Triton version.
The default run covers :data:`DEFAULT_MATRIX`; ``--full-matrix`` (or ``VIN_BENCH_STATIC=full``) compiles :data:`FULL_MATRIX`,
``--quick`` only :data:`QUICK_MATRIX`.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import Context

ARCHS = {"sm_90": 90, "sm_80": 80}
DTYPES = ("bf16", "fp16", "fp32")
HEAD_DIMS = (64, 72, 80, 96, 128)
# Per run size, blocks of (archs, dtypes, head dims), each compiled as their product. fp32 kernels
# (exact dots on FMA units) take 10-40 s each to compile, 16-bit ones 1-3 s (2-core CPU).
FULL_MATRIX = ((tuple(ARCHS), DTYPES, HEAD_DIMS),)
DEFAULT_MATRIX = ((tuple(ARCHS), ("bf16",), HEAD_DIMS), (("sm_80",), ("fp32",), (128,)))
QUICK_MATRIX = ((("sm_90",), ("bf16",), (128,)),)
# What tests/build/test_triton_compile.py enforces (fp16 compiles to the same code as bf16 but for the
# conversions).
ENFORCED_MATRIX = (tuple(ARCHS), ("bf16",), HEAD_DIMS)

# The problem the launchers are called with: the paper preset's attention (240 tokens per latent
# frame, 40 latent frames, chunks of 20 frames with 8 frames of context, 512 global tokens,
# keyframes every 5th frame), batch 2, 16 heads. Only divisibility by 16 and equality to 1 of the
# integer arguments reach the compiler.
SHAPE = dict(batch=2, heads=16, tokens_per_frame=240, frames=40, chunk_frames=20, context_frames=8, globals=512,
             keyframe_stride=5)


@dataclass(frozen=True)
class Limits:
    """Per-SM resources of a compute capability (CUDA occupancy calculator, CUDA C++ Programming Guide)."""

    shared_per_block: int  # the opt-in maximum of dynamic shared memory per block
    shared_per_sm: int
    registers_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    register_unit: int = 256  # registers are allocated per warp in units of 256
    warp_unit: int = 4  # ... to groups of 4 warps
    shared_unit: int = 128
    shared_reserved_per_block: int = 1024  # the runtime reserves 1 KB of shared memory per block (sm_80+)


LIMITS = {"sm_90": Limits(shared_per_block=227 * 1024, shared_per_sm=228 * 1024),
          "sm_80": Limits(shared_per_block=163 * 1024, shared_per_sm=164 * 1024)}


def occupancy(arch: str, registers: int, shared: int, num_warps: int) -> tuple[int, str]:
    """``(resident warps per SM, what limits them)`` for blocks of ``num_warps`` warps.

    Blocks per SM = min over: ``max_warps / num_warps``; registers: ``floor(floor(65536 / ceil(32 *
    registers, 256), 4) / num_warps)``; shared memory: ``shared_per_sm / ceil(shared + 1 KB, 128)``.
    """
    lim = LIMITS[arch]
    by_warps = min(lim.max_blocks_per_sm, lim.max_warps_per_sm // num_warps)
    per_warp = -(-registers * 32 // lim.register_unit) * lim.register_unit
    warps_by_regs = (lim.registers_per_sm // per_warp) // lim.warp_unit * lim.warp_unit
    by_regs = warps_by_regs // num_warps
    block_shared = -(-(shared + lim.shared_reserved_per_block) // lim.shared_unit) * lim.shared_unit
    by_shared = lim.shared_per_sm // block_shared if shared <= lim.shared_per_block else 0
    blocks, limit = min((by_warps, "warps"), (by_regs, "registers"), (by_shared, "shared"), key=lambda x: x[0])
    return blocks * num_warps, limit


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


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _meta(*shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


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
    for block_m, block_n, warps, stages in chunk_attention._FWD_OPTIONS[q.element_size()]:
        flash_attention.forward(q, q, q, head_dim**-0.5, block_m, block_n, warps, stages)


RECIPES = {"chunk": _recipe_chunk, "global": _recipe_global, "merge": _recipe_merge,
           "overlap_fuse": _recipe_overlap_fuse, "anchor": _recipe_anchor}


def _launches(kernel: Kernel, head_dim: int, dtype_name: str) -> list[tuple[object, tuple, dict]]:
    """Every ``(jit function, args, kwargs incl. num_warps/num_stages)`` a launch would compile."""
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
    launches = []
    for args, kwargs in calls[id(obj)]:
        if isinstance(obj, Autotuner):
            obj.nargs = dict(zip(obj.arg_names, args))
            for config in obj.prune_configs(kwargs):
                launches.append((obj.fn, args, {**kwargs, **config.all_kwargs()}))
        else:
            launches.append((obj, args, kwargs))
    return launches


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
    loops, pipelined = _loops(asm["ttgir"])
    shared = int(compiled.metadata.shared)
    warps, limit = occupancy(arch, registers, shared, num_warps)
    return {
        "registers": registers,
        "spill_bytes": stack,
        "local_loads": ops.get("LDL", 0),
        "local_stores": ops.get("STL", 0),
        "shared_bytes": shared,
        "shared_limit_bytes": LIMITS[arch].shared_per_block,
        "tensor_core": "wgmma" if ops.get("HGMMA") else "mma.sync" if ops.get("HMMA") else "none",
        "wgmma": ops.get("HGMMA", 0),
        "mma_sync": ops.get("HMMA", 0),
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


_READ_VERSION = "1"  # bump when _read_compiled changes what it reports


def _compile_one(fn, args, kwargs, arch: str) -> dict:
    """Specialize like ``JITFunction.run``, compile for ``arch`` (cached by source hash), read the result."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", ARCHS[arch], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    key_text = json.dumps([fn.cache_key, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                           sorted((str(k), v) for k, v in attrs.items()), repr(sorted(options.__dict__.items())),
                           arch, triton.__version__, _READ_VERSION])
    key = hashlib.sha256(key_text.encode()).hexdigest()
    cache = _cache_dir() / f"{key}.json"
    if cache.exists():
        return {**json.loads(cache.read_text()), "cached": True}
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    seconds = time.perf_counter() - start
    info = {**_read_compiled(compiled, arch, options.num_warps), "num_warps": options.num_warps,
            "num_stages": options.num_stages, "compile_s": round(seconds, 2)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(cache)
    return {**info, "cached": False}


def compile_rows(kernel: Kernel, head_dim: int, dtype: str, arch: str) -> list[dict]:
    """One row per option a launch of ``kernel`` may pick (runs in a worker process)."""
    base = {"kernel": kernel.name, "head_dim": head_dim if kernel.per_head_dim else 0, "dtype": dtype, "arch": arch,
            "uses_dot": kernel.uses_dot}
    try:
        launches = _launches(kernel, head_dim, dtype)
    except Exception as error:  # noqa: BLE001 - reported in the row
        return [{**base, "config": "", "error": f"launch: {type(error).__name__}: {error}"}]
    rows = []
    for fn, args, kwargs in launches:
        bound = dict(zip(fn.arg_names, args), **kwargs)
        block_m = bound.get("BLOCK_M", bound.get("BLOCK_R", bound.get("BLOCK_C", 0)))
        block_n = bound.get("BLOCK_N", bound.get("BLOCK_D", 0))
        row = {**base, "block_m": block_m, "block_n": block_n}
        try:
            row.update(_compile_one(fn, args, kwargs, arch))
        except Exception as error:  # noqa: BLE001
            row.update(num_warps=kwargs.get("num_warps"), num_stages=kwargs.get("num_stages"),
                       error=f"compile: {type(error).__name__}: {str(error)[:300]}")
        row["config"] = f"{block_m}x{block_n}, {row['num_warps']} warps, {row['num_stages']} stages"
        rows.append(row)
    return rows


def _worker_init() -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning


def matrix_jobs(archs, dtypes, head_dims, kernels=KERNELS) -> list[tuple[Kernel, int, str, str]]:
    jobs = []
    for arch in archs:
        for dtype in dtypes:
            for kernel in kernels:
                for head_dim in head_dims if kernel.per_head_dim else head_dims[:1]:
                    jobs.append((kernel, head_dim, dtype, arch))
    return jobs


def compile_matrix(jobs, workers: int | None = None, progress=lambda it, **_: it) -> list[dict]:
    """Compile every job in ``workers`` processes (default: one per CPU); rows in job order."""
    workers = workers or os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    # The workers compile, never interpret. Kernel modules read TRITON_INTERPRET when they are
    # imported, which a spawned worker does while unpickling its first job (before any initializer):
    # the variable must be absent from the environment the workers start with (under pytest,
    # tests/conftest.py sets it, and every compile failed with an empty AssertionError).
    interpret = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            pending = [pool.submit(compile_rows, *job) for job in jobs]
            for _ in zip(futures.as_completed(pending), progress(range(len(pending)), desc="static")):
                pass
            return [row for future in pending for row in future.result()]
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret


def problems(row: dict) -> list[str]:
    """What is wrong with one compiled option, against issue 9's bar.

    Every option: compiles, shared memory within the block limit. 16-bit options of the attention
    kernels also: no spills or local memory, wgmma on sm_90 (mma.sync on sm_80), every loop that
    loads tensors pipelined with async copies.
    """
    if "error" in row:
        return [row["error"]]
    found = []
    if row["shared_bytes"] > row["shared_limit_bytes"]:
        found.append(f"shared memory {row['shared_bytes']} B > {row['shared_limit_bytes']} B")
    if row["dtype"] == "fp32" or not row["uses_dot"] or row["kernel"].startswith("anchor"):
        return found
    if row["spill_bytes"] or row["local_loads"] or row["local_stores"]:
        found.append(f"spills {row['spill_bytes']} B ({row['local_loads']} LDL, {row['local_stores']} STL)")
    wanted = "wgmma" if row["arch"] == "sm_90" else "mma.sync"
    if row["tensor_core"] != wanted:
        found.append(f"tensor cores: {row['tensor_core']}, expected {wanted}")
    if row["loops_with_loads"] == 0 or row["pipelined_loops"] < row["loops_with_loads"]:
        found.append(f"pipelined loops {row['pipelined_loops']} of {row['loops_with_loads']}")
    return found


def run(ctx: Context) -> dict:
    if ctx.full_matrix or os.environ.get("VIN_BENCH_STATIC") == "full":
        name, matrix = "full", FULL_MATRIX
    elif ctx.quick:
        name, matrix = "quick", QUICK_MATRIX
    else:
        name, matrix = "default", DEFAULT_MATRIX
    start = time.perf_counter()
    jobs = [job for block in matrix for job in matrix_jobs(*block)]
    rows = compile_matrix(jobs, progress=ctx.progress)
    for row in rows:
        row["problems"] = problems(row)
    return {"matrix": name, "blocks": [[list(part) for part in block] for block in matrix], "shape": SHAPE,
            "workers": os.cpu_count(), "seconds": round(time.perf_counter() - start, 1),
            "compiled": sum(1 for r in rows if r.get("cached") is False), "rows": rows}


def _cell(row: dict) -> list[str]:
    if "error" in row:
        return [row["error"][:60]] + [""] * 6
    loops = f"{row['pipelined_loops']}/{row['loops_with_loads']}" if row["loops_with_loads"] else "-"
    return [
        str(row["registers"]),
        f"{row['spill_bytes']} B" + (f" ({row['local_loads']}/{row['local_stores']})" if row["spill_bytes"] else ""),
        f"{row['shared_bytes'] / 1024:.0f} KB",
        row["tensor_core"],
        f"{row['async_copy']} {loops}",
        f"{row['resident_warps']} ({row['occupancy_limit']})",
        "; ".join(row["problems"]) or "ok",
    ]


def summary(rows: list[dict]) -> str:
    """Per kernel, arch and dtype: the worst case over head dims and options (a markdown table)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["kernel"], r["arch"], r["dtype"]), []).append(r)
    lines = ["| kernel | arch | dtype | options x D | registers | spill bytes | shared | tensor cores | pipelined "
             "loops | warps/SM |", "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for (kernel, arch, dtype), group in groups.items():
        cores = "/".join(sorted({r["tensor_core"] for r in group}))
        loops = [r for r in group if r["loops_with_loads"]]
        piped = sum(r["pipelined_loops"] for r in loops)
        total = sum(r["loops_with_loads"] for r in loops)
        warps = sorted(r["resident_warps"] for r in group)
        lines.append(
            f"| {kernel} | {arch} | {dtype} | {len(group)} | {min(r['registers'] for r in group)}-"
            f"{max(r['registers'] for r in group)} | {max(r['spill_bytes'] for r in group)} | "
            f"{max(r['shared_bytes'] for r in group) / 1024:.0f} KB | {cores} | {piped}/{total} | "
            f"{warps[0]}-{warps[-1]} |"
        )
    return "\n".join(lines)


def markdown(result: dict, brief: bool = False) -> str:
    """The report; ``brief``: up to the worst-case table (what the README shows)."""
    rows = result["rows"]
    bad = [r for r in rows if r["problems"]]
    lines = [
        f"Every Triton kernel compiled as a launch specializes it (matrix *{result['matrix']}*: "
        + " + ".join(f"{'/'.join(a)} x {'/'.join(t)} x D in {d}" for a, t, d in result["blocks"]) + "; "
        f"{len(rows)} kernel options, {result['compiled']} compiled now, the rest from the cache; "
        f"{result['seconds']} s with {result['workers']} CPUs). Options: the ones the autotuner's pruner lets "
        "through for the dtype. Registers per thread; spill bytes (local loads/stores in SASS); dynamic shared "
        "memory; tensor-core instruction; async copies (loops whose every tensor load is pipelined / loops that "
        "load); resident warps per SM (limited by). *anchor*: a plain dense FlashAttention-2 forward "
        "(`bench/anchors/flash_attention.py`) compiled the same way, with the chunk forward's options.",
        "",
        f"Problems (16-bit: spills, shared memory over the limit, no wgmma/mma.sync, unpipelined loops; fp32: "
        f"shared memory): **{len(bad)}** of {len(rows)} options.",
        "",
        "### Worst case per kernel over head dims and options",
        "",
        summary(rows),
    ]
    if brief:
        return "\n".join(lines + ["", "Every option, one row each: the raw results' markdown."])
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["dtype"]), []).append(r)
    for (arch, dtype), group in groups.items():
        lines += ["", f"### {arch}, {dtype}", "",
                  "| kernel | D | BLOCK_M x BLOCK_N, warps, stages | regs | spill (LDL/STL) | shared | tensor cores "
                  "| async copies (pipelined loops) | warps/SM | problems |",
                  "| --- | ---: | --- | ---: | ---: | ---: | --- | --- | ---: | --- |"]
        for r in group:
            lines.append(f"| {r['kernel']} | {r['head_dim'] or '-'} | {r.get('config', '')} | " + " | ".join(_cell(r))
                         + " |")
    return "\n".join(lines)


def readme_markdown(result: dict) -> str:
    """The README's part of the report: :func:`markdown` without the per-option tables."""
    return markdown(result, brief=True)
