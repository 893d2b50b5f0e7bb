"""Functional batch normalization: validation like torch, then tritonbn's autograd on the right computation.

Execution paths (the same autograd Functions, and so the same derivatives, on each):

* CUDA tensors run the Triton kernels (never a silent fallback to PyTorch's batch norm);
* CPU tensors run the same kernels in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before
  tritonbn was imported (how the test suite runs without a GPU);
* other tensors (the plain CPU path) compute with torch ops (:mod:`tritonbn.native`): torch's CPU batch
  norm forward and first-order backward, tritonbn's differentiable backward for higher orders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonbn import autograd, launch, ops

__all__ = ["batch_norm", "batch_norm_backward", "batch_norm_relu", "uses_triton"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# torch's ScalarType names, as they appear in its "not implemented for" messages.
_SCALAR_TYPE_NAMES = {
    torch.bool: "Bool",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def uses_triton(t: torch.Tensor) -> bool:
    """Whether a tensor on this device is processed by the Triton kernels (CUDA, or the CPU with
    ``TRITON_INTERPRET=1`` set before import); else tritonbn computes with torch ops."""
    return launch.uses_triton(t)


def _check_inputs(input, running_mean, running_var, weight, bias, training, eps, *, dtypes: bool = True) -> None:
    """Raise what ``torch.nn.functional.batch_norm`` raises, with the same type and message.

    ``dtypes=False`` leaves the dtypes of the parameters unchecked (the caller checks them its own way).
    """
    if not _certainly_valid(input, running_mean, running_var, weight, bias, training, eps):
        _find_invalid(input, running_mean, running_var, weight, bias, training, eps)
    if dtypes:
        _check_dtypes(input, running_mean, running_var, weight, bias, training, eps)


def _certainly_valid(input, running_mean, running_var, weight, bias, training, eps) -> bool:
    """The common case in a few attribute reads: True only where :func:`_find_invalid` raises nothing (False:
    let it judge). (C,) parameters on the input's device, a supported dtype, eps > 0, and in training more
    than one value per channel and both running statistics or neither; in evaluation both."""
    if input.dim() < 2 or not eps > 0.0 or input.dtype not in _SUPPORTED_DTYPES:
        return False
    channels = input.shape[1]
    if training:
        if channels == 0 or input.numel() == channels or (running_mean is None) != (running_var is None):
            return False
    elif running_mean is None or running_var is None:
        return False
    shape, device = (channels,), input.device
    for t in (running_mean, running_var, weight, bias):
        if t is not None and (t.shape != shape or t.device != device):
            return False
    return True


def _find_invalid(input, running_mean, running_var, weight, bias, training, eps) -> None:
    """Every check of :func:`_check_inputs` but the dtypes', in torch's order."""
    if training and (input.dim() < 2 or input.shape[1] == 0 or input.numel() == input.shape[1]):
        # one value per channel, or a shape torch's check must judge (it is the only case it can raise)
        F._verify_batch_size(input.size())
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if input.dtype not in _SUPPORTED_DTYPES:
        name = _SCALAR_TYPE_NAMES.get(input.dtype, str(input.dtype))
        raise NotImplementedError(f"\"batch_norm\" not implemented for '{name}'")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError(f"running_{'mean' if running_mean is None else 'var'} must be defined in evaluation mode")
    channels = input.shape[1] if input.dim() > 1 else 0
    defined = [t for t in (running_mean, running_var, weight, bias) if t is not None]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
    if input.dim() < 2 and training:
        # torch indexes the channel dimension and fails with IndexError; let it say so in its own words.
        input.size(1)
    device = input.device
    for t in defined:
        if t.dim() != 1:
            raise RuntimeError(f"TensorAccessor expected 1 dims but tensor has {t.dim()}")
    if any(t.device != device for t in defined):
        error_type, message = _device_verdict(input, running_mean, running_var, weight, bias, training, eps)
        raise error_type(message)


_DEVICE_VERDICTS: dict[tuple, tuple[type, str] | None] = {}


def _device_verdict(input, running_mean, running_var, weight, bias, training, eps) -> tuple[type, str]:
    """torch's error for (C,) parameters that are not all on the input's device: (exception type, message).

    Its wording depends on the devices and on the kernel that notices (CPU: ``Tensor on device meta is not
    on the expected device cpu!``; CUDA: ``Expected all tensors to be on the same device, ...``), so torch
    is asked (:func:`_ask_torch`): a (2, C) zero input and zero parameters on the same devices and in the
    same dtypes. Should torch accept the mix (or not be asked: CUDA graph capture, an out-of-memory probe),
    the kernels cannot: the message of torch's CUDA operators is given.
    """
    tensors = (running_mean, running_var, weight, bias)
    verdict = None
    if not (input.is_cuda and torch.cuda.is_current_stream_capturing()):
        key = (input.device, input.dtype, *((None, None) if t is None else (t.device, t.dtype) for t in tensors))
        channels = input.shape[1]

        def probe():
            x = torch.zeros((2, channels), dtype=input.dtype, device=input.device)
            return x, *(None if t is None else torch.zeros(channels, dtype=t.dtype, device=t.device) for t in tensors)

        verdict = _ask_torch(_DEVICE_VERDICTS, key + (bool(training), float(eps)), probe, training, eps)
    if verdict is None:
        other = next(t.device for t in tensors if t is not None and t.device != input.device)
        verdict = (
            RuntimeError,
            f"Expected all tensors to be on the same device, but found at least two devices, {input.device} "
            f"and {other}!",
        )
    return verdict


def _check_dtypes(input, running_mean, running_var, weight, bias, training, eps) -> None:
    """Raise what torch raises for this mix of input and parameter dtypes, or nothing where torch accepts it.

    Parameters all in the input's dtype always pass. Any other mix gets torch's own verdict on the
    input's device (its rules differ between devices, between its CPU training and evaluation kernels, and
    on CUDA between cuDNN and its native kernel): see :func:`_dtype_verdict`.
    """
    dtype = input.dtype
    if (
        (running_mean is None or running_mean.dtype == dtype)
        and (running_var is None or running_var.dtype == dtype)
        and (weight is None or weight.dtype == dtype)
        and (bias is None or bias.dtype == dtype)
    ):
        return
    if torch.compiler.is_compiling():
        return  # fake tensors: the custom op checks the real ones when it runs, as torch's own op does
    dtypes = tuple(None if t is None else t.dtype for t in (running_mean, running_var, weight, bias))
    verdict = _dtype_verdict(input, dtypes, bool(training), float(eps))
    if verdict is not None:
        error_type, message = verdict
        raise error_type(message)


_DTYPE_VERDICTS: dict[tuple, tuple[type, str] | None] = {}


def _dtype_verdict(input: torch.Tensor, dtypes: tuple, training: bool, eps: float) -> tuple[type, str] | None:
    """torch's verdict on a dtype mix: ``None`` (accepted) or (exception type, message).

    Found by asking torch itself, once per mix and kernel choice (then cached):
    ``torch.nn.functional.batch_norm`` on a (2, 1, 1, ...) tensor with the input's number of dimensions and
    dtype, parameters of these dtypes, the same ``eps``, on the input's device type (on CUDA torch picks
    cuDNN or its native kernel by these and ``torch.backends.cudnn.enabled``, which is in the key). The
    checks are spread over torch's kernels (which tensor is read first decides the message); replaying them
    gives its exact answer on every torch version. The probe runs outside any dispatch mode (a fake-tensor
    trace must not decide for real tensors); meta tensors, CUDA graph capture and an out-of-memory probe
    get no verdict (the call goes on, and the kernels raise what they raise).
    """
    device_type = input.device.type
    if device_type == "meta" or (input.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    cudnn = torch.backends.cudnn.enabled if input.is_cuda else None
    key = (device_type, input.dtype, dtypes, training, input.dim(), eps, cudnn)

    def probe():
        device = torch.device(device_type)
        x = torch.zeros((2, 1) + (1,) * (input.dim() - 2), dtype=input.dtype, device=device)
        return x, *(None if d is None else torch.ones(1, dtype=d, device=device) for d in dtypes)

    return _ask_torch(_DTYPE_VERDICTS, key, probe, training, eps)


def _ask_torch(cache: dict, key: tuple, probe, training: bool, eps: float) -> tuple[type, str] | None:
    """``torch.nn.functional.batch_norm``'s verdict on the (input, running_mean, running_var, weight, bias)
    that ``probe()`` builds, with ``training`` and ``eps``: None (accepted) or (exception type, message),
    cached under ``key``. The probe runs outside any dispatch mode (a fake-tensor trace must not decide for
    real tensors) and without autograd; one that runs out of memory gets None, not cached."""
    if key in cache:
        return cache[key]
    verdict = None
    with _no_dispatch_modes(), torch.no_grad():
        try:
            F.batch_norm(*probe(), training, 0.1, eps)
        except torch.OutOfMemoryError:
            return None
        except (RuntimeError, TypeError, ValueError) as e:
            verdict = type(e), str(e)
    cache[key] = verdict
    return verdict


def _no_dispatch_modes():
    """A context without the active torch dispatch modes (e.g. FakeTensorMode): real tensors inside."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    detach_stats: bool = False,
) -> torch.Tensor:
    """Batch normalization with the contract of :func:`torch.nn.functional.batch_norm`.

    ``input`` is (N, C, *spatial). In training the batch mean and biased variance normalise the input and
    ``running_mean``/``running_var`` (when given) are updated in place with ``momentum`` and the unbiased
    variance; otherwise the running statistics are used.

    ``detach_stats=True`` (training only) treats the batch mean and variance as constants in the
    backward: ``dx = dy · weight · invstd`` instead of the full batch-norm gradient. Use it when the
    statistics should act as a fixed per-batch whitening (e.g. when differentiating a network w.r.t. its
    inputs one sample at a time); it is not the gradient of the training-mode forward.
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, detach_stats)


def batch_norm_relu(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    residual: torch.Tensor | None = None,
    detach_stats: bool = False,
) -> torch.Tensor:
    """``relu(batch_norm(input, ...) + residual)`` in one kernel forward and one fused backward.

    The pattern of every ResNet block (``residual`` omitted: ``relu(batch_norm(input))``). Arguments and
    running-statistics semantics are those of :func:`batch_norm`. A ``residual`` with the shape, dtype and
    device of ``input`` is fused; any other is computed as torch computes ``relu(batch_norm(...) + residual)``
    (type promotion, e.g. a float32 residual under bfloat16 autocast, and broadcasting, with torch's errors).
    """
    if residual is not None and not _fusable_residual(input, residual):
        y = _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, detach_stats)
        return torch.relu(y + residual)
    return _batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, detach_stats, residual, True
    )


def _fusable_residual(input: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether the fused kernels take ``residual``: a tensor of ``input``'s shape, dtype and device. Any other
    residual (a Python number too) gets torch's ``relu(bn(x) + residual)`` unfused (dtype promotion,
    broadcasting, torch's errors)."""
    return (
        isinstance(residual, torch.Tensor)
        and residual.shape == input.shape
        and residual.dtype == input.dtype
        and residual.device == input.device
    )


def _mark_relu_output(y: torch.Tensor) -> torch.Tensor:
    """Mark the output of a fused layer's ReLU: a FusedReLU given this very tensor, unmodified since (not a
    copy, not the result of another op, not changed in place) has nothing left to do. A Python attribute
    of the tensor object holding its version counter, so it dies with the tensor; under torch.compile it
    is read while tracing (where the version counter is not: the mark alone counts)."""
    if torch.compiler.is_compiling():
        y = y.view_as(y)  # dynamo stores no attribute on a custom op's output, but does on a view of it
        y._tritonbn_relu_output = -1
    else:
        y._tritonbn_relu_output = y._version
    return y


def _is_relu_output(t) -> bool:
    if not isinstance(t, torch.Tensor):
        return False
    version = getattr(t, "_tritonbn_relu_output", None)
    if version is None:
        return False
    return torch.compiler.is_compiling() or version == t._version


def _batch_norm(
    input,
    running_mean,
    running_var,
    weight,
    bias,
    training,
    momentum,
    eps,
    detach_stats,
    residual=None,
    relu=False,
    num_batches_tracked=None,
):
    """:func:`batch_norm_relu`'s computation unchecked; ``num_batches_tracked`` (a layer's counter, under
    torch.compile only) stands for the cumulative average's momentum 1/count."""
    if not isinstance(momentum, (int, float)):
        raise TypeError(f"batch_norm(): argument 'momentum' (position 7) must be float, not {type(momentum).__name__}")
    _check_inputs(input, running_mean, running_var, weight, bias, training, eps)
    grad_enabled = torch.is_grad_enabled()
    if grad_enabled and (
        (running_mean is not None and running_mean.requires_grad)
        or (running_var is not None and running_var.requires_grad)
    ):
        name = "running_mean" if running_mean is not None and running_mean.requires_grad else "running_var"
        raise RuntimeError(
            f"The function 'native_batch_norm' is not differentiable with respect to argument '{name}'. "
            "This input cannot have requires_grad True."
        )
    if input.numel() == 0:
        return _empty_batch(input, weight, bias, residual)
    if torch.compiler.is_compiling():
        # the custom ops have no vmap or jvp rules: under transforms, the autograd Function run eagerly
        run = _eager_batch_norm_function if autograd.transforms_active() else ops.compiled_batch_norm
        args = (running_mean, running_var, weight, bias, training, momentum, eps, detach_stats, residual, relu)
        return run(input, *args, num_batches_tracked)
    needs_graph = grad_enabled and (
        input.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad)
    )
    if not needs_graph and not autograd.transforms_active():
        # nothing to differentiate: the kernels alone, without an autograd node
        y, _ = autograd._impl(input).bn_forward(
            input, weight, bias, running_mean, running_var, training, momentum, eps, residual, relu
        )
        return y
    return autograd.batch_norm_function(
        input, weight, bias, running_mean, running_var, training, momentum, eps, detach_stats, residual, relu
    )


