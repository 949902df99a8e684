"""kernels suite: every vin_kernels op against the strongest baselines, side by side in one run.

Baselines (each where it runs): PyTorch SDPA with the flash, cuDNN and memory-efficient backends
forced, on the *materialized equivalent* (chunk windows gathered into contiguous tensors with the
globals concatenated: the materialization is not timed); the *naive composite* (materialize, then
SDPA: timed whole, as a user without these kernels would run it); flash-attn and xformers when
importable. Fusion ops compare with their torch composite. Reported: median ms (with raw times),
TFLOP/s or GB/s, % of the ceilings measured at the start of the run, and each vin_kernels row's
speed-up over the best baseline (best baseline ms / vin ms).

GPU: bf16 at the paper shape (80 latent frames x 240 tokens, chunks of 20 frames with 8 of context,
512 globals, 16 heads) at D = 72 and 128, plus a sweep over N. ``--quick`` on a CPU: tiny fp32
shapes through the reference and SDPA's math backend, a smoke run of the harness only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import vin_kernels as vk
from vin_kernels import ChunkLayout, reference
from vin_kernels import flops as kernel_flops

from ..timing import measure, summary
from . import Context

PASS_FLOP_FACTOR = {"fwd": 1.0, "bwd": kernel_flops.BACKWARD_FACTOR, "fwd+bwd": 1.0 + kernel_flops.BACKWARD_FACTOR}


@dataclass(frozen=True)
class AttentionShape:
    """Chunk attention over ``frames`` latent frames of ``tokens_per_frame`` tokens (sizes in frames)."""

    name: str
    batch: int
    frames: int
    tokens_per_frame: int
    chunk: int
    context: int
    num_global: int
    heads: int
    head_dim: int
    keyframe_stride: int = 5

    @property
    def tokens(self) -> int:
        return self.frames * self.tokens_per_frame


PAPER = dict(batch=1, frames=80, tokens_per_frame=240, chunk=20, context=8, num_global=512, heads=16)
GPU_SHAPES = [
    AttentionShape("paper D=72", head_dim=72, **PAPER),
    AttentionShape("paper D=128", head_dim=128, **PAPER),
    *(
        AttentionShape(f"N={f * 240} D=72", head_dim=72, **{**PAPER, "frames": f})
        for f in (20, 40, 160)  # the sweep over N around the paper's 80 frames
    ),
]
CPU_SHAPES = [AttentionShape("tiny", 1, 4, 16, 2, 1, 8, 2, 32, keyframe_stride=2)]


# ------------------------------------------------------------------------------------ environment
def _impls(device: torch.device) -> dict[str, object]:
    """Baseline attention implementations available here: name -> SDPA backend or module."""
    if device.type != "cuda":
        return {"sdpa_math": SDPBackend.MATH}
    found: dict[str, object] = {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    if importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_func

        found["flash_attn"] = flash_attn_func
    if importlib.util.find_spec("xformers") is not None:
        import xformers.ops

        found["xformers"] = xformers.ops.memory_efficient_attention
    return found


def _vin_backends(device: torch.device, op: str) -> list[str]:
    if device.type != "cuda":
        return ["reference"]
    status = vk.backends()
    return [name for name in ("triton", "cuda") if status[name].available and op in status[name].ops]


def _sdpa(groups):
    return [F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) for q, k, v in groups]


def _attend(impl, groups):
    """Run a baseline on materialized ``[B', S, H, D]`` groups: an SDPA backend forced, SDPA's own
    choice (``impl=None``), or a flash-attn / xformers function. SDPA outputs are ``[B', H, S, D]``."""
    if impl is None:
        return _sdpa(groups)
    if isinstance(impl, SDPBackend):
        with sdpa_kernel(impl):
            return _sdpa(groups)
    return [impl(q, k, v) for q, k, v in groups]


# ------------------------------------------------------------------------------------ materialization
def materialize_chunks(q, k, v, gk, gv, shape: AttentionShape):
    """Chunk attention as dense attention: groups ``(q, k, v)`` ``[B', S, H, D]``, contiguous copies.

    Group 0 is chunk 0 (no context); group 1 stacks chunks 1..n-1, each with its context window and
    the globals concatenated. Needs ``N`` a multiple of the chunk and context <= chunk.
    """
    B, N, H, D = q.shape
    T = shape.tokens_per_frame
    cs, ctx = shape.chunk * T, shape.context * T
    n = N // cs
    groups = [(q[:, :cs].contiguous(), torch.cat([k[:, :cs], gk], 1), torch.cat([v[:, :cs], gv], 1))]
    if n > 1:

        def windows(t):  # [B, N, H, D] -> [B*(n-1), ctx+cs, H, D]
            w = t[:, cs - ctx :].unfold(1, ctx + cs, cs)  # [B, n-1, H, D, ctx+cs]
            return w.permute(0, 1, 4, 2, 3).reshape(B * (n - 1), ctx + cs, H, D)

        def with_globals(w, g):
            return torch.cat([w, g.repeat_interleave(n - 1, 0)], 1)

        rest = q[:, cs:].reshape(B * (n - 1), cs, H, D)
        groups.append((rest, with_globals(windows(k), gk), with_globals(windows(v), gv)))
    return groups


def materialize_keyframes(k, v, shape: AttentionShape):
    index = reference.keyframe_token_index(k.shape[1], shape.tokens_per_frame, shape.keyframe_stride, 0, k.device)
    return k.index_select(1, index), v.index_select(1, index)


# ------------------------------------------------------------------------------------ timing rows
def _timed_row(ctx: Context, op, shape_name, shape_args, pass_, impl, kind, fn, work: dict) -> dict:
    row = {"op": op, "shape": shape_name, "shape_args": shape_args, "pass": pass_, "impl": impl, "kind": kind}
    try:
        warmup, iters = (1, 3) if ctx.device.type != "cuda" else ((3, 10) if ctx.quick else (5, 30))
        times = measure(fn, ctx.device, warmup=warmup, iters=iters)
    except Exception as err:  # noqa: BLE001 - a baseline that cannot run here is reported, not fatal
        return row | {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    row |= {"times_ms": times, **summary(times), **work}
    seconds = row["median_ms"] * 1e-3
    if "flops" in work:
        row["tflops"] = work["flops"] / seconds / 1e12
        if ctx.ceilings:
            row["pct_of_ceiling"] = 100 * row["tflops"] / ctx.ceilings["bf16_matmul_tflops"]
    if "bytes" in work:
        row["gbps"] = work["bytes"] / seconds / 1e9
        if ctx.ceilings:
            row["pct_of_ceiling"] = 100 * row["gbps"] / ctx.ceilings["copy_gbps"]
    return row


def _backward_timer(forward, inputs):
    """Times the backward alone: the forward graph is built once (in the first, warm-up call) and kept."""
    graph = {}

    def backward():
        if not graph:
            graph["outputs"] = outputs = forward()
            graph["grads"] = [torch.randn_like(o) for o in outputs]
        return torch.autograd.grad(graph["outputs"], inputs, graph["grads"], retain_graph=True)

    return backward


def _grad_of(outputs, inputs):
    """Gradients of ``outputs`` (a list) for random upstream gradients."""
    return torch.autograd.grad(outputs, inputs, [torch.randn_like(o) for o in outputs])


def _chunk_attention_rows(ctx: Context, shape: AttentionShape, dtype) -> list[dict]:
    device = ctx.device
    B, N, H, D, G = shape.batch, shape.tokens, shape.heads, shape.head_dim, shape.num_global
    T = shape.tokens_per_frame
    sizes = {"chunk_size": shape.chunk * T, "context_size": shape.context * T}
    q, k, v = (torch.randn(B, N, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    gk, gv = (torch.randn(B, G, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    leaves = (q, k, v, gk, gv)
    do = torch.randn(B, N, H, D, device=device, dtype=dtype)
    base_flops = kernel_flops.chunk_attention_flops(B, N, H, D, sizes["chunk_size"], sizes["context_size"], G)
    args = asdict(shape)
    rows = []

    def add(pass_, impl, kind, fn):
        rows.append(_timed_row(ctx, "chunk_attention", shape.name, args, pass_, impl, kind, fn, {"flops": PASS_FLOP_FACTOR[pass_] * base_flops}))

    for backend in _vin_backends(device, "chunk_attention"):

        def forward(backend=backend):
            return vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, backend=backend, **sizes)

        add("fwd", f"vin_{backend}", "vin", lambda f=forward: f().detach())
        add("bwd", f"vin_{backend}", "vin", _backward_timer(lambda f=forward: [f()], leaves))
        add("fwd+bwd", f"vin_{backend}", "vin", lambda f=forward: torch.autograd.grad(f(), leaves, do))

    plain = [t.detach() for t in leaves]
    groups = [tuple(t.requires_grad_() for t in g) for g in materialize_chunks(*plain, shape)]
    group_leaves = [t for g in groups for t in g]
    for name, impl in _impls(device).items():

        def forward(impl=impl):
            return _attend(impl, groups)

        add("fwd", name, "baseline", lambda f=forward: [o.detach() for o in f()])
        add("bwd", name, "baseline", _backward_timer(forward, group_leaves))
        add("fwd+bwd", name, "baseline", lambda f=forward: _grad_of(f(), group_leaves))

    def naive():  # what a user without the kernel would write
        outs = _attend(None, materialize_chunks(q, k, v, gk, gv, shape))
        return torch.cat([o.transpose(1, 2).reshape(B, -1, H, D) for o in outs], 1)

    add("fwd", "naive_composite", "baseline", lambda: naive().detach())
    add("fwd+bwd", "naive_composite", "baseline", lambda: torch.autograd.grad(naive(), leaves, do))
    return rows


def _global_attention_rows(ctx: Context, shape: AttentionShape, dtype) -> list[dict]:
    device = ctx.device
    B, N, H, D, G = shape.batch, shape.tokens, shape.heads, shape.head_dim, shape.num_global
    kw = dict(tokens_per_frame=shape.tokens_per_frame, keyframe_stride=shape.keyframe_stride)
    gq = torch.randn(B, G, H, D, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, N, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    do = torch.randn(B, G, H, D, device=device, dtype=dtype)
    base_flops = kernel_flops.global_attention_flops(B, G, H, D, N, shape.tokens_per_frame, shape.keyframe_stride, 0)
    args = asdict(shape)
    rows = []

    def add(pass_, impl, kind, fn):
        rows.append(_timed_row(ctx, "global_attention", shape.name, args, pass_, impl, kind, fn, {"flops": PASS_FLOP_FACTOR[pass_] * base_flops}))

    for backend in _vin_backends(device, "global_attention"):

        def forward(backend=backend):
            return vk.global_attention(gq, k, v, backend=backend, **kw)

        add("fwd", f"vin_{backend}", "vin", lambda f=forward: f().detach())
        add("fwd+bwd", f"vin_{backend}", "vin", lambda f=forward: torch.autograd.grad(f(), (gq, k, v), do))

    kk, vv = (t.detach().requires_grad_() for t in materialize_keyframes(k.detach(), v.detach(), shape))
    group = [(gq.detach().requires_grad_(), kk, vv)]
    for name, impl in _impls(device).items():
        add("fwd", name, "baseline", lambda impl=impl: _attend(impl, group)[0].detach())
        add("fwd+bwd", name, "baseline", lambda impl=impl: _grad_of(_attend(impl, group), group[0]))

    def naive():
        key, value = materialize_keyframes(k, v, shape)
        return _attend(None, [(gq, key, value)])[0].transpose(1, 2)

    add("fwd", "naive_composite", "baseline", lambda: naive().detach())
    add("fwd+bwd", "naive_composite", "baseline", lambda: torch.autograd.grad(naive(), (gq, k, v), do))
    return rows


def _merge_rows(ctx: Context, shape: AttentionShape, dtype) -> list[dict]:
    device = ctx.device
    B, N, H, D = shape.batch, shape.tokens, shape.heads, shape.head_dim
    o_a, o_b = (torch.randn(B, N, H, D, device=device, dtype=dtype) for _ in range(2))
    lse_a, lse_b = (torch.randn(B, H, N, device=device) for _ in range(2))
    element = o_a.element_size()
    work = {"bytes": 3 * B * N * H * D * element + 3 * B * H * N * 4}  # read o_a, o_b, lse x2; write o, lse
    rows = [
        _timed_row(ctx, "merge_attention", shape.name, asdict(shape), "fwd", f"vin_{backend}", "vin",
                   lambda backend=backend: vk.merge_attention(o_a, lse_a, o_b, lse_b, backend=backend), work)
        for backend in _vin_backends(device, "merge_attention")
    ]
    rows.append(_timed_row(ctx, "merge_attention", shape.name, asdict(shape), "fwd", "torch_composite", "baseline",
                           lambda: reference.merge_attention(o_a, lse_a, o_b, lse_b), work))
    return rows


def _overlap_fuse_rows(ctx: Context, dtype) -> list[dict]:
    device = ctx.device
    if device.type == "cuda":
        cases = [("paper latent B=1", 1, ChunkLayout.windows(80, 32, 12), (4, 24, 40)), ("B=16 F=160", 16, ChunkLayout.windows(160, 32, 12), (4, 24, 40))]
    else:
        cases = [("tiny", 1, ChunkLayout.windows(40, 12, 4), (4, 8, 8))]
    rows = []
    for name, B, layout, feat in cases:
        eps = torch.randn(B, layout.num_chunks, layout.chunk_len, *feat, device=device, dtype=dtype)
        x = torch.randn(B, layout.num_frames, *feat, device=device, dtype=dtype)
        features = eps[0, 0, 0].numel()
        args = {"batch": B, "layout": repr(layout), "features": list(feat)}
        variants = {
            "blend": (dict(), eps.numel() + B * layout.num_frames * features),
            "fused_update_windows": (dict(x=x, coeffs=(0.98, -0.1), out_windows=True), 2 * eps.numel() + x.numel()),
        }
        for variant, (kwargs, elements) in variants.items():
            work = {"bytes": elements * eps.element_size()}
            for backend in _vin_backends(device, "overlap_fuse"):
                rows.append(_timed_row(ctx, "overlap_fuse", f"{name} {variant}", args, "fwd", f"vin_{backend}", "vin",
                                       lambda b=backend, kw=kwargs, e=eps, lo=layout: vk.overlap_fuse(e, lo, backend=b, **kw), work))
            rows.append(_timed_row(ctx, "overlap_fuse", f"{name} {variant}", args, "fwd", "torch_composite", "baseline",
                                   lambda kw=kwargs, e=eps, lo=layout: reference.overlap_fuse(e, lo, **kw), work))
    return rows


def _ratios(rows: list[dict]) -> None:
    """Add each vin row's speed-up over the fastest baseline of its (op, shape, pass)."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r["kind"] == "baseline" and "median_ms" in r:
            key = (r["op"], r["shape"], r["pass"])
            best[key] = min(best.get(key, float("inf")), r["median_ms"])
    for r in rows:
        key = (r["op"], r["shape"], r["pass"])
        if r["kind"] == "vin" and "median_ms" in r and key in best:
            r["ratio_to_best_baseline"] = best[key] / r["median_ms"]


def run(ctx: Context) -> dict:
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    shapes = CPU_SHAPES if ctx.device.type != "cuda" else (GPU_SHAPES[:2] if ctx.quick else GPU_SHAPES)
    jobs = [(lambda s=s: _chunk_attention_rows(ctx, s, dtype)) for s in shapes]
    jobs += [(lambda s=s: _global_attention_rows(ctx, s, dtype)) for s in shapes[:2]]
    jobs += [(lambda: _merge_rows(ctx, shapes[0], dtype)), (lambda: _overlap_fuse_rows(ctx, dtype))]
    rows = []
    for job in ctx.progress(jobs, desc="kernels"):
        rows.extend(job())
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    _ratios(rows)
    return {"dtype": str(dtype).replace("torch.", ""), "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"Median ms over many runs ({result['dtype']}), L2 flushed before each; rate = useful FLOPs or bytes / "
        "median; speed-up = fastest baseline / vin_kernels. Errors are baselines that cannot run the shape.",
        "",
        "| op | shape | pass | impl | median ms | TFLOP/s or GB/s | % of ceiling | speed-up vs best baseline |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['impl']} | error: {r['error'][:60]} | | | |")
            continue
        rate = f"{r['tflops']:.1f}" if "tflops" in r else f"{r['gbps']:.0f}"
        pct = f"{r['pct_of_ceiling']:.0f}%" if "pct_of_ceiling" in r else "-"
        ratio = f"{r['ratio_to_best_baseline']:.2f}x" if "ratio_to_best_baseline" in r else ""
        lines.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['impl']} | {r['median_ms']:.3f} | {rate} | {pct} | {ratio} |")
    return "\n".join(lines)
