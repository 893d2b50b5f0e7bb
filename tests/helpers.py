"""Test helpers: the tolerance table, an assert that reports max errors, and input factories."""

from __future__ import annotations

import torch

# Max allowed |actual - reference| / max(1, max|reference|) against the float64 reference, per
# (dtype, quantity). "y" is the forward output, "stats" the running statistics, "grad" first-order
# gradients, "grad2" second- and higher-order ones (more operations, more rounding).
TOL = {
    (torch.float64, "y"): 1e-12,
    (torch.float64, "stats"): 1e-12,
    (torch.float64, "grad"): 1e-10,
    (torch.float64, "grad2"): 1e-9,
    (torch.float32, "y"): 2e-6,
    (torch.float32, "stats"): 2e-6,
    (torch.float32, "grad"): 2e-5,
    (torch.float32, "grad2"): 1e-4,
    (torch.float16, "y"): 4e-3,
    (torch.float16, "stats"): 2e-3,
    (torch.float16, "grad"): 1e-2,
    (torch.float16, "grad2"): 3e-2,
    (torch.bfloat16, "y"): 3e-2,
    (torch.bfloat16, "stats"): 1e-2,
    (torch.bfloat16, "grad"): 6e-2,
    (torch.bfloat16, "grad2"): 1e-1,
}


def max_errors(actual: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error relative to max(1, max|reference|)), NaN-aware."""
    a, r = actual.detach().double().cpu(), reference.detach().double().cpu()
    assert a.shape == r.shape, f"shape {tuple(a.shape)} != reference {tuple(r.shape)}"
    if a.numel() == 0:
        return 0.0, 0.0
    same_nan = torch.isnan(a) == torch.isnan(r)
    assert bool(same_nan.all()), "NaN pattern differs from the reference"
    diff = torch.where(torch.isnan(r), torch.zeros_like(r), (a - r).abs())
    abs_err = diff.max().item()
    scale = max(1.0, torch.nan_to_num(r, nan=0.0).abs().max().item())
    return abs_err, abs_err / scale


def assert_close(actual, reference, dtype: torch.dtype, quantity: str, what: str = "") -> None:
    tol = TOL[(dtype, quantity)]
    abs_err, rel_err = max_errors(actual, reference)
    assert rel_err <= tol, f"{what or quantity}: max abs err {abs_err:.3e}, scaled err {rel_err:.3e} > tol {tol:.1e}"


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
