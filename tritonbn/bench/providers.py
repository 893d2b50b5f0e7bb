"""The four benchmarked implementations, each as a forward ``f(x) -> y`` that autograd differentiates.

- ``tritonbn``: :func:`tritonbn.batch_norm` (Triton kernels);
- ``cudnn``: ``torch.cudnn_batch_norm`` called directly (its backward is ``cudnn_batch_norm_backward``),
  so cuDNN runs even where PyTorch's own heuristic would pick another kernel;
- ``native``: ``torch.native_batch_norm``, PyTorch's CUDA kernels without cuDNN;
- ``inductor``: ``torch.compile`` of the ``torch.nn.BatchNorm{1,2,3}d`` module (compiled once per
  configuration during the warm-up, outside the timings).

:func:`detect_backend` profiles one call to record what actually ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["PROVIDERS", "BenchTensors", "detect_backend", "make_forward", "make_tensors"]

PROVIDERS = ("tritonbn", "cudnn", "native", "inductor")
MOMENTUM = 0.1
EPS = 1e-5


@dataclass
class BenchTensors:
    x: torch.Tensor
    dy: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def fresh(self) -> BenchTensors:
        """Own copies for one provider (the input keeps its layout and gets ``requires_grad``)."""

        def leaf(t, grad):
            return None if t is None else t.detach().clone().requires_grad_(grad)

        return BenchTensors(
            x=leaf(self.x, True),
            dy=self.dy,
            weight=leaf(self.weight, True),
            bias=leaf(self.bias, True),
            running_mean=leaf(self.running_mean, False),
            running_var=leaf(self.running_var, False),
        )

    def grad_inputs(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.weight, self.bias) if t is not None]


def memory_format(layout: str, dim: int) -> torch.memory_format:
    if layout == "contiguous":
        return torch.contiguous_format
    if layout == "channels_last" and dim in (4, 5):
        return torch.channels_last if dim == 4 else torch.channels_last_3d
    raise ValueError(f"layout {layout!r} does not exist for {dim}d tensors")


def make_tensors(
    dims: tuple[int, ...], dtype: torch.dtype, layout: str, affine: bool, device: torch.device, seed: int = 0
) -> BenchTensors:
    """Inputs of one configuration: x and dy in ``dtype`` and ``layout``; parameters and running statistics
    in float32 for half inputs (as under AMP), else in ``dtype``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    fmt = memory_format(layout, len(dims))
    C = dims[1]
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dt)

    x = randn(*dims).contiguous(memory_format=fmt)
    dy = randn(*dims).contiguous(memory_format=fmt)
    weight = bias = None
    if affine:
        weight = (torch.rand(C, generator=gen, device=device) + 0.5).to(pdtype)
        bias = randn(C, dt=pdtype)
    running_mean = randn(C, dt=pdtype) * 0.1
    running_var = (torch.rand(C, generator=gen, device=device) + 0.5).to(pdtype)
    return BenchTensors(x, dy, weight, bias, running_mean, running_var)


def make_forward(provider: str, t: BenchTensors, training: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> y`` for a provider, closed over ``t``'s parameters and running statistics."""
    w, b, rm, rv = t.weight, t.bias, t.running_mean, t.running_var
    if provider == "tritonbn":
        import tritonbn

        return lambda x: tritonbn.batch_norm(x, rm, rv, w, b, training, MOMENTUM, EPS)
    if provider == "native":
        return lambda x: torch.native_batch_norm(x, w, b, rm, rv, training, MOMENTUM, EPS)[0]
    if provider == "cudnn":
        # cuDNN needs a weight and a bias: a layer without them is run with ones and zeros.
        C = t.x.shape[1]
        cw = w if w is not None else torch.ones(C, device=t.x.device, dtype=rm.dtype)
        cb = b if b is not None else torch.zeros(C, device=t.x.device, dtype=rm.dtype)
        return lambda x: torch.cudnn_batch_norm(x, cw, cb, rm, rv, training, MOMENTUM, EPS)[0]
    if provider == "inductor":
        cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
        module = cls[t.x.dim()](t.x.shape[1], eps=EPS, momentum=MOMENTUM, affine=w is not None)
        module = module.to(device=t.x.device, dtype=rm.dtype)
        with torch.no_grad():
            if w is not None:
                module.weight = torch.nn.Parameter(w)
                module.bias = torch.nn.Parameter(b)
            module.running_mean.copy_(rm)
            module.running_var.copy_(rv)
        module.train(training)
        t.weight, t.bias = (module.weight, module.bias) if w is not None else (None, None)
        torch._dynamo.reset()  # one compilation per configuration: no recompilation limit, no stale guards
        return torch.compile(module, dynamic=False)
    raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")


_BN_OPS = {
    "cudnn": ("cudnn_batch_norm",),
    "native": ("native_batch_norm", "_native_batch_norm_legit", "batch_norm_collect_statistics", "batch_norm_elemt"),
    "miopen": ("miopen_batch_norm",),
}


def classify_backend(provider: str, event_names: list[str]) -> str:
    """What ran, from the names of the profiled operators and kernels of one forward+backward.

    ``cudnn``/``native``/``miopen`` when torch's batch-norm operators of that kind ran (several joined
    with ``+``); ``triton`` for tritonbn without any of them; ``inductor-triton`` for a compiled module
    that generated its own kernels, ``inductor+<kind>`` if it called torch's batch norm instead.
    """
    # Inductor names its kernels after the ops it fused (triton_red_fused__native_batch_norm_legit_...).
    names = [n.lower() for n in event_names if not n.lower().startswith("triton_")]
    kinds = [k for k, needles in _BN_OPS.items() if any(s in n for n in names for s in needles)]
    torch_kind = "+".join(kinds)
    if provider == "tritonbn":
        return "triton" if not kinds else f"torch-{torch_kind}"
    if provider == "inductor":
        return "inductor-triton" if not kinds else f"inductor+{torch_kind}"
    return torch_kind or "unknown"


def detect_backend(provider: str, fn: Callable[[], object], device: torch.device) -> str:
    """Profile one call of ``fn`` and classify it (the expected name with ``?`` if profiling fails)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    expected = {"tritonbn": "triton", "inductor": "inductor-triton"}.get(provider, provider)
    try:
        with profile(activities=activities) as prof:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        names = [e.key for e in prof.key_averages()]
    except Exception:  # noqa: BLE001 - profiling is best effort (e.g. no CUPTI)
        return f"{expected}?"
    return classify_backend(provider, names)
