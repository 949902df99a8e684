"""The torch.library registration of every op: opcheck, torch.compile(fullgraph=True), meta tensors.

The custom ops are ``vin_kernels::chunk_attention``, ``chunk_attention_backward``,
``global_attention``, ``global_attention_backward``, ``merge_attention``, ``overlap_fuse_triton`` and
``overlap_fuse_cuda`` (tested in test_overlap_fuse.py). Their real kernels are the Triton ones (on a machine without a CUDA device they run in the Triton CPU
interpreter, see ``conftest.py``), so every problem here is tiny: head dim 32, a dozen tokens.

* ``torch.library.opcheck`` runs the schema, fake-tensor, autograd-registration and
  ``aot_dispatch_dynamic`` checks of each op; the forward ops also with inputs that require grad, so
  the registered backward is traced and run.
* ``torch.compile(fullgraph=True)`` of small functions calling each public op (``aot_eager`` to keep the
  CPU compile time low; one chunk_attention forward with the default inductor backend) against eager,
  and one compiled training step whose gradients must equal eager's.
* Meta tensors: every public op (``backend="triton"`` and ``"auto"``) and every raw op returns outputs of
  the right shapes and dtypes (LSE float32 ``[B, H, N]``), forward and backward.
"""

from __future__ import annotations

import pytest
import torch

import vin_kernels
from vin_kernels import ChunkLayout, reference
from vin_kernels.ops.overlap_fuse import fusion_tensors
from vin_kernels.testing import assert_close, tolerance

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = torch.ops.vin_kernels

# Tiny problem: B = 2 rows sharing one row of globals (group 2), N = 12 tokens in chunks of 5
# (the last one short) with 3 tokens of context, G = 5 global tokens, D = 32.
B, N, H, D, G = 2, 12, 2, 32, 5
CHUNK, CONTEXT = 5, 3
SCALE = D**-0.5
# global_attention: N_VIDEO = 15 tokens = 5 frames of T = 3, keyframes 1 and 3 (stride 2, offset 1).
N_VIDEO, T, KF_STRIDE, KF_OFFSET = 15, 3, 2, 1
# overlap_fuse: 3 windows of 20 frames over 30, the last clamped.
LAYOUT = ChunkLayout.windows(30, 20, 12)
COEFFS = (0.9, -0.35)


def _randn(*shape, dtype=torch.float32, device=DEVICE, requires_grad=False) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype).requires_grad_(requires_grad)


def _qkv(requires_grad=False, **kw):
    return tuple(_randn(B, N, H, D, requires_grad=requires_grad, **kw) for _ in range(3))


def _globals(requires_grad=False, **kw):
    return tuple(_randn(1, G, H, D, requires_grad=requires_grad, **kw) for _ in range(2))


def _global_inputs(requires_grad=False, **kw):
    gq = _randn(B, G, H, D, requires_grad=requires_grad, **kw)
    k, v = (_randn(B, N_VIDEO, H, D, requires_grad=requires_grad, **kw) for _ in range(2))
    return gq, k, v


def _merge_inputs(requires_grad=False, **kw):
    o_a, o_b = (_randn(B, N, H, D, requires_grad=requires_grad, **kw) for _ in range(2))
    lse_a, lse_b = (_randn(B, H, N, requires_grad=requires_grad, device=kw.get("device", DEVICE)) for _ in range(2))
    return o_a, lse_a, o_b, lse_b


def _overlap_inputs(requires_grad=False, feat=(3,), **kw):
    eps = _randn(2, LAYOUT.num_chunks, LAYOUT.chunk_len, *feat, requires_grad=requires_grad, **kw)
    x = _randn(2, LAYOUT.num_frames, *feat, requires_grad=requires_grad, **kw)
    return eps, x


def _opcheck(op, args):
    """opcheck's default tests: schema, autograd registration, fake tensors, aot_dispatch_dynamic."""
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# =========================================================================================== opcheck
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("with_globals", [True, False], ids=["globals", "no-globals"])
def test_opcheck_chunk_attention(with_globals, requires_grad):
    q, k, v = _qkv(requires_grad)
    gk, gv = _globals(requires_grad) if with_globals else (None, None)
    _opcheck(OPS.chunk_attention, (q, k, v, gk, gv, CHUNK, CONTEXT, True, SCALE))


