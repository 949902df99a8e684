"""overlap_fuse on the Triton backend against the float64 reference.

The Triton twin of ``test_overlap_fuse_cuda.py``. On a machine without a CUDA device ``conftest.py``
sets ``TRITON_INTERPRET=1`` and every kernel launch below runs in the Triton CPU interpreter, one
Python-level program per (batch * frame, feature block): the problem sizes are chosen so the whole
file stays well under a minute there. ``overlap_fuse`` has no ``tl.dot``, so bf16 is checked on the
CPU too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vin_kernels
from vin_kernels import ChunkLayout, reference
from vin_kernels.ops.overlap_fuse import layout_tensors
from vin_kernels.testing import assert_close, poison_, tolerance
from vin_kernels.triton import overlap_fuse as triton_overlap_fuse

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COEFFS = (0.9, -0.35)
NO_COEFFS = (0.0, 1.0)  # what the kernel gets without x

# (num_frames, window, overlap)
LAYOUTS = {
    "44-20-12": (44, 20, 12),  # 4 windows, starts 0, 8, 16, 24
    "30-20-12-clamped": (30, 20, 12),  # 3 windows, the last clamped to start at 10
    "7-20-3-one-window": (7, 20, 3),  # F < window: one window of 7 frames
    "41-8-0-no-overlap": (41, 8, 0),  # 6 windows, the last clamped to 33 (overlaps the 5th by 7)
    "25-6-5-stride-1": (25, 6, 5),  # 20 windows, up to 6 cover a frame
}
FEATS = {
    "4x6": (4, 6),  # two feature dims, less than one feature block
    "3": (3,),  # odd
    "none": (),  # no feature dims
    "257": (257,),  # odd and more than one feature block (64 in the interpreter): a masked tail block
}
# Every (with_x, out_windows) combination; the big feature size gets one per layout, alternating
# between the two extremes (interpreter time).
MODES = {"no-x-frames": (False, False), "x-frames": (True, False), "no-x-windows": (False, True), "x-windows": (True, True)}
MODES_257 = ({"x-windows": (True, True)}, {"no-x-frames": (False, False)})


def _layout(key: str) -> ChunkLayout:
    return ChunkLayout.windows(*LAYOUTS[key])


def _randn(shape, dtype, device=DEVICE) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def _inputs(layout: ChunkLayout, feat, dtype, with_x: bool, batch: int = 2, device=DEVICE):
    eps = _randn((batch, layout.num_chunks, layout.chunk_len, *feat), dtype, device)
    x = _randn((batch, layout.num_frames, *feat), dtype, device) if with_x else None
    return eps, x


def _expected(eps, layout, x=None, out_windows=False, coeffs=COEFFS) -> torch.Tensor:
    """The reference in float64 on the CPU, from the very same (rounded) input values."""
    eps64 = eps.detach().cpu().double()
    x64 = x.detach().cpu().double() if x is not None else None
    return reference.overlap_fuse(eps64, layout, x=x64, coeffs=coeffs if x is not None else None, out_windows=out_windows)


def _out_shape(layout: ChunkLayout, eps: torch.Tensor, out_windows: bool):
    if out_windows:
        return (eps.shape[0], layout.num_chunks, layout.chunk_len, *eps.shape[3:])
    return (eps.shape[0], layout.num_frames, *eps.shape[3:])


def _run_triton(eps, layout, x=None, out_windows=False):
    return vin_kernels.overlap_fuse(
        eps, layout, x=x, coeffs=COEFFS if x is not None else None, out_windows=out_windows, backend="triton"
    )


def _check(out, eps, layout, x, out_windows, name="output"):
    assert out.dtype == eps.dtype, f"{name}: dtype {out.dtype} != {eps.dtype}"
    assert out.device == eps.device, f"{name}: device {out.device} != {eps.device}"
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(eps.dtype), name)


def _table(layout: ChunkLayout, device):
    t = layout_tensors(layout, torch.device(device))
    return (t["frame_ptr"], t["window"], t["position"], t["weight"])


def _cases():
    for i, layout_key in enumerate(LAYOUTS):
        for feat_key, feat in FEATS.items():
            modes = MODES_257[i % 2] if feat_key == "257" else MODES
            for mode_key, mode in modes.items():
                yield pytest.param(layout_key, feat, *mode, id=f"{layout_key}-{feat_key}-{mode_key}")


# ------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("layout_key, feat, with_x, out_windows", list(_cases()))
def test_triton_matches_reference_fp32(layout_key, feat, with_x, out_windows):
    layout = _layout(layout_key)
    eps, x = _inputs(layout, feat, torch.float32, with_x, batch=1)  # batch > 1: tests below
    out = _run_triton(eps, layout, x, out_windows)
    _check(out, eps, layout, x, out_windows)


@pytest.mark.parametrize("with_x, out_windows", [(False, False), (True, True)], ids=["no-x-frames", "x-windows"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout_key", list(LAYOUTS))
def test_triton_matches_reference_half(layout_key, dtype, with_x, out_windows):
    """fp16 / bf16: inputs rounded to the dtype, fp32 accumulation, one rounding of the output."""
    layout = _layout(layout_key)
    eps, x = _inputs(layout, (4, 6), dtype, with_x, batch=1)
    out = _run_triton(eps, layout, x, out_windows)
    _check(out, eps, layout, x, out_windows)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_matches_reference_half_wide(dtype):
    """A masked tail feature block in the 16-bit dtypes (fp32: the main matrix)."""
    layout = _layout("30-20-12-clamped")
    eps, x = _inputs(layout, (257,), dtype, with_x=True, batch=1)
    for out_windows in (False, True):
        out = _run_triton(eps, layout, x, out_windows)
        _check(out, eps, layout, x, out_windows, name=f"output (out_windows={out_windows})")


@pytest.mark.parametrize(
    "layout_key, feat, dtype, out_windows",
    [
        pytest.param("44-20-12", (4, 6), torch.float32, False, id="44-20-12-4x6-fp32-frames"),
        pytest.param("44-20-12", (4, 6), torch.float32, True, id="44-20-12-4x6-fp32-windows"),
        pytest.param("30-20-12-clamped", (), torch.float16, False, id="30-20-12-clamped-none-fp16-frames"),
        pytest.param("30-20-12-clamped", (), torch.float16, True, id="30-20-12-clamped-none-fp16-windows"),
        pytest.param("30-20-12-clamped", (257,), torch.float32, True, id="30-20-12-clamped-257-fp32-windows"),
    ],
)
def test_triton_non_contiguous_batch(layout_key, feat, dtype, out_windows):
    """eps and x are every other row of a bigger batch (batch stride twice the packed one)."""
    layout = _layout(layout_key)
    eps_big, x_big = _inputs(layout, feat, dtype, with_x=True, batch=4)
    eps, x = eps_big[::2], x_big[::2]
    assert eps.shape[0] == 2 and not eps.is_contiguous() and not x.is_contiguous()
    for xx in (None, x):
        out = _run_triton(eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows, name=f"output (x={'yes' if xx is not None else 'no'})")


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_pointer_offset_by_one_element(dtype, out_windows):
    """eps and x start one element into their buffers (no aligned access assumed)."""
    layout = _layout("30-20-12-clamped")
    B, feat = 2, (4, 6)
    eps_shape = (B, layout.num_chunks, layout.chunk_len, *feat)
    x_shape = (B, layout.num_frames, *feat)
    eps = _randn((torch.Size(eps_shape).numel() + 1,), dtype)[1:].view(eps_shape)
    x = _randn((torch.Size(x_shape).numel() + 1,), dtype)[1:].view(x_shape)
    assert eps.data_ptr() % 16 != 0 and x.data_ptr() % 16 != 0
    for xx in (None, x):
        out = _run_triton(eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows, name=f"output (x={'yes' if xx is not None else 'no'})")


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("feat, dtype", [((8,), torch.float32), ((3,), torch.float16)], ids=["8-fp32", "3-fp16"])
def test_triton_window_and_position_strides_swapped(feat, dtype, out_windows):
    """eps is a transposed view: windows are not outermost in memory, features still packed."""
    layout = _layout("30-20-12-clamped")
    eps = _randn((2, layout.chunk_len, layout.num_chunks, *feat), dtype).transpose(1, 2)
    assert eps.shape[1:3] == (layout.num_chunks, layout.chunk_len) and not eps.is_contiguous()
    x = _randn((2, layout.num_frames, *feat), dtype)
    for xx in (None, x):
        out = _run_triton(eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_triton_empty_batch(out_windows):
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (5,), torch.float16, with_x=True, batch=0)
    out = _run_triton(eps, layout, x, out_windows)
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)
    assert out.device == eps.device and out.dtype == torch.float16


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_triton_constant_input_comes_back_unchanged(out_windows):
    """Normalized weights sum to 1 on every frame: a constant prediction is a fixed point."""
    layout = _layout("25-6-5-stride-1")
    eps = torch.full((1, layout.num_chunks, layout.chunk_len, 3), 0.75, device=DEVICE)
    out = _run_triton(eps, layout, out_windows=out_windows)
    torch.testing.assert_close(out, torch.full_like(out, 0.75), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ raw launcher, poisoned out
def _poison_cases():
    # Every layout with both output forms (x alternating), fp32; fp16 for two layouts.
    for i, layout_key in enumerate(LAYOUTS):
        for out_windows in (False, True):
            with_x = (i + out_windows) % 2 == 1
            mode = f"{'x' if with_x else 'no-x'}-{'windows' if out_windows else 'frames'}"
            yield pytest.param(layout_key, (3,), torch.float32, with_x, out_windows, id=f"{layout_key}-3-fp32-{mode}")
    for layout_key in ("44-20-12", "25-6-5-stride-1"):
        for out_windows in (False, True):
            mode = "x-windows" if out_windows else "x-frames"
            yield pytest.param(layout_key, (8,), torch.float16, True, out_windows, id=f"{layout_key}-8-fp16-{mode}")


@pytest.mark.parametrize("layout_key, feat, dtype, with_x, out_windows", list(_poison_cases()))
def test_triton_writes_every_output_element_and_nothing_else(layout_key, feat, dtype, with_x, out_windows):
    """Raw launcher into a NaN-poisoned view of a bigger buffer: every element of out is written,
    nothing past it is touched, and the values match the reference."""
    layout = _layout(layout_key)
    n, L, F = layout.num_chunks, layout.chunk_len, layout.num_frames
    B = 2
    eps, x = _inputs(layout, feat, dtype, with_x, batch=B)
    if out_windows:
        big = poison_(torch.empty(B, n + 1, L, *feat, dtype=dtype, device=DEVICE))
        out, rest = big[:, :n], big[:, n:]
    else:
        big = poison_(torch.empty(B, F + 3, *feat, dtype=dtype, device=DEVICE))
        out, rest = big[:, :F], big[:, F:]
    coeffs = COEFFS if with_x else NO_COEFFS
    result = triton_overlap_fuse.overlap_fuse(eps, _table(layout, eps.device), x, coeffs, out, out_windows)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    assert result is out
    nan = torch.isnan(out)
    assert not nan.any(), f"{int(nan.sum())} of {out.numel()} output elements were never written"
    assert torch.isnan(rest).all(), "the kernel wrote past the end of out"
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(dtype))


# ------------------------------------------------------------------------------------ gradients
def _grad_check(layout, feat, dtype, with_x, out_windows, batch=2):
    eps, x = _inputs(layout, feat, dtype, with_x, batch=batch)
    eps.requires_grad_(True)
    inputs = [eps]
    if x is not None:
        x.requires_grad_(True)
        inputs.append(x)
    out = _run_triton(eps, layout, x, out_windows)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), inputs)

    inputs64 = [t.detach().cpu().double().requires_grad_(True) for t in inputs]
    x64 = inputs64[1] if with_x else None
    ref = reference.overlap_fuse(
        inputs64[0], layout, x=x64, coeffs=COEFFS if with_x else None, out_windows=out_windows
    )
    ref_grads = torch.autograd.grad((ref * g.detach().cpu().double()).sum(), inputs64)

    assert_close(out, ref, tolerance(dtype), "output")
    for name, grad, ref_grad, t in zip(("grad eps", "grad x"), grads, ref_grads, inputs):
        assert grad.dtype == t.dtype and grad.device == t.device, name
        assert tuple(grad.shape) == tuple(t.shape), name
        assert_close(grad, ref_grad, tolerance(dtype), name)


def _grad_cases():
    for layout_key in ("44-20-12", "30-20-12-clamped", "25-6-5-stride-1"):
        for with_x in (False, True):
            for out_windows in (False, True):
                mode = f"{'x' if with_x else 'no-x'}-{'windows' if out_windows else 'frames'}"
                yield pytest.param(layout_key, with_x, out_windows, id=f"{layout_key}-{mode}")
    for layout_key in ("7-20-3-one-window", "41-8-0-no-overlap"):
        yield pytest.param(layout_key, True, True, id=f"{layout_key}-x-windows")


@pytest.mark.parametrize("layout_key, with_x, out_windows", list(_grad_cases()))
def test_triton_gradients_match_reference_fp32(layout_key, with_x, out_windows):
    _grad_check(_layout(layout_key), (3, 2), torch.float32, with_x, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout_key", ["30-20-12-clamped", "25-6-5-stride-1"])
def test_triton_gradients_match_reference_half(layout_key, dtype, out_windows):
    _grad_check(_layout(layout_key), (3, 4), dtype, True, out_windows)


# ------------------------------------------------------------------------------------ property test
_COEF = st.integers(-16, 16).map(lambda i: i / 8)  # no subnormal coefficients (fp32 would flush them)


@st.composite
def _problems(draw):
    window = draw(st.integers(1, 10))
    overlap = draw(st.integers(0, window - 1))
    num_frames = draw(st.integers(1, 20))
    feat = draw(
        st.one_of(
            st.just(()),
            st.tuples(st.integers(1, 70)),
            st.tuples(st.integers(1, 5), st.integers(1, 7)),
        )
    )
    return dict(
        layout=ChunkLayout.windows(num_frames, window, overlap),
        feat=feat,
        batch=draw(st.integers(1, 2)),
        dtype=draw(st.sampled_from(DTYPES)),
        with_x=draw(st.booleans()),
        out_windows=draw(st.booleans()),
        coeffs=(draw(_COEF), draw(_COEF)),
    )


@settings(max_examples=100)
@given(problem=_problems())
def test_triton_property_random_layouts(problem):
    layout, feat, dtype = problem["layout"], problem["feat"], problem["dtype"]
    with_x, out_windows, coeffs = problem["with_x"], problem["out_windows"], problem["coeffs"]
    eps, x = _inputs(layout, feat, dtype, with_x, batch=problem["batch"])
    out = vin_kernels.overlap_fuse(
        eps, layout, x=x, coeffs=coeffs if with_x else None, out_windows=out_windows, backend="triton"
    )
    assert out.dtype == dtype and tuple(out.shape) == _out_shape(layout, eps, out_windows)
    expected = _expected(eps, layout, x, out_windows, coeffs=coeffs)
    if expected.abs().max() == 0:  # e.g. a = b = 0: the relative error is undefined, ask for exact zeros
        assert (out == 0).all()
    else:
        assert_close(out, expected, tolerance(dtype))
