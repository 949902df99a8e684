"""overlap_fuse on the Triton, CUDA and sdpa backends against the float64 reference, and the
torch.library registration of its kernel ops.

The kernel tests take the backend as their first parameter. ``cuda`` cases are marked ``gpu`` (skipped
without a CUDA device) and skip when the extension ``vin_kernels._C`` is not built; they cross every
combination. ``triton`` cases run everywhere: on a machine without a CUDA device ``conftest.py`` sets
``TRITON_INTERPRET=1`` and every Triton launch runs in the CPU interpreter, one Python-level program per
(batch * frame, feature block), so the Triton cases are a chosen subset (smaller batches, fewer dtype and
mode combinations) that keeps them well under a minute there. ``overlap_fuse`` has no ``tl.dot``, so bf16
is checked on the CPU too. ``sdpa`` (vectorized torch) runs on the CPU.

The registration tests at the end exercise the kernel ops ``vin_kernels::overlap_fuse_triton`` (on the
CPU in the interpreter) and ``vin_kernels::overlap_fuse_cuda`` (GPU): opcheck, meta tensors, the
registered backward, torch.compile.
"""

from __future__ import annotations

from itertools import product

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vin_kernels
from vin_kernels import ChunkLayout, reference
from vin_kernels import cuda as vcuda
from vin_kernels.dispatch import BACKENDS, select_backend
from vin_kernels.ops.overlap_fuse import fusion_tensors
from vin_kernels.testing import assert_close, poison_, tolerance
from vin_kernels.triton import overlap_fuse as triton_overlap_fuse

TRITON_OP = torch.ops.vin_kernels.overlap_fuse_triton
CUDA_OP = torch.ops.vin_kernels.overlap_fuse_cuda
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
COEFFS = (0.9, -0.35)
NO_COEFFS = (0.0, 1.0)  # what the op / raw launcher gets without x

# (num_frames, window, overlap)
LAYOUTS = {
    "44-20-12": (44, 20, 12),  # 4 windows, starts 0, 8, 16, 24
    "30-20-12-clamped": (30, 20, 12),  # 3 windows, the last clamped to start at 10
    "7-20-3-one-window": (7, 20, 3),  # F < window: one window of 7 frames
    "41-8-0-no-overlap": (41, 8, 0),  # 6 windows, the last clamped to 33 (overlaps the 5th by 7)
    "25-6-5-stride-1": (25, 6, 5),  # 20 windows, up to 6 cover a frame
}
FEATS = {
    "4x6x10": (4, 6, 10),  # 240: the CUDA kernel's widest vector access for every dtype
    "4x6": (4, 6),  # two feature dims, less than one Triton feature block
    "3": (3,),  # odd: the CUDA scalar path
    "1": (1,),
    "257": (257,),  # odd, larger than a warp (CUDA scalar path), and more than one Triton feature block
    #                 (64 in the interpreter): a masked tail block
    "none": (),  # no feature dims
}
# The forward feature shapes of each backend.
CUDA_FEATS = ("4x6x10", "3", "1", "257", "none")
TRITON_FEATS = ("4x6", "3", "none", "257")
# Triton forward in fp32: every (with_x, out_windows) combination; the big feature size gets one per
# layout, alternating between the two extremes (interpreter time).
MODES = [(False, False), (True, False), (False, True), (True, True)]
MODES_257 = ([(True, True)], [(False, False)])

# The Triton kernels run on the GPU where there is one, else in the interpreter on the CPU.
DEVICES = {"triton": "cuda" if torch.cuda.is_available() else "cpu", "cuda": "cuda", "sdpa": "cpu"}
RAW_LAUNCHERS = {"triton": triton_overlap_fuse.overlap_fuse, "cuda": vcuda.overlap_fuse}