def test_opcheck_chunk_attention_stop_gradient():
    """context_grad=False with inputs that require grad (the registered backward drops the context part)."""
    q, k, v = _qkv(True)
    gk, gv = _globals(True)
    _opcheck(OPS.chunk_attention, (q, k, v, gk, gv, CHUNK, CONTEXT, False, SCALE))


@pytest.mark.parametrize(
    "with_globals, with_dlse, context_grad",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True)],
    ids=["globals-dlse-ctxgrad", "globals-no-dlse-stopgrad", "no-globals-dlse-stopgrad", "no-globals-no-dlse-ctxgrad"],
)
def test_opcheck_chunk_attention_backward(with_globals, with_dlse, context_grad):
    q, k, v = _qkv()
    gk, gv = _globals() if with_globals else (None, None)
    o, lse = OPS.chunk_attention(q, k, v, gk, gv, CHUNK, CONTEXT, context_grad, SCALE)
    do = torch.randn_like(o)
    dlse = torch.randn_like(lse) if with_dlse else None
    _opcheck(OPS.chunk_attention_backward, (do, dlse, q, k, v, gk, gv, o, lse, CHUNK, CONTEXT, context_grad, SCALE))


def test_fake_strides_chunk_attention_backward_transposed_globals():
    """Globals that are a transposed view ([Bg, H, G, D] storage, stride 1 in D: accepted by the checks)."""
    q, k, v = _qkv()
    gk, gv = (_randn(1, H, G, D).transpose(1, 2) for _ in range(2))
    assert not gk.is_contiguous()
    o, lse = OPS.chunk_attention(q, k, v, gk, gv, CHUNK, CONTEXT, True, SCALE)
    args = (torch.randn_like(o), None, q, k, v, gk, gv, o, lse, CHUNK, CONTEXT, True, SCALE)
    real = OPS.chunk_attention_backward(*args)

    def to_meta(a):
        if not isinstance(a, torch.Tensor):
            return a
        return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")

    fake = OPS.chunk_attention_backward(*(to_meta(a) for a in args))
    for name, r, f in zip(("dq", "dk", "dv", "dglobal_k", "dglobal_v"), real, fake):
        assert r.shape == f.shape and r.stride() == f.stride(), (
            f"{name}: the real kernel returns strides {r.stride()}, the fake kernel {f.stride()}"
        )
    _opcheck(OPS.chunk_attention_backward, args)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])
def test_opcheck_global_attention(requires_grad):
    gq, k, v = _global_inputs(requires_grad)
    _opcheck(OPS.global_attention, (gq, k, v, T, KF_STRIDE, KF_OFFSET, SCALE))


@pytest.mark.parametrize("with_dlse", [True, False], ids=["dlse", "no-dlse"])
def test_opcheck_global_attention_backward(with_dlse):
    gq, k, v = _global_inputs()
    o, lse = OPS.global_attention(gq, k, v, T, KF_STRIDE, KF_OFFSET, SCALE)
    dlse = torch.randn_like(lse) if with_dlse else None
    _opcheck(OPS.global_attention_backward, (torch.randn_like(o), dlse, gq, k, v, o, lse, T, KF_STRIDE, KF_OFFSET, SCALE))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])
def test_opcheck_merge_attention(requires_grad):
    _opcheck(OPS.merge_attention, _merge_inputs(requires_grad))


@pytest.mark.parametrize(
    "with_x, out_windows, requires_grad",
    [(False, False, False), (True, True, False), (True, False, True), (False, True, True)],
    ids=["no-x-frames", "x-windows", "x-frames-grad", "no-x-windows-grad"],
)
def test_opcheck_overlap_fuse_triton(with_x, out_windows, requires_grad):
    eps, x = _overlap_inputs(requires_grad)
    a, b = COEFFS if with_x else (0.0, 1.0)
    table = fusion_tensors(LAYOUT, eps.device)
    _opcheck(OPS.overlap_fuse_triton, (eps, *table, x if with_x else None, a, b, out_windows))


# =========================================================================================== torch.compile
def _compiled(fn, backend="aot_eager"):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


def _assert_same(compiled, eager, dtype=torch.float32):
    compiled = compiled if isinstance(compiled, tuple) else (compiled,)
    eager = eager if isinstance(eager, tuple) else (eager,)
    assert len(compiled) == len(eager)
    for i, (c, e) in enumerate(zip(compiled, eager)):
        assert c.shape == e.shape and c.dtype == e.dtype, f"output {i}: {c.shape}/{c.dtype} vs {e.shape}/{e.dtype}"
        assert_close(c, e, tolerance(dtype), f"output {i} (compiled vs eager)")


