"""Fused batch norm + ReLU and batch norm + add + ReLU: parity, gradients at every order, conversion."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_input
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import tritonbn
from tritonbn import reference


def _ref(x, rm, rv, w, b, training, residual=None):
    z = reference.batch_norm(x, rm, rv, w, b, training=training)
    if residual is not None:
        z = z + residual.double()
    return torch.relu(z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["relu", "add-relu"])
def test_fused_matches_reference(path, dtype, layout, training, with_residual):
    shape = (3, 4, 3, 5)
    x = make_input(shape, dtype, path, layout).requires_grad_()
    pdtype = torch.float32 if dtype == torch.float16 else dtype
    w = (torch.rand(4, device=path, dtype=pdtype) + 0.5).requires_grad_()
    b = (torch.randn(4, device=path, dtype=pdtype) * 0.5).requires_grad_()
    rm, rv = torch.randn(4, device=path, dtype=pdtype), torch.rand(4, device=path, dtype=pdtype) + 0.5
    res = make_input(shape, dtype, path, "contiguous").requires_grad_() if with_residual else None
    rm0, rv0 = rm.clone(), rv.clone()
    y = tritonbn.batch_norm_relu(x, rm, rv, w, b, training=training, residual=res)
    y_ref = _ref(x.detach(), rm0, rv0, w, b, training, None if res is None else res.detach())
    assert_close(y, y_ref, dtype, "y")
    assert (y >= 0).all() and y.dtype == dtype
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)

    dy = torch.randn_like(y)
    inputs = [x, w, b] + ([res] if with_residual else [])
    got = torch.autograd.grad(y, inputs, dy)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    r64 = res.detach().double().requires_grad_() if with_residual else None
    y64 = _ref(x64, rm0, rv0, w64, b64, training, r64)
    want = torch.autograd.grad(y64, [x64, w64, b64] + ([r64] if with_residual else []), dy.double())
    for g, r, name in zip(got, want, ["dx", "dweight", "dbias", "dresidual"], strict=False):
        assert_close(g, r, dtype, "grad", name)


def test_fused_gradcheck_and_gradgradcheck(path):
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=path, requires_grad=True)
    res = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=path, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, device=path).add_(0.5).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, device=path, requires_grad=True)

    def fn(x, w, b, res):
        return tritonbn.batch_norm_relu(x, None, None, w, b, training=True, residual=res)

    assert gradcheck(fn, (x, w, b, res))
    # fast mode (random projections of the Jacobians): the full double-backward Jacobian is slow to
    # estimate in the interpreter; test_autograd runs the full gradgradcheck on the plain layer.
    assert gradgradcheck(fn, (x, w, b, res), fast_mode=True)


def test_fused_modules_and_errors(kernels):
    bn = nn.BatchNorm2d(3).to(kernels)
    fused = tritonbn.BatchNorm2dReLU(3).to(kernels)
    add = tritonbn.BatchNorm2dAddReLU(3).to(kernels)
    fused.load_state_dict(bn.state_dict())
    add.load_state_dict(bn.state_dict())
    assert list(fused.state_dict()) == list(bn.state_dict())
    x = torch.randn(2, 3, 4, 4, device=kernels)
    r = torch.randn(2, 3, 4, 4, device=kernels)
    bn_ref = nn.BatchNorm2d(3).to(kernels)
    y_ref = torch.relu(bn_ref(x))
    torch.testing.assert_close(fused(x), y_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(fused.running_var, bn_ref.running_var)
    torch.testing.assert_close(add(x, r), torch.relu(nn.BatchNorm2d(3).to(kernels)(x) + r), atol=2e-5, rtol=2e-5)
    # a residual the kernels do not take (broadcast over the batch) is torch's relu(bn(x) + r), unfused
    torch.testing.assert_close(
        add(x, r[:1]), torch.relu(nn.BatchNorm2d(3).to(kernels)(x) + r[:1]), atol=2e-5, rtol=2e-5
    )


def _resnet_like():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
    )


def test_convert_model_fuses_bn_relu_pairs(kernels):
    torch.manual_seed(3)
    net = _resnet_like().to(kernels)
    keys = list(net.state_dict())
    x = torch.randn(2, 2, 5, 5, device=kernels)
    expected = net(x)
    tritonbn.convert_model(net, fuse_relu=True)
    assert type(net[1]) is tritonbn.BatchNorm2dReLU and type(net[2]) is tritonbn.FusedReLU
    assert type(net[4]) is tritonbn.BatchNorm2d  # followed by a Sequential, not a ReLU
    assert type(net[5][0]) is tritonbn.BatchNorm2dReLU
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)
    tritonbn.revert_model(net)
    assert type(net[1]) is nn.BatchNorm2d and type(net[2]) is nn.ReLU and net[2].inplace
    assert type(net[5][1]) is nn.ReLU
