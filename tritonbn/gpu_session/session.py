"""The session runner: steps in priority order, each a subprocess with its own time cap, inside one budget.

Every step runs as a child process (``python -m ...``) in its own process group, with

- a **cap**: ``min(step cap, what the budget has left)``; a step whose cap would fall below its minimum is
  skipped and recorded as skipped. The ``kernels`` step runs last (it reads what the others compiled) but
  its cap is reserved from the start, as is a few seconds' reserve to write the summary and the archive;
- a **soft deadline** inside the cap that the tools honour (pytest skips the tests not started by then,
  ``tritonbn-check`` / ``tritonbn-bench`` start no new case), so a step normally ends on its own with a
  complete report;
- a **hard timeout** at the cap: the process group is terminated, the step is ``timed out`` and whatever
  files it wrote go to ``partial/`` in the archive, never into ``bench_results/``.

Results are staged per step and moved into ``bench_results/<device>/`` only when the step finished by
itself (``ok`` or ``failed``: tests or checks that failed are results too). After every step the summary,
``steps.json`` and the archive in the output folder are brought up to date, so a session stopped from
outside (SIGTERM or SIGINT: the running step's processes are stopped, the rest skipped) still leaves
everything done so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from tritonbn.schema import unique_path


def _sigint_default() -> None:
    """In a child, before exec: SIGINT back to its default. A process started in the background by a
    non-interactive shell (``cmd &``) ignores SIGINT, and its children inherit that, so a capped pytest
    would never write its report; with the default restored, Python turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


__all__ = ["FINAL_RESERVE_S", "Session", "SessionInterrupted", "Step", "StepResult", "process_age"]

#: Seconds kept back from the budget to write the summary and the archive.
FINAL_RESERVE_S = 8.0
HEARTBEAT_S = 30.0
#: A child is asked to stop with SIGINT (pytest then still writes its JUnit report), given this long, then
#: killed with its whole process group; its time cap includes this, so a step never outlasts its cap.
KILL_GRACE_S = 5.0
KILL_OVERHEAD_S = KILL_GRACE_S + 3.0


class SessionInterrupted(Exception):
    """The session got SIGTERM or SIGINT: the running step is stopped, the rest skipped."""


