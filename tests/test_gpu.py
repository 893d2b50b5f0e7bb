"""Large shapes and the full parity grid on CUDA (skipped without a GPU; no timing here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, make_input, reference_grads

import tritonbn
from tritonbn import reference

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(32, 64, 56, 56), (256, 2048, 7, 7), (64, 256, 14, 14), (4096, 33), (8, 16, 8, 16, 16), (2, 3, 1000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gpu_grid_against_reference_and_torch(shape, dtype, layout, training):
    if layout == "channels_last" and len(shape) < 4:
        pytest.skip("channels_last needs a 4d or 5d input")
    C = shape[1]
    x = make_input(shape, dtype, "cuda", layout).requires_grad_()
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w = (torch.rand(C, device="cuda", dtype=pdtype) + 0.5).requires_grad_()
    b = torch.randn(C, device="cuda", dtype=pdtype, requires_grad=True)
    rm, rv = torch.randn(C, device="cuda", dtype=pdtype), torch.rand(C, device="cuda", dtype=pdtype) + 0.5
    rm_t, rv_t = rm.clone(), rv.clone()
    y = tritonbn.batch_norm(x, rm, rv, w, b, training=training)
    x_ref = x.detach()
    y_ref = reference.batch_norm(x_ref, rm_t, rv_t, w, b, training=training)
    assert_close(y, y_ref, dtype, "y")
    y_t = F.batch_norm(x, rm_t, rv_t, w, b, training=training)
    assert y.stride() == y_t.stride()
    torch.testing.assert_close(rm, rm_t, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(rv, rv_t, atol=1e-3, rtol=1e-3)
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    dx_ref, dw_ref, db_ref = reference_grads(dy, x_ref, w, training=training, running_mean=rm_t, running_var=rv_t)
    assert_close(dx, dx_ref, dtype, "dx", "dx")
    assert_close(dw, dw_ref, dtype, "dweight", "dweight")
    assert_close(db, db_ref, dtype, "dbias", "dbias")


def test_880k_row_batch():
    """BatchNorm1d over (880_000, 16): many row-blocks merged per channel."""
    x = make_input((880_000, 16), torch.float32, "cuda", mean=3.0).requires_grad_()
    bn = tritonbn.BatchNorm1d(16).cuda()
    y = bn(x)
    assert_close(y, reference.batch_norm(x.detach(), None, None, bn.weight, bn.bias, training=True), torch.float32, "y")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    dx_ref, _, _ = reference_grads(dy, x, bn.weight)
    assert_close(dx, dx_ref, torch.float32, "dx", "dx")


def test_more_than_2_pow_31_elements():
    """Index arithmetic is 64-bit: a 2^31 + 512 element fp16 tensor is normalised to its last element."""
    N, C, S = 2, 4, (1 << 28) + 64
    assert N * C * S > 2**31
    x = torch.randn(N, C, S, device="cuda", dtype=torch.float16)
    y = tritonbn.batch_norm(x, None, None, training=True)
    for c in range(C):
        xc = x[:, c].double()
        mean, std = xc.mean(), xc.var(unbiased=False).add(1e-5).sqrt()
        tail = (x[-1, c, -4096:].double() - mean) / std
        assert (y[-1, c, -4096:].double() - tail).abs().max() < 4e-3
        del xc
    dy = torch.randn_like(y)
    del y
    x.requires_grad_()
    y = tritonbn.batch_norm(x, None, None, training=True)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.isfinite(dx[-1, -1, -4096:]).all()
    assert dx.float().sum((0, 2)).abs().max() < 1.0  # Σ dx per channel ≈ 0 in train mode


def test_more_channels_than_a_grid_axis_holds():
    """70,000 channels of (N=2, S=2): the flat grid has no 65,535-block limit on channel blocks."""
    x = make_input((2, 70_000, 2), torch.float32, "cuda").requires_grad_()
    y = tritonbn.batch_norm(x, None, None, training=True)
    assert_close(y, reference.batch_norm(x.detach(), None, None, training=True), torch.float32, "y")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    dx_ref, _, _ = reference_grads(dy, x, None)
    assert_close(dx, dx_ref, torch.float32, "dx")


def test_fused_compiled_and_synced_paths_on_cuda():
    """The fused layer, the torch.compile path and SyncBatchNorm outside a process group, on CUDA."""
    x = make_input((8, 16, 12, 12), torch.float16, "cuda", "channels_last")
    res = torch.randn_like(x)
    y_plain = reference.batch_norm(x, None, None, training=True)
    fused = tritonbn.BatchNorm2dAddReLU(16).cuda()
    assert_close(fused(x, res), torch.relu(y_plain + res.double()), torch.float16, "y")

    xg = x.detach().clone().requires_grad_()
    compiled = torch.compile(tritonbn.BatchNorm2d(16).cuda(), fullgraph=True)
    out = compiled(xg)
    assert_close(out, y_plain, torch.float16, "y")
    dy = torch.randn_like(out)
    out.backward(dy)
    dx_ref, _, _ = reference_grads(dy, x, None)
    assert_close(xg.grad, dx_ref, torch.float16, "dx")

    sync = tritonbn.SyncBatchNorm(16).cuda()  # no process group: the single-GPU path
    assert_close(sync(x), y_plain, torch.float16, "y")
