"""Build of vin-kernels: pure Python plus, when nvcc is found, the CUDA extension vin_kernels._C.

The extension is built with CMake + pybind11 (pybind11's cmake_example pattern). Knobs:
  VIN_KERNELS_CUDA=auto|1|0  auto (default): build when nvcc is found; 1: must build; 0: pure Python
  CUDA_ARCHS="80;90"         CUDA architectures (CMAKE_CUDA_ARCHITECTURES)
  MAX_JOBS=N                 parallel compile jobs (default: CPU count)
nvcc is looked up as $CUDACXX, $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc.
Nothing is downloaded and git is never called.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def find_nvcc():
    candidates = [os.environ.get("CUDACXX")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def cuda_requested():
    """Whether to build _C: decided by VIN_KERNELS_CUDA and whether nvcc exists."""
    mode = os.environ.get("VIN_KERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"VIN_KERNELS_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return False
    if find_nvcc() is None:
        if mode == "1":
            sys.exit("VIN_KERNELS_CUDA=1 but nvcc was not found (set CUDACXX or CUDA_HOME, or put nvcc on PATH)")
        print("vin-kernels: nvcc not found, installing without the CUDA extension", file=sys.stderr)
        return False
    return True


class CMakeExtension(Extension):
    def __init__(self, name, sourcedir=ROOT):
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(sourcedir)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        extdir = (Path.cwd() / self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("CUDA_ARCHS", "80;90").replace(",", ";")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={find_nvcc()}",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
        ]
        if shutil.which("ninja") or _has_ninja_module():
            cmake_args.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        cmake = shutil.which("cmake") or "cmake"
        subprocess.run([cmake, ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


def _has_ninja_module():
    try:
        import ninja  # noqa: F401  (the PyPI ninja package puts the binary next to itself)
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return True


setup(
    ext_modules=[CMakeExtension("vin_kernels._C")] if cuda_requested() else [],
    cmdclass={"build_ext": CMakeBuild},
)
