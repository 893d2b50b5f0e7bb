"""SyncBatchNorm across processes, against the float64 batch norm of one process on the concatenated batch.

The checks (``tritonbn-gpu-session``'s ``sync`` step; ``python -m tritonbn.gpu_session.sync --out DIR``):

- ``gloo-2``: two ranks over gloo with uneven batches (3 and 5 samples, float32, contiguous) and
  ``gloo-2-channels_last``: two ranks with 2 and 6 samples (float16, channels_last). On a GPU both ranks
  share the one device, which gloo allows and NCCL does not.
- ``nccl-1`` (CUDA only): a one-rank NCCL group, calling :class:`tritonbn.distributed.SyncBatchNormFunction`
  directly, so that its all-gather and all-reduce go through NCCL (the module skips the exchange for a group
  of one, as torch's does).

Each rank runs one training forward and backward of :class:`tritonbn.SyncBatchNorm` on its slice; the
parent compares the concatenated outputs and input gradients, the summed weight and bias gradients and
every rank's running statistics with :mod:`tritonbn.reference` on the whole batch, under the tolerance
table of :mod:`tritonbn.correctness.tolerances`. Rows have the columns of
:data:`tritonbn.schema.SYNC_COLUMNS`.

On a CPU the ranks run tritonbn's kernels in Triton's interpreter when ``TRITON_INTERPRET=1`` is set (the
spawned ranks inherit the environment); ``nccl-1`` is then skipped.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["build_parser", "SYNC_CASES", "SyncCase", "main", "run_sync_checks"]

MOMENTUM = 0.1
EPS = 1e-5


@dataclass(frozen=True)
class SyncCase:
    """One process-group check: ``batches[r]`` samples of shape ``(C, *spatial)`` on rank ``r``."""

    name: str
    backend: str
    batches: tuple[int, ...]
    C: int
    spatial: tuple[int, ...]
    dtype: torch.dtype
    layout: str = "contiguous"
    #: call SyncBatchNormFunction directly (a group of one would skip the exchange in the module)
    function: bool = False

    @property
    def world_size(self) -> int:
        return len(self.batches)


SYNC_CASES: tuple[SyncCase, ...] = (
    SyncCase("gloo-2", "gloo", (3, 5), 6, (5, 7), torch.float32),
    SyncCase("gloo-2-channels_last", "gloo", (2, 6), 16, (6, 6), torch.float16, "channels_last"),
    SyncCase("nccl-1", "nccl", (8,), 12, (4, 9), torch.float32, function=True),
)


def _inputs(case: SyncCase) -> dict[str, torch.Tensor]:
    """The whole batch and the layer's initial state, seeded, on the CPU (float32 parameters)."""
    gen = torch.Generator().manual_seed(1234)
    shape = (sum(case.batches), case.C, *case.spatial)
    bshape = (1, case.C) + (1,) * len(case.spatial)
    offset = torch.randn(case.C, generator=gen).reshape(bshape) * 2
    x = (torch.randn(shape, generator=gen) * 1.5 + offset).to(case.dtype)
    dy = torch.randn(shape, generator=gen).to(case.dtype)
    return {
        "x": x,
        "dy": dy,
        "weight": torch.rand(case.C, generator=gen) + 0.5,
        "bias": torch.randn(case.C, generator=gen),
        "running_mean": torch.randn(case.C, generator=gen) * 0.1,
        "running_var": torch.rand(case.C, generator=gen) + 0.5,
    }


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    return t.contiguous()


