"""Gradients at every order: gradcheck/gradgradcheck in float64, third order against the float64 reference,
detached statistics, and the input-gradient losses of physics-informed nets and gradient penalties."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_input
from torch.autograd import gradcheck, gradgradcheck

import tritonbn
from tritonbn import reference


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _problem(device, shape=(3, 2, 4), layout="contiguous"):
    x = _leaf(make_input(shape, torch.float64, device, layout))
    C = shape[1]
    w = torch.rand(C, dtype=torch.float64, device=device).add_(0.5).requires_grad_()
    b = torch.randn(C, dtype=torch.float64, device=device, requires_grad=True)
    rm = torch.randn(C, dtype=torch.float64, device=device)
    rv = torch.rand(C, dtype=torch.float64, device=device) + 0.5
    return x, w, b, rm, rv


@pytest.mark.parametrize(
    ("training", "affine", "layout"),
    [(True, True, "contiguous"), (True, False, "channels_last"), (False, True, "contiguous")],
    ids=["train-affine", "train-plain-channels_last", "eval-affine"],
)
def test_gradcheck_and_gradgradcheck(path, training, affine, layout):
    shape = (3, 2, 2, 2) if layout == "channels_last" else (3, 2, 4)
    x, w, b, rm, rv = _problem(path, shape, layout)

    if affine:

        def fn(x, w, b):
            return tritonbn.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)

        inputs = (x, w, b)
    else:

        def fn(x):
            return tritonbn.batch_norm(x, rm.clone(), rv.clone(), training=training)

        inputs = (x,)
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def _grads_up_to_third_order(bn, x, w, b, dy, v, u):
    """First, second and third-order gradients of a batch-norm function ``bn(x, w, b)``.

    g1 = ∂<dy, y>/∂(x, w, b); g2 = ∂<v, g1_x>/∂(x, w, dy); g3 = ∂<u, g2_x>/∂(x, w).
    """

    def grad(out, inputs, seed, **kw):
        gs = torch.autograd.grad(out, inputs, seed, allow_unused=True, **kw)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, inputs, strict=True)]

    y = bn(x, w, b)
    g1 = grad(y, (x, w, b), dy, create_graph=True)
    g2 = grad(g1[0], (x, w, dy), v, create_graph=True)
    g3 = grad(g2[0], (x, w), u) if g2[0].requires_grad else [torch.zeros_like(x), torch.zeros_like(w)]
    return g1, g2, g3


@pytest.mark.parametrize(
    ("training", "detach_stats"),
    [(True, False), (True, True), (False, False)],
    ids=["train", "train-detached", "eval"],
)
def test_higher_orders_match_float64_reference(path, training, detach_stats):
    """Up to the third derivative, against autograd through the float64 elementary-op reference."""
    x, w, b, rm, rv = _problem(path, (4, 3, 5))
    dy = torch.randn_like(x).requires_grad_()
    v, u = torch.randn_like(x), torch.randn_like(x)

    def ours(x, w, b):
        return tritonbn.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training, detach_stats=detach_stats)

    def ref(x, w, b):
        return reference.batch_norm(x, rm, rv, w, b, training=training, detach_stats=detach_stats)

    got = _grads_up_to_third_order(ours, x, w, b, dy, v, u)
    want = _grads_up_to_third_order(ref, x, w, b, dy, v, u)
    quantities = [("dx", "dweight", "dbias"), ("ddx", "ddweight", "ddy"), ("ddx", "ddweight")]
    for order, (g_got, g_want, names) in enumerate(zip(got, want, quantities, strict=True)):
        for a, r, name in zip(g_got, g_want, names, strict=True):
            assert_close(a, r, torch.float64, name, f"order {order + 1}: {name}")


def test_detached_stats_first_order_formula(path):
    """detach_stats: dx = dy·w·invstd (statistics are constants), dw = Σdy·x̂, db = Σdy."""
    x, w, b, _, _ = _problem(path, (5, 3, 4))
    y = tritonbn.batch_norm(x, None, None, w, b, training=True, detach_stats=True)
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    mean, var, _ = reference.batch_norm_stats(x.detach())
    invstd = torch.rsqrt(var + 1e-5)
    assert_close(dx, dy * (w * invstd).detach().reshape(1, -1, 1), torch.float64, "dx", "dx")
    xhat = (x.detach() - mean.reshape(1, -1, 1)) * invstd.reshape(1, -1, 1)
    assert_close(dw, (dy * xhat).sum((0, 2)), torch.float64, "dweight", "dweight")
    assert_close(db, dy.sum((0, 2)), torch.float64, "dbias", "dbias")
    # and it differs from the full gradient, which also flows through the batch statistics
    y_full = tritonbn.batch_norm(x, None, None, w, b, training=True)
    (dx_full,) = torch.autograd.grad(y_full, x, dy)
    assert (dx_full - dx).abs().max() > 1e-3


def test_physics_informed_mlp_input_gradients(path):
    """A small MLP with BatchNorm1d in train mode: du/dx with create_graph=True, then a loss on it and a
    second backward to the parameters -- the same as with torch.nn.BatchNorm1d."""

    def mlp(bn_cls):
        torch.manual_seed(1)
        return (
            torch.nn.Sequential(torch.nn.Linear(2, 8), bn_cls(8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
            .double()
            .to(path)
        )

    theirs, ours = mlp(torch.nn.BatchNorm1d), mlp(tritonbn.BatchNorm1d)
    ours.load_state_dict(theirs.state_dict())
    pts = torch.rand(9, 2, dtype=torch.float64, device=path)
    results = []
    for net in (theirs, ours):
        x = pts.clone().requires_grad_()
        u = net(x)
        (du_dx,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        loss = (du_dx**2).sum() + (u**2).mean()
        loss.backward()
        results.append([du_dx.detach()] + [p.grad.clone() for p in net.parameters()])
    for a, r in zip(results[1], results[0], strict=True):
        # absolute bound too: the Linear bias before a batch norm has a gradient that is exactly 0 in theory
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-8)
    assert results[1][3].abs().max() > 0  # the batch-norm weight gets a second-order gradient


def test_gradient_penalty_through_weight_only(path):
    """Double backward when only the weight requires grad (input constant), e.g. a penalty on dL/dw."""
    x, w, b, _, _ = _problem(path, (4, 2, 3))
    x, b = x.detach(), b.detach()
    r = torch.randn_like(x)

    def penalty_grad(bn):
        w_ = _leaf(w)
        y = bn(x, None, None, w_, b, training=True)
        (dw,) = torch.autograd.grad((y * r).sum() ** 2, w_, create_graph=True)
        (ddw,) = torch.autograd.grad(dw.pow(2).sum(), w_)
        return ddw

    assert_close(penalty_grad(tritonbn.batch_norm), penalty_grad(reference.batch_norm), torch.float64, "grad2")


def test_torch_func_grad_and_grad_of_grad(path):
    """torch.func.grad (functorch) works, nested too; the Functions use setup_context for it."""
    x = make_input((5, 3, 4), torch.float64, path)
    w = torch.rand(3, dtype=torch.float64, device=path) + 0.5

    def loss(bn):
        return lambda x: (bn(x, None, None, w, None, training=True) ** 3).sum()

    def grad_norm(bn):
        return lambda x: torch.func.grad(loss(bn))(x).pow(2).sum()

    for fn in (loss, grad_norm):
        got = torch.func.grad(fn(tritonbn.batch_norm))(x)
        want = torch.func.grad(fn(reference.batch_norm))(x)
        assert_close(got, want, torch.float64, "dx" if fn is loss else "ddx")
