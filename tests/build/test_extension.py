"""The CUDA extension vin_kernels._C as built by setup.py: runs on a CPU-only machine.

Checks that the extension is built whenever nvcc is found, imports without a GPU, reports its build
(runtime version, CUDA architectures) and holds the machine code and PTX it names (cuobjdump), refuses bad calls with Python exceptions instead of crashing,
that the pure-Python build (VIN_KERNELS_CUDA=0) and the knob's validation work through pip, and that
a second build in the same checkout works after the first build's tools are gone.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import vin_kernels
from vin_kernels import ChunkLayout
from vin_kernels import cuda as vcuda

ROOT = Path(__file__).resolve().parents[2]


def find_nvcc() -> str | None:
    """The nvcc setup.py would use (same lookup as setup.py's find_nvcc)."""
    candidates = [os.environ.get("CUDACXX")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def _cuda_build_disabled() -> bool:
    return os.environ.get("VIN_KERNELS_CUDA", "auto").strip().lower() == "0"


needs_extension = pytest.mark.skipif(not vcuda.is_built(), reason=f"vin_kernels._C is not built: {vcuda.build_problem()}")


# ------------------------------------------------------------------------------------ the build
def test_extension_is_built_when_nvcc_is_found():
    if _cuda_build_disabled():
        pytest.skip("VIN_KERNELS_CUDA=0: the pure-Python build was requested")
    if find_nvcc() is None:
        pytest.skip("nvcc not found ($CUDACXX, $CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda/bin/nvcc)")
    assert vcuda.is_built(), f"nvcc is at {find_nvcc()} but the extension is unavailable: {vcuda.build_problem()}"
    assert vcuda.build_problem() == ""


def test_build_problem_explains_a_missing_extension():
    if vcuda.is_built():
        assert vcuda.build_problem() == ""
    else:
        assert "vin_kernels._C" in vcuda.build_problem()
        with pytest.raises(RuntimeError, match="vin_kernels._C"):
            vcuda.extension()


@needs_extension
def test_extension_imports_without_a_gpu():
    ext = vcuda.extension()
    assert ext.__name__ == "vin_kernels._C"
    assert Path(ext.__file__).resolve().parent == Path(vin_kernels.__file__).resolve().parent


@needs_extension
def test_extension_imports_with_no_visible_device():
    """In a fresh interpreter with every GPU hidden: the import works and no device is counted."""
    code = "import vin_kernels._C as m; print(m.device_count(), m.runtime_version())"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, version = (int(v) for v in result.stdout.split())
    assert count == 0
    assert version >= 12000


@needs_extension
def test_device_count_is_an_int():
    count = vcuda.extension().device_count()
    assert isinstance(count, int)
    assert count >= 0
    if not torch.cuda.is_available():
        assert count == 0


@needs_extension
def test_runtime_version():
    version = vcuda.extension().runtime_version()
    assert isinstance(version, int)
    assert version >= 12000, f"CUDA runtime {version} is older than 12.0"


# The default build (issue 17): machine code for A100 (80), RTX 30xx / A6000 (86), RTX 40xx / L40S (89),
# H100 / H200 (90), B200 (100) and RTX 50xx (120), plus PTX of the newest for later GPUs.
DEFAULT_SASS, DEFAULT_PTX = {80, 86, 89, 90, 100, 120}, {120}


def expected_code(cuda_archs: str | None) -> tuple[set[int], set[int]]:
    """``(SASS archs, PTX archs)`` a build with ``CUDA_ARCHS`` (CMake syntax: N = both, N-real = SASS,
    N-virtual = PTX; setup.py accepts ',' for ';') must contain; unset: the default build."""
    if not cuda_archs:
        return DEFAULT_SASS, DEFAULT_PTX
    sass, ptx = set(), set()
    for entry in filter(None, (e.strip() for e in cuda_archs.replace(",", ";").split(";"))):
        arch, _, kind = entry.partition("-")
        number = int(re.match(r"\d+", arch).group())  # 90a -> 90
        if kind != "virtual":
            sass.add(number)
        if kind != "real":
            ptx.add(number)
    return sass, ptx


def find_cuobjdump() -> str | None:
    """cuobjdump of the CUDA toolkit (PATH, $CUDA_HOME, /usr/local/cuda) or the one in Triton's wheel."""
    candidates = [shutil.which("cuobjdump")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    candidates.append("/usr/local/cuda/bin/cuobjdump")
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        candidates.append(os.path.join(os.path.dirname(triton.origin), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


@needs_extension
def test_compiled_archs():
    """_C.compiled_archs: the SASS architectures of the build, e.g. '80,86,89,90,100,120'."""
    archs = vcuda.compiled_archs()
    assert archs == vcuda.extension().compiled_archs
    parts = [p.strip() for p in archs.split(",")]
    assert all(p.isdigit() for p in parts), f"compiled_archs {archs!r} is not a comma-separated list of integers"
    assert {int(p) for p in parts} == expected_code(os.environ.get("CUDA_ARCHS"))[0], archs


@needs_extension
def test_the_module_holds_the_machine_code_and_ptx_it_names():
    """cuobjdump's listing of the built .so: one cubin per arch of compiled_archs, and the PTX the build
    asked for (the default: SASS for 80, 86, 89, 90, 100, 120 and PTX for 120)."""
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit, or Triton's wheel)")
    module = vcuda.extension().__file__
    listed = {}
    for kind, flag in (("cubin", "--list-elf"), ("ptx", "--list-ptx")):
        done = subprocess.run([tool, flag, module], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        listed[kind] = {int(m) for m in re.findall(rf"\.sm_(\d+)[a-z]?\.{kind}", done.stdout)}
    assert listed["cubin"] == {int(p) for p in vcuda.compiled_archs().split(",")}, listed
    assert (listed["cubin"], listed["ptx"]) == expected_code(os.environ.get("CUDA_ARCHS")), listed


def test_expected_code_reads_cmake_syntax():
    assert expected_code(None) == (DEFAULT_SASS, DEFAULT_PTX)
    assert expected_code("80;90") == ({80, 90}, {80, 90})
    assert expected_code("80-real,90-real,90-virtual") == ({80, 90}, {90})


# ------------------------------------------------------------------------------------ backend report
def test_cuda_backend_reports_why_it_is_unavailable():
    status = vin_kernels.backends()["cuda"]
    assert "overlap_fuse" in status.ops
    if torch.cuda.is_available() and vcuda.is_built():
        assert status.available, status.reason
        return
    assert not status.available
    if vcuda.is_built():
        assert "no cuda device" in status.reason.lower(), status.reason
    else:
        assert status.reason == vcuda.build_problem()


@pytest.mark.parametrize("out_windows", [False, True])
def test_cuda_backend_on_cpu_tensors_raises(out_windows):
    layout = ChunkLayout.windows(44, 20, 12)
    eps = torch.randn(2, layout.num_chunks, layout.chunk_len, 3)
    with pytest.raises((ValueError, RuntimeError), match="(?i)cuda"):
        vin_kernels.overlap_fuse(eps, layout, out_windows=out_windows, backend="cuda")


# ------------------------------------------------------------------------------------ raw binding
def _null_call_kwargs(**overrides):
    """Arguments of _C.overlap_fuse with every pointer null (nothing can be launched on them)."""
    kwargs = dict(
        eps=0, eps_stride_batch=0, eps_stride_window=0, eps_stride_pos=0,
        x=0, x_stride_batch=0, x_stride_1=0, x_stride_2=0, x_windows=False,
        out=0, out_stride_batch=0, out_stride_1=0, out_stride_2=0,
        frame_ptr=0, entry_window=0, entry_pos=0, entry_weight=0,
        batch=1, num_frames=1, features=1, coef_a=0.0, coef_b=1.0, out_windows=False, dtype=0, stream=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return kwargs


@needs_extension
def test_raw_binding_rejects_null_pointers():
    with pytest.raises((ValueError, RuntimeError), match="null"):
        vcuda.extension().overlap_fuse(**_null_call_kwargs())


@needs_extension
@pytest.mark.parametrize("dtype", [7, -1, 3])
def test_raw_binding_rejects_bad_dtype_code(dtype):
    with pytest.raises((ValueError, RuntimeError)):
        vcuda.extension().overlap_fuse(**_null_call_kwargs(dtype=dtype))


@needs_extension
def test_raw_binding_rejects_wrong_argument_types():
    with pytest.raises(TypeError):
        vcuda.extension().overlap_fuse(**_null_call_kwargs(eps="not a pointer"))
    with pytest.raises(TypeError):
        vcuda.extension().overlap_fuse(0, 0)


# ------------------------------------------------------------------------------------ pip builds
_BUILD_TOOLS_PROBE = """
import importlib.util, sys
import setuptools  # noqa: F401  (first: importing pip before it trips setuptools' distutils hack)
import pybind11  # noqa: F401
if importlib.util.find_spec("pip") is None:
    sys.exit("pip is not installed")
try:
    import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
except ImportError:
    if importlib.util.find_spec("wheel") is None:
        sys.exit("neither setuptools' bdist_wheel nor the wheel package is available")
"""


def _require_pip_build_tools():
    """Skip unless a build without isolation can work. Probed in a subprocess: importing setuptools in
    the test process, after pip or the stdlib distutils was imported, trips setuptools' distutils hack."""
    if not (ROOT / "setup.py").is_file():
        pytest.skip(f"no setup.py at {ROOT} (tests run outside the source tree)")
    probe = subprocess.run([sys.executable, "-c", _BUILD_TOOLS_PROBE], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        pytest.skip(f"cannot build without build isolation (setuptools/pybind11/pip/wheel): {why}")


def _pip_wheel(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VIN_KERNELS_CUDA=mode, PIP_NO_INPUT="1")
    cmd = [
        sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
        "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT),
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_pure_python_wheel_has_no_extension(tmp_path):
    _require_pip_build_tools()
    result = _pip_wheel(tmp_path, "0")
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(tmp_path.glob("vin_kernels-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {tmp_path}, got {sorted(p.name for p in tmp_path.iterdir())}"
    wheel = wheels[0]
    assert wheel.name.endswith("-py3-none-any.whl"), f"a pure-Python wheel must be untagged, got {wheel.name}"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "vin_kernels/__init__.py" in names
    assert "vin_kernels/cuda.py" in names
    compiled = [n for n in names if Path(n).name.startswith("_C") or n.endswith((".so", ".pyd"))]
    assert not compiled, f"VIN_KERNELS_CUDA=0 wheel contains compiled files: {compiled}"


def test_bad_cuda_mode_fails_the_build(tmp_path):
    _require_pip_build_tools()
    result = _pip_wheel(tmp_path, "bogus")
    assert result.returncode != 0, "VIN_KERNELS_CUDA=bogus must fail the build"
    output = result.stdout + result.stderr
    assert "VIN_KERNELS_CUDA" in output, output
    assert not list(tmp_path.glob("*.whl"))


_SCRATCH_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks",
    "*.so", "*.whl", ".venv", "venv",
)  # fmt: skip


def _wheel_has_extension(directory: Path) -> bool:
    (wheel,) = directory.glob("vin_kernels-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return any(n.startswith("vin_kernels/_C") and n.endswith(".so") for n in zf.namelist())


def test_second_build_in_the_same_checkout_works_after_the_first_builds_tools_are_gone(tmp_path):
    """``pip install .`` twice in one checkout (issue 13, point 1). pip's isolated build runs the ninja
    of a temporary environment that it deletes afterwards; the CMake cache under build/ remembered that
    ninja, so the next build stopped at project(). Reproduced without a network: the first build finds
    ninja in a folder deleted before the second build, which finds another ninja. Two CUDA builds for
    one architecture: about 30 s on 2 cores."""
    _require_pip_build_tools()
    if _cuda_build_disabled() or find_nvcc() is None:
        pytest.skip("needs nvcc: only the CUDA extension is built with CMake")
    ninja = shutil.which("ninja")
    if ninja is None:
        pytest.skip("ninja is not on PATH")
    source = tmp_path / "checkout"
    shutil.copytree(ROOT, source, ignore=_SCRATCH_IGNORE)
    doomed_env = tmp_path / "pip-build-env" / "bin"  # stands for pip's isolated build environment
    doomed_env.mkdir(parents=True)
    shutil.copy2(os.path.realpath(ninja), doomed_env / "ninja")
    env = dict(os.environ, VIN_KERNELS_CUDA="1", CUDA_ARCHS="80", PIP_NO_INPUT="1")
    for build, path in enumerate((f"{doomed_env}{os.pathsep}{os.environ['PATH']}", os.environ["PATH"])):
        if build == 1:
            shutil.rmtree(doomed_env.parent)
        wheels = tmp_path / f"wheels{build}"
        cmd = [
            sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
            "--disable-pip-version-check", "-w", str(wheels), str(source),
        ]  # fmt: skip
        done = subprocess.run(cmd, env=dict(env, PATH=path), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"build {build + 1} failed:\n{done.stdout[-12000:]}\n{done.stderr[-2000:]}"
        assert _wheel_has_extension(wheels), f"build {build + 1} made a wheel without vin_kernels._C"
    # Python started in the checkout imports the checkout's vin_kernels: the build put _C there too.
    assert list((source / "vin_kernels").glob("_C*.so")), "the build did not copy _C into the checkout"
