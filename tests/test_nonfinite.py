"""NaN and ±inf behave as in torch's unfused graph: forward, batch and running statistics, and backward.

The expectation is always torch on the CPU, computed on the same values: ``F.batch_norm`` for the
statistics and the output, ``relu(F.batch_norm(x) [+ r])`` for the fused layers (its ``threshold_backward``
zeroes the gradient where the output is <= 0, and so lets it through where the output is NaN). Each case puts
the non-finite value first in its channel (where the shifted-data algorithm takes its shift), in the middle
and last, on the one-tile path and on the many-tile path (partials merged by the last program).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import make_input
from test_launch_paths import POLICIES
from torch import nn

import tritonbn

NAN, INF = float("nan"), float("inf")
# (sample, channel, row, column) of the non-finite value in a (4, 3, 3, 3) input: first in its channel, in
# the middle, last
WHERE = {"first": (0, 1, 0, 0), "middle": (2, 1, 1, 2), "last": (3, 1, 2, 2)}


def _assert_same(actual: torch.Tensor | None, expected: torch.Tensor | None, what: str, tol: float = 1e-5) -> None:
    """Equal up to ``tol``, with exactly the same NaN and ±inf pattern."""
    assert (actual is None) == (expected is None), what
    if actual is not None:
        torch.testing.assert_close(
            actual.detach().cpu().double(), expected.detach().double(), atol=tol, rtol=tol, equal_nan=True, msg=what
        )


# ---------------------------------------------------------------------------------------------------------
# Statistics: a shift taken from the data meets a non-finite value
# ---------------------------------------------------------------------------------------------------------


def test_inf_gives_inf_running_mean(path):
    """The reported case: torch's running mean is inf (its batch mean is Σx/n), the variance NaN."""
    m, ref = tritonbn.BatchNorm1d(1).to(path), nn.BatchNorm1d(1)
    x = torch.tensor([[INF], [1.0]])
    _assert_same(m(x.to(path)), ref(x), "y")
    _assert_same(m.running_mean, ref.running_mean, "running_mean")
    _assert_same(m.running_var, ref.running_var, "running_var")
    assert m.running_mean.item() == INF


@pytest.mark.parametrize("policy", ["one-tile", "many-chunks", "merge-loops"])
@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("value", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
def test_nonfinite_statistics_match_torch(path, tile_policy, policy, where, value):
    """Output, batch statistics (momentum 1: the running buffers become them) and running statistics."""
    tile_policy(**POLICIES[policy])
    x = make_input((4, 3, 3, 3), torch.float32, "cpu", mean=50.0)
    x[WHERE[where]] = value
    for momentum in (1.0, 0.3):
        rm, rv = torch.randn(3), torch.rand(3) + 0.5
        rm_t, rv_t = rm.clone(), rv.clone()
        rm, rv = rm.to(path), rv.to(path)
        y = tritonbn.batch_norm(x.to(path), rm, rv, training=True, momentum=momentum)
        y_t = F.batch_norm(x, rm_t, rv_t, training=True, momentum=momentum)
        _assert_same(y, y_t, f"y, momentum {momentum}")
        _assert_same(rm, rm_t, f"running_mean, momentum {momentum}")
        _assert_same(rv, rv_t, f"running_var, momentum {momentum}")
    # the other channels keep their accuracy next to a large mean
    assert torch.isfinite(y[:, [0, 2]]).all()


@pytest.mark.parametrize("policy", ["one-tile", "many-chunks"])
def test_opposite_infinities_and_half_precision(path, tile_policy, policy):
    """+inf and -inf in one channel give a NaN mean; float16 and bfloat16 inputs behave as float32."""
    tile_policy(**POLICIES[policy])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = make_input((4, 3, 3, 3), torch.float32, "cpu", mean=3.0).to(dtype)
        x[0, 0, 0, 0], x[3, 0, 1, 1] = INF, -INF
        x[0, 2, 0, 0] = -INF
        pdtype = torch.float64 if dtype == torch.float64 else torch.float32
        rm, rv = torch.zeros(3, dtype=pdtype), torch.ones(3, dtype=pdtype)
        rm_t, rv_t = rm.clone(), rv.clone()
        rm, rv = rm.to(path), rv.to(path)
        y = tritonbn.batch_norm(x.to(path), rm, rv, training=True, momentum=1.0)
        # torch's CPU kernel keeps float16 statistics in half precision: the reference runs in float32
        y_t = F.batch_norm(x.to(pdtype), rm_t, rv_t, training=True, momentum=1.0).to(dtype)
        tol = 1e-5 if dtype == torch.float64 else 1e-2
        _assert_same(y, y_t, f"{dtype}: y", tol)
        _assert_same(rm, rm_t, f"{dtype}: running_mean", tol)
        _assert_same(rv, rv_t, f"{dtype}: running_var", tol)
        assert torch.isnan(rm[0]) and rm[2].item() == -INF


# ---------------------------------------------------------------------------------------------------------
# Fused ReLU: NaN is neither dropped forward nor masked backward
# ---------------------------------------------------------------------------------------------------------


def test_fused_relu_keeps_nan_reported_case(path):
    x = torch.full((1, 1, 1, 1), NAN, device=path)
    y = tritonbn.batch_norm_relu(x, torch.zeros(1, device=path), torch.ones(1, device=path), training=False)
    assert torch.isnan(y).all()


def _torch_graph(x, r, w, b, rm, rv, training):
    y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1)
    return torch.relu(y if r is None else y + r)


