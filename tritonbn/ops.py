"""torch.library custom ops, so ``torch.compile`` traces tritonbn without graph breaks.

Dynamo cannot look inside Triton launches wrapped in an ``autograd.Function`` that mutates buffers, so under
``torch.compile`` the layers call these ops instead:

* ``tritonbn::batch_norm_forward`` -> ``(y, mean, invstd, new_running_mean, new_running_var)``. It does not
  mutate its inputs: the new running statistics are returned and copied into the buffers outside the op
  (``torch.library`` cannot give autograd to an op that mutates its inputs);
* ``tritonbn::batch_norm_backward`` -> ``(dx, dweight, dbias, dresidual)``, the fused first-order backward.

Both have fake (meta) implementations for tracing, and the forward has its autograd registered with the
backward op. Compiled graphs get first-order gradients; double backward (``create_graph=True``) is an eager
feature, where :class:`tritonbn.autograd.BatchNormFunction` differentiates its own backward.
"""

# torch.library infers the op schemas from these annotations: keep typing.Optional, which every supported
# torch version understands.
# ruff: noqa: UP045
from typing import Optional

import torch
from torch import Tensor

from tritonbn import autograd, launch

__all__ = ["batch_norm_backward", "batch_norm_forward", "compiled_batch_norm"]


def _none_if_empty(t: Tensor) -> Optional[Tensor]:
    return None if t.numel() == 0 else t


@torch.library.custom_op("tritonbn::batch_norm_forward", mutates_args=())
def batch_norm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    residual: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    relu: bool,
    detach_stats: bool,
    num_batches_tracked: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from tritonbn.functional import _check_dtypes  # (functional imports this module)

    _check_dtypes(x, running_mean, running_var, weight, bias, training, eps)
    if num_batches_tracked is not None:  # cumulative moving average (momentum=None): read when the op runs
        momentum = 1.0 / float(num_batches_tracked)
    new_mean, new_var = x.new_empty(0), x.new_empty(0)
    if training and running_mean is not None:
        new_mean = running_mean.clone()
    if training and running_var is not None:
        new_var = running_var.clone()
    # the statistics kernel updates the copies in place; the caller's buffers are untouched
    if training:
        rm, rv = _none_if_empty(new_mean), _none_if_empty(new_var)
    else:
        rm, rv = running_mean, running_var  # read only in eval
    y, stats = autograd._impl(x).bn_forward(x, weight, bias, rm, rv, training, momentum, eps, residual, relu)
    return y, stats[0].clone(), stats[1].clone(), new_mean, new_var


@batch_norm_forward.register_fake
def _(x, weight, bias, running_mean, running_var, residual, training, momentum, eps, relu, detach_stats, _count):
    acc = launch.acc_dtype(x.dtype)
    C = x.shape[1]
    new_mean = running_mean.new_empty(C) if training and running_mean is not None else x.new_empty(0)
    new_var = running_var.new_empty(C) if training and running_var is not None else x.new_empty(0)
    return torch.empty_like(x), x.new_empty(C, dtype=acc), x.new_empty(C, dtype=acc), new_mean, new_var


@torch.library.custom_op("tritonbn::batch_norm_backward", mutates_args=())
def batch_norm_backward(
    grad_output: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    invstd: Tensor,
    relu_output: Optional[Tensor],
    stats_grad: bool,
    need_bias: bool,
    need_residual: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dweight, dbias, dres = autograd.backward_kernels(
        grad_output,
        x,
        weight,
        torch.stack([mean, invstd]),
        stats_grad=stats_grad,
        need_bias=need_bias,
        relu_output=relu_output,
        need_residual=need_residual,
    )
    if not need_residual:
        dres = x.new_empty(0)
    elif relu_output is None:
        dres = grad_output.clone()  # outputs of a custom op may not alias its inputs
    # "no gradient" is a fresh empty tensor each: outputs of a custom op may not alias one another
    dweight = x.new_empty(0) if dweight is None else dweight
    dbias = x.new_empty(0) if dbias is None else dbias
    return dx, dweight, dbias, dres


@batch_norm_backward.register_fake
def _(grad_output, x, weight, mean, invstd, relu_output, stats_grad, need_bias, need_residual):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    bias_dtype = weight.dtype if weight is not None else launch.acc_dtype(x.dtype)
    db = x.new_empty(x.shape[1], dtype=bias_dtype) if need_bias else x.new_empty(0)
    dres = torch.empty_like(x) if need_residual else x.new_empty(0)
    return torch.empty_like(x), dw, db, dres


def _setup_context(ctx, inputs, output):
    x, weight, bias, running_mean, running_var, residual, training, momentum, eps, relu, detach_stats, _ = inputs
    y, mean, invstd, _, _ = output
    ctx.save_for_backward(x, weight, mean, invstd, y if relu else None)
    ctx.stats_grad = training and not detach_stats
    ctx.has_residual = residual is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.set_materialize_grads(True)


def _backward(ctx, grad_y, _grad_mean, _grad_invstd, _grad_new_mean, _grad_new_var):
    x, weight, mean, invstd, relu_output = ctx.saved_tensors
    has_bias = ctx.bias_dtype is not None
    dx, dweight, dbias, dres = batch_norm_backward(
        grad_y, x, weight, mean, invstd, relu_output, ctx.stats_grad, has_bias, ctx.has_residual
    )
    return (
        dx,
        dweight if weight is not None else None,
        dbias.to(ctx.bias_dtype) if has_bias else None,
        None,
        None,
        dres if ctx.has_residual else None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


batch_norm_forward.register_autograd(_backward, setup_context=_setup_context)


def compiled_batch_norm(
    input,
    running_mean,
    running_var,
    weight,
    bias,
    training,
    momentum,
    eps,
    detach_stats,
    residual,
    relu,
    num_batches_tracked=None,
):
    """The functional batch norm as traced by torch.compile: the op, then the buffer update outside it.

    ``num_batches_tracked`` (a layer's counter, already incremented) replaces ``momentum`` by the cumulative
    average's 1/count, read by the op when it runs (a device synchronisation, as in eager mode): a
    data-dependent float cannot be traced (torch's own layer fails to compile with ``momentum=None``).
    """
    y, _, _, new_mean, new_var = batch_norm_forward(
        input,
        weight,
        bias,
        running_mean,
        running_var,
        residual,
        training,
        momentum,
        eps,
        relu,
        detach_stats,
        num_batches_tracked,
    )
    if training:
        with torch.no_grad():
            if running_mean is not None:
                running_mean.copy_(new_mean)
            if running_var is not None:
                running_var.copy_(new_var)
    return y
