"""``tritonbn-bench``: forward, backward and forward+backward timings, train and eval, per provider.

Needs a CUDA device: without one it exits with status 2 (there are no CPU timings to pretend to be GPU
numbers). Writes ``<out>/<gpu-slug>/<utc-date>_<sha>.csv`` (a new file per run, never overwriting) with
the columns of :data:`tritonbn.schema.BENCH_COLUMNS` and prints the speed-up over cuDNN. Each pass gets
its GPU time per call (CUDA events or CUDA-graph replays) and its eager wall time per call (a synchronised
loop, host included). ``--max-seconds`` stops starting new configurations after that long, leaving a
complete file of the configurations measured so far.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from tritonbn.bench.providers import PROVIDERS
from tritonbn.bench.suites import LAYOUTS, PASSES, SUITES, get_suite

__all__ = ["build_parser", "main", "planned_configurations", "refusal"]

DTYPES = ("fp32", "fp16", "bf16")
MODES = ("train", "eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tritonbn-bench",
        description="Benchmark batch norm on a CUDA GPU: tritonbn vs cuDNN, native and torch.compile.",
    )
    p.add_argument("--suite", nargs="+", choices=list(SUITES), default=["quick"], help="shape suites (default quick)")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="default: all three")
    p.add_argument(
        "--layout",
        nargs="+",
        choices=list(LAYOUTS),
        default=list(LAYOUTS),
        help="default: both (channels_last only applies to 4d/5d shapes)",
    )
    p.add_argument("--mode", nargs="+", choices=list(MODES), default=list(MODES), help="default: both")
    p.add_argument(
        "--pass", dest="passes", nargs="+", choices=list(PASSES), default=list(PASSES), help="default: all three"
    )
    p.add_argument("--provider", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS), help="default: all four")
    p.add_argument(
        "--affine",
        choices=["true", "false", "both"],
        default="true",
        help="layers with weight and bias, without, or both (default true)",
    )
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="results root (default bench_results)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time in ms (default 25)")
    p.add_argument("--rep", type=int, default=100, help="do_bench / CUDA-graph repetition time in ms (default 100)")
    p.add_argument(
        "--cudagraph-max-bytes",
        type=int,
        default=16 << 20,
        help="time passes moving at most this many bytes with CUDA graphs (default 16 MiB)",
    )
    p.add_argument("--no-cudagraph", action="store_true", help="always use do_bench")
    p.add_argument(
        "--no-wall", action="store_true", help="skip the eager wall time per call (host included; column wall_ms)"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="start no new configuration after this many seconds; the file holds those measured so far",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT configurations")
    p.add_argument(
        "--order",
        choices=["grid", "spread"],
        default="grid",
        help="grid: suite, shape, dtype, layout, mode; spread: one configuration of each shape in turn, "
        "neighbouring shapes in different dtypes/layouts/modes, so a run cut short by --max-seconds or "
        "--limit still samples them all (default grid)",
    )
    p.add_argument(
        "--host",
        action="store_true",
        help="measure the host side instead, on any machine: launches per call (kernels stubbed, ATen operators "
        "counted) and host µs per call, tritonbn against torch's batch norm on this CPU, for --host-shape in "
        "the first --dtype and --layout; writes <out>/cpu/<date>_<sha>_host.csv",
    )
    p.add_argument(
        "--host-shape",
        default="4,16,4,4",
        help="input shape of --host (default 4,16,4,4: small, so the host dominates)",
    )
    p.add_argument(
        "--host-rounds", type=int, default=15, help="alternating timing rounds per pass of --host (default 15)"
    )
    p.add_argument("--list-suites", action="store_true", help="print the shapes of the suites and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def refusal() -> str | None:
    """Why this machine cannot produce GPU timings (``None`` if it can)."""
    import torch

    if not torch.cuda.is_available():
        return (
            "tritonbn-bench: no CUDA device is available. The benchmark times GPU kernels and does not "
            "produce CPU numbers; run it on a machine with an NVIDIA GPU (tritonbn-check runs on the CPU)."
        )
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "tritonbn-bench: TRITON_INTERPRET is set; interpreter timings are meaningless. Unset it."
    return None


def _progress(total: int, disable: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, disable=disable, unit="cfg", desc="tritonbn-bench", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    if args.max_seconds is not None and args.max_seconds <= 0:
        parser.error("--max-seconds must be positive")
    if args.host:
        return _run_host(args, parser)
    if args.list_suites:
        for name in args.suite:
            shapes = get_suite(name)
            print(f"{name} ({len(shapes)} shapes): " + ", ".join(str(s) for s in shapes))
        return 0
    reason = refusal()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from tritonbn import provenance
    from tritonbn.bench.runner import gpu_timer, gpu_wall_timer, run_config
    from tritonbn.bench.summary import format_summary
    from tritonbn.bench.timing import copy_bandwidth_gbps
    from tritonbn.schema import BENCH_COLUMNS, CsvWriter, result_path

    device = torch.device("cuda", torch.cuda.current_device())
    prov = provenance.collect(device)
    path = result_path(
        args.out, provenance.device_slug(prov["gpu"]), provenance.utc_date(prov["timestamp"]), prov["git_sha"]
    )
    configs = planned_configurations(args)
    print(
        f"tritonbn-bench: {len(configs)} configurations x {len(args.provider)} providers x "
        f"{len(args.passes)} passes on {prov['gpu']}",
        file=sys.stderr,
    )
    peak = copy_bandwidth_gbps(device)
    print(f"tritonbn-bench: device-to-device copy {peak:.0f} GB/s (peak_gbps)", file=sys.stderr)
    timer = gpu_timer(args.warmup, args.rep)
    wall_timer = None if args.no_wall else gpu_wall_timer(args.rep)
    max_graph_bytes = -1 if args.no_cudagraph else args.cudagraph_max_bytes
    all_rows = []
    bar = _progress(len(configs), args.no_progress)
    start = time.perf_counter()
    done = 0
    with CsvWriter(path, BENCH_COLUMNS) as writer:
        for cfg in configs:
            if done and args.max_seconds is not None and time.perf_counter() - start >= args.max_seconds:
                break
            if bar is not None:
                bar.set_postfix_str(f"{cfg.suite} {cfg.shape} {cfg.dtype} {cfg.layout} {cfg.mode}", refresh=False)
            rows = run_config(cfg, args.provider, args.passes, device, timer, peak, max_graph_bytes, wall_timer)
            for row in rows:
                row = {**prov, **row}
                writer.write(row)
                all_rows.append(row)
            torch.cuda.empty_cache()
            done += 1
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    print(format_summary(all_rows, args.provider))
    if done < len(configs):
        print(
            f"tritonbn-bench: stopped after {done} of {len(configs)} configurations "
            f"(--max-seconds {args.max_seconds:g} reached)"
        )
    print(f"tritonbn-bench: {len(all_rows)} rows in {time.perf_counter() - start:.0f} s -> {writer.path}")
    return 0


def _run_host(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

    from tritonbn import provenance
    from tritonbn.bench.host import HOST_BUDGET, PASSES, measure
    from tritonbn.schema import HOST_COLUMNS, CsvWriter, result_path

    try:
        shape = tuple(int(v) for v in args.host_shape.split(","))
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--host-shape must be comma-separated positive sizes (N,C,...), got {args.host_shape!r}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("tritonbn-bench --host: TRITON_INTERPRET is set; unset it (kernels are stubbed anyway).", file=sys.stderr)
        return 2
    prov = provenance.collect("cpu")
    bar = _progress(len(PASSES), args.no_progress)

    def progress(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(what, refresh=False)
            bar.update()

    if args.host_rounds < 1:
        parser.error("--host-rounds must be positive")
    from tritonbn.correctness.tolerances import parse_dtype

    dtype, layout = parse_dtype(args.dtype[0]), args.layout[0]
    channels_last = layout == "channels_last"
    if channels_last and len(shape) != 4:
        parser.error("--host with --layout channels_last needs a 4-d --host-shape")
    print(f"tritonbn-bench --host: shape {args.host_shape}, {args.dtype[0]}, {layout}", file=sys.stderr)
    rows = measure(shape, dtype, channels_last, rounds=args.host_rounds, progress=progress)
    if bar is not None:
        bar.close()
    path = result_path(args.out, "cpu", provenance.utc_date(prov["timestamp"]), prov["git_sha"], kind="host")
    with CsvWriter(path, HOST_COLUMNS) as writer:
        writer.write_all({**prov, **r} for r in rows)
    by = {(r["impl"], r["pass"]): r for r in rows}
    print(f"{'pass':<24}{'launches':>9}{'torch launches':>16}{'host µs':>10}{'torch µs':>10}{'ratio':>8}")
    for pass_ in PASSES:
        ours, ref = by[("tritonbn", pass_)], by[("torch", pass_)]
        print(
            f"{pass_:<24}{ours['launches']:>9}{ref['launches']:>16}{ours['host_us']:>10.1f}{ref['host_us']:>10.1f}"
            f"{ours['host_ratio']:>8.2f}"
        )
    ratio = by[("tritonbn", "train_forward_backward")]["host_ratio"]
    verdict = "within" if ratio <= HOST_BUDGET else "OVER"
    print(f"train forward+backward host time: {ratio:.2f}x torch's ({verdict} the {HOST_BUDGET}x budget)")
    if math.prod(shape) > 1 << 16:
        print(
            "note: tritonbn's kernels are stubbed while torch computes on this CPU: at this size torch's "
            "time is mostly compute, so the ratio says nothing about host overhead (use a small shape)"
        )
    print(f"tritonbn-bench --host: {len(rows)} rows -> {path}")
    return 0


def planned_configurations(args: argparse.Namespace) -> list:
    """The configurations a run with ``args`` measures, in order (``--order``, then ``--limit``): no GPU
    needed."""
    from tritonbn.bench.runner import configurations, spread_order
    from tritonbn.correctness.tolerances import parse_dtype

    suites = {name: get_suite(name) for name in args.suite}
    affines = {"true": [True], "false": [False], "both": [True, False]}[args.affine]
    configs = list(configurations(suites, [parse_dtype(d) for d in args.dtype], args.layout, args.mode, affines))
    if args.order == "spread":
        configs = spread_order(configs)
    return configs[: args.limit] if args.limit is not None else configs


if __name__ == "__main__":
    sys.exit(main())
