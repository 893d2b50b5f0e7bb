"""The steps of a GPU session, in priority order, with their time caps (seconds, for the default 360 s
budget on an H200 from a cold Triton cache) and the commands they run.

| step | cap | runs |
|---|---|---|
| env | 30 | ``python -m tritonbn.gpu_session.env``: device, driver, versions, copy bandwidth |
| gpu-tests | 70 | ``pytest -m gpu`` (large shapes, > 2^31 elements, the full parity grid) |
| tests | 100 | ``pytest -m "not gpu"``: the rest of the suite, on CUDA |
| kernels | 20 | ``python -m tritonbn.gpu_session.kernels``: registers and spills of what the run compiled (runs last) |
| check | 45 | ``tritonbn-check --device cuda`` (the full grid) |
| bench | 90 | ``tritonbn-bench --suite quick resnet50`` (tritonbn, cuDNN, native), then ``torch.compile`` |
| sync | 50 | ``python -m tritonbn.gpu_session.sync``: SyncBatchNorm over gloo (2 ranks, one GPU) and NCCL (1 rank) |
| train | 45 | ``python -m tritonbn.gpu_session.train``: a ResNet-50 training step, torch's and tritonbn's batch norm |

The pytest runs use ``pytest-xdist`` workers when it is installed (the suite compiles about 340 kernel
specialisations, roughly 0.5 s each, so the compile bill is spread over the machine's cores) and a per-test
timeout when ``pytest-timeout`` is installed; the dashboard's tests are left out (no CUDA in them), and so
is the gpu test of SyncBatchNorm, which the ``sync`` step runs.

The benchmark has far more configurations (492) than a session has time for: it measures them in
``--order spread`` (every shape in turn, in varying dtypes, layouts and modes) until its soft deadline, so
the ratios in the summary are a sample over all the shapes; ``--only bench --cap bench=500`` measures more.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tritonbn.gpu_session.session import KILL_OVERHEAD_S, Session, Step, missing_modules

__all__ = ["BENCH_ARGS", "INDUCTOR_ARGS", "STEPS", "STEP_NAMES", "pytest_args", "xdist_workers"]

#: tritonbn-bench arguments of the session (before ``--out`` and ``--max-seconds``).
BENCH_ARGS = (
    "--suite", "quick", "resnet50", "--order", "spread",
    "--provider", "tritonbn", "cudnn", "native",
    "--warmup", "5", "--rep", "20", "--no-progress",
)  # fmt: skip
#: torch.compile compiles every configuration anew (seconds each): it gets the quick suite's training passes.
INDUCTOR_ARGS = (
    "--suite", "quick", "--mode", "train", "--order", "spread",
    "--provider", "inductor", "--warmup", "5", "--rep", "20", "--no-progress",
)  # fmt: skip
#: Soft time of the tritonbn/cuDNN/native run; torch.compile's run starts only with INDUCTOR_MIN_S left.
BENCH_MAIN_S = 40.0
INDUCTOR_MIN_S = 35.0
PER_TEST_TIMEOUT_S = 120
#: Left out of the gpu-tests run: the sync step runs the same check (with its records).
GPU_TESTS_DESELECT = ("tests/test_sync_batchnorm.py::test_sync_batchnorm_on_cuda",)


def xdist_workers() -> int:
    """pytest-xdist workers for the GPU test runs: half the CPU cores, 2 to 8; 0 without pytest-xdist."""
    if missing_modules(("xdist",)):
        return 0
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def pytest_args(marker: str, junit: Path | None, workers: int, per_test_timeout: float | None) -> list[str]:
    """The pytest arguments of a test step (after ``python -m pytest``)."""
    args = ["tests", "-q", "-m", marker, "--ignore=tests/dashboard", "-p", "no:cacheprovider", "--durations=15"]
    args += ["-rfE"]
    if marker == "gpu":
        args += [f"--deselect={t}" for t in GPU_TESTS_DESELECT]
    if junit is not None:
        args += [f"--junitxml={junit}"]
    if workers:
        args += ["-n", str(workers)]
    if per_test_timeout:
        args += [f"--timeout={per_test_timeout:.0f}"]
    return args


def _module(s: Session, module: str, *args: str) -> list[str]:
    return [s.python, "-m", module, *args]


def _status(rc: int | None, failed_codes: tuple[int, ...] = (1,)) -> str:
    if rc is None:
        return "timed out"
    return "ok" if rc == 0 else "failed" if rc in failed_codes else "error"


def _env(s: Session, cap: float) -> tuple[str, str]:
    json_path = s.work / "env.json"
    rc = s.command(_module(s, "tritonbn.gpu_session.env", "--out", str(s.staging("env")), "--json", str(json_path)),
                   cap, tag="env")  # fmt: skip
    if json_path.exists():
        import json

        s.environment = json.loads(json_path.read_text())
    e = s.environment
    note = f"{e.get('gpu', '?')}, {e.get('sm_count', '?')} SMs"
    if e.get("copy_gbps"):
        note += f", copy {float(e['copy_gbps']):.0f} GB/s"
    return _status(rc, ()), note


def _tests(marker: str, run: str):
    def step(s: Session, cap: float) -> tuple[str, str]:
        from tritonbn.gpu_session.junit import count_outcomes, junit_rows
        from tritonbn.gpu_session.records import write_record

        s.junit.mkdir(parents=True, exist_ok=True)
        xml = s.junit / f"{run}.xml"
        soft = cap - STEPS_BY_NAME[run].margin_s
        # A test still running at the soft deadline is stopped by pytest-timeout, so pytest ends in time.
        per_test = min(PER_TEST_TIMEOUT_S, max(10.0, soft - 5)) if not missing_modules(("pytest_timeout",)) else None
        env = {"TRITONBN_TEST_DEADLINE": str(time.time() + soft), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        rc = s.command([s.python, "-m", "pytest", *pytest_args(marker, xml, xdist_workers(), per_test)], cap,
                       env=env, tag=run)  # fmt: skip
        if not xml.exists():
            what = "was stopped at its cap" if rc is None else f"exited with {rc}"
            return ("timed out" if rc is None else "error"), f"pytest {what} and wrote no JUnit report"
        rows = junit_rows(xml, run, root=s.repo)
        c = count_outcomes(rows)
        budget = sum(1 for r in rows if r["outcome"] == "skipped" and "time budget" in r["message"])
        note = f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
        if budget:
            note += f" ({budget} for lack of time)"
        if rc is None:  # stopped at the cap: pytest still wrote the report of the tests that ran
            write_record(rows, "tests", s.partial / run, s.provenance())
            return "timed out", note + "; the report of the tests that ran is under partial/"
        write_record(rows, "tests", s.staging(run), s.provenance())
        return _status(rc), note

    return step


def _kernels(s: Session, cap: float) -> tuple[str, str]:
    from tritonbn.gpu_session.summary import read_kind

    if not s.cache.exists():
        return "skipped", "no step compiled a kernel"
    staging = s.staging("kernels")
    rc = s.command(_module(s, "tritonbn.gpu_session.kernels", "--cache", str(s.cache), "--out", str(staging)), cap,
                   tag="kernels")  # fmt: skip
    rows = [r for r in read_kind(staging, "kernels") if r.get("registers")]
    if not rows:
        return _status(rc, ()), "no compiled tritonbn kernel found"
    regs = [int(r["registers"]) for r in rows]
    spilling = sum(1 for r in rows if r.get("spills") not in ("", "0"))
    return _status(rc, ()), f"{len(rows)} specialisations, registers {min(regs)}-{max(regs)}, {spilling} spilling"


def _check(s: Session, cap: float) -> tuple[str, str]:
    from collections import Counter

    from tritonbn.gpu_session.summary import read_kind

    staging = s.staging("check")
    soft = max(1.0, cap - STEPS_BY_NAME["check"].margin_s)
    rc = s.command(_module(s, "tritonbn.correctness", "--device", "cuda", "--out", str(staging), "--no-progress",
                           "--max-seconds", f"{soft:.0f}"), cap, tag="check")  # fmt: skip
    rows = [r for r in read_kind(staging, "check") if r["provider"] == "tritonbn"]
    c = Counter(r["status"] for r in rows)
    cases = len({(r["case"], r["dtype"], r["layout"], r["mode"]) for r in rows})
    return _status(rc), f"{cases} cases; tritonbn {c['ok']} ok, {c['fail']} over tolerance, {c['error']} errors"


def _bench(s: Session, cap: float) -> tuple[str, str]:
    """tritonbn/cuDNN/native for BENCH_MAIN_S, then torch.compile if INDUCTOR_MIN_S are left. Each run has
    its own staging folder: the main run's file is a result even when the torch.compile run is stopped."""
    from tritonbn.bench.__main__ import build_parser, planned_configurations
    from tritonbn.gpu_session.summary import read_kind

    margin = STEPS_BY_NAME["bench"].margin_s
    start = time.monotonic()
    notes = []
    status = "skipped"
    for i, (args, name) in enumerate(((BENCH_ARGS, "main"), (INDUCTOR_ARGS, "inductor"))):
        left = cap - (time.monotonic() - start)
        providers = args[args.index("--provider") + 1 : args.index("--warmup")]
        if i == 0:  # a longer cap (--cap bench=S) goes mostly to this run
            soft = min(max(BENCH_MAIN_S, 0.6 * (cap - margin)), left - margin)
        elif left < INDUCTOR_MIN_S:
            notes.append(f"{'/'.join(providers)}: not run ({left:.0f} s left, needs {INDUCTOR_MIN_S:.0f})")
            continue
        else:
            soft = left - margin
        staging = s.staging("bench") / name
        rc = s.command(_module(s, "tritonbn.bench", *args, "--out", str(staging), "--max-seconds", f"{soft:.0f}"),
                       left, tag=f"bench-{name}")  # fmt: skip
        rows = read_kind(staging, "bench")
        planned = len(planned_configurations(build_parser().parse_args(list(args))))
        done = len({(r["suite"], r["N"], r["C"], r["spatial"], r["dtype"], r["layout"], r["mode"]) for r in rows})
        note = f"{'/'.join(providers)}: {done} of {planned} configurations"
        if i == 0:
            status = _status(rc, ())
        elif rc != 0:  # torch.compile's run is the extra: its failure is a note, its files kept apart
            dest = s.partial / "bench-inductor"
            if staging.exists():
                shutil.move(str(staging), dest)
            note += f", {'stopped at its cap' if rc is None else f'exit {rc}'}; its file is under partial/"
        notes.append(note)
        if rc is None and i == 0:
            break
    return status, "; ".join(notes)