needs_extension = pytest.mark.skipif(not vcuda.is_built(), reason=f"vin_kernels._C is not built: {vcuda.build_problem()}")
CUDA_MARKS = (pytest.mark.gpu, needs_extension)
BACKEND_PARAMS = [pytest.param("triton"), pytest.param("sdpa"), pytest.param("cuda", marks=CUDA_MARKS)]


def _case(backend: str, *values, id: str):
    """One parametrize case, the backend first: a ``cuda`` case carries the gpu and extension marks."""
    return pytest.param(backend, *values, id=f"{backend}-{id}", marks=CUDA_MARKS if backend == "cuda" else ())


def _mode_id(with_x: bool, out_windows: bool) -> str:
    return f"{'x' if with_x else 'no-x'}-{'windows' if out_windows else 'frames'}"


def _feat_id(feat) -> str:
    return "x".join(map(str, feat)) or "none"


def _layout(key: str) -> ChunkLayout:
    return ChunkLayout.windows(*LAYOUTS[key])


def _randn(shape, dtype, device) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def _inputs(layout: ChunkLayout, feat, dtype, with_x: bool, device, batch: int = 2):
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


def _run(backend: str, eps, layout, x=None, out_windows=False):
    return vin_kernels.overlap_fuse(
        eps, layout, x=x, coeffs=COEFFS if x is not None else None, out_windows=out_windows, backend=backend
    )


def _check(out, eps, layout, x, out_windows, name="output"):
    assert out.dtype == eps.dtype, f"{name}: dtype {out.dtype} != {eps.dtype}"
    assert out.device == eps.device, f"{name}: device {out.device} != {eps.device}"
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(eps.dtype), name)


def _run_and_check_with_and_without_x(backend, eps, x, layout, out_windows):
    for xx in (None, x):
        out = _run(backend, eps, layout, xx, out_windows)
        _check(out, eps, layout, xx, out_windows, name=f"output (x={'yes' if xx is not None else 'no'})")


def _table(layout: ChunkLayout, device):
    return fusion_tensors(layout, torch.device(device))


