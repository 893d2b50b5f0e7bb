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


@pytest.fixture(params=["triton", "native"])
def path(request, monkeypatch):
    """Runs a test on each execution path and gives its device: ``triton``, the kernels (CUDA, or the
    interpreter), and ``native``, the plain CPU path (CPU tensors computed with torch ops, as without
    ``TRITON_INTERPRET``: the switch is read at each call, so the test flips it off for its duration)."""
    if request.param == "triton":
        if not ON_TRITON:
            pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1 set before import")
        return DEVICE
    monkeypatch.setattr(tritonbn.launch, "INTERPRET", False)
    return "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _nan_filled_allocations(request, monkeypatch):
    """Fill tritonbn's uninitialised floating-point allocations with NaN, so a kernel that forgets to write
    an element (or a reduction that reads one it should not) shows up as NaN instead of as stale memory.
    (Not in tests marked ``launch_count``: the fill is itself an operator they would count.)"""
    if request.node.get_closest_marker("launch_count"):
        return
    real = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}

    def _fill(t):
        if t.is_floating_point() and t.numel():
            t.fill_(float("nan"))
        return t

    for name, fn in real.items():
        monkeypatch.setattr(tritonbn.launch.torch, name, lambda *a, _fn=fn, **k: _fill(_fn(*a, **k)), raising=True)


@pytest.fixture
def tile_policy(monkeypatch):
    """Set the launcher's tile policy for one test: ``tile_policy(tile=..., single=..., programs=...)``
    (elements per tile, the one-tile path's limit, programs aimed at; ``min_tiles``, the fewest tiles a
    program loops over, defaults to 1 so that ``programs`` alone sets the chunking; ``min_programs``, the
    floor on programs that ``min_tiles`` yields to; ``flat_min_tiles``, the fewest tiles per program of a
    FLAT reduction, defaults to 1 so that small tensors take that path on every device), caches cleared before
    and after."""

    def set_policy(
        tile=None,
        single=None,
        programs=None,
        merge=None,
        merge_block=None,
        min_tiles=1,
        min_programs=None,
        flat_min_tiles=1,
    ):
        for name, value in (
            ("MIN_TILES_PER_PROGRAM", min_tiles),
            ("FLAT_MIN_TILES", flat_min_tiles),
            ("MIN_PROGRAMS", min_programs),
            ("TILE_ELEMENTS", tile),
            ("SINGLE_MAX_ELEMENTS", single),
            ("TARGET_PROGRAMS", programs),
            ("MERGE_MAX_VALUES", merge),
            ("MERGE_BLOCK_VALUES", merge_block),
        ):
            if value is not None:
                monkeypatch.setattr(tritonbn.launch, name, value)
        tritonbn.launch.clear_plans()

    yield set_policy
    monkeypatch.undo()
    tritonbn.launch.clear_plans()
