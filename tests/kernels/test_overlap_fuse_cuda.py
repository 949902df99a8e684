"""overlap_fuse on the CUDA extension against the float64 reference, and its torch.library registration.

Tests marked ``gpu`` run the CUDA kernel (skipped without a CUDA device). The others run here, on the
CPU: they exercise the custom op ``vin_kernels::overlap_fuse`` through its ``"reference"`` backend
(opcheck, meta tensors, the registered backward, torch.compile).
"""

from __future__ import annotations

import pytest
import torch

import vin_kernels
from vin_kernels import ChunkLayout, reference
from vin_kernels import cuda as vcuda
from vin_kernels.dispatch import BACKENDS, select_backend
from vin_kernels.ops.overlap_fuse import layout_tensors
from vin_kernels.testing import assert_close, poison_, tolerance

OP = torch.ops.vin_kernels.overlap_fuse
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COEFFS = (0.9, -0.35)
NO_COEFFS = (0.0, 1.0)  # what the op gets without x

# (num_frames, window, overlap)
LAYOUTS = {
    "44-20-12": (44, 20, 12),  # 4 windows, starts 0, 8, 16, 24
    "30-20-12-clamped": (30, 20, 12),  # 3 windows, last one clamped to start at 10
    "7-20-3-one-window": (7, 20, 3),  # F < window: one window of 7 frames
    "41-8-0-no-overlap": (41, 8, 0),  # 6 windows, the last clamped to 33 (overlaps the 5th by 7)
    "25-6-5-stride-1": (25, 6, 5),  # 20 windows, up to 6 cover a frame
}
FEATS = {
    "4x6x10": (4, 6, 10),  # 240: widest vector access for every dtype
    "3": (3,),  # odd: scalar path
    "1": (1,),
    "257": (257,),  # odd and larger than a warp: scalar path
    "none": (),  # no feature dims
}

needs_extension = pytest.mark.skipif(not vcuda.is_built(), reason=f"vin_kernels._C is not built: {vcuda.build_problem()}")


def _layout(key: str) -> ChunkLayout:
    return ChunkLayout.windows(*LAYOUTS[key])


def _randn(shape, dtype, device) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def _inputs(layout: ChunkLayout, feat, dtype, with_x: bool, batch: int = 2, device="cuda"):
    eps = _randn((batch, layout.num_chunks, layout.chunk_len, *feat), dtype, device)
    x = _randn((batch, layout.num_frames, *feat), dtype, device) if with_x else None
    return eps, x


def _expected(eps, layout, x=None, out_windows=False, coeffs=COEFFS) -> torch.Tensor:
    """The reference in float64 on the CPU, from the very same (rounded) input values."""
    eps64 = eps.detach().cpu().double()
    x64 = x.detach().cpu().double() if x is not None else None
    return reference.overlap_fuse(
        eps64, layout, x=x64, coeffs=coeffs if x is not None else None, out_windows=out_windows
    )


def _out_shape(layout: ChunkLayout, eps: torch.Tensor, out_windows: bool):
    if out_windows:
        return (eps.shape[0], layout.num_chunks, layout.chunk_len, *eps.shape[3:])
    return (eps.shape[0], layout.num_frames, *eps.shape[3:])


def _run_cuda(eps, layout, x=None, out_windows=False):
    return vin_kernels.overlap_fuse(
        eps, layout, x=x, coeffs=COEFFS if x is not None else None, out_windows=out_windows, backend="cuda"
    )


def _check(out, eps, layout, x, out_windows, name="output"):
    assert out.dtype == eps.dtype, f"{name}: dtype {out.dtype} != {eps.dtype}"
    assert out.device == eps.device, f"{name}: device {out.device} != {eps.device}"
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(eps.dtype), name)


def _table(layout: ChunkLayout, device):
    t = layout_tensors(layout, torch.device(device))
    return (t["frame_ptr"], t["window"], t["position"], t["weight"])