@pytest.mark.parametrize("residual", [False, True], ids=["relu", "add-relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_fused_relu_matches_unfused_graph(path, residual, training, value):
    """batch_norm_relu against relu(batch_norm(x) [+ r]): values, NaN pattern, every gradient, statistics."""
    x = make_input((3, 3, 2, 3), torch.float32, "cpu")
    x[1, 1, 0, 2] = value
    r = torch.randn_like(x) if residual else None
    if r is not None:
        r[2, 2, 1, 1] = NAN  # a NaN arriving through the residual only
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    leaves = [t for t in (x, r, w, b) if t is not None]
    ours_in = [t.to(path).requires_grad_() for t in leaves]
    theirs_in = [t.clone().requires_grad_() for t in leaves]
    rm_o, rv_o = rm.to(path), rv.to(path)
    rm_t, rv_t = rm.clone(), rv.clone()
    xo, ro, wo, bo = ours_in[0], (ours_in[1] if residual else None), ours_in[-2], ours_in[-1]
    y = tritonbn.batch_norm_relu(xo, rm_o, rv_o, wo, bo, training=training, residual=ro)
    xt, rt, wt, bt = theirs_in[0], (theirs_in[1] if residual else None), theirs_in[-2], theirs_in[-1]
    y_t = _torch_graph(xt, rt, wt, bt, rm_t, rv_t, training)
    _assert_same(y, y_t, "y")
    _assert_same(rm_o, rm_t, "running_mean")
    _assert_same(rv_o, rv_t, "running_var")
    dy = torch.randn_like(y_t)
    got = torch.autograd.grad(y, ours_in, dy.to(path))
    want = torch.autograd.grad(y_t, theirs_in, dy)
    for name, g, g_t in zip(["dx", "dresidual", "dweight", "dbias"][: len(got)], got, want, strict=False):
        _assert_same(g, g_t, name, 1e-4)


def _conv_bn_relu():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


@pytest.mark.parametrize("entry", ["module", "convert_model", "compiled"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_entry_points_keep_nan(path, entry, training):
    """BatchNorm2dReLU directly, through convert_model(fuse_relu=True) and compiled, against torch's layers."""
    torch._dynamo.reset()
    theirs = _conv_bn_relu().train(training)
    if entry == "module":
        ours = copy.deepcopy(theirs)
        ours[1] = tritonbn.BatchNorm2dReLU(3)
        ours[1].load_state_dict(theirs[1].state_dict())
        ours[2] = nn.Identity()
    else:
        ours = tritonbn.convert_model(copy.deepcopy(theirs), fuse_relu=True)
        assert type(ours[1]) is tritonbn.BatchNorm2dReLU
    ours = ours.to(path).train(training)
    run = torch.compile(ours, backend="aot_eager", fullgraph=True) if entry == "compiled" else ours
    x = make_input((3, 2, 2, 3), torch.float32, "cpu")
    x[1, :, 1, 0] = NAN  # a NaN in every channel after the 1x1 convolution
    y, y_t = run(x.to(path)), theirs(x)
    _assert_same(y, y_t, "y")
    dy = torch.randn_like(y_t)
    y.backward(dy.to(path))
    y_t.backward(dy)
    for (name, p), p_t in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        _assert_same(p.grad, p_t.grad, f"d{name}", 1e-4)
    for name in ("running_mean", "running_var"):
        _assert_same(getattr(ours[1], name), getattr(theirs[1], name), name)
