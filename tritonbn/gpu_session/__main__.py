"""``tritonbn-gpu-session``: everything tritonbn needs measured on a GPU, in one command within a time budget.

Run from a source checkout on a CUDA machine, with that machine's own Python (torch, triton and pytest
installed; nothing is installed by the command)::

    PYTHONPATH=. python3 -m tritonbn.gpu_session --out DIR [--budget-s 360] [--only STEP,...] [--cap STEP=S]
    PYTHONPATH=. python3 -m tritonbn.gpu_session --dry-run      # any machine with torch: plan and CPU checks

It runs the steps of :mod:`tritonbn.gpu_session.steps` in priority order inside the budget, which counts
from the start of the process (see :mod:`tritonbn.gpu_session.session` for the caps and how a step is
skipped or stopped), and writes to ``DIR`` (a folder that holds no earlier session):

- ``gpu-session.tar.gz``: ``bench_results/<gpu>/<date>_<sha>[_<kind>].csv`` (the results, in the layout of
  the repository's ``bench_results/``: extract it at the repository root), ``summary.md``, ``session.log``,
  ``steps.json``, the JUnit reports and, for a step stopped at its cap, its files under ``partial/``;
- ``summary.md``: one screen, what ran, was skipped or failed, and the headline numbers;
- ``session.log``: everything the steps printed.

All three are brought up to date after every step. Exit status: 0 when no step failed, errored, timed out
or was interrupted (skipped steps included), 1 otherwise, 2 on bad usage or without a CUDA device (except
``--dry-run``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["build_parser", "dry_run", "main", "selected_steps"]


def _seconds(value: str) -> float:
    x = float(value)
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r}")
    return x


def _cap(value: str) -> tuple[str, float]:
    name, sep, seconds = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected STEP=SECONDS, got {value!r}")
    return name.strip(), _seconds(seconds)


def build_parser() -> argparse.ArgumentParser:
    from tritonbn.gpu_session.steps import STEP_NAMES

    p = argparse.ArgumentParser(
        prog="tritonbn-gpu-session",
        description="Run tritonbn's whole GPU agenda (tests, kernel resources, correctness, benchmarks, "
        "SyncBatchNorm, a ResNet-50 step) in one command within a time budget.",
        epilog=f"steps, in priority order: {', '.join(STEP_NAMES)}",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for gpu-session.tar.gz, summary.md, session.log")
    p.add_argument(
        "--budget-s", type=_seconds, default=360.0, help="wall-clock budget of the whole session (default 360)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and run the CPU-side checks; no GPU")
    p.add_argument(
        "--only",
        type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
        default=None,
        metavar="STEP,...",
        help="run only these steps (env always runs)",
    )
    p.add_argument(
        "--cap",
        type=_cap,
        action="append",
        default=[],
        metavar="STEP=S",
        help="a step's time cap in seconds instead of its default (repeatable), e.g. --cap bench=500",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="keep the unpacked work files here (default: temporary)")
    return p


def selected_steps(only: list[str] | None, caps: list[tuple[str, float]] = ()):
    """The steps to run, in priority order, with ``caps`` applied; ``env`` is always among them (the others
    need its provenance). Raises ``ValueError`` naming an unknown or missing step."""
    import dataclasses

    from tritonbn.gpu_session.steps import STEP_NAMES, STEPS

    if only is not None and not only:
        raise ValueError(f"--only names no step; choose from {', '.join(STEP_NAMES)}")
    unknown = [s for s in [*(only or []), *(n for n, _ in caps)] if s not in STEP_NAMES]
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEP_NAMES)}")
    new_caps = dict(caps)
    steps = [s for s in STEPS if only is None or s.name == "env" or s.name in only]
    return [
        dataclasses.replace(s, cap_s=new_caps[s.name], min_s=min(s.min_s, new_caps[s.name]))
        if s.name in new_caps
        else s
        for s in steps
    ]


def _plan(steps, budget_s: float) -> list[str]:
    from tritonbn.gpu_session.session import FINAL_RESERVE_S

    lines = [
        f"tritonbn-gpu-session plan: budget {budget_s:.0f} s from the start of the process (caps shrink to what "
        f"is left; {FINAL_RESERVE_S:.0f} s kept for the summary and the archive)"
    ]
    available = budget_s - FINAL_RESERVE_S - sum(s.cap_s for s in steps if s.last)
    left = available  # if every step before used its whole cap
    for i, s in enumerate(steps, 1):
        when = "runs last, cap reserved from the start" if s.last else f"skipped if under {s.min_s:.0f} s are left"
        lines.append(f"  {i}. {s.name:10s} cap {s.cap_s:4.0f} s  {s.title} ({when})")
        if s.last:
            continue
        if available < s.min_s:
            lines.append("     -> this budget is too small for it: it will be skipped")
        elif left < s.cap_s:
            lines.append(f"     -> gets {max(left, 0):.0f} s or less if the steps before it use their whole caps")
        left -= s.cap_s
    return lines


def _warnings(sha: str) -> list[str]:
    if sha == "unknown":
        return [
            "warning: the git sha is unknown (no git checkout here and TRITONBN_GIT_SHA unset): the results "
            "would be named ..._unknown; set TRITONBN_GIT_SHA=<short sha> of the tree"
        ]
    return []


def dry_run(steps, budget_s: float) -> int:
    """Print the plan, check each step's imports and arguments, collect the tests, render a summary and pack
    an archive from fixture data. 0 when everything a GPU run needs is in place."""
    from tritonbn.gpu_session import selfcheck

    for line in [*_plan(steps, budget_s), *_warnings(_git_sha())]:
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
    from tritonbn.gpu_session.session import process_age

    t0 = time.monotonic() - process_age()  # the budget counts from the start of the process
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        steps = selected_steps(args.only, args.cap)
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        return dry_run(steps, args.budget_s)
    if args.out is None:
        parser.error("--out is required (except with --dry-run)")
    taken = [n for n in ("gpu-session.tar.gz", "summary.md", "session.log") if (args.out / n).exists()]
    if taken:
        parser.error(f"{args.out} already holds a session ({', '.join(taken)}): choose another --out")
    import torch

    if not torch.cuda.is_available():
        print(
            "tritonbn-gpu-session: no CUDA device is available. The session measures tritonbn on a GPU; "
            "run it on a machine with an NVIDIA GPU (--dry-run checks it on any machine with torch).",
            file=sys.stderr,
        )
        return 2
    return run(args, steps, t0)


def run(args: argparse.Namespace, steps, t0: float | None = None) -> int:
    from tritonbn.gpu_session.session import Session, SessionInterrupted
    from tritonbn.gpu_session.summary import render_summary

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tritonbn-gpu-session-"))
    env = dict(os.environ)
    env["TRITONBN_GIT_SHA"] = _git_sha()  # children agree on it, also in a copy of the tree without .git

    def summarize(s: Session) -> str:
        return render_summary([vars(r) for r in s.steps], s.environment, s.results, s.budget_s, s.elapsed())

    session = Session(args.out, work, args.budget_s, env=env, t0=t0, summarize=summarize)
    for line in [*_plan(steps, args.budget_s), *_warnings(env["TRITONBN_GIT_SHA"])]:
        session.say(line)
    session.say(f"work folder {work}; git {env['TRITONBN_GIT_SHA']}; started {time.strftime('%Y-%m-%d %H:%M:%S')}")

    def interrupt(signum, frame):
        raise SessionInterrupted(f"got {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            results = session.run_steps(steps)
        except SessionInterrupted as e:  # between two steps
            session.say(f"== session interrupted ({e})")
            results = session.steps
        archive = session.finish()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"tritonbn-gpu-session: {archive} ({archive.stat().st_size / 1e6:.1f} MB), summary.md and session.log "
          f"in {args.out}")  # fmt: skip
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if r.status in ("failed", "error", "timed out", "interrupted")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