# =========================================================================================== GPU
@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("feat", list(FEATS.values()), ids=list(FEATS))
@pytest.mark.parametrize("layout_key", list(LAYOUTS))
def test_cuda_matches_reference(layout_key, feat, dtype, with_x, out_windows):
    layout = _layout(layout_key)
    eps, x = _inputs(layout, feat, dtype, with_x)
    out = _run_cuda(eps, layout, x, out_windows)
    _check(out, eps, layout, x, out_windows)


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("feat", [(4, 6, 10), (257,), ()], ids=["4x6x10", "257", "none"])
@pytest.mark.parametrize("layout_key", ["44-20-12", "30-20-12-clamped"])
def test_cuda_non_contiguous_batch(layout_key, feat, dtype, out_windows):
    """eps and x are every other row of a bigger batch (batch stride twice the packed one)."""
    layout = _layout(layout_key)
    eps_big, x_big = _inputs(layout, feat, dtype, with_x=True, batch=6)
    eps, x = eps_big[::2], x_big[::2]
    assert eps.shape[0] == 3 and not eps.is_contiguous() and not x.is_contiguous()
    for xx in (None, x):
        out = _run_cuda(eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows, name=f"output (x={'yes' if xx is not None else 'no'})")


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("feat", [(4, 6, 10), (64,)], ids=["4x6x10", "64"])
def test_cuda_pointer_offset_by_one_element(feat, dtype, out_windows):
    """eps and x start one element into their buffers: no 16-byte (or even 4-byte) aligned access."""
    layout = _layout("44-20-12")
    B = 2
    eps_shape = (B, layout.num_chunks, layout.chunk_len, *feat)
    x_shape = (B, layout.num_frames, *feat)
    eps_buf = _randn((torch.Size(eps_shape).numel() + 1,), dtype, "cuda")
    x_buf = _randn((torch.Size(x_shape).numel() + 1,), dtype, "cuda")
    eps = eps_buf[1:].view(eps_shape)
    x = x_buf[1:].view(x_shape)
    assert eps.data_ptr() % 4 != 0 or dtype == torch.float32
    assert eps.data_ptr() % 16 != 0 and x.data_ptr() % 16 != 0
    for xx in (None, x):
        out = _run_cuda(eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows, name=f"output (x={'yes' if xx is not None else 'no'})")


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("feat", [(8,), (3,)], ids=["8", "3"])
def test_cuda_window_and_position_strides_swapped(feat, dtype, out_windows):
    """eps is a transposed view: windows are not outermost in memory, features still packed."""
    layout = _layout("30-20-12-clamped")
    t = _randn((2, layout.chunk_len, layout.num_chunks, *feat), dtype, "cuda")
    eps = t.transpose(1, 2)
    assert eps.shape[1:3] == (layout.num_chunks, layout.chunk_len) and not eps.is_contiguous()
    x = _randn((2, layout.num_frames, *feat), dtype, "cuda")
    for xx in (None, x):
        out = _run_cuda(eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows)


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_cuda_empty_batch(out_windows):
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (5,), torch.float16, with_x=True, batch=0)
    out = _run_cuda(eps, layout, x, out_windows)
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)
    assert out.device.type == "cuda" and out.dtype == torch.float16


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("feat", [(8,), (3,)], ids=["8", "3"])
@pytest.mark.parametrize("layout_key", list(LAYOUTS))
def test_cuda_writes_every_output_element_and_nothing_else(layout_key, feat, dtype, with_x, out_windows):
    """Raw launcher into a NaN-poisoned view of a bigger buffer: every element of out is written,
    nothing past it is touched, and the values match the reference."""
    layout = _layout(layout_key)
    n, L, F = layout.num_chunks, layout.chunk_len, layout.num_frames
    B = 2
    eps, x = _inputs(layout, feat, dtype, with_x, batch=B)
    if out_windows:
        big = poison_(torch.empty(B, n + 1, L, *feat, dtype=dtype, device="cuda"))
        out, rest = big[:, :n], big[:, n:]
    else:
        big = poison_(torch.empty(B, F + 3, *feat, dtype=dtype, device="cuda"))
        out, rest = big[:, :F], big[:, F:]
    coeffs = COEFFS if with_x else NO_COEFFS
    result = vcuda.overlap_fuse(eps, _table(layout, eps.device), x, coeffs, out, out_windows)
    torch.cuda.synchronize()
    assert result is out
    nan = torch.isnan(out)
    assert not nan.any(), f"{int(nan.sum())} of {out.numel()} output elements were never written"
    assert torch.isnan(rest).all(), "the kernel wrote past the end of out"
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(dtype))


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout_key", ["44-20-12", "30-20-12-clamped", "25-6-5-stride-1"])
def test_cuda_gradients_match_reference(layout_key, dtype, with_x, out_windows):
    layout = _layout(layout_key)
    feat = (3, 4)
    eps, x = _inputs(layout, feat, dtype, with_x)
    eps.requires_grad_(True)
    inputs = [eps]
    if x is not None:
        x.requires_grad_(True)
        inputs.append(x)
    out = _run_cuda(eps, layout, x, out_windows)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), inputs)

    eps64 = eps.detach().cpu().double().requires_grad_(True)
    inputs64 = [eps64]
    x64 = None
    if x is not None:
        x64 = x.detach().cpu().double().requires_grad_(True)
        inputs64.append(x64)
    ref = reference.overlap_fuse(
        eps64, layout, x=x64, coeffs=COEFFS if x is not None else None, out_windows=out_windows
    )
    ref_grads = torch.autograd.grad((ref * g.detach().cpu().double()).sum(), inputs64)

    assert_close(out, ref, tolerance(dtype), "output")
    for name, grad, ref_grad, t in zip(("grad eps", "grad x"), grads, ref_grads, inputs):
        assert grad.dtype == t.dtype and grad.device == t.device, name
        assert_close(grad, ref_grad, tolerance(dtype), name)


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_opcheck(dtype, with_x, out_windows):
    F, W, O = LAYOUTS["30-20-12-clamped"]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (8,), dtype, with_x)
    a, b = COEFFS if with_x else NO_COEFFS
    torch.library.opcheck(OP, (eps, F, W, O, x, a, b, out_windows, "cuda"))


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_cuda_op_under_torch_compile(out_windows):
    """The custom op with backend "cuda" inside a compiled graph (fake kernel while tracing)."""
    F, W, O = LAYOUTS["44-20-12"]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (4, 8), torch.float16, with_x=True)

    def step(eps, x):
        return OP(eps, F, W, O, x, COEFFS[0], COEFFS[1], out_windows, "cuda") * 2.0

    expected = step(eps, x)
    compiled = torch.compile(step, fullgraph=True)(eps, x)
    assert_close(compiled, expected, tolerance(torch.float16))
    assert_close(expected / 2.0, _expected(eps, layout, x, out_windows), tolerance(torch.float16))


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_cuda_public_function_under_torch_compile(out_windows):
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (4, 8), torch.float16, with_x=True)

    def step(eps, x):
        out = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=COEFFS, out_windows=out_windows, backend="cuda")
        return out * 2.0

    expected = step(eps, x)
    compiled = torch.compile(step, fullgraph=True)(eps, x)
    assert_close(compiled, expected, tolerance(torch.float16))
    assert_close(expected / 2.0, _expected(eps, layout, x, out_windows), tolerance(torch.float16))


