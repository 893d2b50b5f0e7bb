"""Test helpers: the tolerance table, an assert that reports max errors, and input factories."""

from __future__ import annotations

import torch

from tritonbn import reference
from tritonbn.correctness.tolerances import QUANTITIES, errors, tolerance

# One tolerance table for the tests and tritonbn-check: TOL[(dtype, quantity)] bounds
# max|actual - reference| / max|reference| against the float64 reference (see its module docstring).
# Generic classes, for checks that are not one of the table's quantities: a running/batch statistic, a
# first-order input-shaped gradient, a second- or higher-order one.
ALIASES = {"stats": "running_mean", "grad": "dx", "grad2": "ddx"}


def max_errors(actual: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max abs error, normwise relative error) as ``tritonbn-check`` measures them; NaN must match NaN."""
    a, r = actual.detach().double().cpu(), reference.detach().double().cpu()
    assert a.shape == r.shape, f"shape {tuple(a.shape)} != reference {tuple(r.shape)}"
    same_nan = torch.isnan(a) == torch.isnan(r)
    assert bool(same_nan.all()), "NaN pattern differs from the reference"
    nan = torch.isnan(r)
    return errors(torch.where(nan, 0.0, a), torch.where(nan, 0.0, r))


def assert_close(actual, reference, dtype: torch.dtype, quantity: str, what: str = "", cond: float = 1.0) -> None:
    """Assert ``actual`` is within ``tolerance(dtype, quantity)`` of the float64 ``reference``."""
    quantity = ALIASES.get(quantity, quantity)
    assert quantity in QUANTITIES, f"unknown quantity {quantity!r}"
    tol = tolerance(dtype, quantity, cond=cond)
    abs_err, rel_err = max_errors(actual, reference)
    assert rel_err <= tol, f"{what or quantity}: max abs err {abs_err:.3e}, rel err {rel_err:.3e} > tol {tol:.1e}"


def channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def make_input(shape, dtype, device, layout="contiguous", mean=0.0, std=1.0) -> torch.Tensor:
    """Random input with per-channel offsets, in the requested memory layout."""
    x = torch.randn(shape, dtype=torch.float64) * std + mean
    x = x + torch.randn(shape[1], dtype=torch.float64).reshape([1, -1] + [1] * (len(shape) - 2))
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    elif layout == "strided":  # a non-contiguous view: every other sample of a twice-as-large batch
        big = torch.empty((2 * shape[0], *shape[1:]), dtype=dtype, device=device)
        big[::2] = x
        x = big[::2]
    return x


def reference_grads(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    training: bool = True,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    eps: float = 1e-5,
):
    """Float64 closed-form (dx, dweight, dbias) of a batch norm at ``x``: batch statistics in training, the
    running ones in eval."""
    if training:
        mean, var, _ = reference.batch_norm_stats(x.detach())
    else:
        mean, var = running_mean.double(), running_var.double()
    w = weight.detach() if weight is not None else None
    return reference.batch_norm_backward(dy, x.detach(), w, mean, torch.rsqrt(var + eps), training=training)


def randomise_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Give every batch norm of ``model`` non-trivial affine parameters and running statistics (in place), so
    that a lost ReLU or add shows in eval mode too; returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    return model
