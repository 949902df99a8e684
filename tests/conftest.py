"""Test configuration: the gpu marker, the Triton CPU interpreter, hypothesis profile.

TRITON_INTERPRET must be set before any Triton kernel module is imported (it is read when kernels are
decorated), so it is set here, at collection, on machines without a CUDA device.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# Derandomized: the same examples on every run, so CI never flakes; deadline off (the interpreter is slow).
settings.register_profile(
    "vin", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("vin")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