def _chunk_step(q, k, v, gk, gv):
    o, lse = vin_kernels.chunk_attention(
        q, k, v, chunk_size=CHUNK, context_size=CONTEXT, global_k=gk, global_v=gv, return_lse=True, backend="triton"
    )
    return o * 2.0, lse + 1.0


def test_compile_chunk_attention():
    args = (*_qkv(), *_globals())
    eager = _chunk_step(*args)
    _assert_same(_compiled(_chunk_step)(*args), eager)
    q, k, v, gk, gv = (t.double() for t in args)
    o_ref, lse_ref = reference.chunk_attention(
        q, k, v, chunk_size=CHUNK, context_size=CONTEXT, global_k=gk, global_v=gv, return_lse=True
    )
    assert_close(eager[0] / 2.0, o_ref, tolerance(torch.float32), "o (eager vs reference)")
    assert_close(eager[1] - 1.0, lse_ref, tolerance(torch.float32), "lse (eager vs reference)")


def test_compile_chunk_attention_inductor():
    """The default backend (inductor) around the custom op: the op stays an extern call, the rest is generated."""

    def step(q, k, v, gk, gv):
        o = vin_kernels.chunk_attention(
            q, k, v, chunk_size=CHUNK, context_size=CONTEXT, global_k=gk, global_v=gv, backend="triton"
        )
        return torch.nn.functional.gelu(o * 2.0 + 1.0)

    args = (*_qkv(), *_globals())
    _assert_same(_compiled(step, backend="inductor")(*args), step(*args))


def test_compile_global_attention():
    def step(gq, k, v):
        o, lse = vin_kernels.global_attention(
            gq, k, v, tokens_per_frame=T, keyframe_stride=KF_STRIDE, keyframe_offset=KF_OFFSET,
            return_lse=True, backend="triton",
        )
        return o - 1.0, lse * 0.5

    args = _global_inputs()
    eager = step(*args)
    _assert_same(_compiled(step)(*args), eager)
    o_ref = reference.global_attention(
        *(t.double() for t in args), tokens_per_frame=T, keyframe_stride=KF_STRIDE, keyframe_offset=KF_OFFSET
    )
    assert_close(eager[0] + 1.0, o_ref, tolerance(torch.float32), "o (eager vs reference)")


def test_compile_merge_attention():
    def step(o_a, lse_a, o_b, lse_b):
        o, lse = vin_kernels.merge_attention(o_a, lse_a, o_b, lse_b, backend="triton")
        return o.sum(-1), lse.exp()

    args = _merge_inputs()
    _assert_same(_compiled(step)(*args), step(*args))


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_compile_overlap_fuse(out_windows):
    def step(eps, x):
        out = vin_kernels.overlap_fuse(eps, LAYOUT, x=x, coeffs=COEFFS, out_windows=out_windows, backend="triton")
        return out * 2.0

    args = _overlap_inputs()
    eager = step(*args)
    _assert_same(_compiled(step)(*args), eager)
    expected = reference.overlap_fuse(
        args[0].double(), LAYOUT, x=args[1].double(), coeffs=COEFFS, out_windows=out_windows
    )
    assert_close(eager / 2.0, expected, tolerance(torch.float32), "eager vs reference")


