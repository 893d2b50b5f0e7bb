"""torch.compile: tritonbn layers trace as custom ops with no graph break and match eager."""

from __future__ import annotations

import contextlib
import copy

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
        (x, w, b, rm, rv, None, True, 0.1, 1e-5, False, False, None),
        (x, None, None, rm, rv, None, False, 0.1, 1e-5, False, False, None),
        (x.requires_grad_(), w.requires_grad_(), b, None, None, res, True, 0.1, 1e-5, True, False, None),
        (x, w, b, rm, rv, None, True, 0.0, 1e-5, False, False, torch.tensor(3, device=path)),
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


# Every constructor option that works eagerly, under torch.compile(fullgraph=True): each momentum setting
# (momentum=None, the cumulative average, fails to compile in torch's own layer: its 1/count is a
# data-dependent float), affine, track_running_stats (with and without), detach_stats, the fused layers.
def _options():
    for momentum in (0.1, None, 0.0, 1.0):
        for affine in (True, False):
            for track in (True, False):
                kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track, detach_stats=affine != track)
                yield f"bn2d-momentum{momentum}-affine{affine:d}-track{track:d}", tritonbn.BatchNorm2d, kwargs, 4
    yield "bn1d-nc", tritonbn.BatchNorm1d, {}, 2
    yield "bn1d-ncl-cumulative", tritonbn.BatchNorm1d, {"momentum": None}, 3
    yield "bn3d", tritonbn.BatchNorm3d, {"momentum": 0.3}, 5
    yield "bn2d-no-bias", tritonbn.BatchNorm2d, {"bias": False}, 4
    yield "bn2d-relu-cumulative", tritonbn.BatchNorm2dReLU, {"momentum": None}, 4
    yield "bn2d-add-relu", tritonbn.BatchNorm2dAddReLU, {"detach_stats": True}, 4
    yield "frozen", tritonbn.FrozenBatchNorm2d, {}, 4
    yield "sync", tritonbn.SyncBatchNorm, {}, 4
    yield "sync-cumulative", tritonbn.SyncBatchNorm, {"momentum": None}, 4
    yield "sync-relu", tritonbn.SyncBatchNormReLU, {}, 4
    yield "sync-add-relu", tritonbn.SyncBatchNormAddReLU, {"momentum": None}, 3


OPTIONS = {name: (cls, kwargs, dim) for name, cls, kwargs, dim in _options()}
CASES = list(OPTIONS) + [f"{name}-group-of-one" for name in OPTIONS if name.startswith("sync")]


@contextlib.contextmanager
def _group_of_one(tmp_path, enabled: bool):
    """torch.distributed initialised with a single gloo rank (SyncBatchNorm then runs single-process)."""
    if not enabled:
        yield
        return
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("case", CASES)
def test_every_option_compiles_fullgraph_and_matches_eager(path, case, tmp_path):
    """Three training steps then eval, compiled against eager: outputs, every gradient, buffers."""
    cls, kwargs, dim = OPTIONS[case.removesuffix("-group-of-one")]
    torch._dynamo.reset()
    shape = (4, 3, 2, 3, 2)[:dim]
    eager = cls(3, **kwargs).to(path)
    with torch.no_grad():  # non-trivial affine parameters and buffers
        for t in list(eager.parameters()) + [b for b in eager.buffers() if b.is_floating_point()]:
            t.uniform_(0.5, 1.5)
    ours = copy.deepcopy(eager)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    takes_residual = getattr(cls, "takes_residual", False)
    with _group_of_one(tmp_path, case.endswith("-group-of-one")):
        for step in range(4):
            training = step < 3
            eager.train(training)
            ours.train(training)
            inputs = [torch.randn(shape, device=path) + step for _ in range(1 + takes_residual)]
            a = [t.clone().requires_grad_() for t in inputs]
            b = [t.clone().requires_grad_() for t in inputs]
            y, y_ref = compiled(*a), eager(*b)
            torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5, msg=f"step {step}: y")
            dy = torch.randn_like(y)
            grads = torch.autograd.grad(y, a + list(ours.parameters()), dy)
            grads_ref = torch.autograd.grad(y_ref, b + list(eager.parameters()), dy)
            for g, g_ref in zip(grads, grads_ref, strict=True):
                torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=f"step {step}: a gradient")
            for (name, t), t_ref in zip(ours.state_dict().items(), eager.state_dict().values(), strict=True):
                torch.testing.assert_close(t, t_ref, atol=1e-5, rtol=1e-5, msg=f"step {step}: {name}")
