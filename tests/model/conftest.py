"""Fixtures of the model tests."""

import sys
from pathlib import Path

import pytest

from vin import parallel


@pytest.fixture(scope="session")
def launch_test_job():
    """``launch(job, nproc)``: ``parallel.launch(job, nproc, backend="gloo", threads=1)`` for a job defined in a
    test module; the spawned children import that module by its name, so the folder it is importable from is
    on ``sys.path`` while they start (the test files are not in a package)."""

    def launch(job, nproc: int) -> list:
        parts = job.__module__.split(".")
        path = str(Path(sys.modules[job.__module__].__file__).resolve().parents[len(parts) - 1])
        sys.path.insert(0, path)
        try:
            return parallel.launch(job, nproc, backend="gloo", threads=1)
        finally:
            sys.path.remove(path)

    return launch
