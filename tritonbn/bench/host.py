"""``tritonbn-bench --host``: launches and host time per call, tritonbn against torch, on any machine.

tritonbn's GPU path is run on CPU tensors with every Triton launch replaced by a stub that only counts
it, so what is measured is exactly the host side of a call: validation, the launch plan, allocations,
autograd and the launches themselves. ATen operators that would launch a CUDA kernel (anything but
allocation and view/metadata operators) are counted with a ``TorchDispatchMode``. Torch's own batch norm
runs on the same CPU, computing for real: the reference the host overhead is held to (at most 1.5x its
train forward + backward, in one run on one machine).

Per pass the CSV has one row per implementation: ``triton_launches``, ``aten_launches``, ``launches``
(their sum) and ``host_us`` (median per call over alternating rounds of :class:`torch.utils.benchmark.Timer`,
one thread). Columns: :data:`tritonbn.schema.HOST_COLUMNS`.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tritonbn.schema import HOST_BUDGET, HOST_PASSES

__all__ = ["PASSES", "HOST_BUDGET", "LaunchCount", "count_launches", "measure", "stubbed_kernels"]

#: ATen operators that allocate or reinterpret memory without launching a kernel on a GPU.
NO_KERNEL_OPS = frozenset(
    {
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "as_strided",
        "expand",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "permute",
        "t",
        "transpose",
        "detach",
        "alias",
        "split",
        "unbind",
        "lift_fresh",
        "is_same_size",
        "_local_scalar_dense",
    }
)

PASSES = HOST_PASSES


@dataclass
class LaunchCount:
    """Kernels one call launches: Triton kernels by name, ATen operators by name."""

    triton: Counter
    aten: Counter

    @property
    def total(self) -> int:
        return sum(self.triton.values()) + sum(self.aten.values())


class _AtenCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL_OPS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def stubbed_kernels(counter: Counter | None = None) -> Iterator[Counter]:
    """tritonbn's GPU path on CPU tensors with every Triton launch replaced by a counting no-op."""
    from tritonbn import launch

    counter = Counter() if counter is None else counter
    real_launch, real_uses = launch._launch, launch.uses_triton

    def stub(kernel, grid, args, meta):
        counter[kernel.fn.__name__] += 1

    launch._launch = stub
    launch.uses_triton = lambda t: True
    try:
        yield counter
    finally:
        launch._launch, launch.uses_triton = real_launch, real_uses


def count_launches(fn: Callable[[], object], *, stub: bool = True) -> LaunchCount:
    """Launches made by ``fn()`` (tritonbn's kernels stubbed when ``stub``)."""
    triton: Counter = Counter()
    mode = _AtenCounter()
    with stubbed_kernels(triton) if stub else contextlib.nullcontext(), mode:
        fn()
    return LaunchCount(triton, mode.ops)


@dataclass
class _Inputs:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor
    residual: torch.Tensor
    dy: torch.Tensor


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool) -> _Inputs:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return _Inputs(
        x.requires_grad_(),
        torch.rand(C, generator=g, dtype=pdtype).requires_grad_(),
        torch.randn(C, generator=g, dtype=pdtype).requires_grad_(),
        torch.zeros(C, dtype=pdtype),
        torch.ones(C, dtype=pdtype),
        torch.randn(shape, generator=g, dtype=dtype).requires_grad_(),
        torch.randn(shape, generator=g, dtype=dtype),
    )


def _calls(impl: str, t: _Inputs) -> dict[str, tuple[Callable[[], object], Callable[[], object] | None]]:
    """Per pass: (setup, call). ``setup`` (untimed) prepares what ``call`` needs (a graph to backward)."""
    import tritonbn

    if impl == "tritonbn":

        def bn(training, relu=False):
            if relu:
                return tritonbn.batch_norm_relu(
                    t.x, t.running_mean, t.running_var, t.weight, t.bias, training, residual=t.residual
                )
            return tritonbn.batch_norm(t.x, t.running_mean, t.running_var, t.weight, t.bias, training)

    else:

        def bn(training, relu=False):
            y = F.batch_norm(t.x, t.running_mean, t.running_var, t.weight, t.bias, training)
            return torch.relu(y + t.residual) if relu else y

    state: dict = {}

    def forward(relu=False):
        state["y"] = bn(True, relu)

    def backward(relu=False):
        inputs = (t.x, t.weight, t.bias, t.residual) if relu else (t.x, t.weight, t.bias)
        torch.autograd.grad(state["y"], inputs, t.dy, retain_graph=True)

    def eval_forward():
        with torch.no_grad():
            bn(False)

    def forward_backward():
        y = bn(True)
        torch.autograd.grad(y, (t.x, t.weight, t.bias), t.dy)

    return {
        "train_forward": (None, forward),
        "train_backward": (forward, backward),
        "train_forward_backward": (None, forward_backward),
        "eval_forward": (None, eval_forward),
        "relu_add_forward": (None, lambda: forward(True)),
        "relu_add_backward": (lambda: forward(True), lambda: backward(True)),
    }


def _timer(call: Callable[[], object]):
    from torch.utils.benchmark import Timer

    return Timer(stmt="call()", globals={"call": call}, num_threads=1)


def measure(
    shape: tuple[int, ...] = (4, 16, 4, 4),
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    *,
    rounds: int = 15,
    min_run_time: float = 0.05,
    passes: tuple[str, ...] = PASSES,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (implementation, pass): launches per call and host µs per call.

    Both implementations are timed in alternation, ``rounds`` times each (one thread, a
    :class:`torch.utils.benchmark.Timer` of at least ``min_run_time`` s per round), and each keeps the
    median of its rounds, so a slow phase of the machine weighs on both alike.
    """
    impls = ("tritonbn", "torch")
    rows = []
    for pass_ in passes:
        if progress is not None:
            progress(pass_)
        counts, samples, timers = {}, {impl: [] for impl in impls}, {}
        for impl in impls:
            t = _inputs(shape, dtype, channels_last)
            setup, call = _calls(impl, t)[pass_]
            with stubbed_kernels() if impl == "tritonbn" else contextlib.nullcontext():
                if setup is not None:
                    setup()
                call()  # warm: launch plans, autograd, and one-time buffers (the merge tickets) are not per call
                counts[impl] = count_launches(call, stub=impl == "tritonbn")
            timers[impl] = _timer(call)
        for _ in range(rounds):
            for impl in impls:
                with stubbed_kernels() if impl == "tritonbn" else contextlib.nullcontext():
                    samples[impl].append(timers[impl].blocked_autorange(min_run_time=min_run_time).median * 1e6)
        for impl in impls:
            count = counts[impl]
            rows.append(
                {
                    "impl": impl,
                    "pass": pass_,
                    "shape": "x".join(map(str, shape)),
                    "dtype": str(dtype).replace("torch.", ""),
                    "layout": "channels_last" if channels_last else "contiguous",
                    "triton_launches": sum(count.triton.values()),
                    "aten_launches": sum(count.aten.values()),
                    "launches": count.total,
                    "kernels": " ".join(f"{k}x{v}" for k, v in sorted((count.triton + count.aten).items())),
                    "host_us": round(statistics.median(samples[impl]), 2),
                    "cpu": platform.processor() or platform.machine(),
                }
            )
    torch_us = {r["pass"]: r["host_us"] for r in rows if r["impl"] == "torch"}
    for r in rows:
        r["host_ratio"] = round(r["host_us"] / torch_us[r["pass"]], 3) if torch_us.get(r["pass"]) else ""
    return rows
