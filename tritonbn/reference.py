"""Float64 batch-norm reference written from the formulas, independent of the Triton kernels.

Used by the tests and by ``tritonbn-check``. Everything is computed in float64 from elementary torch ops
(sums, products, ``rsqrt``), never with ``torch.nn.functional.batch_norm``, so it is an independent
reference even where torch's own kernels lose precision (channels with a large mean). Because it is built
from differentiable elementary ops, autograd through :func:`batch_norm` gives a reference for gradients of
any order.

Notation (Ioffe & Szegedy, 2015), per channel ``c`` over the ``M = N * spatial`` elements of that channel::

    mean   = Σ x / M
    var    = Σ (x - mean)² / M                   (biased: used to normalise)
    x̂      = (x - mean) / sqrt(var + eps)
    y      = weight * x̂ + bias

    dbias   = Σ dy
    dweight = Σ dy * x̂
    dx      = weight * invstd * (dy - Σdy / M - x̂ * Σ(dy * x̂) / M)      (statistics not detached)
    dx      = weight * invstd * dy                                       (eval, or detached statistics)
"""

from __future__ import annotations

import torch

__all__ = ["batch_norm", "batch_norm_backward", "batch_norm_stats", "running_stats_update"]


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (C,) tensor to broadcast against x of shape (N, C, *spatial)."""
    return t.reshape([1, -1] + [1] * (x.dim() - 2))


def batch_norm_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean, biased variance and element count, in float64 (two-pass)."""
    x = x.double()
    dims = _reduce_dims(x)
    count = x.numel() // x.shape[1] if x.shape[1] else 0
    mean = x.sum(dim=dims) / count
    centered = x - _per_channel(mean, x)
    var = (centered * centered).sum(dim=dims) / count
    return mean, var, count


def running_stats_update(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    count: int,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New running statistics in float64: exponential average with the *unbiased* batch variance."""
    unbiased = var * count / (count - 1)
    new_mean = (1 - momentum) * running_mean.double() + momentum * mean.double()
    new_var = (1 - momentum) * running_var.double() + momentum * unbiased.double()
    return new_mean, new_var


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    eps: float = 1e-5,
    *,
    detach_stats: bool = False,
) -> torch.Tensor:
    """Float64 batch-norm forward from elementary ops; differentiable to any order.

    ``training`` selects batch statistics (as ``torch.nn.functional.batch_norm`` does); with
    ``detach_stats`` the batch mean and variance are treated as constants by autograd. The inputs are
    converted to float64 (keeping their autograd history) and the result is float64. Running statistics
    are not updated: see :func:`running_stats_update`.
    """
    x = x.double()
    if training:
        dims = _reduce_dims(x)
        count = x.numel() // x.shape[1]
        mean = x.sum(dim=dims) / count
        centered = x - _per_channel(mean, x)
        var = (centered * centered).sum(dim=dims) / count
        if detach_stats:
            mean, var = mean.detach(), var.detach()
    else:
        mean, var = running_mean.double(), running_var.double()
    invstd = torch.rsqrt(var + eps)
    y = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    if weight is not None:
        y = y * _per_channel(weight.double(), x)
    if bias is not None:
        y = y + _per_channel(bias.double(), x)
    return y


def batch_norm_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    *,
    training: bool = True,
    detach_stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form first-order gradients ``(dx, dweight, dbias)`` in float64.

    ``mean``/``invstd`` are the statistics the forward normalised with (batch statistics in training,
    running statistics in eval). ``dweight`` is ``Σ dy·x̂`` and ``dbias`` is ``Σ dy`` whether or not the
    layer has a weight (callers drop them when it has none).
    """
    dy, x = grad_output.double(), x.double()
    dims = _reduce_dims(x)
    count = x.numel() // x.shape[1]
    mean, invstd = mean.double(), invstd.double()
    w = weight.double() if weight is not None else torch.ones_like(mean)
    xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    dbias = dy.sum(dim=dims)
    dweight = (dy * xhat).sum(dim=dims)
    scale = _per_channel(w * invstd, x)
    if training and not detach_stats:
        dx = scale * (dy - _per_channel(dbias / count, x) - xhat * _per_channel(dweight / count, x))
    else:
        dx = scale * dy
    return dx, dweight, dbias
