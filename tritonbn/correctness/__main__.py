"""``tritonbn-check``: tritonbn's and torch's batch norm against the float64 reference, written to CSV.

For every case of the grid (shapes × dtypes × layouts × train/eval, with detached statistics, no affine,
no running statistics and a large-mean channel as variants) and every quantity (``y``, running
statistics, first- and second-order gradients) one row records the max absolute and normwise relative
error of each provider and whether it is within ``TOL`` (:mod:`tritonbn.correctness.tolerances`).

``--max-seconds`` stops starting new cases after that long; the file then holds the complete rows of the
cases run so far, and the summary says how many were left out.

Exit status: 0 when tritonbn passes every tolerance, 1 when it fails one (torch's failures are recorded
only), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from tritonbn import provenance
from tritonbn.correctness.cases import LAYOUTS, Case, full_grid, quick_grid
from tritonbn.correctness.tolerances import DTYPES
from tritonbn.schema import CORRECTNESS_COLUMNS, CsvWriter, result_path

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tritonbn-check",
        description="Correctness sweep of tritonbn and torch batch norm against a float64 reference. "
        "On a CPU set TRITON_INTERPRET=1 to run tritonbn's kernels in Triton's interpreter.",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny shapes only (well under a minute on a CPU under the interpreter)"
    )
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="default: all")
    p.add_argument("--layout", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="default: both")
    p.add_argument("--provider", nargs="+", choices=["tritonbn", "torch"], default=["tritonbn", "torch"])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="default: cuda if available")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="results root (default: bench_results)")
    p.add_argument("--limit", type=int, default=None, help="run only the first LIMIT cases of the grid")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="start no new case after this many seconds; the file holds the cases run so far",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _progress(iterable, total: int, disable: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the bench/dev extras; without it run silently
        return iterable
    return tqdm(iterable, total=total, disable=disable, unit="case", desc="tritonbn-check", file=sys.stderr)


def _probe_bf16(device: torch.device) -> str | None:
    """On the CPU, why tritonbn cannot run bfloat16 in the interpreter (``None`` if it can)."""
    import tritonbn
    from tritonbn.functional import uses_triton

    if device.type != "cpu" or not uses_triton(torch.empty(0)):
        return None
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    try:
        y = tritonbn.batch_norm(x, None, None, training=True)
        expected = torch.nn.functional.batch_norm(x.float(), None, None, training=True)
    except Exception as e:  # noqa: BLE001 - the reason is recorded
        return f"bfloat16 not supported by Triton's interpreter: {type(e).__name__}: {e}".replace("\n", " ")[:300]
    if not torch.allclose(y.float(), expected, atol=0.1, rtol=0.1):
        return "bfloat16 gives wrong results in Triton's interpreter"
    return None


def run(args: argparse.Namespace) -> int:
    from tritonbn.correctness.runner import PROVIDERS, device_label, run_case

    if args.device == "cuda" and not torch.cuda.is_available():
        print("tritonbn-check: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    grid = quick_grid if args.quick else full_grid
    cases: list[Case] = grid(dtypes=args.dtype, layouts=args.layout)
    if args.limit is not None:
        cases = cases[: args.limit]
    providers = [PROVIDERS[name] for name in args.provider]

    prov = provenance.collect(device)
    label = device_label(device)
    slug = provenance.device_slug(label)
    path = result_path(args.out, slug, provenance.utc_date(prov["timestamp"]), prov["git_sha"], kind="check")
    skips: dict[str, dict[str, str]] = {}
    if "bf16" in args.dtype and "tritonbn" in args.provider:
        reason = _probe_bf16(device)
        if reason:
            skips["bf16"] = {"tritonbn": reason}
    if label == "cpu-torch":
        print(
            "tritonbn-check: TRITON_INTERPRET is not set, so on the CPU tritonbn computes with torch ops, not its "
            "kernels; the rows say so (device cpu-torch, backend torch-ops)",
            file=sys.stderr,
        )

    counts: Counter[tuple[str, str]] = Counter()
    failures: list[dict[str, object]] = []
    start = time.perf_counter()
    done = 0
    with CsvWriter(path, CORRECTNESS_COLUMNS) as writer:
        for case in _progress(cases, len(cases), args.no_progress):
            if done and args.max_seconds is not None and time.perf_counter() - start >= args.max_seconds:
                break
            done += 1
            for row in run_case(case, providers, device, skips.get(case.dtype)):
                row = {**prov, **row, "device": label}
                writer.write(row)
                counts[(str(row["provider"]), str(row["status"]))] += 1
                if row["provider"] == "tritonbn" and row["status"] in ("fail", "error"):
                    failures.append(row)
    elapsed = time.perf_counter() - start

    print(f"tritonbn-check: {done} cases on {label} in {elapsed:.1f} s -> {writer.path}")
    if done < len(cases):
        print(f"  stopped after {done} of {len(cases)} cases (--max-seconds {args.max_seconds:g} reached)")
    for provider in args.provider:
        c = {s: counts[(provider, s)] for s in ("ok", "fail", "error", "skipped")}
        print(
            f"  {provider:9s} passed {c['ok']:5d}  failed {c['fail']:4d}  errors {c['error']:4d}  "
            f"skipped {c['skipped']:4d}"
        )
    for reason in sorted({r for s in skips.values() for r in s.values()}):
        print(f"  skipped: {reason}")
    for row in failures[:20]:
        err = row["max_rel_err"]
        print(
            f"  FAIL tritonbn {row['case']} {row['dtype']} {row['layout']} {row['mode']} {row['quantity']}: "
            + (f"rel err {err:.3g} > tol {row['tol']:.3g}" if err is not None else str(row["note"]))
        )
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more failures")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        build_parser().error("--limit must be positive")
    if args.max_seconds is not None and args.max_seconds <= 0:
        build_parser().error("--max-seconds must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