@dataclass
class StepResult:
    """What became of one step: ``ok``, ``failed`` (it ran; tests or checks failed), ``error`` (it crashed),
    ``timed out`` (killed at its cap), ``interrupted`` (the session was stopped from outside) or
    ``skipped`` (not run; ``note`` says why)."""

    name: str
    status: str
    seconds: float | None = None
    cap_s: float | None = None
    note: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One step of the session.

    ``run(session, cap_s)`` runs it within ``cap_s`` seconds and returns ``(status, note)``; ``min_s`` is
    the least time worth starting it with; ``margin_s`` is how long before the cap its soft deadline falls;
    ``needs`` lists modules without which it is skipped.
    """

    name: str
    title: str
    cap_s: float
    min_s: float
    margin_s: float
    run: Callable[[Session, float], tuple[str, str]]
    needs: tuple[str, ...] = ()
    last: bool = False


def process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where that cannot be read), so that a time
    budget can include the interpreter's start and its imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def missing_modules(names: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


class Session:
    """A budget clock, a work folder, a log, and the child processes of the steps."""

    def __init__(
        self,
        out: Path,
        work: Path,
        budget_s: float,
        *,
        python: str = sys.executable,
        repo: Path | None = None,
        env: dict[str, str] | None = None,
        log: TextIO | None = None,
        echo: bool = True,
        t0: float | None = None,
        summarize: Callable[[Session], str] | None = None,
    ) -> None:
        self.t0 = time.monotonic() if t0 is None else t0  # time.monotonic() when the budget started
        self.budget_s = budget_s
        self.out = Path(out).resolve()
        self.work = Path(work).resolve()
        self.python = python
        self.repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = self.work / "results" / "bench_results"
        self.partial = self.work / "partial"
        self.junit = self.work / "junit"
        self.cache = self.work / "triton-cache"
        self.log_path = self.out / "session.log"
        self._log = log or self.log_path.open("w", encoding="utf-8")
        self._own_log = log is None
        self.echo = echo
        self.env = dict(os.environ if env is None else env)
        self.env.pop("TRITON_INTERPRET", None)  # the session measures the compiled kernels, never the interpreter
        self.env["TRITON_CACHE_DIR"] = str(self.cache)  # cold, and the kernels step reads it
        self.env["TORCHINDUCTOR_CACHE_DIR"] = str(self.work / "inductor-cache")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.repo), self.env.get("PYTHONPATH", "")) if p)
        self.environment: dict = {}
        self.steps: list[StepResult] = []
        self.summarize = summarize
        self._lock = threading.Lock()

    # -- time ---------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    # -- output -------------------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        with self._lock:
            self._log.write(line + "\n")
            self._log.flush()
            if self.echo:
                print(line, flush=True)

    def staging(self, step: str) -> Path:
        path = self.work / "staging" / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- children -----------------------------------------------------------------------------------------
    def command(
        self, argv: list[str], timeout_s: float, env: dict[str, str] | None = None, tag: str = ""
    ) -> int | None:
        """Run ``argv`` (cwd: the repository) with its output in the log; its return code, or ``None`` when
        it had to be stopped so as to return within ``timeout_s`` (stopping included)."""
        tag = tag or Path(argv[2] if len(argv) > 2 and argv[1] == "-m" else argv[0]).name
        self.say(f"[{tag}] $ {' '.join(argv)}")
        proc = subprocess.Popen(
            argv,
            cwd=self.repo,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_sigint_default,
        )

        def pump():
            for line in proc.stdout:
                self.say(f"[{tag}] {line.rstrip()}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        start = time.monotonic()
        limit = max(1.0, timeout_s - KILL_OVERHEAD_S)
        killed = False
        try:
            while True:
                left = limit - (time.monotonic() - start)
                if left <= 0:
                    killed = True
                    self._stop(proc)
                    break
                try:
                    proc.wait(timeout=min(HEARTBEAT_S, left))
                    break
                except subprocess.TimeoutExpired:
                    if limit - (time.monotonic() - start) > 0:
                        self.say(f"[{tag}] ... {time.monotonic() - start:.0f} s of at most {limit:.0f} s")
        except BaseException:  # interrupted: never leave the child's processes on the GPU
            self._stop(proc)
            raise
        reader.join(timeout=3)
        if killed:
            self.say(f"[{tag}] stopped at its time cap ({limit:.0f} s)")
            return None
        return proc.returncode

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """SIGINT to the child's process group (pytest writes its report), then SIGKILL to the whole group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # also the workers and ranks a finished leader left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)

    # -- provenance ---------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, str]:
        """The provenance columns measured by the ``env`` step (or collected here if it did not run)."""
        prov = self.environment.get("provenance")
        if prov:
            return dict(prov)
        from tritonbn import provenance

        return provenance.collect()

    # -- the loop -----------------------------------------------------------------------------------------
    def run_steps(self, steps: list[Step]) -> list[StepResult]:
        """Run ``steps`` in order (``last`` ones at the end, their caps reserved from the start)."""
        reserved = sum(s.cap_s for s in steps if s.last)
        ordered = [s for s in steps if not s.last] + [s for s in steps if s.last]
        for i, step in enumerate(ordered):
            if step.last:
                reserved -= step.cap_s
            available = self.remaining() - FINAL_RESERVE_S - reserved
            cap = min(step.cap_s, available)
            missing = missing_modules(step.needs)
            if missing:
                result = StepResult(step.name, "skipped", note=f"needs {', '.join(missing)}, not installed here")
            elif cap < step.min_s:
                result = StepResult(
                    step.name,
                    "skipped",
                    note=f"time budget: {max(available, 0):.0f} s left, the step needs at least {step.min_s:.0f} s",
                )
            else:
                try:
                    result = self._run_one(step, cap)
                except SessionInterrupted as e:
                    self.steps.append(StepResult(step.name, "interrupted", note=str(e)))
                    self.steps += [
                        StepResult(s.name, "skipped", note="the session was interrupted") for s in ordered[i + 1 :]
                    ]
                    self.say(f"== session interrupted ({e}) during {step.name}")
                    self.checkpoint()
                    return self.steps
            self.steps.append(result)
            self.say(f"== {step.name}: {result.status}" + (f" ({result.note})" if result.note else ""))
            self.checkpoint()
        return self.steps

    def _run_one(self, step: Step, cap: float) -> StepResult:
        self.say(f"== {step.name}: {step.title} (cap {cap:.0f} s, {self.remaining():.0f} s of the budget left)")
        start = time.monotonic()
        try:
            status, note = step.run(self, cap)
        except SessionInterrupted:
            self._collect(step, complete=False)
            raise
        except Exception as e:  # noqa: BLE001 - a broken step must not take the session down
            status, note = "error", f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
        seconds = time.monotonic() - start
        complete = status in ("ok", "failed")
        files = self._collect(step, complete)
        if not complete and files:
            note += f"; its {len(files)} file(s) are kept under partial/, not in bench_results/"
        return StepResult(step.name, status, round(seconds, 1), round(cap, 1), note, files)

    def _collect(self, step: Step, complete: bool) -> list[str]:
        """Move a step's staged files to ``bench_results/`` (complete) or ``partial/<step>/``."""
        staged = self.work / "staging" / step.name
        dest_root = self.results if complete else self.partial / step.name
        files = []
        if staged.exists():
            for src in sorted(p for p in staged.rglob("*") if p.is_file()):
                rel = src.relative_to(staged)
                if complete and len(rel.parts) > 2:  # a sub-run's own folder: <run>/<device>/<file>
                    rel = Path(*rel.parts[-2:])
                # never overwrite, here nor, once extracted, in the checkout's own bench_results/
                dest = unique_path(dest_root / rel, also_in=self.repo / "bench_results" / rel.parent)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), dest)
                files.append(dest.relative_to(self.work).as_posix())
        return files

    # -- the end ------------------------------------------------------------------------------------------
    def checkpoint(self, summary: str | None = None) -> Path:
        """Write ``summary.md`` and ``steps.json`` and (re)pack ``gpu-session.tar.gz`` in ``out`` from what
        the finished steps left; called after every step, so the output folder is never behind by more."""
        if summary is None:
            summary = self.summarize(self) if self.summarize else ""
        (self.out / "summary.md").write_text(summary, encoding="utf-8")
        (self.work / "summary.md").write_text(summary, encoding="utf-8")
        (self.work / "steps.json").write_text(json.dumps([asdict(s) for s in self.steps], indent=1))
        with self._lock:
            self._log.flush()
        archive = self.out / "gpu-session.tar.gz"
        tmp = archive.with_name(archive.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for path, arcname in (
                (self.results, "bench_results"),
                (self.junit, "junit"),
                (self.partial, "partial"),
                (self.work / "summary.md", "summary.md"),
                (self.work / "steps.json", "steps.json"),
                (self.log_path, "session.log"),
            ):
                if path.exists():
                    tar.add(path, arcname=arcname)
        tmp.replace(archive)  # the archive in out is always a whole one
        return archive

    def finish(self, summary: str | None = None) -> Path:
        """The last checkpoint, with the summary printed to the log and the console; closes the log."""
        if summary is None:
            summary = self.summarize(self) if self.summarize else ""
        self.say(summary)
        archive = self.checkpoint(summary)
        if self._own_log:
            self._log.close()
        return archive
