"""Numerics beyond torch: large-mean channels, constant channels, NaN isolation, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, make_input, max_errors, reference_grads

import tritonbn
from tritonbn import launch, reference


def test_large_mean_channel_is_normalised_accurately(kernels):
    """A channel with mean 1e4 and std 1 in float32: the shifted one-pass statistics keep the variance to
    float32 precision, where E[x²] - E[x]² would lose every digit (E[x²] = 1e8, float32 ulp = 8)."""
    x64 = torch.randn(16, 2, 37, dtype=torch.float64)
    x64[:, 0] += 1e4
    x = x64.float().to(kernels)
    mean, var, _ = launch.batch_stats(x, 1e-5)
    mean_ref, var_ref, _ = reference.batch_norm_stats(x)
    assert ((var.double().cpu() - var_ref) / var_ref).abs().max() < 1e-5
    # the mean is as exact as float32 can represent it (half an ulp of 1e4 is ~5e-4)
    assert (mean.double().cpu() - mean_ref).abs().max() < 1e-3
    # naive E[x²] - E[x]² in float32 for comparison: wrong by far more than our tolerance
    naive = (x.float() ** 2).mean((0, 2)) - x.float().mean((0, 2)) ** 2
    assert (naive.double().cpu()[0] - var_ref[0]).abs() > 100 * (var.double().cpu()[0] - var_ref[0]).abs()
    y = tritonbn.batch_norm(x, None, None, training=True)
    y_ref = reference.batch_norm(x, None, None, training=True)
    abs_err, _ = max_errors(y, y_ref)
    assert abs_err < 2e-3  # bounded by the float32 representation of the mean itself
    y_torch = F.batch_norm(x.cpu(), None, None, training=True)
    assert abs_err <= max_errors(y_torch, y_ref)[0] * 2 + 1e-6  # at least as good as torch


def test_large_mean_gradients(kernels):
    x64 = torch.randn(8, 2, 9, dtype=torch.float64) + torch.tensor([1e4, -3e3]).reshape(1, 2, 1)
    x = x64.float().to(kernels).requires_grad_()
    w = torch.rand(2, device=kernels, requires_grad=True)
    y = tritonbn.batch_norm(x, None, None, w, None, training=True)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    dx_ref, dw_ref, _ = reference_grads(dy, x, w)
    # Σ dy·(x - mean) is reduced on centred data, so dweight keeps float32 accuracy
    assert max_errors(dw, dw_ref)[1] < 1e-3
    assert max_errors(dx, dx_ref)[1] < 1e-3


def test_constant_channel_has_exactly_zero_variance(kernels):
    x = torch.randn(6, 3, 7, device=kernels)
    x[:, 1] = 0.1  # not exactly representable: a naive mean of it rounds
    rv = torch.ones(3, device=kernels)
    _, var, _ = launch.batch_stats(x, 1e-5)
    assert var[1].item() == 0.0
    y = tritonbn.batch_norm(x.requires_grad_(), torch.zeros(3, device=kernels), rv, training=True)
    assert torch.isfinite(y).all()
    assert (y[:, 1] == 0).all()
    assert rv[1].item() == torch.tensor(0.9).item()  # (1 - momentum) * 1 + momentum * 0
    y.backward(torch.randn_like(y))
    assert torch.isfinite(x.grad).all()


def test_nan_stays_in_its_channel(kernels):
    for layout in ("contiguous", "channels_last"):
        x = torch.randn(3, 4, 2, 5, device=kernels)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        x[1, 2, 0, 3] = float("nan")
        y = tritonbn.batch_norm(x, None, None, training=True)
        assert torch.isnan(y[:, 2]).all()
        others = y[:, [0, 1, 3]]
        assert torch.isfinite(others).all()
        y_ref = reference.batch_norm(x[:, [0, 1, 3]], None, None, training=True)
        assert_close(others, y_ref, torch.float32, "y")


def test_results_are_deterministic(kernels):
    x = torch.randn(5, 3, 33, device=kernels, requires_grad=True)
    dy = torch.randn_like(x)
    runs = []
    for _ in range(2):
        y = tritonbn.batch_norm(x, None, None, training=True)
        (dx,) = torch.autograd.grad(y, x, dy)
        runs.append((y, dx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_many_row_blocks_merge(kernels, tile_policy):
    """Force tiny tiles so the statistics come from many partials merged by Chan's formula."""
    tile_policy(tile=4, single=0, programs=64)
    for shape, fmt in (((7, 3, 5), torch.contiguous_format), ((5, 3, 3, 2), torch.channels_last)):
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 50).to(kernels).to(memory_format=fmt)
        mean, var, invstd = launch.batch_stats(x, 1e-5)
        mean_ref, var_ref, _ = reference.batch_norm_stats(x)
        assert_close(mean, mean_ref, torch.float64, "running_mean", "mean")
        assert_close(var, var_ref, torch.float64, "running_var", "var")
        xr = x.detach().clone().requires_grad_()
        y = tritonbn.batch_norm(xr, None, None, training=True)
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, xr, dy)
        dx_ref, _, _ = reference.batch_norm_backward(dy, x, None, mean_ref, torch.rsqrt(var_ref + 1e-5))
        assert_close(dx, dx_ref, torch.float64, "dx", "dx")


