"""Fixtures of the benchmark/correctness harness tests (all run on the CPU unless marked ``gpu``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def run_module(module: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    """``python -m module args`` in a fresh interpreter (so TRITON_INTERPRET applies from the start)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_cli():
    return run_module
