"""The benchmark loop: for every configuration, verify each provider against the float64 reference, then
time its passes, and produce one row per (configuration, provider, pass) with the columns of
:data:`tritonbn.schema.BENCH_COLUMNS` (provenance excluded: the caller adds it)."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from tritonbn import reference
from tritonbn.bench.providers import EPS, BenchTensors, detect_backend, make_forward, make_tensors
from tritonbn.bench.suites import PASSES, Shape, own_traffic_bytes, traffic_bytes
from tritonbn.correctness.tolerances import condition_number, dtype_name, errors, tolerance

__all__ = ["BenchConfig", "Timer", "WallTimer", "configurations", "run_config", "spread_order", "verify"]

#: ``timer(make_fn, use_cudagraph) -> ((median, p20, p80), timer_name)``; make_fn builds the timed callable.
Timer = Callable[[Callable[[], Callable[[], object]], bool], tuple[tuple[float, float, float], str]]
#: ``wall_timer(make_fn) -> ms``: eager wall time per call, host included (``None``: not measured).
WallTimer = Callable[[Callable[[], Callable[[], object]]], float]


@dataclass(frozen=True)
class BenchConfig:
    suite: str
    shape: Shape
    dtype: torch.dtype
    layout: str
    mode: str
    affine: bool

    @property
    def training(self) -> bool:
        return self.mode == "train"


def configurations(
    suites: dict[str, list[Shape]],
    dtypes: list[torch.dtype],
    layouts: list[str],
    modes: list[str],
    affines: list[bool],
) -> Iterator[BenchConfig]:
    """Every configuration in a stable order; channels_last only for 4d/5d shapes; a shape listed by
    several suites is measured once per suite."""
    for suite, shapes in suites.items():
        for shape in shapes:
            for dtype in dtypes:
                for layout in layouts:
                    if not shape.supports(layout):
                        continue
                    for mode in modes:
                        for affine in affines:
                            yield BenchConfig(suite, shape, dtype, layout, mode, affine)


def spread_order(configs: list[BenchConfig]) -> list[BenchConfig]:
    """The same configurations, one of each (suite, shape) in turn: shape ``j``'s own list (in grid order)
    is rotated by ``j``, so neighbouring shapes start at different dtypes, layouts and modes, and any prefix
    of the result samples every shape and most variants."""
    from collections import deque

    by_shape: dict[tuple, list[BenchConfig]] = {}
    for c in configs:
        by_shape.setdefault((c.suite, c.shape), []).append(c)
    queues = []
    for j, group in enumerate(by_shape.values()):
        k = j % len(group)
        queues.append(deque(group[k:] + group[:k]))
    out = []
    while queues:
        for q in queues:
            out.append(q.popleft())
        queues = [q for q in queues if q]
    return out


def _reference(cfg: BenchConfig, t: BenchTensors) -> tuple[dict[str, torch.Tensor | None], float]:
    x = t.x.detach().double().requires_grad_()
    w = None if t.weight is None else t.weight.detach().double().requires_grad_()
    b = None if t.bias is None else t.bias.detach().double().requires_grad_()
    y = reference.batch_norm(x, t.running_mean, t.running_var, w, b, cfg.training, EPS)
    inputs = [x] + ([w, b] if cfg.affine else [])
    grads = torch.autograd.grad(y, inputs, t.dy.double())
    out = {"y": y.detach(), "dx": grads[0]}
    if cfg.affine:
        out["dweight"], out["dbias"] = grads[1], grads[2]
    if cfg.training:
        mean, var, _ = reference.batch_norm_stats(t.x)
    else:
        mean, var = t.running_mean, t.running_var
    return out, condition_number(mean, var, EPS)


def verify(
    cfg: BenchConfig,
    f: Callable[[torch.Tensor], torch.Tensor],
    t: BenchTensors,
    ref: dict[str, torch.Tensor | None],
    cond: float,
) -> str | None:
    """``None`` if ``y``, ``dx``, ``dweight`` and ``dbias`` are within tolerance, else what is wrong."""
    y = f(t.x)
    grads = torch.autograd.grad(y, t.grad_inputs(), t.dy)
    got = {"y": y.detach(), "dx": grads[0]}
    if cfg.affine:
        got["dweight"], got["dbias"] = grads[1], grads[2]
    if y.dtype != t.x.dtype:
        return f"mismatch: y is {y.dtype}, input {t.x.dtype}"
    name = dtype_name(cfg.dtype)
    reduction = cfg.shape.numel // cfg.shape.C
    bad = []
    for q, r in ref.items():
        _, rel = errors(got[q], r)
        tol = tolerance(name, q, cond, reduction)
        if not rel <= tol:
            bad.append(f"{q} rel err {rel:.3g} > {tol:.3g}")
    return f"mismatch: {'; '.join(bad)}" if bad else None


def _pass_fn(
    pass_: str, cfg: BenchConfig, f: Callable[[torch.Tensor], torch.Tensor], t: BenchTensors
) -> Callable[[], Callable[[], object]]:
    """A builder of the timed callable of a pass.

    ``fwd``: training forward with autograd recording (as in a training step), eval forward under
    ``torch.no_grad()`` (inference); ``bwd``: ``autograd.grad`` of a retained forward graph w.r.t. x,
    weight and bias; ``fwd_bwd``: both, the forward recording autograd in either mode.
    """
    x, dy, inputs = t.x, t.dy, t.grad_inputs()
    if pass_ == "fwd":
        if cfg.training:
            return lambda: lambda: f(x)

        def make_eval_fwd():
            def run():
                with torch.no_grad():
                    return f(x)

            return run

        return make_eval_fwd
    if pass_ == "bwd":

        def make_bwd():
            y = f(x)
            return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)

        return make_bwd
    if pass_ == "fwd_bwd":
        return lambda: lambda: torch.autograd.grad(f(x), inputs, dy)
    raise ValueError(f"unknown pass {pass_!r}")


class _Skip(Exception):
    """The configuration could not be set up: its rows carry the setup error."""


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:200]


def run_config(
    cfg: BenchConfig,
    providers: list[str],
    passes: list[str],
    device: torch.device,
    timer: Timer,
    peak_gbps: float,
    cudagraph_max_bytes: int,
    wall_timer: WallTimer | None = None,
) -> list[dict[str, object]]:
    """Rows (provenance excluded) of one configuration: every provider × pass, verified before timing.

    ``timer`` gives the GPU time per call (``ms_*`` columns); ``wall_timer``, when given, the eager wall time
    per call (``wall_ms``), measured after the GPU time with a freshly built callable.
    """
    shape = cfg.shape
    setup_error = None
    try:
        base_tensors = make_tensors(shape.dims, cfg.dtype, cfg.layout, cfg.affine, device)
        ref, cond = _reference(cfg, base_tensors)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory for the float64 reference: recorded
        setup_error = f"error: reference: {_short(e)}"
    elt = torch.empty((), dtype=cfg.dtype).element_size()
    param_elt = 4 if cfg.dtype in (torch.float16, torch.bfloat16) else elt
    common = {
        "mode": cfg.mode,
        "dim": shape.dim,
        "N": shape.N,
        "C": shape.C,
        "spatial": shape.spatial_str,
        "dtype": dtype_name(cfg.dtype),
        "layout": cfg.layout,
        "affine": cfg.affine,
        "numel": shape.numel,
        "suite": cfg.suite,
        "peak_gbps": peak_gbps,
    }
    one_tile = None  # not known: no own_bytes for tritonbn's training passes
    if setup_error is None:
        with contextlib.suppress(Exception):  # the modelled traffic only; the measurement does not need it
            from tritonbn.launch import one_tile as _one_tile

            one_tile = _one_tile(base_tensors.x)
    rows = []
    for provider in providers:
        backend, status, t, f = "", setup_error or "ok", None, None
        try:
            if setup_error:
                raise _Skip
            t = base_tensors.fresh()
            f = make_forward(provider, t, cfg.training)
            f(t.x)  # compiles (inductor), autotunes/JITs (Triton): never inside a timing
            status = verify(cfg, f, t, ref, cond) or "ok"
            backend = detect_backend(provider, _pass_fn("fwd_bwd", cfg, f, t)(), device)
        except _Skip:
            pass
        except Exception as e:  # noqa: BLE001 - recorded, the provider is not timed
            status = f"error: {_short(e)}"
            f = None
        for pass_ in passes:
            nbytes = traffic_bytes(pass_, shape.numel, shape.C, elt, param_elt, cfg.affine, training=cfg.training)
            own = own_traffic_bytes(
                provider, pass_, shape.numel, shape.C, elt, param_elt, cfg.affine, training=cfg.training,
                one_tile=one_tile,
            )  # fmt: skip
            row = {
                **common,
                "provider": provider,
                "backend": backend,
                "pass": pass_,
                "bytes": nbytes,
                "ms_median": None,
                "ms_p20": None,
                "ms_p80": None,
                "gbps": None,
                "pct_of_peak": None,
                "timer": "",
                "status": status,
                "wall_ms": None,
                "own_bytes": own,
            }
            if status == "ok":
                try:
                    (ms, p20, p80), timer_name = timer(_pass_fn(pass_, cfg, f, t), nbytes <= cudagraph_max_bytes)
                except Exception as e:  # noqa: BLE001
                    row["status"] = f"error: {_short(e)}"
                else:
                    gbps = nbytes / (ms * 1e-3) / 1e9 if ms > 0 else math.nan
                    row.update(
                        ms_median=ms,
                        ms_p20=p20,
                        ms_p80=p80,
                        gbps=gbps,
                        timer=timer_name,
                        pct_of_peak=100 * gbps / peak_gbps if peak_gbps else None,
                    )
                    if wall_timer is not None:
                        try:
                            row["wall_ms"] = wall_timer(_pass_fn(pass_, cfg, f, t))
                        except Exception as e:  # noqa: BLE001 - the GPU time stands; wall_ms stays empty
                            msg = f"tritonbn-bench: no wall time for {cfg} {provider} {pass_}: {_short(e)}"
                            print(msg, file=sys.stderr)
            rows.append(row)
        del t, f
    return rows


def gpu_wall_timer(rep: int) -> WallTimer:
    """The real wall timer: :func:`tritonbn.bench.timing.wall_ms_per_call` with loops lasting ``rep`` ms."""
    from tritonbn.bench.timing import wall_ms_per_call

    return lambda make_fn: wall_ms_per_call(make_fn, target_ms=rep)


def gpu_timer(warmup: int, rep: int) -> Timer:
    """The real timer: CUDA graphs when asked (falling back to ``do_bench`` if capture fails), else
    ``do_bench``."""
    from tritonbn.bench.timing import bench_cudagraph, bench_do_bench

    def timer(make_fn, use_cudagraph):
        if use_cudagraph:
            try:
                return bench_cudagraph(make_fn, rep), "cudagraph"
            except Exception:  # noqa: BLE001 - e.g. a host synchronisation inside the captured region
                with contextlib.suppress(RuntimeError):
                    torch.cuda.synchronize()
        return bench_do_bench(make_fn, warmup, rep), "do_bench"

    return timer


ALL_PASSES = PASSES