def test_merge_of_uneven_partials_with_an_empty_one(kernels):
    """merge_stats with explicit counts (as SyncBatchNorm merges ranks): sizes 5, 0, 2 and 9 rows."""
    chunks = [torch.randn(n, 3, 4, dtype=torch.float64, device=kernels) * 2 + 7 for n in (5, 0, 2, 9)]
    means, m2s, counts = [], [], []
    for chunk in chunks:
        if chunk.shape[0]:
            mean, var, _ = launch.batch_stats(chunk, 1e-5)
        else:
            mean = var = torch.zeros(3, dtype=torch.float64, device=kernels)
        count = chunk.numel() // 3
        means.append(mean)
        m2s.append(var * count)
        counts.append(count)
    mean, var, invstd = launch.merge_stats(
        torch.stack(means), torch.stack(m2s), torch.tensor(counts, device=kernels), sum(counts), 1e-5
    )
    mean_ref, var_ref, _ = reference.batch_norm_stats(torch.cat(chunks))
    assert_close(mean, mean_ref, torch.float64, "running_mean", "mean")
    assert_close(var, var_ref, torch.float64, "running_var", "var")
    assert_close(invstd, torch.rsqrt(var_ref + 1e-5), torch.float64, "running_var", "invstd")


def test_half_input_with_half_parameters_on_every_path(path):
    """float16 input and weight, a channel of mean 100: statistics in float32 on every path (torch's CPU
    batch norm keeps them in float16), so y and the first derivatives are within float16 tolerance of the
    float64 reference, with or without create_graph."""
    x64 = torch.randn(6, 2, 7, dtype=torch.float64) + torch.tensor([100.0, -3.0]).reshape(1, 2, 1)
    x = x64.half().to(path).requires_grad_()
    w = (torch.rand(2, dtype=torch.float64) + 0.5).half().to(path).requires_grad_()
    dy = torch.randn(6, 2, 7, dtype=torch.float64).half().to(path)
    y = tritonbn.batch_norm(x, None, None, w, None, training=True)
    assert_close(y, reference.batch_norm(x.detach(), None, None, w.detach(), None, training=True), torch.float16, "y")
    dx_ref, dw_ref, _ = reference_grads(dy, x, w)
    for create_graph in (False, True):
        dx, dw = torch.autograd.grad(y, (x, w), dy, retain_graph=True, create_graph=create_graph)
        assert_close(dx, dx_ref, torch.float16, "dx", f"dx, create_graph={create_graph}")
        # dweight is stored in float16 here: within two of its ulps
        torch.testing.assert_close(dw.double().cpu(), dw_ref, atol=0, rtol=1e-3, msg=f"create_graph={create_graph}")


