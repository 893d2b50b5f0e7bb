"""Provenance of a run: when, at which commit, on which device, with which software.

:func:`collect` returns the values of :data:`tritonbn.schema.PROVENANCE_COLUMNS`; both command-line tools
put them in every row they write and name their output files with :func:`device_slug`, :func:`utc_date`
and the git sha.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
from pathlib import Path

import torch

__all__ = ["GIT_SHA_ENV", "collect", "device_slug", "git_sha", "slugify", "slugify_sha", "utc_date", "utc_timestamp"]

_REPO_DIR = Path(__file__).resolve().parent.parent


def utc_timestamp(now: _dt.datetime | None = None) -> str:
    """UTC time in ISO 8601 with seconds and a ``Z``: ``2025-01-31T12:34:56Z``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_date(timestamp: str) -> str:
    """The date part (``2025-01-31``) of a :func:`utc_timestamp`."""
    return timestamp[:10]


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


#: Names the commit of a copy of the source tree that has no ``.git`` (e.g. a tree copied to a GPU machine).
GIT_SHA_ENV = "TRITONBN_GIT_SHA"


def git_sha(repo_dir: str | Path | None = None) -> str:
    """Short sha of ``HEAD`` of the checkout holding tritonbn, ``-dirty`` appended when tracked files are
    modified. Outside a git checkout (an installed wheel, a copied source tree) or without git: the value of
    the environment variable ``TRITONBN_GIT_SHA`` if set (a sha computed where the tree was copied from),
    else ``"unknown"``."""
    cwd = Path(repo_dir) if repo_dir is not None else _REPO_DIR
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    # Only the checkout rooted here counts: a copied tree inside some other repository is not that repository.
    sha = _git(["rev-parse", "--short", "HEAD"], cwd) if top and Path(top).resolve() == cwd.resolve() else None
    if not sha:
        override = os.environ.get(GIT_SHA_ENV, "").strip()
        return slugify_sha(override) if override else "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return f"{sha}-dirty" if status else sha


def slugify_sha(sha: str) -> str:
    """A sha as it may appear in a file name: ``[0-9A-Za-z-]`` only (``abc1234-dirty``)."""
    return re.sub(r"[^0-9A-Za-z-]+", "-", sha).strip("-") or "unknown"


def slugify(name: str) -> str:
    """A folder-safe name: lower case, runs of anything but ``[a-z0-9]`` become one ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown"


def device_slug(device_name: str) -> str:
    """Folder name under ``bench_results/`` for a device: ``NVIDIA H100 80GB HBM3`` → ``nvidia-h100-80gb-hbm3``."""
    return slugify(device_name)


def collect(device: torch.device | str | None = None) -> dict[str, str]:
    """The provenance columns for a run on ``device`` (default: the current CUDA device, else the CPU).

    ``gpu`` is the CUDA device name or ``"cpu"``; ``compute_capability`` is ``"9.0"``-style or empty on the
    CPU; ``cuda``/``cudnn`` are the versions torch was built with (``"none"`` when absent).
    """
    import triton

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gpu = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        capability = f"{major}.{minor}"
    else:
        gpu, capability = "cpu", ""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "timestamp": utc_timestamp(),
        "git_sha": git_sha(),
        "gpu": gpu,
        "compute_capability": capability,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn else "none",
        "triton": triton.__version__,
    }
