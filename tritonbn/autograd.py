"""Autograd for batch normalization, right at every order.

The first backward runs fused Triton kernels (:func:`tritonbn.launch.bn_backward`): one pass reduces Σdy
and Σdy·(x - mean) per channel and computes dweight, dbias and the dx coefficients inside the kernel, one
elementwise pass writes dx (a single pass when the statistics are constants or a channel block fits one
tile). When the caller asks for a differentiable backward (``create_graph=True``, as
physics-informed nets and gradient penalties do), the backward is instead composed of two differentiable
Triton primitives whose own backwards are made of the same two primitives, so every order works:

* :func:`channel_sum` -- per-channel ``Σ (t1 - mu1)·(t2 - mu2)`` over N and the spatial dims;
* :func:`channel_affine` -- elementwise ``a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c]``.

In that mode the backward evaluates its closed form with these primitives, the batch statistics re-derived
from ``x`` around the saved mean so that they carry their dependence on ``x``; autograd differentiates that
graph to any order. All per-channel (C,) arithmetic in between is ordinary torch. The Functions use the
``setup_context`` form, so ``torch.func.grad`` works as well.

Each Function computes with the Triton kernels (:mod:`tritonbn.launch`) where they run and with torch ops
(:mod:`tritonbn.native`) elsewhere: the derivatives are the same on every path.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from tritonbn import launch, native

try:  # tensors left wrapped by a finished torch.func transform (what Function.apply unwraps)
    from torch._C._functorch import is_functorch_wrapped_tensor as _is_functorch_wrapped
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
except ImportError:  # pragma: no cover

    def _is_functorch_wrapped(t):
        return False

    def _unwrap_dead_wrappers(args):
        return args


__all__ = ["BatchNormFunction", "backward_kernels", "batch_norm_function", "channel_affine", "channel_sum"]

# Autocast: batch norm runs in its input's dtype under torch.autocast, as torch's does, and nothing here is
# autocast-sensitive (Triton kernels and per-channel elementwise ops), so the Functions need neither
# torch.amp.custom_fwd nor custom_bwd (which would also rule out the setup_context form torch.func needs).


def _count(t: torch.Tensor) -> int:
    """Number of elements per channel (N * spatial)."""
    return t.numel() // t.shape[1]


def _impl(t: torch.Tensor):
    """What computes for tensors like ``t``: the Triton launcher, or its torch-op twin where the kernels do
    not run (:mod:`tritonbn.native`)."""
    return launch if launch.uses_triton(t) else native


class _ChannelSum(Function):
    """Σ (t1 - mu1)·(t2 - mu2) per channel (``t2`` optional: then Σ (t1 - mu1))."""

    @staticmethod
    def forward(t1, mu1, t2, mu2):
        if t2 is None:
            out, _ = _impl(t1).channel_sums(t1, mu1, want_sum_u=True)
        else:
            _, out = _impl(t1).channel_sums(t1, mu1, t2, mu2)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        t1, mu1, t2, mu2 = ctx.saved_tensors
        need_t1, need_mu1, need_t2, need_mu2 = ctx.needs_input_grad
        d_t1 = d_mu1 = d_t2 = d_mu2 = None
        if t2 is None:
            if need_t1:
                d_t1 = channel_affine(t1, g=g)
            if need_mu1:
                d_mu1 = (-g * _count(t1)).to(mu1.dtype)
            return d_t1, d_mu1, None, None
        if need_t1:
            d_t1 = channel_affine(t1, t2, mu2, g)
        if need_mu1:
            d_mu1 = (-g * channel_sum(t2, mu2)).to(mu1.dtype)
        if need_t2:
            d_t2 = channel_affine(t2, t1, mu1, g)
        if need_mu2:
            d_mu2 = (-g * channel_sum(t1, mu1)).to(mu2.dtype)
        return d_t1, d_mu1, d_t2, d_mu2


class _ChannelAffine(Function):
    """[gate > 0]·(a1·(t1 - mu1) + a2·(t2 - mu2) + g), per channel, shaped and laid out like ``like``.

    ``gate`` (optional, not differentiated: it is piecewise constant) is how ReLU enters the graph:
    relu(z) = [z > 0]·z.
    """

    @staticmethod
    def forward(like, t1, mu1, a1, t2, mu2, a2, g, gate):
        return _impl(like).channel_affine(like, t1, mu1, a1, t2, mu2, a2, g, gate=gate, gate_output=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        like, t1, mu1, a1, t2, mu2, a2, g, gate = inputs
        ctx.save_for_backward(t1, mu1, a1, t2, mu2, a2, gate)

    @staticmethod
    def backward(ctx, go):
        t1, mu1, a1, t2, mu2, a2, gate = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [None] * 9
        if gate is not None:
            go = channel_affine(go, go, None, torch.ones_like(a1 if a1 is not None else a2), gate=gate)
        sum_go = None
        if need[2] or need[5] or need[7]:
            sum_go = channel_sum(go)
        for i, (t, mu, a) in ((1, (t1, mu1, a1)), (4, (t2, mu2, a2))):
            if t is None:
                continue
            if need[i]:
                grads[i] = channel_affine(t, go, None, a)
            if need[i + 1] and mu is not None:
                grads[i + 1] = (-a * sum_go).to(mu.dtype)
            if need[i + 2]:
                grads[i + 2] = channel_sum(go, None, t, mu).to(a.dtype)
        if need[7]:
            grads[7] = sum_go
        return tuple(grads)


def channel_sum(
    t1: torch.Tensor,
    mu1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    mu2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable per-channel ``Σ (t1 - mu1)·(t2 - mu2)`` (or ``Σ (t1 - mu1)``) in the accumulation dtype."""
    return _ChannelSum.apply(t1, mu1, t2, mu2)


