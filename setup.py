"""Build of vin-kernels: pure Python plus, when nvcc is found, the CUDA extension vin_kernels._C.

The extension is built with CMake + pybind11 (pybind11's cmake_example pattern). Knobs:
  VIN_KERNELS_CUDA=auto|1|0  auto (default): build when nvcc is found; 1: must build; 0: pure Python
  CUDA_ARCHS="90"            CUDA architectures in CMake's syntax (CMAKE_CUDA_ARCHITECTURES: N = SASS +
                             PTX for sm_N, N-real = SASS only); unset: CMakeLists.txt's default,
                             SASS for 80;86;89;90;100;120 plus PTX for 120
  MAX_JOBS=N                 parallel compile jobs (default: CPU count)
nvcc is looked up as $CUDACXX, $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc.
Nothing is downloaded and git is never called.

The CMake build folder (build/temp.*/vin_kernels._C) is reused only when it was configured by the
same command (cmake, generator, ninja, Python, pybind11, nvcc, architectures); otherwise it is
emptied first. pip's isolated builds run cmake and ninja from a temporary environment that is
deleted afterwards, and a CMakeCache.txt still naming the deleted ninja stops the next
`pip install .` at project().
The built extension is also copied into the checkout's vin_kernels/, so Python started in the checkout
(whose working directory shadows the installed package) finds it too.
"""

import json
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
        archs = os.environ.get("CUDA_ARCHS", "").replace(",", ";")
        cmake = shutil.which("cmake") or "cmake"
        configure = [
            cmake,
            ext.sourcedir,
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={find_nvcc()}",
        ]
        if archs:  # else CMakeLists.txt's default list
            configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
        ninja = find_ninja()
        if ninja:  # named explicitly: CMake would otherwise keep the one its cache remembers
            configure += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        fresh_build_folder(build_temp, configure)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(configure, cwd=build_temp, check=True)
        (build_temp / CONFIGURE_RECORD).write_text(json.dumps(configure))
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)
        copy_into_checkout(extdir / Path(self.get_ext_filename(ext.name)).name, ROOT / self.get_ext_filename(ext.name))


def copy_into_checkout(built: Path, in_tree: Path) -> None:
    """Put the built extension beside the package sources too, when they are a writable checkout.

    ``pip install .`` builds in the checkout; Python run from there (``python -m bench``, ``python
    -c``) puts the working directory first on ``sys.path`` and imports the checkout's vin_kernels,
    which would lack ``_C`` while the installed copy has it. Editable builds already put it there.
    """
    if not in_tree.parent.is_dir() or not os.access(in_tree.parent, os.W_OK):
        return
    if not in_tree.exists() or not in_tree.samefile(built):
        shutil.copy2(built, in_tree)


CONFIGURE_RECORD = "vin-configure-command.json"  # the cmake command that configured a build folder


def fresh_build_folder(build_temp: Path, configure: list[str]) -> None:
    """Create ``build_temp``, first emptying it if it was configured by another command than ``configure``.

    CMakeCache.txt pins the generator, ninja, cmake and compiler paths of the first configure; a later
    configure with other tools (a new pip build environment, ninja gone, Makefiles instead of Ninja)
    fails, so such a folder is started afresh. The same command reuses it (incremental rebuilds).
    """
    record = build_temp / CONFIGURE_RECORD
    if build_temp.exists():
        try:
            same = json.loads(record.read_text()) == configure
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(build_temp)
    build_temp.mkdir(parents=True, exist_ok=True)


def find_ninja():
    """Path of ninja: on PATH, else the PyPI ninja package's binary; None when there is none."""
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja  # the PyPI ninja package puts the binary next to itself
    except ImportError:
        return None
    return shutil.which("ninja", path=ninja.BIN_DIR)


setup(
    ext_modules=[CMakeExtension("vin_kernels._C")] if cuda_requested() else [],
    cmdclass={"build_ext": CMakeBuild},
)
