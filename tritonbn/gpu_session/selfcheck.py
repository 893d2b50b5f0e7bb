"""What ``tritonbn-gpu-session --dry-run`` checks on any machine, so that a GPU session cannot fail for a
reason visible without a GPU: imports, every step's arguments, test collection, the kernel-report reader on
a kernel compiled ahead of time for sm_90, and the summary and archive built from fixture files.

Fixture files are written to a temporary folder only and removed afterwards; they never reach
``bench_results/``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["check_arguments", "check_collection", "check_imports", "check_kernel_reader", "check_packing", "run_all"]

REQUIRED = ("torch", "triton", "pytest", "numpy")
#: module -> (package, what happens without it)
OPTIONAL = {
    "xdist": ("pytest-xdist", "the test steps run in one process, not spread over the CPU cores"),
    "pytest_timeout": ("pytest-timeout", "the test steps have no per-test timeout"),
    "torchvision": ("torchvision", "the train step would be skipped (it builds torchvision's ResNet-50)"),
}
FIXTURE_GPU = "Fixture GPU (dry run)"


def check_imports(report: Callable[[str], None]) -> list[str]:
    from tritonbn.gpu_session.session import missing_modules

    problems = [f"{m} is not importable: every step needs it" for m in missing_modules(REQUIRED)]
    for module, (package, consequence) in OPTIONAL.items():
        if missing_modules((module,)):
            report(f"  note: {package} is not installed here: on a machine like this one {consequence}")
    return problems


def check_arguments(report: Callable[[str], None]) -> list[str]:
    """Parse every command line the steps build with the tools' own parsers."""
    from tritonbn.bench.__main__ import build_parser as bench_parser
    from tritonbn.bench.__main__ import planned_configurations
    from tritonbn.correctness.__main__ import build_parser as check_parser
    from tritonbn.gpu_session import env, kernels, sync, train
    from tritonbn.gpu_session.steps import BENCH_ARGS, INDUCTOR_ARGS

    problems = []
    cases = [
        ("tritonbn-bench", bench_parser, [*BENCH_ARGS, "--out", "x", "--max-seconds", "10"]),
        ("tritonbn-bench (inductor)", bench_parser, [*INDUCTOR_ARGS, "--out", "x", "--max-seconds", "10"]),
        ("tritonbn-check", check_parser, ["--device", "cuda", "--out", "x", "--no-progress", "--max-seconds", "10"]),
        ("env", env.build_parser, ["--out", "x", "--json", "x/env.json"]),
        ("kernels", kernels.build_parser, ["--cache", "x", "--out", "x"]),
        ("sync", sync.build_parser, ["--device", "cuda", "--out", "x", "--timeout", "10"]),
        ("train", train.build_parser, ["--device", "cuda", "--out", "x", "--max-seconds", "10"]),
    ]
    for name, parser, argv in cases:
        try:
            args = parser().parse_args(argv)
        except SystemExit:
            problems.append(f"{name} rejects the arguments the session gives it: {' '.join(argv)}")
            continue
        if name.startswith("tritonbn-bench"):
            report(f"  {name}: {len(planned_configurations(args))} configurations planned")
    return problems


def check_collection(report: Callable[[str], None], repo: Path, python: str = sys.executable) -> list[str]:
    """``pytest --collect-only`` with each test step's selection: import errors show up here, not on the GPU."""
    from tritonbn.gpu_session.steps import pytest_args

    if not (repo / "tests").is_dir():
        return [f"no tests/ folder under {repo}: the test steps need a source checkout"]
    problems = []
    for run, marker in (("gpu-tests", "gpu"), ("tests", "not gpu")):
        argv = [python, "-m", "pytest", *pytest_args(marker, None, 0, False), "--collect-only"]
        res = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=600)
        m = re.search(r"(\d+)(?:/\d+)? tests? collected", res.stdout)
        if res.returncode != 0 or not m:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            problems.append(f"{run}: pytest could not collect the tests (exit {res.returncode}):\n{tail}")
        else:
            report(f"  {run}: {m.group(1)} tests collected")
    return problems


