"""The one tolerance table: ``TOL[(dtype, quantity)]`` bounds the normwise relative error vs float64.

Error measure (used by ``tritonbn-check``, its CSV and the tests)::

    max_abs_err = max_i |a_i - r_i|
    max_rel_err = max_abs_err / max_i |r_i|        (= max_abs_err when the reference is identically 0)

where ``a`` is the quantity computed by a provider in the input's dtype (or the parameters' dtype for
running statistics and weight/bias gradients) and ``r`` the float64 reference computed from the same,
already rounded, inputs. This "normwise" relative error is the error in units of the largest reference
value: it does not blow up at the entries that are merely close to zero (elementwise relative error is
meaningless for a zero-mean output such as ``y``) and it is comparable across shapes. A quantity passes
when ``max_rel_err <= TOL[(dtype, quantity)]`` (NaN never passes).

Rationale of the values, with u the unit roundoff of the dtype (fp32 6e-8, fp16 4.9e-4, bf16 3.9e-3):

- outputs in the input dtype (``y``, ``dx``, ``ddx``, ``ddy``) cannot beat their own rounding, about u
  relative to the largest entry, plus the error of the fp32 statistics; ``y`` gets about 4u for half
  types and 1e-5 for fp32, gradients built from two roundings of intermediates twice that;
- ``running_mean``/``running_var``, ``dweight``/``dbias``/``ddweight`` are produced in the parameters'
  dtype (float32 for half inputs here, as under AMP) from exactly upcast inputs, so they get an fp32-level
  bound loosened for the reductions over N·spatial elements;
- float64 inputs are held to 1e-10.

Conditioning floor. Statistics are accumulated and stored in float32 (float64 for float64 inputs), so the
mean of a channel carries a rounding error of up to ``u_acc·|mean|`` however it is computed, and every
quantity built from ``x̂ = (x - mean)·invstd`` (``y``, ``dx``, ``dweight`` and the second-order ones)
inherits ``u_acc·|mean|/std`` of it. For a case whose channels have condition number
``κ = max_c |mean_c| / sqrt(var_c + eps)`` their bound is therefore ``max(TOL[(dtype, quantity)],
4·u_acc·κ)`` (:func:`tolerance`): for the fp32 ``large_mean`` cases (κ = 1e4) that is 2.4e-3, "as accurate
as float32 statistics allow". Half inputs get no floor: a channel representable in fp16/bf16 has
``std ≳ ulp(mean)``, so κ ≲ 1/(2u) and the floor stays below the table; a larger κ only arises from a
channel that rounding made (nearly) constant, for which κ is meaningless.

Reduction size. ``dweight``, ``dbias`` and ``ddweight`` are sums over the ``M = N·spatial`` elements of a
channel whose value is typically ``O(sqrt(M))`` while the terms add up to ``O(M)``; float32 accumulation in
blocks (or with atomics) leaves an error that grows relative to the result like ``sqrt(M)``. Their bound
is multiplied by ``max(1, sqrt(M / 1024))`` (``reduction=M`` in :func:`tolerance`): no change up to 1024
elements per channel (the whole quick grid), ×181 for 2^25 (the largest benchmark sweep).
"""

from __future__ import annotations

import math

import torch

__all__ = ["DTYPES", "QUANTITIES", "TOL", "condition_number", "dtype_name", "errors", "parse_dtype", "tolerance"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}

#: First-order quantities, then the second-order ones: the gradients of ``s = Σ dx·v`` (``dx`` from
#: ``autograd.grad(y, x, dy, create_graph=True)``, ``v`` random) w.r.t. ``x``, ``weight`` and ``dy``.
QUANTITIES: tuple[str, ...] = (
    "y",
    "running_mean",
    "running_var",
    "dx",
    "dweight",
    "dbias",
    "ddx",
    "ddweight",
    "ddy",
)

