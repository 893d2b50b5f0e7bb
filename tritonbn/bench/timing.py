"""GPU timers: ``triton.testing.do_bench`` (L2 flushed before every run) and a CUDA-graph timer for shapes
whose kernels are shorter than their launch overhead. Both return ``(median, p20, p80)`` in ms."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["QUANTILES", "bench_cudagraph", "bench_do_bench", "copy_bandwidth_gbps"]

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
