"""The batch-norm gradient questions people get wrong, answered as executable examples."""

from __future__ import annotations

import torch
from helpers import assert_close, make_input

import tritonbn


def _manual_batchnorm2d_backward(dy, x, gamma, eps, count):
    """The hand-written BatchNorm2d backward, with ``count`` elements per channel in the statistics."""
    dims = (0, 2, 3)
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    invstd = (var + eps).rsqrt()
    xhat = (x - mu) * invstd
    g = gamma.reshape(1, -1, 1, 1)
    dxhat = dy * g
    dvar = (dxhat * (x - mu) * -0.5 * invstd**3).sum(dims, keepdim=True)
    dmu = (-dxhat * invstd).sum(dims, keepdim=True) + dvar * (-2.0 * (x - mu)).sum(dims, keepdim=True) / count
    dx = dxhat * invstd + dvar * 2.0 * (x - mu) / count + dmu / count
    return dx, (dy * xhat).sum(dims), dy.sum(dims)


def test_manual_batchnorm2d_backward_uses_b_equal_n_h_w(kernels):
    """For BatchNorm2d the statistics reduce over B = N·H·W elements per channel, not N."""
    N, C, H, W = 3, 2, 4, 5
    x = make_input((N, C, H, W), torch.float64, kernels).requires_grad_()
    gamma = torch.rand(C, dtype=torch.float64, device=kernels, requires_grad=True)
    beta = torch.randn(C, dtype=torch.float64, device=kernels, requires_grad=True)
    y = tritonbn.batch_norm(x, None, None, gamma, beta, training=True)
    dy = torch.randn_like(y)
    dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), dy)

    right = _manual_batchnorm2d_backward(dy, x.detach(), gamma.detach(), 1e-5, count=N * H * W)
    for got, want in zip((dx, dgamma, dbeta), right, strict=True):
        assert_close(got, want, torch.float64, "grad")
    wrong_dx = _manual_batchnorm2d_backward(dy, x.detach(), gamma.detach(), 1e-5, count=N)[0]
    assert (wrong_dx - dx).abs().max() > 0.1, "B = N must give a visibly wrong input gradient"


def test_dgamma_is_sum_dy_times_xhat_not_dy_times_y(kernels):
    x = make_input((6, 3, 4), torch.float64, kernels)
    gamma = (torch.rand(3, dtype=torch.float64) + 1.5).to(kernels).requires_grad_()
    beta = torch.randn(3, dtype=torch.float64, device=kernels, requires_grad=True)
    y = tritonbn.batch_norm(x, None, None, gamma, beta, training=True)
    dy = torch.randn_like(y)
    (dgamma,) = torch.autograd.grad(y, gamma, dy)
    xhat = tritonbn.batch_norm(x, None, None, training=True)
    assert_close(dgamma, (dy * xhat).sum((0, 2)), torch.float64, "grad")
    wrong = (dy * y.detach()).sum((0, 2))  # Σ dy·y = γ·Σ dy·x̂ + β·Σ dy
    assert (wrong - dgamma).abs().max() > 0.1


def test_two_sample_one_channel_gamma_gradient_is_nonzero(kernels):
    """With N=2, C=1 the normalised values are ±1, so dγ = ±(dy₀ - dy₁) ≠ 0 -- a gamma whose gradient is
    silently 0 is a bug (or a frozen gamma: requires_grad=False), not batch norm."""
    x = torch.tensor([[0.3], [2.1]], dtype=torch.float64, device=kernels)
    gamma = torch.ones(1, dtype=torch.float64, device=kernels, requires_grad=True)
    beta = torch.zeros(1, dtype=torch.float64, device=kernels, requires_grad=True)
    y = tritonbn.batch_norm(x, None, None, gamma, beta, training=True)
    dy = torch.tensor([[0.7], [-0.4]], dtype=torch.float64, device=kernels)
    dgamma, dbeta = torch.autograd.grad(y, (gamma, beta), dy)
    xhat = torch.tensor([-1.0, 1.0], dtype=torch.float64) * (1.8 / (1.8**2 + 4e-5) ** 0.5)
    assert abs(dgamma.item() - (0.7 * xhat[0] - 0.4 * xhat[1]).item()) < 1e-9
    assert abs(dgamma.item()) > 1.0
    assert abs(dbeta.item() - 0.3) < 1e-12


def test_frozen_gamma_still_passes_input_gradient(kernels):
    bn = tritonbn.BatchNorm1d(3).double().to(kernels)
    bn.weight.requires_grad_(False)
    x = make_input((5, 3), torch.float64, kernels).requires_grad_()
    bn(x).backward(torch.randn(5, 3, dtype=torch.float64, device=kernels))
    assert bn.weight.grad is None and bn.bias.grad is not None
    assert x.grad.abs().max() > 0


def test_batch_statistics_are_not_detached(kernels):
    """In train mode the gradient flows through the batch mean and variance: it sums to zero over each
    channel (shifting every input of a channel changes nothing after normalisation)."""
    x = make_input((4, 3, 5), torch.float64, kernels).requires_grad_()
    y = tritonbn.batch_norm(x, None, None, training=True)
    y.backward(torch.randn_like(y))
    assert x.grad.sum((0, 2)).abs().max() < 1e-12
    x2 = x.detach().clone().requires_grad_()
    y2 = tritonbn.batch_norm(x2, None, None, training=True, detach_stats=True)
    y2.backward(torch.randn_like(y2))
    assert x2.grad.sum((0, 2)).abs().max() > 1e-3  # detached statistics: no such constraint
