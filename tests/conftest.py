"""Shared fixtures: deterministic seeds, NaN-filled allocations, the ``gpu`` marker and the test device."""

from __future__ import annotations

import os
import time

import pytest
import torch

import tritonbn.launch

# The suite exercises the Triton kernels: on CUDA when there is a GPU, else in Triton's interpreter, which
# must be switched on before triton is imported (`make test` does it). Tests of the CPU fallback spawn a
# separate interpreter with it switched off.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_TRITON = DEVICE == "cuda" or tritonbn.launch.INTERPRET


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_kernels = pytest.mark.skip(
        reason="the Triton kernels need a CUDA device or TRITON_INTERPRET=1 set before import (`make test`)"
    )
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        elif "kernels" in item.fixturenames and not ON_TRITON:
            item.add_marker(skip_kernels)


# A run with a time budget (tritonbn-gpu-session) sets this to a Unix time: tests that have not started by
# then are skipped, so the run ends with a complete report instead of being killed half-way.
DEADLINE_ENV = "TRITONBN_TEST_DEADLINE"


def pytest_runtest_setup(item):
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and time.time() > float(deadline):
        pytest.skip("time budget of this run exhausted before the test started")


@pytest.fixture
def kernels():
    """Marks a test that needs the Triton kernels (CUDA or interpreter); skipped otherwise."""
    return DEVICE


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _nan_filled_allocations(monkeypatch):
    """Fill tritonbn's uninitialised floating-point allocations with NaN, so a kernel that forgets to write
    an element (or a reduction that reads one it should not) shows up as NaN instead of as stale memory."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _fill(t):
        if t.is_floating_point() and t.numel():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(tritonbn.launch.torch, "empty", lambda *a, **k: _fill(real_empty(*a, **k)), raising=True)
    monkeypatch.setattr(
        tritonbn.launch.torch, "empty_like", lambda *a, **k: _fill(real_empty_like(*a, **k)), raising=True
    )