@pytest.mark.gpu
@needs_extension
def test_raw_binding_validates_before_launch():
    """Real device pointers with a bad dtype code / negative size: a ValueError, no launch."""
    layout = _layout("44-20-12")
    eps, _ = _inputs(layout, (8,), torch.float32, with_x=False)
    out = torch.empty(2, layout.num_frames, 8, device="cuda")
    frame_ptr, window, position, weight = _table(layout, eps.device)
    kwargs = dict(
        eps=eps.data_ptr(), eps_stride_batch=eps.stride(0), eps_stride_window=eps.stride(1),
        eps_stride_pos=eps.stride(2), x=0, x_stride_batch=0, x_stride_frame=0,
        out=out.data_ptr(), out_stride_batch=out.stride(0), out_stride_1=out.stride(1), out_stride_2=0,
        frame_ptr=frame_ptr.data_ptr(), entry_window=window.data_ptr(), entry_pos=position.data_ptr(),
        entry_weight=weight.data_ptr(), batch=2, num_frames=layout.num_frames, features=8,
        coef_a=0.0, coef_b=1.0, out_windows=False, dtype=0,
        stream=torch.cuda.current_stream().cuda_stream,
    )  # fmt: skip
    ext = vcuda.extension()
    with pytest.raises(ValueError, match="dtype"):
        ext.overlap_fuse(**{**kwargs, "dtype": 7})
    with pytest.raises(ValueError, match="negative"):
        ext.overlap_fuse(**{**kwargs, "batch": -1})
    ext.overlap_fuse(**kwargs)  # the same call with valid arguments works
    torch.cuda.synchronize()
    assert_close(out, _expected(eps, layout), tolerance(torch.float32))