def check_kernel_reader(report: Callable[[str], None]) -> list[str]:
    """Compile one tritonbn kernel for sm_90 into a fresh cache (no GPU needed) and read it back."""
    import os

    from tritonbn.gpu_session.kernels import find_compiled, resources, tritonbn_kernel_names

    with tempfile.TemporaryDirectory(prefix="tritonbn-aot-") as cache:
        code = (
            "import triton, triton.language as tl\n"
            "from triton.compiler import ASTSource\n"
            "from triton.backends.compiler import GPUTarget\n"
            "from tritonbn.kernels.batch_norm import stats_merge_kernel as k\n"
            "consts = {'BLOCK_P': 64, 'BLOCK_C': 64, 'ACC': tl.float32}\n"
            "sig = {n: 'constexpr' if n in consts else '*fp32' if n.endswith('_ptr') else 'i32' for n in k.arg_names}\n"
            "triton.compile(ASTSource(fn=k, signature=sig, constexprs=consts), target=GPUTarget('cuda', 90, 32),\n"
            "               options={'num_warps': 4})\n"
        )
        env = {**os.environ, "TRITON_CACHE_DIR": cache}
        env.pop("TRITON_INTERPRET", None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        if res.returncode != 0:
            tail = " ".join(res.stderr.strip().splitlines()[-3:])
            return [f"kernels: could not compile a kernel ahead of time for sm_90: {tail}"]
        rows = resources(find_compiled(cache, tritonbn_kernel_names()), use_driver=False)
        if len(rows) != 1 or rows[0]["registers"] is None:
            return [f"kernels: the cache reader found {rows!r} instead of one kernel with its registers"]
        r = rows[0]
        report(f"  kernels: read {r['kernel']} compiled for sm_90: {r['registers']} registers, {r['spills']} spills")
    return []


def _write_fixtures(results: Path) -> None:
    """One small file of every kind, with fixture values (not measurements), for the summary and archive."""
    from tritonbn.gpu_session.records import write_record
    from tritonbn.schema import BENCH_COLUMNS, CORRECTNESS_COLUMNS, CsvWriter, result_path

    prov = {
        "timestamp": "2000-01-01T00:00:00Z",
        "git_sha": "fixture",
        "gpu": FIXTURE_GPU,
        "compute_capability": "9.0",
        "torch": "fixture",
        "cuda": "fixture",
        "cudnn": "fixture",
        "triton": "fixture",
    }
    write_record([{"quantity": "copy_gbps", "value": 1000.0, "unit": "GB/s"}], "env", results, prov)
    write_record(
        [
            {"run": "gpu-tests", "nodeid": "tests/test_gpu.py::test_a", "outcome": "passed", "seconds": 1.0},
            {
                "run": "tests",
                "nodeid": "tests/test_x.py::test_b",
                "outcome": "failed",
                "seconds": 2.0,
                "message": "AssertionError: fixture",
            },
        ],  # fmt: skip
        "tests",
        results,
        prov,
    )
    write_record(
        [
            {
                "kernel": "stats_partial_kernel",
                "registers": 40,
                "spills": 0,
                "source": "fixture",
                "tiles": "256",
                "num_warps": 4,
            }
        ],  # fmt: skip
        "kernels",
        results,
        prov,
    )
    write_record([{"check": "gloo-2", "quantity": "y", "status": "ok", "passed": True}], "sync", results, prov)
    write_record(
        [
            {
                "model": "resnet50",
                "batch": 64,
                "dtype": "bf16",
                "batch_norm": b,
                "status": "ok",
                "ms_median": ms,
                "loss_after": 6.9,
                "bn_layers": 53,
                "fused_relu": 0,
            }
            for b, ms in (("torch", 100.0), ("tritonbn", 90.0))
        ],  # fmt: skip
        "train",
        results,
        prov,
    )
    slug = "fixture-gpu-dry-run"
    with CsvWriter(result_path(results, slug, "2000-01-01", "fixture"), BENCH_COLUMNS) as w:
        for provider, ms in (("tritonbn", 1.0), ("cudnn", 2.0)):
            w.write({c: None for c in BENCH_COLUMNS} | prov | {
                "provider": provider, "mode": "train", "pass": "fwd_bwd", "dim": 4, "N": 2, "C": 3, "spatial": "4x4",
                "dtype": "fp16", "layout": "contiguous", "affine": True, "ms_median": ms, "wall_ms": ms * 2,
                "status": "ok", "suite": "fixture"})  # fmt: skip
    with CsvWriter(result_path(results, slug, "2000-01-01", "fixture", kind="check"), CORRECTNESS_COLUMNS) as w:
        w.write({c: None for c in CORRECTNESS_COLUMNS} | prov | {
            "provider": "tritonbn", "case": "2x3", "dtype": "fp32", "layout": "contiguous", "mode": "train",
            "quantity": "y", "status": "ok", "passed": True})  # fmt: skip


def check_packing(report: Callable[[str], None]) -> list[str]:
    """Render the summary and pack the archive from fixture files of every kind, then look inside."""
    from tritonbn.gpu_session.session import Session, StepResult
    from tritonbn.gpu_session.summary import render_summary

    problems = []
    with tempfile.TemporaryDirectory(prefix="tritonbn-dry-run-") as tmp:
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        session = Session(out, work, 360.0, echo=False)
        _write_fixtures(session.results)
        session.steps = [StepResult("env", "ok", 1.0, 20.0, "fixture"), StepResult("train", "skipped", note="fixture")]
        env = {"gpu": FIXTURE_GPU, "copy_gbps": 1000.0, "provenance": {"git_sha": "fixture"}}
        summary = render_summary([vars(s) for s in session.steps], env, session.results, 360.0, 1.0)
        archive = session.finish(summary)
        for heading in ("## Tests on CUDA", "## Correctness", "## Kernels", "## SyncBatchNorm", "## Training step",
                        "## Speed"):  # fmt: skip
            if heading not in summary:
                problems.append(f"summary: the section {heading!r} is missing for fixture data")
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
        kinds = {"", "_check", "_env", "_tests", "_kernels", "_sync", "_train"}
        for ending in kinds:
            if not any(n.startswith("bench_results/") and n.endswith(f"fixture{ending}.csv") for n in names):
                problems.append(f"archive: no bench_results/.../*fixture{ending}.csv in {sorted(names)}")
        for needed in ("summary.md", "session.log", "steps.json"):
            if needed not in names:
                problems.append(f"archive: {needed} missing")
        if sorted(p.name for p in out.iterdir()) != ["gpu-session.tar.gz", "session.log", "summary.md"]:
            problems.append(f"out folder holds {sorted(p.name for p in out.iterdir())}")
        if not problems:
            report(f"  summary and archive: {len(names)} entries packed from fixture files of every kind")
    return problems


def run_all(steps, report: Callable[[str], None] = print, repo: Path | None = None) -> list[str]:
    """Every check; the problems found (empty: ready)."""
    repo = repo or Path(__file__).resolve().parents[2]
    problems = check_imports(report)
    if problems:
        return problems
    names = {s.name for s in steps}
    problems += check_arguments(report)
    if names & {"gpu-tests", "tests"}:
        problems += check_collection(report, repo)
    if "kernels" in names:
        problems += check_kernel_reader(report)
    problems += check_packing(report)
    return problems
