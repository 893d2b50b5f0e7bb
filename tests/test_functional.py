"""Parity of tritonbn.batch_norm with the float64 reference and with torch, forward and first backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, make_input, reference_grads

import tritonbn
from tritonbn import reference
from tritonbn.correctness.tolerances import QUANTITIES, tolerance

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Tiny, odd shapes (and C = 1): the interpreter runs every program in numpy.
SHAPES = [(7, 3), (3, 5, 7), (2, 3, 4, 5), (5, 1, 3), (2, 3, 2, 3, 2)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _cases():
    for shape in SHAPES:
        for layout in LAYOUTS:
            if layout == "channels_last" and len(shape) < 4:
                continue
            yield pytest.param(shape, layout, id=f"{'x'.join(map(str, shape))}-{layout}")


def _params(C, dtype, device, affine):
    if not affine:
        return None, None
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w = (torch.rand(C, dtype=torch.float64) + 0.5).to(device, pdtype).requires_grad_()
    b = torch.randn(C, dtype=torch.float64).to(device, pdtype).requires_grad_()
    return w, b


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), list(_cases()))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_forward_backward_matches_reference(path, shape, layout, dtype, training, affine):
    device = path
    C = shape[1]
    x = make_input(shape, dtype, device, layout).requires_grad_()
    w, b = _params(C, dtype, device, affine)
    sdtype = w.dtype if affine else dtype
    rm = torch.randn(C, dtype=torch.float64).to(device, sdtype)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).to(device, sdtype)
    rm0, rv0, x0 = rm.clone(), rv.clone(), x.detach().clone()

    y = tritonbn.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, eps=1e-3)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(x.detach(), x0), "the input was modified"

    # forward and running statistics vs float64 formulas
    y_ref = reference.batch_norm(x0, rm0, rv0, w, b, training=training, eps=1e-3)
    assert_close(y, y_ref, dtype, "y")
    if training:
        mean, var, count = reference.batch_norm_stats(x0)
        rm_ref, rv_ref = reference.running_stats_update(rm0, rv0, mean, var, count, 0.3)
        for name, got, want in (("running_mean", rm, rm_ref), ("running_var", rv, rv_ref)):
            if got.dtype in (torch.float16, torch.bfloat16):
                # half-precision buffers (model.half()): as close as their dtype can store the exact value
                eps = torch.finfo(got.dtype).eps
                torch.testing.assert_close(got.double(), want, atol=eps, rtol=2 * eps, msg=name)
            else:
                assert_close(got, want, dtype, name)
    else:
        assert torch.equal(rm, rm0) and torch.equal(rv, rv0), "eval mode must not touch the running statistics"

    # same output memory format as torch's batch norm
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=fmt)

    # first-order gradients vs the closed-form float64 backward (random grad_output, never ones)
    dy = torch.randn(shape, dtype=torch.float64).to(device, dtype)
    inputs = [x] + ([w, b] if affine else [])
    grads = torch.autograd.grad(y, inputs, dy)
    dx_ref, dw_ref, db_ref = reference_grads(dy, x0, w, training=training, running_mean=rm0, running_var=rv0, eps=1e-3)
    assert grads[0].dtype == dtype and grads[0].shape == x.shape
    assert_close(grads[0], dx_ref, dtype, "dx", "dx")
    if affine:
        assert_close(grads[1], dw_ref, dtype, "dweight", "dweight")
        assert_close(grads[2], db_ref, dtype, "dbias", "dbias")
        assert grads[1].dtype == w.dtype and grads[2].dtype == b.dtype


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_torch_batch_norm(path, training, layout):
    """Where torch is exact enough (float32, moderate means), ours and torch's agree to float32 rounding."""
    x = make_input((4, 3, 5, 6), torch.float32, path, layout).requires_grad_()
    w = torch.randn(3, device=path, requires_grad=True)
    b = torch.randn(3, device=path, requires_grad=True)
    rm, rv = torch.randn(3, device=path), torch.rand(3, device=path) + 0.5
    rm_t, rv_t = rm.clone(), rv.clone()
    y = tritonbn.batch_norm(x, rm, rv, w, b, training=training)
    y_t = F.batch_norm(x, rm_t, rv_t, w, b, training=training)
    dy = torch.randn_like(y)
    g = torch.autograd.grad(y, (x, w, b), dy)
    g_t = torch.autograd.grad(y_t, (x, w, b), dy)
    torch.testing.assert_close(y, y_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm, rm_t)
    torch.testing.assert_close(rv, rv_t)
    for ours, theirs in zip(g, g_t, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert y.stride() == y_t.stride()
    assert g[0].stride() == g_t[0].stride()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_api(path, training):
    """The explicit backward returns the closed-form gradients and None for a missing weight."""
    x = make_input((6, 4, 5), torch.float32, path)
    dy = torch.randn_like(x)
    w = torch.rand(4, device=path) + 0.5
    mean_ref, var_ref, _ = reference.batch_norm_stats(x)
    if training:
        mean, invstd = mean_ref.float(), torch.rsqrt(var_ref + 1e-5).float()
    else:
        mean, invstd = torch.randn(4, device=path), torch.rand(4, device=path) + 0.5
    dx, dw, db = tritonbn.batch_norm_backward(dy, x, w, mean, invstd, training=training)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy, x, w, mean, invstd, training=training)
    assert_close(dx, dx_ref, torch.float32, "dx", "dx")
    assert_close(dw, dw_ref, torch.float32, "dweight", "dweight")
    assert_close(db, db_ref, torch.float32, "dbias", "dbias")
    dx2, dw2, db2 = tritonbn.batch_norm_backward(dy, x, None, mean, invstd, training=training)
    assert dw2 is None and db2 is None
    dx2_ref, _, _ = reference.batch_norm_backward(dy, x, None, mean, invstd, training=training)
    assert_close(dx2, dx2_ref, torch.float32, "dx", "dx without weight")


