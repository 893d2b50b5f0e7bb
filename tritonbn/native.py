"""The launcher's entry points written with torch ops, for tensors the Triton kernels do not run on.

CPU tensors without Triton's interpreter (and tensors of other devices) take this path. The autograd
Functions of :mod:`tritonbn.autograd` are the same on every path and only their forward computations
come from here instead of :mod:`tritonbn.launch`, so the plain CPU path has the same derivatives at every
order, ``detach_stats`` and :func:`tritonbn.batch_norm_backward` as the kernels:

* :func:`bn_forward` is torch's own batch norm (``torch.native_batch_norm``, the kernel behind
  ``torch.nn.functional.batch_norm``; in float32 for float16/bfloat16 inputs), then the residual and the
  ReLU as torch ops;
* :func:`backward_passes` is the first-order batch-norm backward in torch ops, summed in the
  accumulation dtype;
* :func:`channel_sums` and :func:`channel_affine`, the primitives of the differentiable backward, are
  elementwise torch ops and sums in the accumulation dtype.

The forward runs at torch's speed; the backward and the higher-order primitives favour clarity.
"""

from __future__ import annotations

import torch

from tritonbn.launch import _empty_output, acc_dtype

__all__ = ["backward_passes", "bn_forward", "channel_affine", "channel_sums"]


# torch's legacy vmap (torch.autograd.functional's vectorize=True, autograd.grad's is_grads_batched) batches
# tensors without functorch's transforms: such tensors are computed here, out of place.
_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def _written(like: torch.Tensor, dtype: torch.dtype, value: torch.Tensor) -> torch.Tensor:
    """``value`` in ``dtype``, laid out like ``like`` (out of place for a legacy-vmapped value)."""
    if _legacy_batched(value):
        return value.to(dtype)
    return _empty_output(like, dtype).copy_(value)


def _reduce_dims(t: torch.Tensor) -> list[int]:
    return [0, *range(2, t.dim())]


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor shaped to broadcast against ``like`` (N, C, *spatial)."""
    return t.reshape([1, -1] + [1] * (like.dim() - 2))


def bn_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tritonbn.launch.bn_forward` by torch: ``(y, stats)``.

    ``y = act(native_batch_norm(x, ...) + residual)`` in x's dtype, the running statistics updated in
    place in training as torch does. ``stats`` is (2, C) in the accumulation dtype: the mean and
    invstd = 1/sqrt(var + eps) the output was normalised with (batch statistics in training, running
    statistics in eval). A float16/bfloat16 input is normalised in float32, as the kernels do: torch's
    CPU batch norm keeps its statistics in half precision when the parameters are half too (or absent).
    """
    acc = acc_dtype(x.dtype)
    # (no copies for float32/float64: ``Tensor.to`` returns the tensor itself in its own dtype)
    rm, rv = _in(running_mean, acc), _in(running_var, acc)
    y, mean, invstd = torch.native_batch_norm(
        x.to(acc), _in(weight, acc), _in(bias, acc), rm, rv, training, momentum, eps
    )
    if training:
        for buf, new in ((running_mean, rm), (running_var, rv)):
            if buf is not None and new is not buf:  # a half-precision buffer: its float32 copy written back
                buf.copy_(new)
        stats = torch.stack([mean, invstd])
    else:
        stats = torch.stack([rm, torch.rsqrt(rv + eps)])
    y = y.to(x.dtype)
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    return y, stats


