"""torch.compile: tritonbn layers trace as custom ops with no graph break and match eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tritonbn
from tritonbn import ops


def _pair(fused=False):
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(27))
    ours = tritonbn.convert_model(
        nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(27)),
        fuse_relu=fused,
    )
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused-relu"])
def test_no_graph_break(path, fused):
    _, ours = _pair(fused)
    explanation = torch._dynamo.explain(ours.to(path))(torch.randn(4, 2, 3, 3, device=path))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused-relu"])
def test_compiled_training_matches_eager(path, fused):
    torch._dynamo.reset()
    theirs, ours = _pair(fused)
    theirs, ours = theirs.to(path), ours.to(path)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = torch.randn(4, 2, 3, 3, device=path) + step
        y, y_ref = compiled(x), theirs(x)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        dy = torch.randn_like(y)
        y.backward(dy)
        y_ref.backward(dy)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)  # running stats updated in place
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)
    compiled.eval()
    x = torch.randn(4, 2, 3, 3, device=path)
    torch.testing.assert_close(compiled(x), theirs.eval()(x), atol=1e-5, rtol=1e-5)


def test_custom_ops_pass_opcheck(path):
    x = torch.randn(4, 3, 5, device=path)
    w, b = torch.rand(3, device=path), torch.randn(3, device=path)
    rm, rv = torch.zeros(3, device=path), torch.ones(3, device=path)
    res = torch.randn_like(x)
    for args in (
        (x, w, b, rm, rv, None, True, 0.1, 1e-5, False, False),
        (x, None, None, rm, rv, None, False, 0.1, 1e-5, False, False),
        (x.requires_grad_(), w.requires_grad_(), b, None, None, res, True, 0.1, 1e-5, True, False),
    ):
        torch.library.opcheck(ops.batch_norm_forward, args)
    assert torch.equal(rm, torch.zeros(3, device=path))  # the op itself never mutates its inputs


def test_compiled_layer_with_weight_but_no_bias(path):
    torch._dynamo.reset()
    m, ref = tritonbn.BatchNorm2d(3).to(path), nn.BatchNorm2d(3).to(path)
    for layer in (m, ref):  # a weight but no bias (the `bias=False` constructor argument of newer torch)
        layer.register_parameter("bias", None)
    x = torch.randn(2, 3, 2, 2, device=path, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    torch.compile(m, backend="aot_eager", fullgraph=True)(x).pow(2).sum().backward()
    ref(x_ref).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