def _as_windows(video: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """A video ``[B, F, *feat]`` cut into the layout's windows ``[B, n, L, *feat]`` (overlaps copied)."""
    return video[:, torch.tensor(layout.window_frame_index, device=video.device)]


# =========================================================================================== forward
def _forward_cases():
    """(backend, layout_key, feat, dtype, with_x, out_windows, batch)."""
    # Triton, fp32: every layout and feature shape (257 with one mode per layout), batch 1 (batch > 1:
    # the tests below).
    for i, layout_key in enumerate(LAYOUTS):
        for feat_key in TRITON_FEATS:
            for with_x, out_windows in MODES_257[i % 2] if feat_key == "257" else MODES:
                id = f"{layout_key}-{feat_key}-fp32-{_mode_id(with_x, out_windows)}"
                yield _case("triton", layout_key, FEATS[feat_key], torch.float32, with_x, out_windows, 1, id=id)
    # Triton, fp16 / bf16: inputs rounded to the dtype, fp32 accumulation, one rounding of the output.
    # Every layout, two of the modes, batch 1; the masked tail block: test_triton_matches_reference_half_wide.
    for layout_key, dtype, (with_x, out_windows) in product(LAYOUTS, HALF_DTYPES, [(False, False), (True, True)]):
        id = f"{layout_key}-4x6-{DTYPE_IDS[dtype]}-{_mode_id(with_x, out_windows)}"
        yield _case("triton", layout_key, (4, 6), dtype, with_x, out_windows, 1, id=id)
    # CUDA and sdpa: the full cross product, batch 2.
    for backend, layout_key, feat_key, dtype, with_x, out_windows in product(
        ("cuda", "sdpa"), LAYOUTS, CUDA_FEATS, DTYPES, (False, True), (False, True)
    ):
        id = f"{layout_key}-{feat_key}-{DTYPE_IDS[dtype]}-{_mode_id(with_x, out_windows)}"
        yield _case(backend, layout_key, FEATS[feat_key], dtype, with_x, out_windows, 2, id=id)


@pytest.mark.parametrize("backend, layout_key, feat, dtype, with_x, out_windows, batch", list(_forward_cases()))
def test_matches_reference(backend, layout_key, feat, dtype, with_x, out_windows, batch):
    layout = _layout(layout_key)
    eps, x = _inputs(layout, feat, dtype, with_x, DEVICES[backend], batch=batch)
    out = _run(backend, eps, layout, x, out_windows)
    _check(out, eps, layout, x, out_windows)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_triton_matches_reference_half_wide(dtype):
    """A masked tail feature block in the 16-bit dtypes (fp32, and CUDA: test_matches_reference)."""
    layout = _layout("30-20-12-clamped")
    eps, x = _inputs(layout, (257,), dtype, True, DEVICES["triton"], batch=1)
    for out_windows in (False, True):
        out = _run("triton", eps, layout, x, out_windows)
        _check(out, eps, layout, x, out_windows, name=f"output (out_windows={out_windows})")


def _non_contiguous_cases():
    """(backend, layout_key, feat, dtype, out_windows, batch)."""
    for layout_key, feat, dtype, out_windows in [
        ("44-20-12", (4, 6), torch.float32, False),
        ("44-20-12", (4, 6), torch.float32, True),
        ("30-20-12-clamped", (), torch.float16, False),
        ("30-20-12-clamped", (), torch.float16, True),
        ("30-20-12-clamped", (257,), torch.float32, True),
    ]:
        id = f"{layout_key}-{_feat_id(feat)}-{DTYPE_IDS[dtype]}-{'windows' if out_windows else 'frames'}"
        yield _case("triton", layout_key, feat, dtype, out_windows, 2, id=id)
    for backend, layout_key, feat, dtype, out_windows in product(
        ("cuda", "sdpa"), ["44-20-12", "30-20-12-clamped"], [(4, 6, 10), (257,), ()], DTYPES, (False, True)
    ):
        id = f"{layout_key}-{_feat_id(feat)}-{DTYPE_IDS[dtype]}-{'windows' if out_windows else 'frames'}"
        yield _case(backend, layout_key, feat, dtype, out_windows, 3, id=id)


@pytest.mark.parametrize("backend, layout_key, feat, dtype, out_windows, batch", list(_non_contiguous_cases()))
def test_non_contiguous_batch(backend, layout_key, feat, dtype, out_windows, batch):
    """eps and x are every other row of a bigger batch (batch stride twice the packed one)."""
    layout = _layout(layout_key)
    eps_big, x_big = _inputs(layout, feat, dtype, True, DEVICES[backend], batch=2 * batch)
    eps, x = eps_big[::2], x_big[::2]
    assert eps.shape[0] == batch and not eps.is_contiguous() and not x.is_contiguous()
    _run_and_check_with_and_without_x(backend, eps, x, layout, out_windows)


def _pointer_offset_cases():
    """(backend, layout_key, feat, dtype, out_windows)."""
    for backend, layout_key, feats in [
        ("triton", "30-20-12-clamped", [(4, 6)]),
        ("cuda", "44-20-12", [(4, 6, 10), (64,)]),
        ("sdpa", "44-20-12", [(4, 6, 10)]),
    ]:
        for feat, dtype, out_windows in product(feats, DTYPES, (False, True)):
            id = f"{layout_key}-{_feat_id(feat)}-{DTYPE_IDS[dtype]}-{'windows' if out_windows else 'frames'}"
            yield _case(backend, layout_key, feat, dtype, out_windows, id=id)


@pytest.mark.parametrize("backend, layout_key, feat, dtype, out_windows", list(_pointer_offset_cases()))
def test_pointer_offset_by_one_element(backend, layout_key, feat, dtype, out_windows):
    """eps and x start one element into their buffers: no 16-byte (or, 16-bit dtypes, even 4-byte)
    aligned access."""
    layout = _layout(layout_key)
    B, device = 2, DEVICES[backend]
    eps_shape = (B, layout.num_chunks, layout.chunk_len, *feat)
    x_shape = (B, layout.num_frames, *feat)
    eps = _randn((torch.Size(eps_shape).numel() + 1,), dtype, device)[1:].view(eps_shape)
    x = _randn((torch.Size(x_shape).numel() + 1,), dtype, device)[1:].view(x_shape)
    assert eps.data_ptr() % 4 != 0 or dtype == torch.float32
    assert eps.data_ptr() % 16 != 0 and x.data_ptr() % 16 != 0
    _run_and_check_with_and_without_x(backend, eps, x, layout, out_windows)


def _strides_swapped_cases():
    """(backend, feat, dtype, out_windows)."""
    for backend, feat_dtypes in [
        ("triton", [((8,), torch.float32), ((3,), torch.float16)]),
        ("cuda", list(product([(8,), (3,)], DTYPES))),
        ("sdpa", list(product([(8,), (3,)], DTYPES))),
    ]:
        for (feat, dtype), out_windows in product(feat_dtypes, (False, True)):
            id = f"{_feat_id(feat)}-{DTYPE_IDS[dtype]}-{'windows' if out_windows else 'frames'}"
            yield _case(backend, feat, dtype, out_windows, id=id)


@pytest.mark.parametrize("backend, feat, dtype, out_windows", list(_strides_swapped_cases()))
def test_window_and_position_strides_swapped(backend, feat, dtype, out_windows):
    """eps is a transposed view: windows are not outermost in memory, features still packed."""
    layout = _layout("30-20-12-clamped")
    device = DEVICES[backend]
    eps = _randn((2, layout.chunk_len, layout.num_chunks, *feat), dtype, device).transpose(1, 2)
    assert eps.shape[1:3] == (layout.num_chunks, layout.chunk_len) and not eps.is_contiguous()
    x = _randn((2, layout.num_frames, *feat), dtype, device)
    _run_and_check_with_and_without_x(backend, eps, x, layout, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_empty_batch(backend, out_windows):
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (5,), torch.float16, True, DEVICES[backend], batch=0)
    out = _run(backend, eps, layout, x, out_windows)
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)
    assert out.device == eps.device and out.dtype == torch.float16


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_triton_constant_input_comes_back_unchanged(out_windows):
    """Normalized weights sum to 1 on every frame: a constant prediction is a fixed point."""
    layout = _layout("25-6-5-stride-1")
    eps = torch.full((1, layout.num_chunks, layout.chunk_len, 3), 0.75, device=DEVICES["triton"])
    out = _run("triton", eps, layout, out_windows=out_windows)
    torch.testing.assert_close(out, torch.full_like(out, 0.75), rtol=1e-6, atol=1e-6)