def test_compile_chunk_attention_training_step():
    """A compiled loss through chunk_attention (stop-gradient, globals, LSE), then .backward():
    the gradients equal eager's (and the reference's). ``lse.sum()`` hands the backward a stride-0 dlse."""
    weight = _randn(B, N, H, D)

    def loss_fn(q, k, v, gk, gv):
        o, lse = vin_kernels.chunk_attention(
            q, k, v, chunk_size=CHUNK, context_size=CONTEXT, global_k=gk, global_v=gv, context_grad=False,
            return_lse=True, backend="triton",
        )
        return (o * weight).sum() + 0.1 * lse.sum()

    leaves = (*_qkv(True), *_globals(True))
    eager_loss = loss_fn(*leaves)
    eager_grads = torch.autograd.grad(eager_loss, leaves)

    leaves_c = tuple(t.detach().clone().requires_grad_(True) for t in leaves)
    compiled_loss = _compiled(loss_fn)(*leaves_c)
    compiled_loss.backward()
    assert_close(compiled_loss.detach(), eager_loss.detach(), tolerance(torch.float32), "loss")
    names = ("dq", "dk", "dv", "dglobal_k", "dglobal_v")
    for name, leaf, ge in zip(names, leaves_c, eager_grads):
        assert leaf.grad is not None, f"{name}: no gradient under torch.compile"
        assert_close(leaf.grad, ge, tolerance(torch.float32), f"{name} (compiled vs eager)")

    leaves64 = tuple(t.detach().double().requires_grad_(True) for t in leaves)
    o_ref, lse_ref = reference.chunk_attention(
        *leaves64[:3], chunk_size=CHUNK, context_size=CONTEXT, global_k=leaves64[3], global_v=leaves64[4],
        context_grad=False, return_lse=True,
    )
    ref_grads = torch.autograd.grad((o_ref * weight.double()).sum() + 0.1 * lse_ref.sum(), leaves64)
    for name, ge, gr in zip(names, eager_grads, ref_grads):
        assert_close(ge, gr, tolerance(torch.float32), f"{name} (eager vs reference)")


# =========================================================================================== meta tensors
META = torch.device("meta")


def _meta(*shape, dtype=torch.float16, requires_grad=False):
    return torch.empty(*shape, device=META, dtype=dtype, requires_grad=requires_grad)


