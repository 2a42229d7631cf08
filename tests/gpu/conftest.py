"""GPU tests run only where CUDA is available (load_tests/gpu_check.sh runs them there)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    gpu_items = [item for item in items if "tests/gpu/" in str(item.fspath)]
    for item in gpu_items:
        item.add_marker(pytest.mark.gpu)
    if not torch.cuda.is_available():
        reason = pytest.mark.skip(reason="needs a CUDA device; run load_tests/gpu_check.sh on a GPU machine")
        for item in gpu_items:
            item.add_marker(reason)