def _rank_main(rank: int, cases: tuple[SyncCase, ...], device_type: str, tmp: str) -> None:
    """One rank of a process group shared by ``cases`` (same backend and world size): forward and backward
    of its slice of each case; saves its results to ``tmp/<case>/rank<r>.pt``."""
    import torch.distributed as dist

    import tritonbn
    from tritonbn.distributed import SyncBatchNormFunction

    try:
        torch.set_num_threads(1)
        if sys.platform.startswith("linux"):
            # gloo on a machine without a network: the loopback interface, not whatever the hostname resolves to
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            cases[0].backend,
            init_method=f"file://{tmp}/store",
            rank=rank,
            world_size=cases[0].world_size,
            timeout=datetime.timedelta(seconds=60),
        )
        for case in cases:
            data = torch.load(f"{tmp}/{case.name}/inputs.pt")
            start = sum(case.batches[:rank])
            stop = start + case.batches[rank]
            x = _layout(data["x"][start:stop], case.layout).to(device).requires_grad_()
            dy = _layout(data["dy"][start:stop], case.layout).to(device)
            layer = tritonbn.SyncBatchNorm(case.C, eps=EPS, momentum=MOMENTUM).to(device)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(layer, name).copy_(data[name])
            layer.train()
            if case.function:
                args = (layer.running_mean, layer.running_var, EPS, MOMENTUM, dist.group.WORLD, case.world_size, False)
                y = SyncBatchNormFunction.apply(x, layer.weight, layer.bias, *args)
            else:
                y = layer(x)
            dx, dw, db = torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)
            if device.type == "cuda":
                torch.cuda.synchronize()
            out = {
                "y": y.detach().cpu(),
                "y_channels_last": bool(y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last)),
                "dx": dx.cpu(),
                "dweight": dw.cpu(),
                "dbias": db.cpu(),
                "running_mean": layer.running_mean.cpu(),
                "running_var": layer.running_var.cpu(),
            }
            torch.save(out, f"{tmp}/{case.name}/rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        Path(f"{tmp}/rank{rank}.err").write_text(traceback.format_exc())
        raise


def _reference(case: SyncCase, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float64 batch norm of one process on the whole batch: outputs, gradients, running statistics."""
    from tritonbn import reference

    x = data["x"].double().requires_grad_()
    w = data["weight"].double().requires_grad_()
    b = data["bias"].double().requires_grad_()
    y = reference.batch_norm(x, None, None, w, b, training=True, eps=EPS)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), data["dy"].double())
    mean, var, count = reference.batch_norm_stats(data["x"])
    rm, rv = reference.running_stats_update(data["running_mean"], data["running_var"], mean, var, count, MOMENTUM)
    return {"y": y.detach(), "dx": dx, "dweight": dw, "dbias": db, "running_mean": rm, "running_var": rv}


def _rows(case: SyncCase, results: list[dict], ref: dict[str, torch.Tensor]) -> list[dict]:
    from tritonbn.correctness.tolerances import dtype_name, errors, tolerance

    dtype = dtype_name(case.dtype)
    common = {**_common(case), "dtype": dtype}
    got = {
        "y": torch.cat([r["y"] for r in results]),
        "dx": torch.cat([r["dx"] for r in results]),
        "dweight": sum(r["dweight"] for r in results),
        "dbias": sum(r["dbias"] for r in results),
    }
    rows = []
    reduction = sum(case.batches) * int(torch.tensor(case.spatial).prod())
    for q, value in got.items():
        rows.append(_row(common, q, *errors(value, ref[q]), tolerance(dtype, q, reduction=reduction)))
    for q in ("running_mean", "running_var"):  # every rank holds the same, global, running statistics
        worst = max((errors(r[q], ref[q]) for r in results), key=lambda e: e[1])
        rows.append(_row(common, q, *worst, tolerance(dtype, q)))
    if case.layout == "channels_last":
        ok = all(r["y_channels_last"] for r in results if r["y"].numel())
        rows.append({**common, "quantity": "y_memory_format", "passed": ok, "status": "ok" if ok else "fail",
                     "note": "" if ok else "output is not channels_last"})  # fmt: skip
    return rows


def _row(common: dict, quantity: str, abs_err: float, rel_err: float, tol: float) -> dict:
    passed = rel_err <= tol  # NaN never passes
    return {
        **common,
        "quantity": quantity,
        "max_abs_err": abs_err,
        "max_rel_err": rel_err,
        "tol": tol,
        "passed": passed,
        "status": "ok" if passed else "fail",
        "note": "",
    }


def _skip_reason(case: SyncCase, device_type: str) -> str | None:
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available"
    if case.backend == "nccl":
        if device_type != "cuda":
            return "NCCL needs CUDA tensors"
        if not dist.is_nccl_available():
            return "this torch has no NCCL"
    if case.backend == "gloo" and not dist.is_gloo_available():
        return "this torch has no gloo"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return "on the CPU the kernels run only in Triton's interpreter: set TRITON_INTERPRET=1"
    return None


def run_sync_checks(
    device_type: str | None = None,
    cases: tuple[SyncCase, ...] = SYNC_CASES,
    timeout_s: float = 120.0,
    on_rows: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Run every case in spawned ranks and return the rows (provenance excluded).

    Cases with the same backend and world size share one process group (one spawn), which must finish
    within ``timeout_s``. ``device_type``: ``"cuda"`` (default when available) or ``"cpu"``. A case that
    cannot run here is one ``skipped`` row; a case whose ranks fail is one ``error`` row with the first
    rank's error in ``note``. ``on_rows`` receives each group's rows as soon as they are known.
    """
    from tritonbn.correctness.tolerances import dtype_name

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    emit = on_rows or (lambda rows: None)
    rows: list[dict] = []
    groups: dict[tuple[str, int], list[SyncCase]] = {}
    for case in cases:
        reason = _skip_reason(case, device_type)
        if reason:
            skipped = [{**_common(case), "dtype": dtype_name(case.dtype), "status": "skipped", "note": reason}]
            emit(skipped)
            rows += skipped
        else:
            groups.setdefault((case.backend, case.world_size), []).append(case)
    for group in groups.values():
        done = _run_group(tuple(group), device_type, timeout_s)
        emit(done)
        rows += done
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(rows, key=lambda r: order[r["check"]])


def _common(case: SyncCase) -> dict:
    return {
        "check": case.name,
        "backend": case.backend,
        "world_size": case.world_size,
        "batches": "+".join(map(str, case.batches)),
        "layout": case.layout,
    }


def _run_group(cases: tuple[SyncCase, ...], device_type: str, timeout_s: float) -> list[dict]:
    import torch.multiprocessing as mp

    from tritonbn.correctness.tolerances import dtype_name

    with tempfile.TemporaryDirectory(prefix="tritonbn-sync-") as tmp:
        inputs = {}
        for case in cases:
            Path(tmp, case.name).mkdir()
            inputs[case.name] = _inputs(case)
            torch.save(inputs[case.name], f"{tmp}/{case.name}/inputs.pt")
        try:
            ctx = mp.start_processes(
                _rank_main, args=(cases, device_type, tmp), nprocs=cases[0].world_size, join=False, start_method="spawn"
            )
            deadline = time.monotonic() + timeout_s
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    raise TimeoutError(f"the ranks did not finish within {timeout_s:g} s")
        except Exception as e:  # noqa: BLE001 - recorded with the ranks' own errors
            errs = [p.read_text() for p in sorted(Path(tmp).glob("rank*.err"))]
            note = (errs[0].strip().splitlines()[-1] if errs else f"{type(e).__name__}: {e}").replace("\n", " ")
            print("sync: ranks failed:\n" + ("\n".join(errs) or repr(e)), file=sys.stderr)
            done = {
                c.name for c in cases if all(Path(tmp, c.name, f"rank{r}.pt").exists() for r in range(c.world_size))
            }
        else:
            note, done = "", {c.name for c in cases}
        rows = []
        for case in cases:
            if case.name not in done:
                rows.append({**_common(case), "dtype": dtype_name(case.dtype), "status": "error", "passed": False,
                             "note": note[:300]})  # fmt: skip
                continue
            results = [torch.load(f"{tmp}/{case.name}/rank{r}.pt") for r in range(case.world_size)]
            rows.extend(_rows(case, results, _reference(case, inputs[case.name])))
        return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tritonbn.gpu_session.sync", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="results root (default bench_results)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for each process group")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write ``<out>/<device>/<date>_<sha>_sync.csv``; exit 1 when a check fails or errors."""
    from tritonbn import provenance
    from tritonbn.gpu_session.records import RecordWriter

    args = build_parser().parse_args(argv)
    device_type = None if args.device == "auto" else args.device
    if device_type == "cuda" and not torch.cuda.is_available():
        print("sync: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device(device_type or ("cuda" if torch.cuda.is_available() else "cpu"))
    with RecordWriter("sync", args.out, provenance.collect(device)) as writer:  # each group's rows as they come
        rows = run_sync_checks(device_type, timeout_s=args.timeout, on_rows=writer.write_all)
    path = writer.path
    bad = [r for r in rows if r.get("status") in ("fail", "error")]
    for r in rows:
        err = r.get("max_rel_err")
        shown = f"rel err {err:.2e} (tol {r['tol']:.1e})" if isinstance(err, float) else r.get("note", "")
        print(f"  {r['check']:22s} {r.get('quantity', ''):16s} {r['status']:8s} {shown}")
    print(f"sync: {len(rows) - len(bad)} of {len(rows)} rows ok -> {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