def _sync(s: Session, cap: float) -> tuple[str, str]:
    from collections import Counter

    from tritonbn.gpu_session.summary import read_kind

    staging = s.staging("sync")
    # two process groups (gloo, 2 ranks; NCCL, 1 rank), and a few seconds for the parent's own work
    per_group = (cap - KILL_OVERHEAD_S - STEPS_BY_NAME["sync"].margin_s - 6) / 2
    rc = s.command(_module(s, "tritonbn.gpu_session.sync", "--device", "cuda", "--out", str(staging),
                           "--timeout", f"{per_group:.0f}"), cap, tag="sync")  # fmt: skip
    c = Counter(r["status"] for r in read_kind(staging, "sync"))
    return _status(rc), f"{c['ok']} ok, {c['fail']} over tolerance, {c['error']} errors, {c['skipped']} skipped"


def _train(s: Session, cap: float) -> tuple[str, str]:
    from tritonbn.gpu_session.summary import read_kind

    staging = s.staging("train")
    soft = max(1.0, cap - STEPS_BY_NAME["train"].margin_s)
    rc = s.command(_module(s, "tritonbn.gpu_session.train", "--device", "cuda", "--out", str(staging),
                           "--max-seconds", f"{soft:.0f}"), cap, tag="train")  # fmt: skip
    rows = read_kind(staging, "train")
    parts = []
    for r in rows:
        what = f"{float(r['ms_median']):.1f} ms/step" if r["status"] == "ok" else r["status"]
        parts.append(f"{r['dtype']} {r['batch_norm']} {what}")
    return _status(rc), "; ".join(parts)