# =========================================================================================== raw launcher, poisoned out
def _poison_cases():
    """(backend, layout_key, feat, dtype, with_x, out_windows)."""
    # Triton: every layout with both output forms (x alternating), fp32; fp16 for two layouts, with x.
    for i, layout_key in enumerate(LAYOUTS):
        for out_windows in (False, True):
            with_x = (i + out_windows) % 2 == 1
            id = f"{layout_key}-3-fp32-{_mode_id(with_x, out_windows)}"
            yield _case("triton", layout_key, (3,), torch.float32, with_x, out_windows, id=id)
    for layout_key, out_windows in product(["44-20-12", "25-6-5-stride-1"], (False, True)):
        id = f"{layout_key}-8-fp16-{_mode_id(True, out_windows)}"
        yield _case("triton", layout_key, (8,), torch.float16, True, out_windows, id=id)
    # CUDA: the full cross product.
    for layout_key, feat, dtype, with_x, out_windows in product(
        LAYOUTS, [(8,), (3,)], [torch.float32, torch.float16], (False, True), (False, True)
    ):
        id = f"{layout_key}-{_feat_id(feat)}-{DTYPE_IDS[dtype]}-{_mode_id(with_x, out_windows)}"
        yield _case("cuda", layout_key, feat, dtype, with_x, out_windows, id=id)


