"""The steps of a GPU session, in priority order, with their time caps (seconds, for the default 360 s
budget on an H200 from a cold Triton cache) and the commands they run.

| step | cap | runs |
|---|---|---|
| env | 20 | ``python -m tritonbn.gpu_session.env``: device, driver, versions, copy bandwidth |
| gpu-tests | 70 | ``pytest -m gpu`` (large shapes, > 2^31 elements, the full parity grid) |
| tests | 100 | ``pytest -m "not gpu"``: the rest of the suite, on CUDA |
| kernels | 15 | ``python -m tritonbn.gpu_session.kernels``: registers and spills of what the run compiled (runs last) |
| check | 45 | ``tritonbn-check --device cuda`` (the full grid) |
| bench | 80 | ``tritonbn-bench --suite quick resnet50`` (tritonbn, cuDNN, native), then ``torch.compile`` on quick |
| sync | 40 | ``python -m tritonbn.gpu_session.sync``: SyncBatchNorm over gloo (2 ranks, one GPU) and NCCL (1 rank) |
| train | 45 | ``python -m tritonbn.gpu_session.train``: a ResNet-50 training step, torch's and tritonbn's batch norm |

The pytest runs use ``pytest-xdist`` workers when it is installed (the suite compiles about 340 kernel
specialisations, roughly 0.5 s each, so the compile bill is spread over the machine's cores) and a per-test
timeout when ``pytest-timeout`` is installed; the dashboard's tests are left out (no CUDA in them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tritonbn.gpu_session.session import Session, Step, missing_modules

__all__ = ["BENCH_ARGS", "INDUCTOR_ARGS", "STEPS", "STEP_NAMES", "pytest_args", "xdist_workers"]

#: tritonbn-bench arguments of the session (before ``--out`` and ``--max-seconds``).
BENCH_ARGS = (
    "--suite", "quick", "resnet50",
    "--provider", "tritonbn", "cudnn", "native",
    "--warmup", "5", "--rep", "20", "--no-progress",
)  # fmt: skip
#: torch.compile compiles every configuration anew (seconds each): it gets the quick suite's training passes.
INDUCTOR_ARGS = (
    "--suite", "quick", "--mode", "train", "--provider", "inductor", "--warmup", "5", "--rep", "20", "--no-progress",
)  # fmt: skip
#: Share of the bench step's time given to tritonbn, cuDNN and native; torch.compile gets the rest.
BENCH_SHARE = 0.7
PER_TEST_TIMEOUT_S = 120


def xdist_workers() -> int:
    """pytest-xdist workers for the GPU test runs: half the CPU cores, 2 to 8; 0 without pytest-xdist."""
    if missing_modules(("xdist",)):
        return 0
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def pytest_args(marker: str, junit: Path | None, workers: int, per_test_timeout: bool) -> list[str]:
    """The pytest arguments of a test step (after ``python -m pytest``)."""
    args = ["tests", "-q", "-m", marker, "--ignore=tests/dashboard", "-p", "no:cacheprovider", "--durations=15"]
    args += ["-rfE"]
    if junit is not None:
        args += [f"--junitxml={junit}"]
    if workers:
        args += ["-n", str(workers)]
    if per_test_timeout:
        args += [f"--timeout={PER_TEST_TIMEOUT_S}"]
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
        args = pytest_args(marker, xml, xdist_workers(), not missing_modules(("pytest_timeout",)))
        deadline = time.time() + cap - STEPS_BY_NAME[run].margin_s
        rc = s.command([s.python, "-m", "pytest", *args], cap, env={"TRITONBN_TEST_DEADLINE": str(deadline)}, tag=run)
        if rc is None:
            return "timed out", "killed at its cap: no JUnit report"
        if not xml.exists():
            return "error", f"pytest exited with {rc} and wrote no JUnit report"
        rows = junit_rows(xml, run, root=s.repo)
        write_record(rows, "tests", s.staging(run), s.provenance())
        c = count_outcomes(rows)
        budget = sum(1 for r in rows if r["outcome"] == "skipped" and "time budget" in r["message"])
        note = f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
        if budget:
            note += f" ({budget} for lack of time)"
        return _status(rc), note

    return step


def _kernels(s: Session, cap: float) -> tuple[str, str]:
    from tritonbn.gpu_session.summary import read_kind

    if not s.cache.exists():
        return "skipped", "no step compiled a kernel"
    staging = s.staging("kernels")
    rc = s.command(_module(s, "tritonbn.gpu_session.kernels", "--cache", str(s.cache), "--out", str(staging)), cap,
                   tag="kernels")  # fmt: skip
    rows = [r for r in read_kind(staging, "_kernels") if r.get("registers")]
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
    rows = [r for r in read_kind(staging, "_check") if r["provider"] == "tritonbn"]
    c = Counter(r["status"] for r in rows)
    cases = len({(r["case"], r["dtype"], r["layout"], r["mode"]) for r in rows})
    return _status(rc), f"{cases} cases; tritonbn {c['ok']} ok, {c['fail']} over tolerance, {c['error']} errors"


def _bench(s: Session, cap: float) -> tuple[str, str]:
    from tritonbn.bench.__main__ import build_parser, planned_configurations
    from tritonbn.gpu_session.summary import read_kind

    staging = s.staging("bench")
    margin = STEPS_BY_NAME["bench"].margin_s
    start = time.monotonic()
    notes, statuses = [], []
    for args, share in ((BENCH_ARGS, BENCH_SHARE), (INDUCTOR_ARGS, 1.0)):
        left = cap - (time.monotonic() - start)
        soft = (left - margin) * share if share < 1 else left - margin
        if soft < 5:
            notes.append(f"{args[args.index('--provider') + 1]}: no time left")
            continue
        before = {tuple(sorted(r.items())) for r in read_kind(staging, "")}
        rc = s.command(_module(s, "tritonbn.bench", *args, "--out", str(staging), "--max-seconds", f"{soft:.0f}"),
                       left, tag="bench")  # fmt: skip
        statuses.append(_status(rc, ()))
        new = [r for r in read_kind(staging, "") if tuple(sorted(r.items())) not in before]
        planned = len(planned_configurations(build_parser().parse_args(list(args))))
        done = len({(r["suite"], r["N"], r["C"], r["spatial"], r["dtype"], r["layout"], r["mode"]) for r in new})
        providers = args[args.index("--provider") + 1 : args.index("--warmup")]
        notes.append(f"{'/'.join(providers)}: {done} of {planned} configurations")
        if rc is None:
            break
    worst = next((st for st in ("timed out", "error") if st in statuses), "ok" if statuses else "skipped")
    return worst, "; ".join(notes)


def _sync(s: Session, cap: float) -> tuple[str, str]:
    from collections import Counter

    from tritonbn.gpu_session.summary import read_kind

    staging = s.staging("sync")
    per_group = max(10.0, (cap - STEPS_BY_NAME["sync"].margin_s) / 2)  # gloo (2 ranks), NCCL (1 rank)
    rc = s.command(_module(s, "tritonbn.gpu_session.sync", "--device", "cuda", "--out", str(staging),
                           "--timeout", f"{per_group:.0f}"), cap, tag="sync")  # fmt: skip
    c = Counter(r["status"] for r in read_kind(staging, "_sync"))
    return _status(rc), f"{c['ok']} ok, {c['fail']} over tolerance, {c['error']} errors, {c['skipped']} skipped"


def _train(s: Session, cap: float) -> tuple[str, str]:
    from tritonbn.gpu_session.summary import read_kind

    staging = s.staging("train")
    soft = max(1.0, cap - STEPS_BY_NAME["train"].margin_s)
    rc = s.command(_module(s, "tritonbn.gpu_session.train", "--device", "cuda", "--out", str(staging),
                           "--max-seconds", f"{soft:.0f}"), cap, tag="train")  # fmt: skip
    rows = read_kind(staging, "_train")
    parts = []
    for r in rows:
        what = f"{float(r['ms_median']):.1f} ms/step" if r["status"] == "ok" else r["status"]
        parts.append(f"{r['dtype']} {r['batch_norm']} {what}")
    return _status(rc), "; ".join(parts)


STEPS: tuple[Step, ...] = (
    Step("env", "device, driver, software versions and copy bandwidth", 20, 5, 0, _env),
    Step("gpu-tests", "the tests marked gpu, on CUDA", 70, 20, 12, _tests("gpu", "gpu-tests"), needs=("pytest",)),
    Step("tests", "the rest of the test suite, on CUDA", 100, 30, 15, _tests("not gpu", "tests"), needs=("pytest",)),
    Step(
        "kernels", "registers and spills of every kernel compiled by the other steps", 15, 5, 0, _kernels, last=True
    ),  # fmt: skip
    Step("check", "tritonbn-check, the full grid, on CUDA", 45, 15, 10, _check),
    Step("bench", "tritonbn-bench quick + resnet50: GPU time and eager wall time", 80, 20, 20, _bench),
    Step("sync", "SyncBatchNorm on CUDA tensors: gloo, 2 ranks on one GPU; NCCL, 1 rank", 40, 20, 5, _sync),
    Step(
        "train",
        "ResNet-50 training step, channels_last, bf16 and fp32, batch 64",
        45,
        20,
        15,
        _train,
        needs=("torchvision",),
    ),  # fmt: skip
)
STEPS_BY_NAME = {s.name: s for s in STEPS}
STEP_NAMES = tuple(STEPS_BY_NAME)
