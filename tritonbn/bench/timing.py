"""GPU timers: ``triton.testing.do_bench`` (L2 flushed before every run) and a CUDA-graph timer for shapes
whose kernels are shorter than their launch overhead, both returning ``(median, p20, p80)`` in ms; and the
eager wall time per call, host included, of a synchronised loop."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["QUANTILES", "bench_cudagraph", "bench_do_bench", "copy_bandwidth_gbps", "wall_ms_per_call"]

#: triton.testing order: median first, then the 20th and 80th percentiles.
QUANTILES = [0.5, 0.2, 0.8]


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def bench_do_bench(make_fn: Callable[[], Callable[[], object]], warmup: int, rep: int) -> tuple[float, float, float]:
    """``triton.testing.do_bench`` of ``make_fn()`` (warm-up and repetitions in ms; L2 flushed per run)."""
    import triton.testing

    fn = make_fn()
    fn()
    torch.cuda.synchronize()
    median, p20, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=QUANTILES)
    return float(median), float(p20), float(p80)


def bench_cudagraph(
    make_fn: Callable[[], Callable[[], object]], rep: int, retries: int = 20
) -> tuple[float, float, float]:
    """Time ``fn`` replayed from a CUDA graph of ``n`` back-to-back calls (launch overhead removed).

    Like ``triton.testing.do_bench_cudagraph``, but ``make_fn`` runs on the capture stream, so that a
    pre-built autograd graph (the ``bwd`` pass) replays its backward on that stream too. The L2 cache is
    not flushed between the calls inside a graph: these timings are for data that stays in L2 when it
    fits, which is the regime they are used in (the ``timer`` column says ``cudagraph``).
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn = make_fn()
        for _ in range(3):
            fn()
        stream.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(10):
            fn()
        end.record(stream)
        end.synchronize()
        estimate = max(start.elapsed_time(end) / 10, 1e-4)
        n = max(1, min(1000, int(rep / estimate)))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(n):
                fn()
        graph.replay()
        stream.synchronize()
        times = []
        for _ in range(retries):
            start.record(stream)
            graph.replay()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / n)
    torch.cuda.current_stream().wait_stream(stream)
    return _quantiles(times)


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30, rep: int = 200) -> float:
    """Device-to-device copy bandwidth (GB/s, 1e9 bytes) of ``dst.copy_(src)`` on ``nbytes`` buffers: each
    byte is read once and written once, so GB/s = 2·nbytes / median time. The ``peak_gbps`` of a run."""
    import triton.testing

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    median, _, _ = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=rep, quantiles=QUANTILES)
    return 2 * nbytes / (median * 1e-3) / 1e9


def wall_ms_per_call(
    make_fn: Callable[[], Callable[[], object]],
    target_ms: float = 20.0,
    loops: int = 3,
    max_calls: int = 2000,
    synchronize: Callable[[], None] | None = None,
) -> float:
    """Eager wall time of one call of ``make_fn()``, host included, in ms.

    ``loops`` times: synchronise, call ``fn`` ``n`` times back to back, synchronise, divide the host clock
    (``time.perf_counter``) by ``n``; the median over the loops is returned. ``n`` makes a loop last about
    ``target_ms / loops`` (at least 3 calls, at most ``max_calls``). This is what a training step pays per
    layer when the GPU is not the bottleneck: Python, autograd and launch overheads, which CUDA events
    around a single call (``do_bench``) and CUDA-graph replays leave out. ``synchronize`` defaults to
    ``torch.cuda.synchronize``.
    """
    sync = synchronize or torch.cuda.synchronize
    fn = make_fn()
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    estimate = max(time.perf_counter() - start, 1e-6)
    n = max(3, min(max_calls, int(target_ms / loops / 1e3 / estimate)))
    per_call = []
    for _ in range(loops):
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        per_call.append((time.perf_counter() - start) * 1e3 / n)
    return sorted(per_call)[len(per_call) // 2]