@pytest.mark.parametrize("backend, layout_key, feat, dtype, with_x, out_windows", list(_poison_cases()))
def test_writes_every_output_element_and_nothing_else(backend, layout_key, feat, dtype, with_x, out_windows):
    """Raw launcher into a NaN-poisoned view of a bigger buffer: every element of out is written,
    nothing past it is touched, and the values match the reference."""
    layout = _layout(layout_key)
    n, L, F = layout.num_chunks, layout.chunk_len, layout.num_frames
    B, device = 2, DEVICES[backend]
    eps, x = _inputs(layout, feat, dtype, with_x, device, batch=B)
    if out_windows:
        big = poison_(torch.empty(B, n + 1, L, *feat, dtype=dtype, device=device))
        out, rest = big[:, :n], big[:, n:]
    else:
        big = poison_(torch.empty(B, F + 3, *feat, dtype=dtype, device=device))
        out, rest = big[:, :F], big[:, F:]
    coeffs = COEFFS if with_x else NO_COEFFS
    result = RAW_LAUNCHERS[backend](eps, _table(layout, eps.device), x, coeffs, out, out_windows)
    if device == "cuda":
        torch.cuda.synchronize()
    assert result is out
    nan = torch.isnan(out)
    assert not nan.any(), f"{int(nan.sum())} of {out.numel()} output elements were never written"
    assert torch.isnan(rest).all(), "the kernel wrote past the end of out"
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(dtype))


# =========================================================================================== gradients
def _grad_cases():
    """(backend, layout_key, feat, dtype, with_x, out_windows)."""
    # Triton, fp32, feature dims (3, 2): three layouts in every mode, the other two with x into windows.
    for layout_key, with_x, out_windows in product(
        ["44-20-12", "30-20-12-clamped", "25-6-5-stride-1"], (False, True), (False, True)
    ):
        yield _case("triton", layout_key, (3, 2), torch.float32, with_x, out_windows,
                    id=f"{layout_key}-3x2-fp32-{_mode_id(with_x, out_windows)}")  # fmt: skip
    for layout_key in ("7-20-3-one-window", "41-8-0-no-overlap"):
        yield _case("triton", layout_key, (3, 2), torch.float32, True, True, id=f"{layout_key}-3x2-fp32-x-windows")
    # Triton, fp16 / bf16, feature dims (3, 4): two layouts, with x.
    for layout_key, dtype, out_windows in product(["30-20-12-clamped", "25-6-5-stride-1"], HALF_DTYPES, (False, True)):
        id = f"{layout_key}-3x4-{DTYPE_IDS[dtype]}-{_mode_id(True, out_windows)}"
        yield _case("triton", layout_key, (3, 4), dtype, True, out_windows, id=id)
    # CUDA and sdpa, feature dims (3, 4): three layouts, every dtype and mode.
    for backend, layout_key, dtype, with_x, out_windows in product(
        ("cuda", "sdpa"), ["44-20-12", "30-20-12-clamped", "25-6-5-stride-1"], DTYPES, (False, True), (False, True)
    ):
        id = f"{layout_key}-3x4-{DTYPE_IDS[dtype]}-{_mode_id(with_x, out_windows)}"
        yield _case(backend, layout_key, (3, 4), dtype, with_x, out_windows, id=id)