@torch.compiler.disable
def _eager_batch_norm_function(
    input, running_mean, running_var, weight, bias, training, momentum, eps, detach_stats, residual, relu, count
):
    """The autograd Function run eagerly inside a compiled region (a graph break), with the arguments of
    :func:`tritonbn.ops.compiled_batch_norm`."""
    _check_dtypes(input, running_mean, running_var, weight, bias, training, eps)  # (skipped while tracing)
    if count is not None:
        momentum = 1.0 / float(count)  # the cumulative average's
    return autograd.batch_norm_function(
        input, weight, bias, running_mean, running_var, training, momentum, eps, detach_stats, residual, relu
    )


def _empty_batch(input, weight, bias, residual):
    """An empty output that keeps weight, bias and residual in the graph (zero gradients), as torch's does."""
    shape = [1, -1] + [1] * (input.dim() - 2)
    out = input.clone()
    for p in (weight, bias):
        if p is not None:
            out = out + (p.reshape(shape) * 0).to(input.dtype)
    return out if residual is None else out + residual


def batch_norm_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor | None,
    save_mean: torch.Tensor,
    save_invstd: torch.Tensor,
    *,
    training: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The explicit batch-norm backward, by the Triton kernels: ``(grad_input, grad_weight, grad_bias)``.

    ``save_mean``/``save_invstd`` are the statistics the forward normalised with: the batch mean and
    ``1/sqrt(var + eps)`` in training, the running mean and ``1/sqrt(running_var + eps)`` in eval
    (``training=False``, where the statistics are constants). ``grad_weight``/``grad_bias`` are ``None``
    when ``weight`` is ``None``. The result is not differentiable: use autograd for higher orders. Where
    the kernels do not run (the plain CPU path) the same formulas run as torch ops; under ``torch.func``
    transforms (``vmap``, ``jvp``) they run through the differentiable primitives.

    Raises RuntimeError when ``grad_output`` and ``input`` differ in shape, and what
    :func:`torch.nn.functional.batch_norm` raises for the other arguments.
    """
    if grad_output.shape != input.shape:
        raise RuntimeError(
            f"grad_output must have the shape of input, got {tuple(grad_output.shape)} and {tuple(input.shape)}"
        )
    _check_inputs(input, save_mean, save_invstd, weight, None, False, 0.0, dtypes=False)
    # the saved statistics are in the accumulation dtype (or the input's); weight follows the forward's rule
    _check_dtypes(input, None, None, weight, None, True, 1e-5)
    acc = launch.acc_dtype(input.dtype)
    if autograd.transforms_active():  # vmap, jvp: the same formulas through the primitives' rules
        return autograd.closed_form_backward(
            grad_output,
            input,
            weight,
            save_mean.to(acc),
            save_invstd.to(acc),
            training,
            (True, True, weight is not None),
        )
    with torch.no_grad():
        stats = torch.stack([save_mean.to(acc), save_invstd.to(acc)])
        dx, dw, db, _ = autograd.backward_kernels(
            grad_output, input, weight, stats, stats_grad=training, need_bias=weight is not None
        )
        return dx, dw, db
