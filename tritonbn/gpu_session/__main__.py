"""``tritonbn-gpu-session``: everything tritonbn needs measured on a GPU, in one command within a time budget.

Run from a source checkout on a CUDA machine (no install needed)::

    PYTHONPATH=. python3 -m tritonbn.gpu_session --out DIR [--budget-s 360] [--only STEP,...]
    python3 -m tritonbn.gpu_session --dry-run      # on any machine: the plan and the CPU-side checks

It runs the steps of :mod:`tritonbn.gpu_session.steps` in priority order inside the budget (see
:mod:`tritonbn.gpu_session.session` for the caps and how a step is skipped or stopped), and writes to
``DIR``:

- ``gpu-session.tar.gz``: ``bench_results/<gpu>/<date>_<sha>[_<kind>].csv`` (the results, in the layout of
  the repository's ``bench_results/``: extract it at the repository root), ``summary.md``, ``session.log``,
  ``steps.json``, the JUnit reports and, for a step stopped at its cap, its files under ``partial/``;
- ``summary.md``: one screen, what ran, was skipped or failed, and the headline numbers;
- ``session.log``: everything the steps printed.

Exit status: 0 when every step that ran finished ``ok`` (skipped steps included), 1 when one failed,
errored or timed out, 2 on bad usage or without a CUDA device (except ``--dry-run``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["build_parser", "dry_run", "main", "selected_steps"]


def build_parser() -> argparse.ArgumentParser:
    from tritonbn.gpu_session.steps import STEP_NAMES

    p = argparse.ArgumentParser(
        prog="tritonbn-gpu-session",
        description="Run tritonbn's whole GPU agenda (tests, kernel resources, correctness, benchmarks, "
        "SyncBatchNorm, a ResNet-50 step) in one command within a time budget.",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for gpu-session.tar.gz, summary.md, session.log")
    p.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget of the session (default 360)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run the CPU-side checks; no GPU")
    p.add_argument(
        "--only",
        type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
        default=None,
        metavar="STEP,...",
        help=f"run only these steps (env always runs): {','.join(STEP_NAMES)}",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="keep the unpacked work files here (default: temporary)")
    return p


def selected_steps(only: list[str] | None):
    """The steps to run, in priority order; ``env`` is always among them (the others need its provenance).
    Raises ``ValueError`` naming an unknown step."""
    from tritonbn.gpu_session.steps import STEP_NAMES, STEPS

    if only is None:
        return list(STEPS)
    unknown = [s for s in only if s not in STEP_NAMES]
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEP_NAMES)}")
    return [s for s in STEPS if s.name == "env" or s.name in only]


def _plan(steps, budget_s: float) -> list[str]:
    from tritonbn.gpu_session.session import FINAL_RESERVE_S

    lines = [
        f"tritonbn-gpu-session plan: budget {budget_s:.0f} s (caps shrink to what is left; "
        f"{FINAL_RESERVE_S:.0f} s kept for the summary and the archive)"
    ]
    for i, s in enumerate(steps, 1):
        when = "runs last, cap reserved from the start" if s.last else f"skipped if under {s.min_s:.0f} s are left"
        lines.append(f"  {i}. {s.name:10s} cap {s.cap_s:4.0f} s  {s.title} ({when})")
    return lines


def dry_run(steps, budget_s: float) -> int:
    """Print the plan, check each step's imports and arguments, collect the tests, render a summary and pack
    an archive from fixture data. 0 when everything a GPU run needs is in place."""
    from tritonbn.gpu_session import selfcheck

    for line in _plan(steps, budget_s):
        print(line)
    problems = selfcheck.run_all(steps, report=print)
    if problems:
        print(f"dry run: {len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("dry run: OK, the session is ready to run on a CUDA machine")
    return 0


def _git_sha() -> str:
    from tritonbn import provenance

    return provenance.git_sha()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        steps = selected_steps(args.only)
    except ValueError as e:
        parser.error(str(e))
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.dry_run:
        return dry_run(steps, args.budget_s)
    if args.out is None:
        parser.error("--out is required (except with --dry-run)")
    import torch

    if not torch.cuda.is_available():
        print(
            "tritonbn-gpu-session: no CUDA device is available. The session measures tritonbn on a GPU; "
            "run it on a machine with an NVIDIA GPU (--dry-run checks it on any machine).",
            file=sys.stderr,
        )
        return 2
    return run(args, steps)


def run(args: argparse.Namespace, steps) -> int:
    from tritonbn.gpu_session.session import Session
    from tritonbn.gpu_session.summary import render_summary

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tritonbn-gpu-session-"))
    env = dict(os.environ)
    env["TRITONBN_GIT_SHA"] = _git_sha()  # children agree on it, also in a copy of the tree without .git
    session = Session(args.out, work, args.budget_s, env=env)
    for line in _plan(steps, args.budget_s):
        session.say(line)
    session.say(f"work folder {work}; git {env['TRITONBN_GIT_SHA']}; started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    results = session.run_steps(steps)
    summary = render_summary(
        [vars(r) for r in results], session.environment, session.results, args.budget_s, session.elapsed()
    )
    archive = session.finish(summary)
    print(f"tritonbn-gpu-session: {archive} ({archive.stat().st_size / 1e6:.1f} MB), summary.md and session.log "
          f"in {args.out}")  # fmt: skip
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if r.status in ("failed", "error", "timed out")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