@pytest.mark.parametrize("backend, layout_key, feat, dtype, with_x, out_windows", list(_grad_cases()))
def test_gradients_match_reference(backend, layout_key, feat, dtype, with_x, out_windows):
    layout = _layout(layout_key)
    eps, x = _inputs(layout, feat, dtype, with_x, DEVICES[backend])
    eps.requires_grad_(True)
    inputs = [eps]
    if x is not None:
        x.requires_grad_(True)
        inputs.append(x)
    _check_gradients(_run(backend, eps, layout, x, out_windows), inputs, layout, out_windows, tolerance(dtype))


def _check_gradients(out, inputs, layout, out_windows, tol):
    """``out`` (from ``inputs = [eps]`` or ``[eps, x]``) and its gradients for a random upstream gradient,
    against the reference's autograd in float64."""
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), inputs)
    inputs64 = [t.detach().cpu().double().requires_grad_(True) for t in inputs]
    with_x = len(inputs) == 2
    x64 = inputs64[1] if with_x else None
    ref = reference.overlap_fuse(
        inputs64[0], layout, x=x64, coeffs=COEFFS if with_x else None, out_windows=out_windows
    )
    ref_grads = torch.autograd.grad((ref * g.detach().cpu().double()).sum(), inputs64)
    assert_close(out, ref, tol, "output")
    for name, grad, ref_grad, t in zip(("grad eps", "grad x"), grads, ref_grads, inputs):
        assert grad.dtype == t.dtype and grad.device == t.device, name
        assert tuple(grad.shape) == tuple(t.shape), name
        assert_close(grad, ref_grad, tol, name)


# =========================================================================================== Triton property test
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


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@settings(max_examples=100)
@given(problem=_problems())
def test_property_random_layouts(backend, problem):
    layout, feat, dtype = problem["layout"], problem["feat"], problem["dtype"]
    with_x, out_windows, coeffs = problem["with_x"], problem["out_windows"], problem["coeffs"]
    eps, x = _inputs(layout, feat, dtype, with_x, DEVICES[backend], batch=problem["batch"])
    out = vin_kernels.overlap_fuse(
        eps, layout, x=x, coeffs=coeffs if with_x else None, out_windows=out_windows, backend=backend
    )
    assert out.dtype == dtype and tuple(out.shape) == _out_shape(layout, eps, out_windows)
    expected = _expected(eps, layout, x, out_windows, coeffs=coeffs)
    if expected.abs().max() == 0:  # e.g. a = b = 0: the relative error is undefined, ask for exact zeros
        assert (out == 0).all()
    else:
        assert_close(out, expected, tolerance(dtype))