def _in(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def backward_passes(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    stats_grad: bool,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
    gate: torch.Tensor | None,
    need_residual: bool,
    bias_dtype: torch.dtype | None,
    coef_only: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
    """:func:`tritonbn.launch.backward_passes` by torch: ``(dx, dweight, dbias, dresidual, None)``.

    The formulas of :func:`tritonbn.autograd.backward_kernels`, with the sums in the accumulation dtype
    (torch's own CPU backward sums a bfloat16 dbias in bfloat16 for strided and channels_last inputs).
    With ``gate`` (the output of a fused ReLU) dy is first masked as torch's ReLU backward masks it
    (``threshold_backward``: zero where the output is ≤ 0); that masked dy is the residual's gradient.
    dx has x's memory format. ``coef_only`` (SyncBatchNorm's exchange of the reduction) is not supported.
    """
    if coef_only:
        raise NotImplementedError("the reduction-only backward runs on the Triton kernels")
    g = grad_output if gate is None else torch.ops.aten.threshold_backward(grad_output, gate, 0)
    need_weight = need_weight and weight is not None
    acc, dims, count = stats.dtype, _reduce_dims(x), x.numel() // x.shape[1]
    mean, invstd = stats[0], stats[1]
    full = need_input and stats_grad  # dx through the batch statistics
    ga = g.to(acc)
    xmu = x.to(acc) - _per_channel(mean, x) if need_weight or full else None
    sum_g = ga.sum(dims) if need_bias or full else None
    sum_g_xmu = (ga * xmu).sum(dims) if xmu is not None else None
    dx = dw = db = None
    if need_input:
        scale = invstd if weight is None else invstd * weight.to(acc)
        if full:
            ga = ga - _per_channel(sum_g / count, x) - xmu * _per_channel(invstd * invstd * sum_g_xmu / count, x)
        dx = _written(x, x.dtype, ga * _per_channel(scale, x))
    if need_weight:
        dw = (invstd * sum_g_xmu).to(weight.dtype)
    if need_bias:
        db = sum_g.to(bias_dtype or (weight.dtype if weight is not None else acc))
    return dx, dw, db, (g if need_residual else None), None


def channel_sums(
    u: torch.Tensor,
    mu_u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    mu_v: torch.Tensor | None = None,
    *,
    want_sum_u: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`tritonbn.launch.channel_sums` by torch: per-channel ``Σ (u - mu_u)`` (if ``want_sum_u``)
    and ``Σ (u - mu_u)·(v - mu_v)`` (if ``v`` is given), summed in the accumulation dtype."""
    acc = acc_dtype(torch.promote_types(u.dtype, v.dtype) if v is not None else u.dtype)
    dims = _reduce_dims(u)
    cu = u.to(acc)
    if mu_u is not None:
        cu = cu - _per_channel(mu_u.to(acc), u)
    sum_u = cu.sum(dims) if want_sum_u else None
    sum_uv = None
    if v is not None:
        cv = v.to(acc)
        if mu_v is not None:
            cv = cv - _per_channel(mu_v.to(acc), v)
        sum_uv = (cu * cv).sum(dims)
    return sum_u, sum_uv


def channel_affine(
    like: torch.Tensor,
    t1: torch.Tensor | None = None,
    mu1: torch.Tensor | None = None,
    a1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    mu2: torch.Tensor | None = None,
    a2: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
    relu: bool = False,
    gate: torch.Tensor | None = None,
    gate_output: bool = False,
) -> torch.Tensor:
    """:func:`tritonbn.launch.channel_affine` by torch: ``a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c]``
    in the accumulation dtype, written shaped and laid out like ``like`` in ``dtype`` (default ``like.dtype``).

    Missing terms are 0, a missing ``mu`` too; a given term comes with its coefficient, as the kernel
    requires (:func:`tritonbn.autograd.channel_affine` supplies 1). ``relu`` clamps at 0; ``gate`` zeroes ``t1`` (with
    ``gate_output``, the result) where ``gate <= 0``, as torch's ReLU backward does.
    """
    dtype = dtype or like.dtype
    acc = acc_dtype(dtype if t1 is None else torch.promote_types(dtype, t1.dtype))
    total = None
    for i, (t, mu, a) in enumerate(((t1, mu1, a1), (t2, mu2, a2))):
        if t is None:
            continue
        term = t.to(acc)
        if mu is not None:
            term = term - _per_channel(mu.to(acc), t)
        term = term * _per_channel(a.to(acc), t)
        if i == 0 and gate is not None and not gate_output:
            term = torch.where(gate <= 0, 0, term)
        total = term if total is None else total + term
    if g is not None:
        g = _per_channel(g.to(acc), like)
        total = g.expand(like.shape) if total is None else total + g
    if total is None:
        return _empty_output(like, dtype).zero_()
    if relu:
        total = torch.relu(total)
    if gate is not None and gate_output:
        total = torch.where(gate <= 0, 0, total)
    return _written(like, dtype, total)