def test_batch_norm_backward_matches_autograd(path):
    """tritonbn.batch_norm_backward is what autograd computes through tritonbn.batch_norm."""
    x = make_input((5, 3, 4), torch.float64, path).requires_grad_()
    w = torch.rand(3, dtype=torch.float64, device=path, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=path, requires_grad=True)
    y = tritonbn.batch_norm(x, None, None, w, b, training=True)
    dy = torch.randn_like(y)
    auto = torch.autograd.grad(y, (x, w, b), dy)
    mean, var, _ = reference.batch_norm_stats(x.detach())
    manual = tritonbn.batch_norm_backward(dy, x.detach(), w.detach(), mean, torch.rsqrt(var + 1e-5))
    for a, m in zip(auto, manual, strict=True):
        assert_close(m, a, torch.float64, "grad")


def test_tolerance_table_is_complete():
    for dtype in DTYPES:
        for quantity in QUANTITIES:
            assert tolerance(dtype, quantity) > 0


def test_empty_batch(path):
    x = torch.randn(0, 3, 4, device=path, requires_grad=True)
    rm, rv = torch.zeros(3, device=path), torch.ones(3, device=path)
    y = tritonbn.batch_norm(x, rm, rv, training=True)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(rm, torch.zeros(3, device=path)) and torch.equal(rv, torch.ones(3, device=path))


def test_dense_input_with_permuted_spatial_dims(kernels):
    """A (B, C, T, F) tensor transposed to (B, C, F, T) is dense but its spatial dims do not collapse."""
    x = torch.randn(2, 3, 4, 5, device=kernels).transpose(2, 3).requires_grad_()
    y = tritonbn.batch_norm(x, None, None, training=True)
    assert_close(y, reference.batch_norm(x.detach(), None, None, training=True), torch.float32, "y")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    dx_ref, _, _ = reference_grads(dy, x, None)
    assert_close(dx, dx_ref, torch.float32, "dx")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bias_without_weight_gets_its_gradient(path, training):
    x = torch.randn(4, 3, 5, device=path, requires_grad=True)
    b = torch.randn(3, device=path, requires_grad=True)
    rm, rv = torch.zeros(3, device=path), torch.ones(3, device=path)
    y = tritonbn.batch_norm(x, rm, rv, None, b, training=training)
    dy = torch.randn_like(y)
    (db,) = torch.autograd.grad(y, b, dy)
    assert_close(db, dy.sum((0, 2)), torch.float32, "dbias")


def test_empty_batch_keeps_parameters_in_the_graph(path):
    x = torch.randn(0, 3, 4, device=path, requires_grad=True)
    w = torch.ones(3, device=path, requires_grad=True)
    b = torch.zeros(3, device=path, requires_grad=True)
    tritonbn.batch_norm(x, None, None, w, b, training=True).sum().backward()
    assert torch.equal(w.grad, torch.zeros(3, device=path)) and torch.equal(b.grad, torch.zeros(3, device=path))