# =========================================================================================== x as windows
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout_key", ["30-20-12-clamped", "25-6-5-stride-1", "7-20-3-one-window"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_windowed_state_advances_like_the_video(backend, layout_key, dtype):
    """A sampler state kept as windows (overlaps copied) and advanced with x as windows gives, window for
    window, the video advanced with x as frames: two steps of ``x <- a x + b blend(eps)``."""
    layout = _layout(layout_key)
    device = DEVICES[backend]
    video = _randn((2, layout.num_frames, 3, 2), dtype, device)
    state = _as_windows(video, layout)
    for step in range(2):
        eps = _randn((2, layout.num_chunks, layout.chunk_len, 3, 2), dtype, device)
        video = vin_kernels.overlap_fuse(eps, layout, x=video, coeffs=COEFFS, backend=backend)
        state = vin_kernels.overlap_fuse(eps, layout, x=state, coeffs=COEFFS, out_windows=True, backend=backend)
        assert torch.equal(state, _as_windows(video, layout)), f"step {step}: windows differ from the video's"


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_windowed_x_reads_each_frame_from_its_first_window(backend, out_windows):
    """x as windows whose copies disagree: frame f comes from ChunkLayout.frame_source (the reference's rule)."""
    layout = _layout("25-6-5-stride-1")
    device = DEVICES[backend]
    eps = _randn((2, layout.num_chunks, layout.chunk_len, 3), torch.float32, device)
    x = _randn(tuple(eps.shape), torch.float32, device)  # copies of a frame differ
    out = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=COEFFS, out_windows=out_windows, backend=backend)
    assert_close(out, _expected(eps, layout, x, out_windows), tolerance(torch.float32))
    first = torch.stack([x[:, w, p] for w, p in layout.frame_source], dim=1)  # frame f from its first window
    blend = vin_kernels.overlap_fuse(eps, layout, backend="reference")
    expected = COEFFS[0] * first + COEFFS[1] * blend
    assert_close(out, _as_windows(expected, layout) if out_windows else expected, tolerance(torch.float32))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_windowed_x_gradients(backend):
    layout = _layout("30-20-12-clamped")
    device = DEVICES[backend]
    eps = _randn((2, layout.num_chunks, layout.chunk_len, 3), torch.float32, device).requires_grad_()
    x = _randn(tuple(eps.shape), torch.float32, device).requires_grad_()
    out = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=COEFFS, out_windows=True, backend=backend)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (eps, x))
    eps64, x64 = (t.detach().cpu().double().requires_grad_() for t in (eps, x))
    ref = reference.overlap_fuse(eps64, layout, x=x64, coeffs=COEFFS, out_windows=True)
    ref_grads = torch.autograd.grad((ref * g.cpu().double()).sum(), (eps64, x64))
    for name, grad, ref_grad in zip(("grad eps", "grad x"), grads, ref_grads):
        assert_close(grad, ref_grad, tolerance(torch.float32), name)
    assert (ref_grads[1] != 0).sum() == layout.num_frames * 2 * 3  # one window copy per frame is read


# =========================================================================================== CUDA only
@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_opcheck(dtype, with_x, out_windows):
    F, W, O = LAYOUTS["30-20-12-clamped"]
    layout = ChunkLayout.windows(F, W, O)
    eps, x = _inputs(layout, (8,), dtype, with_x, "cuda")
    a, b = COEFFS if with_x else NO_COEFFS
    torch.library.opcheck(CUDA_OP, (eps, *_table(layout, eps.device), x, a, b, out_windows))


def _check_doubled_step_under_torch_compile(step, eps, x, layout, out_windows):
    """``step`` (fp16 overlap_fuse times 2) compiled matches it eager, and eager matches the reference."""
    expected = step(eps, x)
    compiled = torch.compile(step, fullgraph=True)(eps, x)
    assert_close(compiled, expected, tolerance(torch.float16))
    assert_close(expected / 2.0, _expected(eps, layout, x, out_windows), tolerance(torch.float16))


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_cuda_op_under_torch_compile(out_windows):
    """The CUDA kernel op inside a compiled graph (fake kernel while tracing)."""
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (4, 8), torch.float16, True, "cuda")
    table = _table(layout, eps.device)

    def step(eps, x):
        return CUDA_OP(eps, *table, x, COEFFS[0], COEFFS[1], out_windows) * 2.0

    _check_doubled_step_under_torch_compile(step, eps, x, layout, out_windows)


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
def test_cuda_public_function_under_torch_compile(out_windows):
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (4, 8), torch.float16, True, "cuda")

    def step(eps, x):
        out = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=COEFFS, out_windows=out_windows, backend="cuda")
        return out * 2.0

    _check_doubled_step_under_torch_compile(step, eps, x, layout, out_windows)


