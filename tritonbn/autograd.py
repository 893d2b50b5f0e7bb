"""Autograd for batch normalization, right at every order.

The first backward runs fused Triton kernels: one pass reduces Σdy and Σdy·(x - mean) per channel, one
elementwise pass writes dx. When the caller asks for a differentiable backward (``create_graph=True``, as
physics-informed nets and gradient penalties do), the backward is instead composed of two differentiable
Triton primitives whose own backwards are made of the same two primitives, so every order works:

* :func:`channel_sum` -- per-channel ``Σ (t1 - mu1)·(t2 - mu2)`` over N and the spatial dims;
* :func:`channel_affine` -- elementwise ``a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c]``.

In that mode the backward recomputes the forward from these primitives (the batch statistics re-derived
from ``x`` around the saved mean, so that they carry their dependence on ``x``) and lets autograd
differentiate it. All per-channel (C,) arithmetic in between is ordinary torch.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from tritonbn import launch

__all__ = ["BatchNormFunction", "backward_kernels", "channel_affine", "channel_sum"]

_custom_fwd = torch.amp.custom_fwd(device_type="cuda")
_custom_bwd = torch.amp.custom_bwd(device_type="cuda")


def _count(t: torch.Tensor) -> int:
    """Number of elements per channel (N * spatial)."""
    return t.numel() // t.shape[1]


class _ChannelSum(Function):
    """Σ (t1 - mu1)·(t2 - mu2) per channel (``t2`` optional: then Σ (t1 - mu1))."""

    @staticmethod
    def forward(ctx, t1, mu1, t2, mu2):
        ctx.save_for_backward(t1, mu1, t2, mu2)
        if t2 is None:
            out, _ = launch.channel_sums(t1, mu1, want_sum_u=True)
        else:
            _, out = launch.channel_sums(t1, mu1, t2, mu2)
        return out

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
    """a1·(t1 - mu1) + a2·(t2 - mu2) + g, per channel, shaped and laid out like ``like``."""

    @staticmethod
    def forward(ctx, like, t1, mu1, a1, t2, mu2, a2, g):
        ctx.save_for_backward(t1, mu1, a1, t2, mu2, a2)
        ctx.has_g = g is not None
        return launch.channel_affine(like, t1, mu1, a1, t2, mu2, a2, g)

    @staticmethod
    def backward(ctx, go):
        t1, mu1, a1, t2, mu2, a2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [None] * 8
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
) -> torch.Tensor:
    """Differentiable ``a1·(t1 - mu1) + a2·(t2 - mu2) + g`` with (C,) coefficients, like ``like``."""
    return _ChannelAffine.apply(like, t1, mu1, a1, t2, mu2, a2, g)


def backward_kernels(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    *,
    stats_grad: bool,
    need_input: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Fused first-order backward: ``(dx, dweight, dbias)``; not differentiable.

    ``stats_grad`` says whether the forward's statistics depend on ``x`` (train mode, statistics not
    detached)::

        dbias   = Σ dy
        dweight = Σ dy·x̂ = invstd · Σ dy·(x - mean)
        dx      = w·invstd·dy - w·invstd³·(x - mean)·Σ dy·(x - mean) / M - w·invstd·Σ dy / M   (stats_grad)
        dx      = w·invstd·dy                                                                 (otherwise)

    One kernel pass computes both sums (skipped when nothing needs them), one pass writes dx.
    """
    acc = launch.acc_dtype(x.dtype)
    has_weight = weight is not None
    need_weight = need_weight and has_weight
    need_bias = need_bias and has_weight
    sum_dy = sum_dy_xmu = None
    if (need_input and stats_grad) or need_weight or need_bias:
        want_xmu = need_weight or (need_input and stats_grad)
        sum_dy, sum_dy_xmu = launch.channel_sums(
            grad_output, None, x if want_xmu else None, mean, want_sum_u=need_bias or (need_input and stats_grad)
        )
    dx = dweight = dbias = None
    if need_input:
        scale = invstd * weight.to(acc) if has_weight else invstd
        if stats_grad:
            count = _count(x)
            beta = -scale * invstd * invstd * sum_dy_xmu / count
            gamma = -scale * sum_dy / count
            dx = launch.channel_affine(x, grad_output, None, scale, x, mean, beta, gamma)
        else:
            dx = launch.channel_affine(x, grad_output, None, scale)
    if need_weight:
        dweight = (sum_dy_xmu * invstd).to(weight.dtype)
    if need_bias:
        dbias = sum_dy.to(weight.dtype)
    return dx, dweight, dbias


class BatchNormFunction(Function):
    """y = (x - mean)·weight·invstd + bias, with mean/invstd from the batch or from running statistics."""

    @staticmethod
    @_custom_fwd
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, detach_stats):
        acc = launch.acc_dtype(x.dtype)
        if use_batch_stats:
            mean, var, invstd = launch.batch_stats(x, eps)
            _update_running_stats(running_mean, running_var, mean, var, _count(x), momentum)
        else:
            mean = running_mean.detach().to(acc, copy=True)
            invstd = torch.rsqrt(running_var.detach().to(acc) + eps)
        scale = invstd * weight.detach().to(acc) if weight is not None else invstd
        y = launch.channel_affine(x, x, mean, scale, g=bias)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.stats_grad = use_batch_stats and not detach_stats
        ctx.eps = eps
        return y

    @staticmethod
    @_custom_bwd
    def backward(ctx, grad_output):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            grads = _differentiable_backward(ctx, grad_output, x, weight, bias, mean, invstd, (need_x, need_w, need_b))
        else:
            grads = backward_kernels(
                grad_output,
                x,
                weight,
                mean,
                invstd,
                stats_grad=ctx.stats_grad,
                need_input=need_x,
                need_weight=need_w,
                need_bias=need_b,
            )
        return (*grads, None, None, None, None, None, None)


def _differentiable_backward(ctx, grad_output, x, weight, bias, mean, invstd, needs):
    """Backward as a differentiable graph of the two primitives (for ``create_graph=True``)."""
    acc = launch.acc_dtype(x.dtype)
    inputs = [t for t, need in zip((x, weight, bias), needs, strict=True) if need]
    if not inputs:
        return None, None, None
    with torch.enable_grad():
        if ctx.stats_grad:
            # Batch statistics re-derived from x around the saved mean c0: the mean is c0 + Σ(x - c0)/M and
            # the variance Σ(x - c0)²/M - (Σ(x - c0)/M)², both accurate since x - c0 is centred.
            count = _count(x)
            delta = channel_sum(x, mean) / count
            var = channel_sum(x, mean, x, mean) / count - delta * delta
            mu = mean + delta
            r = torch.rsqrt(var + ctx.eps)
        else:
            mu, r = mean, invstd  # constants: running statistics, or detached batch statistics
        scale = r * weight.to(acc) if weight is not None else r
        y = channel_affine(x, x, mu, scale, g=bias.to(acc) if bias is not None else None)
        grads = iter(torch.autograd.grad(y, inputs, grad_output, create_graph=True, allow_unused=True))
    out = []
    for t, need in zip((x, weight, bias), needs, strict=True):
        g = next(grads) if need else None
        if need and g is None:
            g = torch.zeros_like(t)
        out.append(g)
    return tuple(out)


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