STEPS: tuple[Step, ...] = (
    # name, what it does, cap, least time worth starting it with, soft-deadline margin, the step
    Step("env", "device, driver, software versions and copy bandwidth", 30, 15, 0, _env),
    Step("gpu-tests", "the tests marked gpu, on CUDA", 70, 20, 12, _tests("gpu", "gpu-tests"), needs=("pytest",)),
    Step("tests", "the rest of the test suite, on CUDA", 100, 30, 15, _tests("not gpu", "tests"), needs=("pytest",)),
    Step("kernels", "registers and spills of every kernel compiled by the other steps", 20, 15, 0, _kernels,
         last=True),
    Step("check", "tritonbn-check, the full grid, on CUDA", 45, 15, 10, _check),
    Step("bench", "tritonbn-bench quick + resnet50: GPU time and eager wall time", 90, 30, 20, _bench),
    Step("sync", "SyncBatchNorm on CUDA tensors: gloo, 2 ranks on one GPU; NCCL, 1 rank", 50, 35, 5, _sync),
    Step("train", "ResNet-50 training step, channels_last, bf16 and fp32, batch 64", 45, 30, 15, _train,
         needs=("torchvision",)),
)  # fmt: skip
STEPS_BY_NAME = {s.name: s for s in STEPS}
STEP_NAMES = tuple(STEPS_BY_NAME)
