"""``pytest bench --benchmark-only``: kernel micro-benchmarks (pytest-benchmark), GPU only."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="kernel micro-benchmarks need a CUDA GPU")
    for item in items:
        item.add_marker(skip)
