"""Shared fixtures: deterministic seeds and thread count for every test, small synthetic data."""

from __future__ import annotations

import os
import random
import sys

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _restore_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test may set ``sys.argv`` (the viewer reads its flags there); the next test sees pytest's again."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))


@pytest.fixture(autouse=True)
def _restore_main() -> None:
    """Streamlit's AppTest runs the viewer as ``__main__`` in this process; a later test that spawns processes (the
    DDP tests) would then re-run the viewer in every child: the next test sees pytest's ``__main__`` again."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


TORCH_THREADS = max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
"""Threads per test process: the machine's (at most 2) shared among the pytest-xdist workers (`make test` runs 2)."""


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(TORCH_THREADS)
    default_dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(default_dtype)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