_PER_DTYPE: dict[str, dict[str, float]] = {
    "fp64": dict.fromkeys(QUANTITIES, 1e-10),
    "fp32": {
        "y": 1e-5,
        "running_mean": 1e-5,
        "running_var": 1e-5,
        "dx": 2e-5,
        "dweight": 2e-5,
        "dbias": 2e-5,
        "ddx": 5e-5,
        "ddweight": 5e-5,
        "ddy": 2e-5,
    },
    "fp16": {
        "y": 2e-3,
        "running_mean": 1e-5,
        "running_var": 1e-5,
        "dx": 4e-3,
        "dweight": 1e-4,
        "dbias": 1e-4,
        "ddx": 5e-3,
        "ddweight": 2e-4,
        "ddy": 4e-3,
    },
    "bf16": {
        "y": 1.6e-2,
        "running_mean": 1e-5,
        "running_var": 1e-5,
        "dx": 3e-2,
        "dweight": 1e-4,
        "dbias": 1e-4,
        "ddx": 4e-2,
        "ddweight": 2e-4,
        "ddy": 3e-2,
    },
}

TOL: dict[tuple[str, str], float] = {(d, q): tol for d, table in _PER_DTYPE.items() for q, tol in table.items()}


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"no tolerance for dtype {dtype}")


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


#: Unit roundoff of the statistics' accumulation dtype where the conditioning floor applies (see above).
ACC_UNIT_ROUNDOFF: dict[str, float] = {"fp64": 2.0**-53, "fp32": 2.0**-24, "fp16": 0.0, "bf16": 0.0}
COND_FACTOR = 4.0
#: The quantities computed from x̂, whose error grows with κ.
CONDITIONED: frozenset[str] = frozenset({"y", "dx", "dweight", "ddx", "ddweight", "ddy"})
#: The per-channel sums over N·spatial elements, whose bound grows with the reduction size.
SUMMED: frozenset[str] = frozenset({"dweight", "dbias", "ddweight"})
REDUCTION_FREE = 1024


def tolerance(dtype: torch.dtype | str, quantity: str, cond: float = 1.0, reduction: int = 1) -> float:
    """The bound on ``max_rel_err``: ``TOL[(dtype, quantity)]``, times ``max(1, sqrt(reduction / 1024))``
    for the per-channel sums, and at least ``4·u_acc·cond`` for quantities built from x̂ (see above)."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    tol = TOL[(name, quantity)]
    if quantity in SUMMED:
        tol *= max(1.0, math.sqrt(reduction / REDUCTION_FREE))
    if quantity in CONDITIONED:
        tol = max(tol, COND_FACTOR * ACC_UNIT_ROUNDOFF[name] * cond)
    return tol


def condition_number(mean: torch.Tensor, var: torch.Tensor, eps: float) -> float:
    """``κ = max_c |mean_c| / sqrt(var_c + eps)`` of the statistics a batch norm normalises with."""
    if mean.numel() == 0:
        return 0.0
    mean, var = mean.detach().double(), var.detach().double()
    return (mean.abs() * torch.rsqrt(var + eps)).max().item()


def errors(actual: torch.Tensor | None, reference: torch.Tensor | None) -> tuple[float, float]:
    """``(max_abs_err, max_rel_err)`` of ``actual`` against ``reference`` as defined above.

    ``None`` stands for an all-zero tensor (autograd's answer for a gradient that does not depend on the
    input); both ``None`` gives zero errors. Shapes must match (memory layout does not matter).
    """
    if actual is None and reference is None:
        return 0.0, 0.0
    if actual is None:
        actual = torch.zeros_like(reference)
    if reference is None:
        reference = torch.zeros_like(actual, dtype=torch.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shape mismatch: {tuple(actual.shape)} vs reference {tuple(reference.shape)}")
    if actual.numel() == 0:
        return 0.0, 0.0
    a, r = actual.detach().double(), reference.detach().double().to(actual.device)
    max_abs = (a - r).abs().max().item()
    scale = r.abs().max().item()
    return max_abs, (max_abs / scale if scale > 0 else max_abs)
