"""Drop-in modules: ``tritonbn.BatchNorm2d`` is-a ``torch.nn.BatchNorm2d`` and behaves like one."""

from __future__ import annotations

import torch
from torch import nn

from tritonbn.distributed import SyncBatchNorm, SyncBatchNormAddReLU, SyncBatchNormReLU
from tritonbn.functional import _batch_norm, _fusable_residual, _is_relu_output, _mark_relu_output

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm2dAddReLU",
    "BatchNorm2dReLU",
    "BatchNorm3d",
    "FrozenBatchNorm2d",
    "FusedReLU",
    "convert_model",
    "revert_model",
]


class _TritonBatchNorm:
    """Mixed into torch's BatchNorm classes: same constructor, parameters, buffers, state_dict and errors.

    The one extra keyword-only argument, ``detach_stats`` (default ``False``), makes the training-mode
    backward treat the batch mean and variance as constants (see :func:`tritonbn.batch_norm`).
    """

    applies_relu = False  # whether forward ends with a ReLU (the fused subclasses)
    takes_residual = False  # whether forward takes a residual to add before the ReLU

    def __init__(self, *args, detach_stats: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.detach_stats = detach_stats

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._forward(input)

    def _forward(self, input, residual=None, relu=False):
        # Mirrors torch.nn.modules.batchnorm._BatchNorm.forward, calling tritonbn's batch norm.
        self._check_input_dim(input)
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        count = None
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                if torch.compiler.is_compiling():
                    count = self.num_batches_tracked  # read by the op when it runs: 1/count is data-dependent
                else:
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return _batch_norm(
            input,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
            getattr(self, "detach_stats", False),
            residual,
            relu,
            count,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + ", detach_stats=True" if getattr(self, "detach_stats", False) else s


class BatchNorm1d(_TritonBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` on Triton kernels; input (N, C) or (N, C, L)."""


class BatchNorm2d(_TritonBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` on Triton kernels; input (N, C, H, W), contiguous or channels_last."""


class BatchNorm3d(_TritonBatchNorm, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` on Triton kernels; input (N, C, D, H, W), contiguous or channels_last_3d."""


class BatchNorm2dReLU(BatchNorm2d):
    """``relu(BatchNorm2d(x))`` fused: one kernel forward, the ReLU mask folded into the backward kernels.

    Same parameters, buffers and state_dict as :class:`torch.nn.BatchNorm2d`, so a trained BatchNorm2d's
    weights load as they are.
    """

    applies_relu = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _mark_relu_output(self._forward(input, relu=True))


class BatchNorm2dAddReLU(BatchNorm2d):
    """``relu(BatchNorm2d(x) + residual)`` fused, the tail of every ResNet block: ``forward(x, residual)``.

    A ``residual`` of another dtype or shape (type promotion under autocast, broadcasting) is computed
    unfused, exactly as torch computes ``relu(bn(x) + residual)``, with torch's errors.
    """

    applies_relu = True
    takes_residual = True

    def forward(self, input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if not _fusable_residual(input, residual):
            return torch.relu(self._forward(input) + residual)
        return _mark_relu_output(self._forward(input, residual=residual, relu=True))


class FusedReLU(nn.ReLU):
    """The ``ReLU`` that :func:`convert_model` fused into the batch norm before it: a ``torch.nn.ReLU`` that
    passes the fused layer's output through untouched (it is already ``relu(batch_norm(x))``).

    Any other input gets ``relu``. So when the fused layer is replaced by one without the ReLU (as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` rebuilds it into a plain ``nn.SyncBatchNorm``), the
    model is cut and reassembled (``nn.Sequential(*list(model.children())[:k])``), a hook changes the
    layer's output, or the layers are copied, pickled or replicated, the model still computes
    ``relu(batch_norm(x))``. The decision is made per call from the tensor itself (the fused layers mark
    their outputs); under ``torch.compile`` it is made while tracing and costs nothing.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if _is_relu_output(input):
            return input
        return super().forward(input)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, like ``torchvision.ops.FrozenBatchNorm2d``.

    All four tensors are buffers: nothing is trained and nothing is updated; the layer always normalises
    with ``running_mean``/``running_var``, and gradients flow to the input only. Used to fine-tune detection
    and segmentation backbones with batches too small for meaningful batch statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # Accept a BatchNorm2d state_dict: drop its counter, which this layer does not have.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        return _batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps, False)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps})"


_TO_TRITON = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.SyncBatchNorm: SyncBatchNorm,
}
_TO_TORCH = {ours: theirs for theirs, ours in _TO_TRITON.items()}
# a layer followed by a ReLU, and the fused layer it becomes (convert_model(fuse_relu=True))
_FUSE_RELU = {
    nn.BatchNorm2d: BatchNorm2dReLU,
    BatchNorm2d: BatchNorm2dReLU,
    nn.SyncBatchNorm: SyncBatchNormReLU,
    SyncBatchNorm: SyncBatchNormReLU,
}
# fused layers that revert_model can undo when a FusedReLU stands for their ReLU
_UNFUSE = {BatchNorm2dReLU: nn.BatchNorm2d, SyncBatchNormReLU: nn.SyncBatchNorm}
_FUSED = (BatchNorm2dReLU, BatchNorm2dAddReLU, SyncBatchNormReLU, SyncBatchNormAddReLU)


def _retype(module: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` instance sharing the parameters, buffers, hooks and attributes of ``module``.

    The attribute dicts are copied (so adding a parameter or hook to one does not touch the other) but
    their tensors are shared, exactly as ``SyncBatchNorm.convert_sync_batchnorm`` shares them.
    """
    new = cls.__new__(cls)
    new.__dict__.update({k: v.copy() if isinstance(v, dict) else v for k, v in module.__dict__.items()})
    return new


def convert_model(module: nn.Module, *, detach_stats: bool = False, fuse_relu: bool = False) -> nn.Module:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` in ``module`` (exact type) by
    tritonbn's.

    Parameters and buffers are shared, train/eval state, device, dtype and hooks preserved. Children are
    replaced in place; the (possibly new) root is returned, so call it as
    ``model = tritonbn.convert_model(model)``. Subclasses of torch's layers are left alone.

    With ``fuse_relu=True``, a ``BatchNorm2d`` (torch's or tritonbn's) directly followed by a ``ReLU`` in an
    ``nn.Sequential`` becomes a :class:`BatchNorm2dReLU` (a ``SyncBatchNorm``, a
    :class:`tritonbn.SyncBatchNormReLU`) and the ReLU a :class:`FusedReLU` placeholder, so indices and
    state_dict keys do not move. The placeholder is the identity while the fused layer is in place and a
    ReLU again if that layer is replaced (e.g. by ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``), so
    the model keeps computing the same function.
    """
    if type(module) in _TO_TRITON:
        converted = _retype(module, _TO_TRITON[type(module)])
        converted.detach_stats = detach_stats
        return converted
    children = list(module.named_children())
    for i, (name, child) in enumerate(children):
        new_child = convert_model(child, detach_stats=detach_stats, fuse_relu=fuse_relu)
        if (
            fuse_relu
            and isinstance(module, nn.Sequential)
            and type(child) in _FUSE_RELU
            and i + 1 < len(children)
            and type(children[i + 1][1]) is nn.ReLU
        ):
            new_child = _retype(new_child, _FUSE_RELU[type(child)])
            relu_name, relu = children[i + 1]
            setattr(module, relu_name, FusedReLU(relu.inplace))
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _check_revertible(module: nn.Module, prefix: str = "") -> None:
    children = list(module.named_children())
    for i, (name, child) in enumerate(children):
        path = f"{prefix}{name}"
        followed = i + 1 < len(children) and type(children[i + 1][1]) is FusedReLU
        if isinstance(child, _FUSED) and not (type(child) in _UNFUSE and followed):
            what = "takes a residual" if child.takes_residual else "applies a ReLU that no FusedReLU follows"
            raise ValueError(
                f"revert_model: {path!r} ({type(child).__name__}) has no torch.nn equivalent: it {what}. "
                "Replace it by torch.nn layers in the model's code (e.g. BatchNorm2d, then ReLU)."
            )
        _check_revertible(child, path + ".")


def revert_model(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_model`: tritonbn's batch norms become ``torch.nn`` ones again, fused ReLUs
    ``nn.ReLU`` modules again.

    A fused layer directly followed by its :class:`FusedReLU` becomes the plain layer again, and the
    placeholder an ``nn.ReLU``. Raises ValueError, before changing anything, for a fused layer that has no
    ``torch.nn`` equivalent: a :class:`BatchNorm2dAddReLU` (its forward takes a residual) or a
    :class:`BatchNorm2dReLU` that no :class:`FusedReLU` follows (one placed by hand).
    """
    if isinstance(module, _FUSED):
        raise ValueError(f"revert_model: {type(module).__name__} has no torch.nn equivalent (it applies a ReLU)")
    _check_revertible(module)
    return _revert(module)


def _revert(module: nn.Module) -> nn.Module:
    if type(module) in _TO_TORCH:
        reverted = _retype(module, _TO_TORCH[type(module)])
        reverted.__dict__.pop("detach_stats", None)
        return reverted
    for name, child in module.named_children():
        if type(child) is FusedReLU:
            setattr(module, name, nn.ReLU(child.inplace))
            continue
        if type(child) in _UNFUSE:  # (checked: a FusedReLU follows it)
            new_child = _retype(child, _UNFUSE[type(child)])
            new_child.__dict__.pop("detach_stats", None)
        else:
            new_child = _revert(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