@pytest.mark.gpu
@needs_extension
def test_raw_binding_validates_before_launch():
    """Real device pointers with a bad dtype code / negative size: a ValueError, no launch."""
    layout = _layout("44-20-12")
    eps, _ = _inputs(layout, (8,), torch.float32, False, "cuda")
    out = torch.empty(2, layout.num_frames, 8, device="cuda")
    frame_ptr, window, position, weight = _table(layout, eps.device)
    kwargs = dict(
        eps=eps.data_ptr(), eps_stride_batch=eps.stride(0), eps_stride_window=eps.stride(1),
        eps_stride_pos=eps.stride(2), x=0, x_stride_batch=0, x_stride_1=0, x_stride_2=0, x_windows=False,
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


# =========================================================================================== registration, on the CPU
@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("x_form", ["none", "frames", "windows"])
@pytest.mark.parametrize("feat", [(3,), ()], ids=["3", "none"])
def test_triton_op_opcheck(feat, x_form, out_windows):
    layout = _layout("30-20-12-clamped")
    eps, x = _inputs(layout, feat, torch.float32, x_form != "none", DEVICES["triton"])
    if x_form == "windows":
        x = _as_windows(x, layout)
    a, b = COEFFS if x is not None else NO_COEFFS
    torch.library.opcheck(TRITON_OP, (eps, *_table(layout, eps.device), x, a, b, out_windows))


def test_triton_op_opcheck_with_grad():
    layout = ChunkLayout.windows(26, 10, 4)  # a layout no other test uses
    eps, x = _inputs(layout, (3,), torch.float32, True, DEVICES["triton"])
    eps.requires_grad_(True)
    x.requires_grad_(True)
    torch.library.opcheck(TRITON_OP, (eps, *_table(layout, eps.device), x, COEFFS[0], COEFFS[1], False))


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("op", [TRITON_OP, CUDA_OP], ids=["triton", "cuda"])
def test_op_on_meta_tensors(op, with_x, out_windows):
    layout = _layout("44-20-12")
    eps, x = _inputs(layout, (4, 6), torch.float16, with_x, "meta")
    a, b = COEFFS if with_x else NO_COEFFS
    out = op(eps, *_table(layout, eps.device), x, a, b, out_windows)
    assert out.device.type == "meta" and out.dtype == torch.float16
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa", "triton", "cuda"])
def test_public_function_on_meta_tensors(backend, out_windows):
    layout = _layout("30-20-12-clamped")
    eps, x = _inputs(layout, (5,), torch.bfloat16, True, "meta")
    out = vin_kernels.overlap_fuse(eps, layout, x=x, coeffs=COEFFS, out_windows=out_windows, backend=backend)
    assert out.device.type == "meta" and out.dtype == torch.bfloat16
    assert tuple(out.shape) == _out_shape(layout, eps, out_windows)


@pytest.mark.parametrize("out_windows", [False, True], ids=["frames", "windows"])
@pytest.mark.parametrize("x_form", ["none", "frames", "windows"])
@pytest.mark.parametrize("layout_key", list(LAYOUTS))
def test_op_backward_matches_reference(layout_key, x_form, out_windows):
    """The kernel ops' registered backward (shared by Triton and CUDA) against float64 autograd."""
    layout = _layout(layout_key)
    with_x = x_form != "none"
    eps, x = _inputs(layout, (3, 2), torch.float32, with_x, DEVICES["triton"])
    if x_form == "windows":
        x = _as_windows(x, layout) + _randn((eps.shape[0], layout.num_chunks, layout.chunk_len, 3, 2), torch.float32, eps.device)
    a, b = COEFFS if with_x else NO_COEFFS
    inputs = [eps.requires_grad_(True)] + ([x.requires_grad_(True)] if with_x else [])
    out = TRITON_OP(eps, *_table(layout, eps.device), x, a, b, out_windows)
    _check_gradients(out, inputs, layout, out_windows, tolerance(torch.float32))


def test_triton_op_under_torch_compile():
    layout = _layout("30-20-12-clamped")
    eps, x = _inputs(layout, (3,), torch.float32, True, DEVICES["triton"])
    table = _table(layout, eps.device)

    def step(eps, x):
        return TRITON_OP(eps, *table, x, COEFFS[0], COEFFS[1], True) * 2.0

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
        return vin_kernels.overlap_fuse(eps, layout, backend="triton") * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="eager")(eps)
    assert_close(compiled / 2.0, _expected(eps, layout), tolerance(torch.float32))