def channel_affine(
    like: torch.Tensor,
    t1: torch.Tensor | None = None,
    mu1: torch.Tensor | None = None,
    a1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    mu2: torch.Tensor | None = None,
    a2: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable ``[gate > 0]·(a1·(t1 - mu1) + a2·(t2 - mu2) + g)`` with (C,) coefficients, like ``like``."""
    return _ChannelAffine.apply(like, t1, mu1, a1, t2, mu2, a2, g, gate)


def backward_kernels(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    *,
    stats_grad: bool,
    need_input: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
    relu_output: torch.Tensor | None = None,
    need_residual: bool = False,
    bias_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Fused first-order backward: ``(dx, dweight, dbias, dresidual)``; not differentiable.

    ``stats`` (≥ 2, C) holds the forward's mean and invstd in its first two rows. ``stats_grad`` says
    whether the forward's statistics depend on ``x`` (train mode, statistics not detached)::

        dbias   = Σ dy
        dweight = Σ dy·x̂ = invstd · Σ dy·(x - mean)
        dx      = w·invstd·dy - w·invstd³·(x - mean)·Σ dy·(x - mean) / M - w·invstd·Σ dy / M   (stats_grad)
        dx      = w·invstd·dy                                                                 (otherwise)

    (the batch-norm backward of Ioffe & Szegedy 2015, as torch's ``native_batch_norm_backward``).
    ``dweight`` is computed only with a ``weight`` (in its dtype); ``dbias`` when ``need_bias``, in
    ``bias_dtype`` (default: the weight's dtype, else the accumulation dtype). With ``relu_output`` (the
    output y of a fused batch norm + ReLU) every dy above is dy·[y > 0], applied inside the kernels, and
    ``need_residual`` returns that gated dy as the residual's gradient. One launch (one reduction pass that
    also writes dx) when the statistics are constants or a channel block fits one tile; else two.
    """
    dx, dw, db, dres, _ = _impl(x).backward_passes(
        grad_output,
        x,
        weight,
        stats,
        stats_grad,
        need_input,
        need_weight,
        need_bias,
        relu_output,
        need_residual,
        bias_dtype,
        False,
    )
    return dx, dw, db, dres


class BatchNormFunction(Function):
    """(y, stats) with y = act((x - mean)·weight·invstd + bias [+ residual]), batch or running statistics.

    ``act`` is the identity or, with ``relu``, a fused ReLU (the ResNet block's bn -> add -> relu).
    ``stats`` (≥ 2, C; rows mean and invstd, then on the kernels weight·invstd and the variance) are the
    statistics used (not differentiable). Written with ``setup_context`` so that ``torch.func`` transforms
    work too; gradients of the non-differentiable output are not materialised.
    """

    @staticmethod
    def forward(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        use_batch_stats,
        momentum,
        eps,
        detach_stats,
        residual=None,
        relu=False,
    ):
        return _impl(x).bn_forward(
            x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, residual, relu
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, _, _, use_batch_stats, _, eps, detach_stats, *rest = inputs
        relu = rest[1] if len(rest) > 1 else False
        y, stats = output
        ctx.save_for_backward(x, weight, stats, y if relu else None)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)
        ctx.stats_grad = use_batch_stats and not detach_stats
        ctx.eps = eps
        ctx.relu = relu
        ctx.bias_dtype = bias.dtype if bias is not None else None

    @staticmethod
    def backward(ctx, grad_output, _grad_stats=None):
        return _backward(ctx, grad_output)


def _backward(ctx, grad_output):
    """The backward of :class:`BatchNormFunction` and of its eager twin (kernels, or the differentiable
    composition when a graph of the backward is being recorded)."""
    needs = ctx.needs_input_grad
    if grad_output is None:
        return (None,) * len(needs)
    x, weight, stats, y = ctx.saved_tensors
    need_x, need_w, need_b = needs[:3]
    need_b = need_b and ctx.bias_dtype is not None
    need_res = len(needs) > 9 and needs[9]
    if torch.is_grad_enabled():
        dx, dw, db, dres = _differentiable_backward(
            ctx, grad_output, x, weight, stats[0], stats[1], y, (need_x, need_w, need_b), need_res
        )
    else:
        dx, dw, db, dres, _ = _impl(x).backward_passes(
            grad_output, x, weight, stats, ctx.stats_grad, need_x, need_w, need_b, y, need_res, ctx.bias_dtype, False
        )
    return (dx, dw, db, None, None, None, None, None, None, dres, None)[: len(needs)]


class _EagerBatchNormFunction(Function):
    """:class:`BatchNormFunction` in the classic ``forward(ctx, ...)`` form, for calls outside torch.func
    transforms: the C++ apply runs it without binding arguments or a separate ``setup_context`` call, and
    its one output is ``y`` (the statistics are saved, not returned)."""

    @staticmethod
    def forward(
        ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, detach_stats, residual, relu
    ):
        y, stats = _impl(x).bn_forward(
            x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, residual, relu
        )
        ctx.save_for_backward(x, weight, stats, y if relu else None)
        ctx.set_materialize_grads(False)
        ctx.stats_grad = use_batch_stats and not detach_stats
        ctx.eps = eps
        ctx.relu = relu
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    def backward(ctx, grad_output):
        return _backward(ctx, grad_output)


_EAGER_APPLY = super(Function, _EagerBatchNormFunction).apply


def batch_norm_function(*args) -> torch.Tensor:
    """``BatchNormFunction.apply(*args)[0]`` (all 11 arguments, positional) without its per-call cost.

    ``Function.apply`` binds the arguments with ``inspect.signature`` on every call of a Function with
    ``setup_context`` (~80 µs of host time per layer). Outside torch.func transforms this runs the same
    computation as a classic ``forward(ctx, ...)`` Function through the C++ apply directly; inside them it
    takes torch's path, which torch.func needs.
    """
    if torch._C._are_functorch_transforms_active():
        return BatchNormFunction.apply(*args)[0]
    if _is_functorch_wrapped(args[0]):  # a tensor left over from a finished transform (as Function.apply)
        args = _unwrap_dead_wrappers(args)
    return _EAGER_APPLY(*args)


def _differentiable_backward(ctx, grad_output, x, weight, mean, invstd, y, needs, need_res):
    """The backward's closed form written with the differentiable primitives (for ``create_graph=True``).

    In train mode the statistics are re-derived from ``x`` around the saved mean c0 (mean = c0 + Σ(x - c0)/M,
    var = Σ(x - c0)²/M - (Σ(x - c0)/M)², accurate since x - c0 is centred), so that the gradient carries
    their dependence on ``x`` into every higher order. The ReLU mask [y > 0] is piecewise constant.
    """
    need_x, need_w, need_b = needs
    acc = launch.acc_dtype(x.dtype)
    g = grad_output
    if ctx.relu:
        g = channel_affine(g, g, None, torch.ones_like(invstd), gate=y.detach())
    if ctx.stats_grad:
        count = _count(x)
        delta = channel_sum(x, mean) / count
        var = channel_sum(x, mean, x, mean) / count - delta * delta
        mu = mean + delta
        r = torch.rsqrt(var + ctx.eps)
    else:
        mu, r = mean, invstd  # constants: running statistics, or detached batch statistics
    scale = r * weight.to(acc) if weight is not None else r
    sum_g = channel_sum(g) if need_b or (need_x and ctx.stats_grad) else None
    sum_g_xmu = channel_sum(g, None, x, mu) if (need_w and weight is not None) or (need_x and ctx.stats_grad) else None
    dx = dw = db = None
    if need_x:
        if ctx.stats_grad:
            count = _count(x)
            dx = channel_affine(x, g, None, scale, x, mu, -scale * r * r * sum_g_xmu / count, -scale * sum_g / count)
        else:
            dx = channel_affine(x, g, None, scale)
    if need_w and weight is not None:
        dw = (r * sum_g_xmu).to(weight.dtype)
    if need_b:
        db = sum_g.to(ctx.bias_dtype)
    return dx, dw, db, (g if need_res else None)


def _update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """running = (1 - momentum)·running + momentum·batch, with the unbiased variance (O(C) torch ops)."""
    with torch.no_grad():
        if running_mean is not None:
            new = running_mean.to(mean.dtype) * (1 - momentum) + mean * momentum
            running_mean.copy_(new)
        if running_var is not None:
            unbiased = var * (count / (count - 1)) if count > 1 else var
            new = running_var.to(var.dtype) * (1 - momentum) + unbiased * momentum
            running_var.copy_(new)