# =========================================================================================== CPU
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("feat", [(3,), ()], ids=["3", "none"])
def test_op_opcheck_reference_cpu(feat, with_x, out_windows):
    F, W, O = LAYOUTS["30-20-12-clamped"]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, feat, torch.float32, with_x, device="cpu")
    a, b = COEFFS if with_x else NO_COEFFS
    torch.library.opcheck(OP, (eps, F, W, O, x, a, b, out_windows, "reference"))


def test_op_opcheck_with_grad_cpu():
    F, W, O = 26, 10, 4  # a layout no other test uses
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (3,), torch.float32, with_x=True, device="cpu")
    eps.requires_grad_(True)
    x.requires_grad_(True)
    torch.library.opcheck(OP, (eps, F, W, O, x, COEFFS[0], COEFFS[1], False, "reference"))


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("backend", ["reference", "cuda"])
def test_op_on_meta_tensors(backend, with_x, out_windows):
    F, W, O = LAYOUTS["44-20-12"]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (4, 6), torch.float16, with_x, device="meta")
    a, b = COEFFS if with_x else NO_COEFFS
    out = OP(eps, F, W, O, x, a, b, out_windows, backend)
    assert out.device.type == "meta" and out.dtype == torch.float16
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("backend", ["auto", "reference", "cuda"])
def test_public_function_on_meta_tensors(backend, out_windows):
    layout = _layout("30-20-12-clamped")
    eps, x = _inputs(layout, (5,), torch.bfloat16, with_x=True, device="meta")
    out = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=COEFFS, out_windows=out_windows, backend=backend)
    assert out.device.type == "meta" and out.dtype == torch.bfloat16
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("layout_key", list(LAYOUTS))
def test_op_backward_matches_reference_cpu(layout_key, with_x, out_windows):
    """The op's registered backward (the one the CUDA backend uses) against float64 autograd."""
    F, W, O = LAYOUTS[layout_key]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (3, 2), torch.float32, with_x, device="cpu")
    a, b = COEFFS if with_x else NO_COEFFS
    inputs = [eps.requires_grad_(True)] + ([x.requires_grad_(True)] if with_x else [])
    out = OP(eps, F, W, O, x, a, b, out_windows, "reference")
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), inputs)

    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    x64 = inputs64[1] if with_x else None
    ref = reference.overlap_fuse(
        inputs64[0], layout, x=x64, coeffs=COEFFS if with_x else None, out_windows=out_windows
    )
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), inputs64)
    assert_close(out, ref, tolerance(torch.float32), "output")
    for name, grad, ref_grad in zip(("grad eps", "grad x"), grads, ref_grads):
        assert grad.dtype == torch.float32, name
        assert_close(grad, ref_grad, tolerance(torch.float32), name)


def test_op_under_torch_compile_cpu():
    F, W, O = LAYOUTS["30-20-12-clamped"]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (3,), torch.float32, with_x=True, device="cpu")

    def step(eps, x):
        return OP(eps, F, W, O, x, COEFFS[0], COEFFS[1], True, "reference") * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(eps, x)
    assert_close(compiled / 2.0, _expected(eps, layout, x, True), tolerance(torch.float32))


def test_backend_selection_is_traceable_by_dynamo():
    """Backend probing (extension import, device query) is a constant to torch.compile."""

    def f(t):
        chosen = select_backend("overlap_fuse", "auto", torch.device("cuda"))
        return t * 2.0 if chosen in BACKENDS else t + 1.0

    torch.compile(f, fullgraph=True, backend="eager")(torch.ones(3))


def test_fresh_layout_under_torch_compile():
    layout = ChunkLayout.windows(38, 14, 6)  # fresh instance: no cached property computed yet
    eps = torch.randn(2, 4, 14, 3)

    def f(eps):
        return vin_kernels.overlap_fuse(eps, layout, backend="reference") * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="eager")(eps)
    assert_close(compiled / 2.0, _expected(eps, layout), tolerance(torch.float32))