@pytest.mark.parametrize(("dtype", "mean"), [(torch.float16, 200.0), (torch.bfloat16, 30.0)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("relu_add", [False, True], ids=["plain", "relu_add"])
def test_half_input_with_large_mean_on_the_elementwise_passes(kernels, tile_policy, dtype, mean, layout, relu_add):
    """Half-precision channels far from zero (std = 8 ulps of the mean: float16 around 200, bfloat16
    around 30) on the elementwise passes: train and eval outputs, dx and dweight stay within the table's
    tolerances of the float64 reference; dy is correlated with x so that dx's (x - mean) term is not
    negligible (a wrong mean, scale, beta or gamma term shows; that the passes centre is held by
    test_constant_half_channel_gives_exactly_the_bias)."""
    tile_policy(tile=8, single=0, programs=1 << 20)  # loops: the elementwise passes run
    shape = (5, 4, 3, 3)
    x = make_input(shape, dtype, kernels, layout, mean=mean).requires_grad_()
    w = (torch.rand(4, device=kernels) + 0.5).requires_grad_()
    b = torch.randn(4, device=kernels).requires_grad_()
    res = make_input(shape, dtype, kernels).requires_grad_() if relu_add else None
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    r64 = res.detach().double().requires_grad_() if relu_add else None

    def act(y, r):
        return torch.relu(y + r) if relu_add else y

    def fwd(*args, **kwargs):
        if relu_add:
            return tritonbn.batch_norm_relu(*args, residual=res, **kwargs)
        return tritonbn.batch_norm(*args, **kwargs)

    y = fwd(x, None, None, w, b, training=True)
    y64 = act(reference.batch_norm(x64, None, None, w64, b64, training=True), r64)
    assert_close(y, y64, dtype, "y", "train y")
    xhat = (x64 - x64.mean((0, 2, 3), keepdim=True)) / x64.std((0, 2, 3), keepdim=True)
    dy = (0.5 * xhat.detach() + torch.randn(shape, dtype=torch.float64, device=kernels)).to(dtype)
    got = torch.autograd.grad(y, (x, w), dy)
    want = torch.autograd.grad(y64, (x64, w64), dy.double())
    assert_close(got[0], want[0], dtype, "dx", "dx")
    assert_close(got[1], want[1], dtype, "dweight", "dweight")
    # eval: the running statistics are the batch's
    mean64, var64, _ = reference.batch_norm_stats(x64.detach())
    rm, rv = mean64.float(), var64.float()
    y = fwd(x, rm, rv, w, b, training=False)
    y64 = act(reference.batch_norm(x64, rm.double(), rv.double(), w64, b64, training=False), r64)
    assert_close(y, y64, dtype, "y", "eval y")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_constant_half_channel_gives_exactly_the_bias(kernels, tile_policy, dtype):
    """A constant channel far from zero, on the loop path (statistics, then the normalise pass): var = 0, so
    scale = weight / sqrt(eps) is large, and y is exactly the bias, as in torch, in training and in eval
    with a running variance of 0 (an uncentred x·scale - mean·scale would leave the rounding of mean·scale,
    ~0.02 here, on a GPU's fused multiply-add). Within one rounding of the bias to the dtype: Triton's
    interpreter converts float32 to bfloat16 by truncation, a GPU to nearest."""
    tile_policy(tile=8, single=0, programs=1 << 20)
    x = make_input((6, 3, 2, 3), dtype, kernels)
    x[:, 1] = 1000.0
    w = torch.rand(3, device=kernels) + 0.5
    b = torch.randn(3, device=kernels)
    one_rounding = torch.finfo(dtype).eps * b[1].abs().item()
    y = tritonbn.batch_norm(x, None, None, w, b, training=True)
    assert (y[:, 1].float() - b[1]).abs().max().item() <= one_rounding
    rm = torch.tensor([0.0, 1000.0, 0.0], device=kernels)
    rv = torch.tensor([1.0, 0.0, 1.0], device=kernels)
    y = tritonbn.batch_norm(x, rm, rv, w, b, training=False)
    assert (y[:, 1].float() - b[1]).abs().max().item() <= one_rounding
