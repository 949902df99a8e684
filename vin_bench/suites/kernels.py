"""kernels suite: every vin_kernels op against full attention and the strongest baselines, in one run.

Every chunk-attention row leads with *time / full*: its median time over that of SDPA full attention
over the whole sequence of N tokens (what chunking replaces), beside *FLOPs / full* (the FLOP ratio
of the two, :mod:`vin_kernels.flops`). Ratios are times over times: below 1 is faster (bold).

GPU (bf16, the paper shape: 80 latent frames x 240 tokens, chunks of 20 frames with 8 of context,
512 globals, 16 heads, D = 72 and 128; ``--full`` adds a sweep over N): the Triton / CUDA kernels
against SDPA full attention and, for the same work, PyTorch SDPA with the flash, cuDNN and
memory-efficient backends forced on the *materialized equivalent* (each group of equal chunks as
one dense problem, :func:`vin_kernels.sdpa.chunk_windows`; the materialization is not timed), the
``sdpa`` backend (materialize + SDPA, timed whole: the strongest composite a user without these
kernels would write), flash-attn and xformers when importable. Reported: median ms (with raw
times), TFLOP/s or GB/s, % of the ceilings measured at the start of the run, and the speed-up over
the fastest same-work baseline.

CPU (fp32, H=6, D=64, 60 tokens per latent frame, the paper preset's chunks of 20 latent frames with
8 of context, 128 globals): the ``sdpa`` backend (forward and forward+backward) against SDPA
full attention, FlexAttention compiled with the same mask (forward only: FlexAttention has no CPU
backward) and, with ``--full``, the pure-PyTorch reference, timed in alternation (one call of each per
round, so load from other work on a shared machine hits all alike). The default run takes the paper-like
length, 256 video frames (80 latent frames, N = 4800 tokens, about 15 s on 2 cores); ``--full`` also
128 and 512 (N = 2400 and 9600); ``--frames`` picks the lengths (at least 128 video frames, at most
:data:`CPU_MAX_VIDEO_FRAMES_GIVEN`). Median of 5 after a warm-up, thread count recorded. ``--quick`` on
a CPU: one tiny shape, a smoke run of the harness.
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
from vin_kernels.sdpa import chunk_windows

from ..flex import chunk_flex_attention
from ..timing import measure, summary
from . import Context, latent_frames, ratio_cell

PASS_FLOP_FACTOR = {"fwd": 1.0, "bwd": kernel_flops.BACKWARD_FACTOR, "fwd+bwd": 1.0 + kernel_flops.BACKWARD_FACTOR}
CPU_DEFAULT_VIDEO_FRAMES = (256,)  # the paper's 80 latent frames: N = 4800 tokens at 60 per latent frame
CPU_FULL_VIDEO_FRAMES = (128, 256, 512)  # --full: N = 2400 to 9600
# The longest --frames length on a CPU: N = 38400 tokens. SDPA full attention there is 16x the work
# at N = 9600 (fwd+bwd 3.6 s measured on 2 cores): about a minute per call, 6 minutes for the shape.
CPU_MAX_VIDEO_FRAMES_GIVEN = 2048


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

    @property
    def label(self) -> str:
        """``N=4800 (80 x 60), chunk 20 + context 8 latent frames, 128 globals, 6 heads, D=64``."""
        name = "" if self.name.startswith("N=") else f"{self.name}: "
        return (
            f"{name}N={self.tokens} ({self.frames} x {self.tokens_per_frame}), chunk {self.chunk} + context {self.context} "
            f"latent frames, {self.num_global} globals, {self.heads} heads, D={self.head_dim}"
        )

    @property
    def keyframe_label(self) -> str:
        """The global read: ``128 global queries, keyframes every 5 of 80 latent frames (N=4800), 6 heads, D=64``."""
        return (
            f"{self.num_global} global queries, keyframes every {self.keyframe_stride} of {self.frames} latent frames "
            f"(N={self.tokens}), {self.heads} heads, D={self.head_dim}"
        )

    @property
    def sizes(self) -> dict[str, int]:
        """``chunk_size`` / ``context_size`` in tokens."""
        return ChunkLayout.context(self.frames, self.chunk, self.context).attention_sizes(self.tokens_per_frame)


PAPER = dict(batch=1, frames=80, tokens_per_frame=240, chunk=20, context=8, num_global=512, heads=16)
PAPER_WINDOWS = (28, 8)  # the paper preset's inference windows: context + chunk = 28 latent frames, overlapping by 8
GPU_SHAPES = [
    AttentionShape("paper D=72", head_dim=72, **PAPER),
    AttentionShape("paper D=128", head_dim=128, **PAPER),
    *(
        AttentionShape(f"N={f * 240} D=72", head_dim=72, **{**PAPER, "frames": f})
        for f in (20, 40, 160)  # the sweep over N around the paper's 80 frames
    ),
]
CPU = dict(batch=1, tokens_per_frame=60, chunk=20, context=8, num_global=128, heads=6, head_dim=64)
CPU_QUICK_SHAPE = AttentionShape("tiny", 1, 8, 16, 4, 2, 8, 2, 32, keyframe_stride=2)


def supported(device: torch.device) -> bool:
    """Runs on any device: GPU kernels on CUDA, the sdpa backend and its peers on a CPU."""
    return True


def max_video_frames(device: torch.device) -> int | None:
    """The longest ``--frames`` length the suite takes (None: it does not read ``--frames``, as on a GPU)."""
    return None if device.type == "cuda" else CPU_MAX_VIDEO_FRAMES_GIVEN


def cpu_shapes(ctx: Context) -> list[AttentionShape]:
    """The CPU shapes: the ``--frames`` lengths of at least 128 video frames (40 latent, N = 2400) when
    given, else :data:`CPU_DEFAULT_VIDEO_FRAMES` (``--full``: :data:`CPU_FULL_VIDEO_FRAMES`)."""
    if ctx.quick:
        return [CPU_QUICK_SHAPE]
    if ctx.frames_given:  # below 40 latent frames a chunk of 20 + 8 of context is most of the video
        lengths = [f for f in ctx.video_frames if f >= 128] or [max(ctx.video_frames)]
    else:
        lengths = CPU_FULL_VIDEO_FRAMES if ctx.full else CPU_DEFAULT_VIDEO_FRAMES
    return [
        AttentionShape(f"N={latent_frames(f) * CPU['tokens_per_frame']}", frames=latent_frames(f), **CPU) for f in lengths
    ]


# ------------------------------------------------------------------------------------ environment
def _impls(device: torch.device) -> dict[str, object]:
    """Dense attention implementations for the materialized problems (GPU): name -> SDPA backend or function."""
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
        return ["sdpa"]
    status = vk.backends()
    return [name for name in ("triton", "cuda") if status[name].available and op in status[name].ops]


def _attend(impl, groups):
    """Run a dense implementation on heads-first ``[b, H, S, D]`` problems: an SDPA backend forced, or a
    flash-attn / xformers function (which take ``[b, S, H, D]``: transposed views)."""
    if isinstance(impl, SDPBackend):
        with sdpa_kernel(impl):
            return [F.scaled_dot_product_attention(q, k, v) for q, k, v in groups]
    return [impl(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) for q, k, v in groups]


def materialize_chunks(q, k, v, gk, gv, shape: AttentionShape):
    """Chunk attention as dense attention: one ``(q, k, v)`` heads-first problem per group of equal chunks."""
    return [(qq, kk, vv) for _, qq, kk, vv in chunk_windows(q, k, v, gk, gv, **shape.sizes)]


def materialize_keyframes(k, v, shape: AttentionShape):
    index = reference.keyframe_token_index(k.shape[1], shape.tokens_per_frame, shape.keyframe_stride, 0, k.device)
    return k.index_select(1, index), v.index_select(1, index)


# ------------------------------------------------------------------------------------ timing rows
# Row kinds: "vin" (vin_kernels), "full" (SDPA full attention over the whole sequence: what chunking
# replaces), "baseline" (the same work by other means: FlexAttention, dense SDPA backends on the
# materialized chunks, the sdpa composite on a GPU), "reference" (vin_kernels.reference, the spec).
def _iterations(ctx: Context) -> tuple[int, int]:
    """``(warm-up, timed)`` calls per row."""
    if ctx.device.type == "cuda":
        return (3, 10) if ctx.quick else (5, 30)
    return (1, 3) if ctx.quick else (1, 5)


def _error_text(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _timed_row(ctx: Context, op, shape_name, shape_args, pass_, impl, kind, fn, work: dict) -> dict:
    row = {"op": op, "shape": shape_name, "shape_args": shape_args, "pass": pass_, "impl": impl, "kind": kind}
    try:
        warmup, iters = _iterations(ctx)
        times = measure(fn, ctx.device, warmup=warmup, iters=iters)
    except Exception as err:  # noqa: BLE001 - a baseline that cannot run here is reported, not fatal
        return row | {"error": _error_text(err)}
    return _rated(ctx, row, times, work)


def _alternating_rows(ctx: Context, calls: list[tuple[dict, object, dict]], desc: str) -> list[dict]:
    """CPU: ``(row, fn, work)`` timed in alternation (every call's warm-up, then rounds of one call
    each), so that other work on a shared machine slows all of them alike and their ratios stay
    comparable. Rows in the order given; a call that fails is an error row."""
    warmup, iters = _iterations(ctx)
    times: dict[int, list[float]] = {}
    errors: dict[int, str] = {}
    with ctx.progress.bar(len(calls) * (warmup + iters), desc=desc) as bar:
        for i, (_, fn, _) in enumerate(calls):
            try:
                measure(fn, ctx.device, warmup=warmup, iters=0)
                times[i] = []
            except Exception as err:  # noqa: BLE001 - a baseline that cannot run here is reported, not fatal
                errors[i] = _error_text(err)
            bar.update(warmup)
        for _ in range(iters):
            for i in list(times):
                try:
                    times[i] += measure(calls[i][1], ctx.device, warmup=0, iters=1)
                except Exception as err:  # noqa: BLE001
                    errors[i] = _error_text(err)
                    del times[i]
                bar.update()
    return [row | {"error": errors[i]} if i in errors else _rated(ctx, row, times[i], work) for i, (row, _, work) in enumerate(calls)]


def _rated(ctx: Context, row: dict, times: list[float], work: dict) -> dict:
    """``row`` with its times, their median / p20 / p80, the work and the rate (and % of the ceiling)."""
    row = row | {"times_ms": times, **summary(times), **work}
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


def _chunk_inputs(shape: AttentionShape, device, dtype):
    B, N, H, D, G = shape.batch, shape.tokens, shape.heads, shape.head_dim, shape.num_global
    q, k, v = (torch.randn(B, N, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    gk, gv = (torch.randn(B, G, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, v, gk, gv


def _chunk_flops(shape: AttentionShape) -> tuple[float, float]:
    """Forward FLOPs of the chunk attention of ``shape`` and of full attention over its N tokens."""
    B, N, H, D, G = shape.batch, shape.tokens, shape.heads, shape.head_dim, shape.num_global
    sizes = shape.sizes
    chunk = kernel_flops.chunk_attention_flops(B, N, H, D, sizes["chunk_size"], sizes["context_size"], G)
    return chunk, kernel_flops.chunk_attention_flops(B, N, H, D, N, 0, 0)


def _chunk_args(shape: AttentionShape) -> dict:
    return asdict(shape) | {"tokens": shape.tokens, **shape.sizes}


def _no_grad(fn):
    """``fn`` called under ``torch.no_grad()`` (a forward timed without building a graph)."""

    def call():
        with torch.no_grad():
            return fn()

    return call


def _full_attention_calls(ctx: Context, shape: AttentionShape, dtype, full_flops: float) -> list[tuple[str, object, dict]]:
    """``(pass, fn, work)`` of SDPA full attention over the whole sequence (its default backend),
    heads-first: what chunking replaces."""
    B, N, H, D = shape.batch, shape.tokens, shape.heads, shape.head_dim
    qh, kh, vh = (torch.randn(B, H, N, D, device=ctx.device, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, N, D, device=ctx.device, dtype=dtype)

    def forward():
        return F.scaled_dot_product_attention(qh, kh, vh)

    return [
        ("fwd", _no_grad(forward), {"flops": full_flops}),
        ("fwd+bwd", lambda: torch.autograd.grad(forward(), (qh, kh, vh), do), {"flops": PASS_FLOP_FACTOR["fwd+bwd"] * full_flops}),
    ]


def _chunk_attention_rows(ctx: Context, shape: AttentionShape, dtype):
    """GPU: the kernels against full attention, dense attention on the materialized problems and the sdpa composite."""
    device = ctx.device
    B, N, H, D = shape.batch, shape.tokens, shape.heads, shape.head_dim
    sizes = shape.sizes
    leaves = _chunk_inputs(shape, device, dtype)
    q, k, v, gk, gv = leaves
    do = torch.randn(B, N, H, D, device=device, dtype=dtype)
    base_flops, full_flops = _chunk_flops(shape)
    args = _chunk_args(shape)

    def row(pass_, impl, kind, fn):
        return _timed_row(ctx, "chunk_attention", shape.label, args, pass_, impl, kind, fn, {"flops": PASS_FLOP_FACTOR[pass_] * base_flops})

    for backend in [*_vin_backends(device, "chunk_attention"), "sdpa"]:
        kind = "baseline" if backend == "sdpa" else "vin"  # on a GPU the sdpa backend is the composite baseline

        def forward(backend=backend):
            return vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, backend=backend, **sizes)

        yield row("fwd", f"vin_{backend}", kind, lambda f=forward: f().detach())
        yield row("bwd", f"vin_{backend}", kind, _backward_timer(lambda f=forward: [f()], leaves))
        yield row("fwd+bwd", f"vin_{backend}", kind, lambda f=forward: torch.autograd.grad(f(), leaves, do))

    plain = [t.detach() for t in leaves]
    groups = [tuple(t.detach().requires_grad_() for t in g) for g in materialize_chunks(*plain, shape)]
    group_leaves = [t for g in groups for t in g]
    for name, impl in _impls(device).items():

        def forward(impl=impl):
            return _attend(impl, groups)

        yield row("fwd", name, "baseline", lambda f=forward: [o.detach() for o in f()])
        yield row("bwd", name, "baseline", _backward_timer(forward, group_leaves))
        yield row("fwd+bwd", name, "baseline", lambda f=forward: _grad_of(f(), group_leaves))
    del groups, group_leaves
    for pass_, fn, work in _full_attention_calls(ctx, shape, dtype, full_flops):
        yield _timed_row(ctx, "chunk_attention", shape.label, args, pass_, "sdpa_full_attention", "full", fn, work)


def _flex_chunk_attention(q, k, v, gk, gv, shape: AttentionShape):
    """FlexAttention (torch.compile'd) with the chunk mask plus the globals appended to the keys:
    ``(run, setup_seconds)``, the setup being the block mask and the compile."""
    import time

    start = time.perf_counter()
    qh = q.transpose(1, 2).contiguous()
    kh = torch.cat([k, gk], 1).transpose(1, 2).contiguous()
    vh = torch.cat([v, gv], 1).transpose(1, 2).contiguous()
    run = chunk_flex_attention(qh, kh, vh, chunk_size=shape.sizes["chunk_size"], context_size=shape.sizes["context_size"])
    run()  # compiles
    return run, time.perf_counter() - start


def _cpu_chunk_attention_rows(ctx: Context, shape: AttentionShape):
    """CPU: the sdpa backend against SDPA full attention, FlexAttention and (``--full``) the reference
    (fp32), timed in alternation (:func:`_alternating_rows`)."""
    B, N, H, D = shape.batch, shape.tokens, shape.heads, shape.head_dim
    sizes = shape.sizes
    leaves = _chunk_inputs(shape, ctx.device, torch.float32)
    q, k, v, gk, gv = leaves
    do = torch.randn(B, N, H, D)
    chunk_flops, full_flops = _chunk_flops(shape)
    args = _chunk_args(shape)

    def base(pass_, impl, kind):
        return {"op": "chunk_attention", "shape": shape.label, "shape_args": args, "pass": pass_, "impl": impl, "kind": kind}

    calls, rest = [], []
    for backend in ("sdpa", "reference") if ctx.full or ctx.quick else ("sdpa",):

        def forward(backend=backend):
            return vk.chunk_attention(q, k, v, global_k=gk, global_v=gv, backend=backend, **sizes)

        kind = "vin" if backend == "sdpa" else "reference"
        calls.append((base("fwd", f"vin_{backend}", kind), _no_grad(forward), {"flops": chunk_flops}))
        calls.append((base("fwd+bwd", f"vin_{backend}", kind), lambda f=forward: torch.autograd.grad(f(), leaves, do),
                      {"flops": PASS_FLOP_FACTOR["fwd+bwd"] * chunk_flops}))  # fmt: skip
    for pass_, fn, work in _full_attention_calls(ctx, shape, torch.float32, full_flops):
        calls.append((base(pass_, "sdpa_full_attention", "full"), fn, work))
    try:
        with torch.no_grad():
            flex, setup_s = _flex_chunk_attention(*(t.detach() for t in leaves), shape)
        flex_row = base("fwd", "flex_attention_compiled", "baseline") | {"setup_seconds": setup_s}  # block mask + compile, not timed
        calls.append((flex_row, _no_grad(flex), {"flops": chunk_flops}))
    except Exception as err:  # noqa: BLE001
        rest.append(base("fwd", "flex_attention_compiled", "baseline") | {"error": f"{type(err).__name__}: {err}"[:200]})
    rest.append(base("fwd+bwd", "flex_attention_compiled", "baseline") | {"error": "not run: FlexAttention has no backward on a CPU (inference only)"})
    yield from _alternating_rows(ctx, calls, desc=f"kernels: chunk_attention {shape.name}, timed calls in alternation")
    yield from rest


def _global_attention_rows(ctx: Context, shape: AttentionShape, dtype):
    device = ctx.device
    B, N, H, D, G = shape.batch, shape.tokens, shape.heads, shape.head_dim, shape.num_global
    kw = dict(tokens_per_frame=shape.tokens_per_frame, keyframe_stride=shape.keyframe_stride)
    gq = torch.randn(B, G, H, D, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, N, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    do = torch.randn(B, G, H, D, device=device, dtype=dtype)
    base_flops = kernel_flops.global_attention_flops(B, G, H, D, N, shape.tokens_per_frame, shape.keyframe_stride, 0)
    args = asdict(shape)

    def row(pass_, impl, kind, fn):
        return _timed_row(ctx, "global_attention", shape.keyframe_label, args, pass_, impl, kind, fn, {"flops": PASS_FLOP_FACTOR[pass_] * base_flops})

    gpu = device.type == "cuda"
    impls = [(b, "vin") for b in _vin_backends(device, "global_attention")]
    impls.append(("sdpa", "baseline") if gpu else ("reference", "reference"))  # the composite / the spec
    for backend, kind in impls:

        def forward(backend=backend):
            return vk.global_attention(gq, k, v, backend=backend, **kw)

        yield row("fwd", f"vin_{backend}", kind, lambda f=forward: f().detach())
        yield row("fwd+bwd", f"vin_{backend}", kind, lambda f=forward: torch.autograd.grad(f(), (gq, k, v), do))

    if gpu:
        kk, vv = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in materialize_keyframes(k.detach(), v.detach(), shape))
        group = [(gq.detach().transpose(1, 2).contiguous().requires_grad_(), kk, vv)]
        for name, impl in _impls(device).items():
            yield row("fwd", name, "baseline", lambda impl=impl: _attend(impl, group)[0].detach())
            yield row("fwd+bwd", name, "baseline", lambda impl=impl: _grad_of(_attend(impl, group), group[0]))


def _merge_rows(ctx: Context, shape: AttentionShape, dtype):
    device = ctx.device
    B, N, H, D = shape.batch, shape.tokens, shape.heads, shape.head_dim
    o_a, o_b = (torch.randn(B, N, H, D, device=device, dtype=dtype) for _ in range(2))
    lse_a, lse_b = (torch.randn(B, H, N, device=device) for _ in range(2))
    element = o_a.element_size()
    work = {"bytes": 3 * B * N * H * D * element + 3 * B * H * N * 4}  # read o_a, o_b, lse x2; write o, lse
    impls = [(f"vin_{b}", "vin", b) for b in _vin_backends(device, "merge_attention")]
    if device.type == "cuda":
        impls.append(("torch_composite", "baseline", "sdpa"))
    for impl, kind, backend in impls:
        yield _timed_row(ctx, "merge_attention", f"N={N}, {H} heads, D={D}", asdict(shape), "fwd", impl, kind,
                         lambda backend=backend: vk.merge_attention(o_a, lse_a, o_b, lse_b, backend=backend), work)  # fmt: skip


def _overlap_fuse_rows(ctx: Context, dtype):
    device = ctx.device
    if device.type == "cuda":
        cases = [("B=1, F=80 latent frames of 4x24x40", 1, ChunkLayout.windows(80, *PAPER_WINDOWS), (4, 24, 40)),
                 ("B=16, F=160 latent frames of 4x24x40", 16, ChunkLayout.windows(160, *PAPER_WINDOWS), (4, 24, 40))]
    elif ctx.quick:
        cases = [("tiny", 1, ChunkLayout.windows(40, 12, 4), (4, 8, 8))]
    else:
        cases = [("B=1, F=160 latent frames of 4x12x20", 1, ChunkLayout.windows(160, *PAPER_WINDOWS), (4, 12, 20))]
    for name, B, layout, feat in cases:
        eps = torch.randn(B, layout.num_chunks, layout.chunk_len, *feat, device=device, dtype=dtype)
        x = torch.randn(B, layout.num_frames, *feat, device=device, dtype=dtype)
        features = eps[0, 0, 0].numel()
        args = {"batch": B, "layout": repr(layout), "features": list(feat)}
        label = f"{name}, windows of {layout.chunk_len} overlapping by {layout.overlap_frames}"
        variants = {
            "blend": (dict(), eps.numel() + B * layout.num_frames * features),
            "fused_update_windows": (dict(x=x, coeffs=(0.98, -0.1), out_windows=True), 2 * eps.numel() + x.numel()),
        }
        backends = [(f"vin_{b}", "vin", b) for b in _vin_backends(device, "overlap_fuse")]
        # GPU: the sdpa backend's torch composite, a same-work baseline; CPU: the specification
        backends += [("torch_composite", "baseline", "sdpa")] if device.type == "cuda" else [("vin_reference", "reference", "reference")]
        for variant, (kwargs, elements) in variants.items():
            work = {"bytes": elements * eps.element_size()}
            for impl, kind, backend in backends:
                yield _timed_row(ctx, "overlap_fuse", f"{label}: {variant}", args, "fwd", impl, kind,
                                 lambda b=backend, kw=kwargs, e=eps, lo=layout: vk.overlap_fuse(e, lo, backend=b, **kw), work)  # fmt: skip


def _ratios(rows: list[dict]) -> None:
    """Per vin row (and the same-work baselines): time / SDPA full attention and FLOPs / full attention
    of its (op, shape, pass); time / FlexAttention and time / reference; and (GPU: same-work
    baselines only) the speed-up over the fastest same-work baseline."""
    best: dict[tuple, float] = {}
    by_impl: dict[tuple, dict] = {}
    for r in rows:
        if "median_ms" not in r:
            continue
        key = (r["op"], r["shape"], r["pass"])
        by_impl[key + (r["impl"],)] = r
        if r["kind"] == "baseline":
            best[key] = min(best.get(key, float("inf")), r["median_ms"])
    for r in rows:
        key = (r["op"], r["shape"], r["pass"])
        if r["kind"] not in ("vin", "baseline", "reference") or "median_ms" not in r:
            continue
        if r["kind"] == "vin" and key in best:
            r["ratio_to_best_baseline"] = best[key] / r["median_ms"]
        full = by_impl.get(key + ("sdpa_full_attention",))
        if full is not None:
            r["time_vs_full_attention"] = r["median_ms"] / full["median_ms"]
            r["flop_ratio_to_full"] = r["flops"] / full["flops"]
        if r["kind"] != "vin":
            continue
        for name, impl in (("time_vs_flex_attention", "flex_attention_compiled"), ("time_vs_reference", "vin_reference")):
            if key + (impl,) in by_impl:
                r[name] = r["median_ms"] / by_impl[key + (impl,)]["median_ms"]


def run(ctx: Context) -> dict:
    gpu = ctx.device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    if gpu:
        shapes = GPU_SHAPES[:1] if ctx.quick else GPU_SHAPES if ctx.full else GPU_SHAPES[:2]
        jobs = [_chunk_attention_rows(ctx, s, dtype) for s in shapes]
        global_shapes = shapes[:2]
    else:
        shapes = cpu_shapes(ctx)
        jobs = [_cpu_chunk_attention_rows(ctx, s) for s in shapes]
        global_shapes = shapes[-1:]
    jobs += [_global_attention_rows(ctx, s, dtype) for s in global_shapes]
    jobs += [_merge_rows(ctx, shapes[-1], dtype), _overlap_fuse_rows(ctx, dtype)]
    rows = []
    for row in ctx.progress((row for job in jobs for row in job), desc="kernels: timed rows"):
        rows.append(row)
        if gpu:
            torch.cuda.empty_cache()
    _ratios(rows)
    return {
        "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(), "device_kind": ctx.device.type,
        "full": ctx.full, "rows": rows,
    }  # fmt: skip


# ------------------------------------------------------------------------------------ report
def headline(result: dict) -> list[str]:
    """The summary line per implementation and shape family: chunk attention's time against full
    attention's at each length beside its FLOP ratio, and against FlexAttention's."""
    families: dict[tuple, dict[int, dict[str, dict]]] = {}
    for r in result["rows"]:
        if r["op"] == "chunk_attention" and r["kind"] == "vin" and "time_vs_full_attention" in r:
            a = r["shape_args"]
            name = "" if a.get("name", "N=").startswith("N=") else a["name"]  # N=... names a length, not a family
            family = (r["impl"], name, a["chunk"], a["context"], a["num_global"], a["heads"], a["head_dim"])
            families.setdefault(family, {}).setdefault(a["frames"], {})[r["pass"]] = r
    lines = []
    for (impl, name, chunk, context, globals_, heads, head_dim), lengths in families.items():
        what = f"{name}: " if name else ""
        per = []
        for frames, passes in lengths.items():
            first = next(iter(passes.values()))
            times = ", ".join(f"{p} {r['time_vs_full_attention']:.2f}x" for p, r in passes.items())
            per.append(f"{frames} latent frames (N={first['shape_args']['tokens']}) {times} for {first['flop_ratio_to_full']:.2f}x")
        flex = sorted(r["time_vs_flex_attention"] for passes in lengths.values() for r in passes.values() if "time_vs_flex_attention" in r)
        spread = f"{flex[0]:.2f}x" if flex and flex[0] == flex[-1] else f"{flex[0]:.2f}-{flex[-1]:.2f}x" if flex else ""
        flex_text = f"; forward {spread} FlexAttention's time" if flex else ""
        lines.append(
            f"chunk_attention ({impl}; {what}chunk {chunk} + context {context} latent frames, {globals_} globals, {heads} heads, "
            f"D={head_dim}), full attention's time for its FLOPs: {'; '.join(per)}{flex_text}"
        )
    return lines


def _legend(result: dict) -> str:
    return (
        "*time / full* = median time / that of SDPA full attention over the whole sequence of N tokens (the "
        "work chunking replaces), *FLOPs / full* = the FLOP ratio of the two; every ratio is a time over a time, "
        "**bold** below 1 (faster). Shapes: N tokens (latent frames x tokens per latent frame), chunks of "
        "*chunk* latent frames whose queries also attend the *context* latent frames before them and the global "
        "tokens; global_attention: the VIN's read of every keyframe."
    )


def markdown(result: dict) -> str:
    if result.get("device_kind", "cuda") != "cuda":
        return _cpu_markdown(result)
    lines = [
        f"Median ms over many runs ({result['dtype']}), L2 flushed before each; rate = useful FLOPs or bytes / "
        "median; speed-up = fastest same-work baseline (dense SDPA backends on the materialized chunks, the sdpa "
        "composite, flash-attn, xformers) / vin_kernels. " + _legend(result) + " Errors are baselines that cannot run the shape.",
        "",
        "| op | shape | pass | impl | median ms | time / full | FLOPs / full | TFLOP/s or GB/s | % of ceiling | speed-up vs best same-work baseline |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['impl']} | error: {r['error'][:60]} | | | | | |")
            continue
        rate = f"{r['tflops']:.1f}" if "tflops" in r else f"{r['gbps']:.0f}"
        pct = f"{r['pct_of_ceiling']:.0f}%" if "pct_of_ceiling" in r else "-"
        speedup = f"{r['ratio_to_best_baseline']:.2f}x" if "ratio_to_best_baseline" in r else ""
        flops = f"{r['flop_ratio_to_full']:.2f}" if "flop_ratio_to_full" in r else ""
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['pass']} | {r['impl']} | {r['median_ms']:.3f} | "
            f"{ratio_cell(r.get('time_vs_full_attention'))} | {flops} | {rate} | {pct} | {speedup} |"
        )
    return "\n".join(lines)


def _cpu_markdown(result: dict) -> str:
    """CPU: wall-clock medians and ratios only (no device ceiling is claimed on a CPU)."""
    runs = max((len(r["times_ms"]) for r in result["rows"] if "times_ms" in r), default=0)
    lines = [
        f"CPU, {result['dtype']}, {result['threads']} threads: median wall-clock ms of {runs} runs after a warm-up "
        "(p20-p80 in brackets). " + _legend(result) + " *time / Flex* = time / FlexAttention compiled with the "
        "same mask (forward only: FlexAttention has no CPU backward); *time / reference* = time / the pure-PyTorch "
        "reference `vin_kernels.reference` (the specification, not a baseline; `--full` runs it).",
        "",
        "| op | shape | pass | impl | median ms | time / full | FLOPs / full | time / Flex | time / reference |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['impl']} | {r['error'][:70]} | | | | |")
            continue
        spread = f"{r['median_ms']:.1f} [{r['p20_ms']:.1f}-{r['p80_ms']:.1f}]"
        flops = f"{r['flop_ratio_to_full']:.2f}" if "flop_ratio_to_full" in r else ""
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['pass']} | {r['impl']} | {spread} | {ratio_cell(r.get('time_vs_full_attention'))} | "
            f"{flops} | {ratio_cell(r.get('time_vs_flex_attention'))} | {ratio_cell(r.get('time_vs_reference'))} |"
        )
    return "\n".join(lines)