def _assert_meta(t, shape, dtype, name):
    assert t.device.type == "meta", f"{name}: device {t.device}"
    assert tuple(t.shape) == tuple(shape), f"{name}: shape {tuple(t.shape)} != {tuple(shape)}"
    assert t.dtype == dtype, f"{name}: dtype {t.dtype} != {dtype}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_meta_chunk_attention(backend, dtype):
    q, k, v = (_meta(B, N, H, D, dtype=dtype, requires_grad=True) for _ in range(3))
    gk, gv = (_meta(1, G, H, D, dtype=dtype, requires_grad=True) for _ in range(2))
    o, lse = vin_kernels.chunk_attention(
        q, k, v, chunk_size=CHUNK, context_size=CONTEXT, global_k=gk, global_v=gv, return_lse=True, backend=backend
    )
    _assert_meta(o, (B, N, H, D), dtype, "o")
    _assert_meta(lse, (B, H, N), torch.float32, "lse")
    (o.sum() + lse.sum()).backward()
    for name, t in zip(("q", "k", "v", "global_k", "global_v"), (q, k, v, gk, gv)):
        _assert_meta(t.grad, t.shape, dtype, f"grad {name}")

    o = vin_kernels.chunk_attention(q, k, v, chunk_size=N, backend=backend)  # ordinary attention, no globals
    _assert_meta(o, (B, N, H, D), dtype, "o (no globals)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_meta_global_attention(backend, dtype):
    gq = _meta(B, G, H, D, dtype=dtype, requires_grad=True)
    k, v = (_meta(B, N_VIDEO, H, D, dtype=dtype, requires_grad=True) for _ in range(2))
    o, lse = vin_kernels.global_attention(
        gq, k, v, tokens_per_frame=T, keyframe_stride=KF_STRIDE, keyframe_offset=KF_OFFSET, return_lse=True,
        backend=backend,
    )
    _assert_meta(o, (B, G, H, D), dtype, "o")
    _assert_meta(lse, (B, H, G), torch.float32, "lse")
    (o.sum() + lse.sum()).backward()
    for name, t in zip(("gq", "k", "v"), (gq, k, v)):
        _assert_meta(t.grad, t.shape, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_meta_merge_attention(backend, dtype):
    o_a, o_b = (_meta(B, N, H, D, dtype=dtype, requires_grad=True) for _ in range(2))
    lse_a, lse_b = (_meta(B, H, N, dtype=torch.float32, requires_grad=True) for _ in range(2))
    o, lse = vin_kernels.merge_attention(o_a, lse_a, o_b, lse_b, backend=backend)
    _assert_meta(o, (B, N, H, D), dtype, "o")
    _assert_meta(lse, (B, H, N), torch.float32, "lse")
    (o.sum() + lse.sum()).backward()
    for name, t in zip(("o_a", "lse_a", "o_b", "lse_b"), (o_a, lse_a, o_b, lse_b)):
        _assert_meta(t.grad, t.shape, t.dtype, f"grad {name}")


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_meta_overlap_fuse(backend, dtype, out_windows):
    n, L, F = LAYOUT.num_chunks, LAYOUT.chunk_len, LAYOUT.num_frames
    eps = _meta(2, n, L, 4, 5, dtype=dtype, requires_grad=True)
    x = _meta(2, F, 4, 5, dtype=dtype, requires_grad=True)
    out = vin_kernels.overlap_fuse(eps, LAYOUT, x=x, coeffs=COEFFS, out_windows=out_windows, backend=backend)
    _assert_meta(out, (2, n, L, 4, 5) if out_windows else (2, F, 4, 5), dtype, "out")
    out.sum().backward()
    _assert_meta(eps.grad, eps.shape, dtype, "grad eps")
    _assert_meta(x.grad, x.shape, dtype, "grad x")

    out = vin_kernels.overlap_fuse(eps.detach(), LAYOUT, out_windows=out_windows, backend=backend)  # no x
    _assert_meta(out, (2, n, L, 4, 5) if out_windows else (2, F, 4, 5), dtype, "out (no x)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_meta_raw_attention_ops(dtype):
    """The fake kernels of the four attention ops, called directly on meta tensors."""
    q, k, v = (_meta(B, N, H, D, dtype=dtype) for _ in range(3))
    gk, gv = (_meta(1, G, H, D, dtype=dtype) for _ in range(2))
    for globals_ in ((gk, gv), (None, None)):
        o, lse = OPS.chunk_attention(q, k, v, *globals_, CHUNK, CONTEXT, True, SCALE)
        _assert_meta(o, (B, N, H, D), dtype, "chunk_attention o")
        _assert_meta(lse, (B, H, N), torch.float32, "chunk_attention lse")
        for dlse in (lse, None):
            dq, dk, dv, dgk, dgv = OPS.chunk_attention_backward(
                o, dlse, q, k, v, *globals_, o, lse, CHUNK, CONTEXT, False, SCALE
            )
            for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
                _assert_meta(g, (B, N, H, D), dtype, f"chunk_attention_backward {name}")
            global_shape = (1, G, H, D) if globals_[0] is not None else (0,)  # empty without globals
            _assert_meta(dgk, global_shape, dtype, "chunk_attention_backward dglobal_k")
            _assert_meta(dgv, global_shape, dtype, "chunk_attention_backward dglobal_v")

    gq = _meta(B, G, H, D, dtype=dtype)
    kv = _meta(B, N_VIDEO, H, D, dtype=dtype)
    o, lse = OPS.global_attention(gq, kv, kv, T, KF_STRIDE, KF_OFFSET, SCALE)
    _assert_meta(o, (B, G, H, D), dtype, "global_attention o")
    _assert_meta(lse, (B, H, G), torch.float32, "global_attention lse")
    for dlse in (lse, None):
        dgq, dk, dv = OPS.global_attention_backward(o, dlse, gq, kv, kv, o, lse, T, KF_STRIDE, KF_OFFSET, SCALE)
        _assert_meta(dgq, (B, G, H, D), dtype, "global_attention_backward dgq")
        _assert_meta(dk, (B, N_VIDEO, H, D), dtype, "global_attention_backward dk")
        _assert_meta(dv, (B, N_VIDEO, H, D), dtype, "global_attention_backward dv")

    lse_a = _meta(B, H, N, dtype=torch.float32)
    o, lse = OPS.merge_attention(q, lse_a, k, lse_a)
    _assert_meta(o, (B, N, H, D), dtype, "merge_attention o")
    _assert_meta(lse, (B, H, N), torch.float32, "merge_attention lse")


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
def test_meta_raw_overlap_fuse(with_x, out_windows):
    n, L, F = LAYOUT.num_chunks, LAYOUT.chunk_len, LAYOUT.num_frames
    eps = _meta(2, n, L, 7, dtype=torch.bfloat16)
    x = _meta(2, F, 7, dtype=torch.bfloat16) if with_x else None
    a, b = COEFFS if with_x else (0.0, 1.0)
    out = OPS.overlap_fuse_triton(eps, *fusion_tensors(LAYOUT, eps.device), x, a, b, out_windows)
    _assert_meta(out, (2, n, L, 7) if out_windows else (2, F, 7), torch.bfloat16, "overlap_fuse out")
