"""``tritonbn.SyncBatchNorm``: batch statistics over every rank of a process group, on the Triton kernels.

Drop-in for :class:`torch.nn.SyncBatchNorm` (a subclass: same constructor, ``process_group``, parameters,
buffers, state_dict, ``repr``, errors and ``convert_sync_batchnorm``). In training, with
``torch.distributed`` initialised and more than one rank in the group:

* forward: each rank reduces its own batch with the Triton statistics kernels to a per-channel
  (count, mean, M2); one ``all_gather`` exchanges these packed (1 + 2C) vectors and
  :func:`tritonbn.launch.merge_stats` merges them with Chan's parallel formula -- the same merge that
  combines the per-block partials of one GPU -- so ranks may hold different batch sizes, or none;
* backward: each rank reduces Σdy and Σdy·(x - mean) with one Triton pass, one ``all_reduce`` sums
  them over the group, and one Triton pass writes dx with the global element count. ``weight``/``bias``
  gradients are the local sums, as in torch: DistributedDataParallel averages them over the ranks.

Otherwise (eval mode, no process group, or a group of one) it is :func:`tritonbn.batch_norm`, as torch's
SyncBatchNorm is F.batch_norm there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from tritonbn import launch
from tritonbn.autograd import _update_running_stats
from tritonbn.functional import _batch_norm, _check_inputs, _fusable_residual, _mark_relu_output, uses_triton

__all__ = ["SyncBatchNorm", "SyncBatchNormAddReLU", "SyncBatchNormFunction", "SyncBatchNormReLU"]

_custom_fwd = torch.amp.custom_fwd(device_type="cuda")
_custom_bwd = torch.amp.custom_bwd(device_type="cuda")


def _all_gather(t: torch.Tensor, group, world_size: int) -> torch.Tensor:
    """(world_size, numel) stack of ``t`` from every rank of ``group``."""
    if dist.get_backend(group) == dist.Backend.GLOO:  # as torch does: older gloo lacks the one-tensor form
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t, group=group)
        return torch.stack(parts)
    out = torch.empty(world_size * t.numel(), dtype=t.dtype, device=t.device)
    # all_gather_single is the newer name of all_gather_into_tensor (deprecated since)
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather_single(out, t, group=group)
    return out.view(world_size, t.numel())


class SyncBatchNormFunction(Function):
    """Batch norm whose statistics and input gradient are reduced over ``process_group``; first order only.

    ``y = act(batch_norm(x) + residual)``: ``residual`` (optional, x's shape and dtype) is added and, with
    ``relu``, a ReLU applied in the same pass, as in :func:`tritonbn.batch_norm_relu`.
    """

    @staticmethod
    @_custom_fwd
    def forward(
        ctx,
        x,
        weight,
        bias,
        running_mean,
        running_var,
        eps,
        momentum,
        process_group,
        world_size,
        detach_stats,
        residual=None,
        relu=False,
    ):
        acc = launch.acc_dtype(x.dtype)
        C = x.shape[1]
        count = x.numel() // C
        # Local (count, mean, M2), packed in float64 so that counts stay exact beyond 2**24. An empty rank
        # sends zeros: it must take part in the collective, and its zero count removes it from the merge.
        packed = torch.zeros(1 + 2 * C, dtype=torch.float64, device=x.device)
        if count > 0:
            mean, var, _ = launch.batch_stats(x, eps)
            packed[0] = count
            packed[1 : 1 + C] = mean
            packed[1 + C :] = var.to(torch.float64) * count
        gathered = _all_gather(packed, process_group, world_size)
        counts = [int(n) for n in gathered[:, 0].tolist()]  # the one host sync, as in torch's SyncBatchNorm
        total = sum(counts)
        if total == 1:
            # One value per channel in the whole group: the unbiased variance of the running statistics is
            # undefined. Raise on every rank, as a single process does (torch's SyncBatchNorm raises only for
            # a group of one and otherwise moves running_var toward 0).
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
        # Merge the non-empty ranks, the largest first: Chan's formula shifts by the first partial's mean.
        ranks = sorted((r for r in range(world_size) if counts[r] > 0), key=lambda r: -counts[r])
        if ranks:
            rows = gathered[torch.tensor(ranks, device=x.device)]
            mean, var, invstd = launch.merge_stats(
                rows[:, 1 : 1 + C].to(acc), rows[:, 1 + C :].to(acc), rows[:, 0], total, eps
            )
            _update_running_stats(running_mean, running_var, mean, var, total, momentum)
        else:
            # Every rank is empty: nothing to normalise and nothing observed, so the running statistics stay
            # as they are (as a single-process BatchNorm leaves them for an empty batch).
            mean = torch.zeros(C, dtype=acc, device=x.device)
            invstd = torch.ones(C, dtype=acc, device=x.device)
        scale = invstd * weight.detach().to(acc) if weight is not None else invstd
        stats = torch.stack([mean, invstd, scale])
        if count > 0:
            b = bias.detach() if bias is not None else None
            y = launch.bn_apply(x, stats, b, residual=residual, relu=relu)
        else:
            y = x.clone()
        ctx.save_for_backward(x, weight, stats, y if relu else None)
        ctx.has_residual = residual is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.total = total
        ctx.process_group = process_group
        ctx.stats_grad = not detach_stats
        return y

    @staticmethod
    @_custom_bwd
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight, stats, gate = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_res = ctx.has_residual and ctx.needs_input_grad[10]
        need_w = need_w and weight is not None
        need_b = need_b and ctx.bias_dtype is not None
        acc = launch.acc_dtype(x.dtype)
        C = x.shape[1]
        # Every rank of the group reaches the same all_reduce (the layer's settings are the same everywhere).
        sync = need_x and ctx.stats_grad
        dx = dw = db = dres = None
        if x.numel() == 0:
            sums = torch.zeros(2, C, dtype=acc, device=x.device)
            if need_w:
                dw = torch.zeros_like(weight)
            if need_b:
                db = torch.zeros(C, dtype=ctx.bias_dtype, device=x.device)
        elif sync or need_w or need_b:
            # one reduction pass: local dweight/dbias (DistributedDataParallel averages them over the ranks)
            # and the local Σdy, Σdy·(x - mean) in coef rows 3 and 4
            _, dw, db, _, coef = launch.bn_backward(
                grad_output,
                x,
                weight,
                stats,
                stats_grad=False,
                need_input=False,
                need_weight=need_w,
                need_bias=need_b,
                relu_output=gate,
                bias_dtype=ctx.bias_dtype,
                coef_only=True,
            )
            sums = coef[3:5]
        if need_x:
            mean, invstd, scale = stats
            if sync:
                total_sums = sums.contiguous()
                dist.all_reduce(total_sums, dist.ReduceOp.SUM, group=ctx.process_group)
                beta = -scale * invstd * invstd * total_sums[1] / ctx.total
                gamma = -scale * total_sums[0] / ctx.total
            else:  # detached statistics: dx = dy·weight·invstd, nothing to exchange
                beta = gamma = torch.zeros_like(scale)
            if x.numel() == 0:
                dx = torch.empty_like(x)
                dres = grad_output.clone() if need_res else None
            else:
                coef = torch.stack([scale, beta, gamma])
                dx, dres = launch.bn_backward_dx(grad_output, x, stats, coef, relu_output=gate, need_residual=need_res)
        elif need_res:  # the residual's gradient alone: dy, zeroed where the fused ReLU's output is <= 0
            dres = grad_output if gate is None else torch.ops.aten.threshold_backward(grad_output, gate, 0)
        return dx, dw, db, None, None, None, None, None, None, None, dres, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` on Triton kernels; input (N, C, *spatial).

    Same constructor, plus the keyword-only ``detach_stats`` of tritonbn's other modules (the backward then
    treats the global batch statistics as constants, ``dx = dy·weight·invstd``, and exchanges nothing).
    Statistics are synchronised only in training with ``torch.distributed`` initialised and more than
    one rank in ``process_group`` (default: the whole world); otherwise this is :func:`tritonbn.batch_norm`.
    Ranks may hold different batch sizes, including empty ones.

    Raises ValueError ("Expected more than 1 value per channel when training, got input size ...", as
    single-process batch norm) on every rank when the whole group holds one value per channel in training.
    torch's SyncBatchNorm raises this only for a single process and otherwise divides by count - 1 = 0 in
    the running-variance update.
    """

    applies_relu = False  # whether forward ends with a ReLU (the fused subclasses)
    takes_residual = False  # whether forward takes a residual to add before the ReLU

    def __init__(self, *args, detach_stats: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.detach_stats = detach_stats

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + ", detach_stats=True" if getattr(self, "detach_stats", False) else s

    def _sync_group(self) -> tuple[Any, int] | None:
        """(process group, world size) when this training step synchronises, else None (as torch decides)."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group else dist.group.WORLD
        world_size = dist.get_world_size(group)
        return (group, world_size) if world_size > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._forward(input)

    def _forward(self, input, residual=None, relu=False):
        # Mirrors torch.nn.SyncBatchNorm.forward, calling tritonbn's kernels; then + residual, ReLU (fused).
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        detach_stats = getattr(self, "detach_stats", False)
        sync = self._sync_group()
        if sync is not None and not uses_triton(input):
            # No Triton here (CPU without the interpreter, or another accelerator): torch's own layer, which
            # refuses CPU tensors when it has to synchronise.
            if detach_stats and input.device.type != "cpu":
                raise NotImplementedError("SyncBatchNorm(detach_stats=True) needs the Triton kernels (CUDA)")
            y = super().forward(input)
            if residual is not None:
                y = y + residual
            return torch.relu(y) if relu else y
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        count = None
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is None:
                raise AssertionError("num_batches_tracked must not be None")
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                if torch.compiler.is_compiling() and sync is None:
                    count = self.num_batches_tracked  # read by the op when it runs: 1/count is data-dependent
                else:
                    exponential_average_factor = 1.0 / self.num_batches_tracked.item()
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_buffers else None
        running_var = self.running_var if use_buffers else None
        if sync is None:
            return _batch_norm(
                input,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                bn_training,
                exponential_average_factor,
                self.eps,
                detach_stats,
                residual,
                relu,
                count,
            )
        # The single-process checks (dtype, parameter and buffer sizes, devices) on an empty slice of the
        # batch: one value per channel on one rank is fine when the statistics span the group.
        _check_inputs(input.narrow(0, 0, 0), running_mean, running_var, self.weight, self.bias, True, self.eps)
        group, world_size = sync
        return SyncBatchNormFunction.apply(
            input,
            self.weight,
            self.bias,
            running_mean,
            running_var,
            self.eps,
            exponential_average_factor,
            group,
            world_size,
            detach_stats,
            residual,
            relu,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every ``BatchNorm*d`` (torch's or tritonbn's, or a SyncBatchNorm) by this class.

        As :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`: parameters and buffers are shared, the
        train/eval state and ``qconfig`` carried over, children replaced in place and the (possibly new)
        root returned. A tritonbn layer's ``detach_stats`` is carried over too, and so is a fused layer's
        ReLU: :class:`tritonbn.BatchNorm2dReLU` becomes a :class:`SyncBatchNormReLU`,
        :class:`tritonbn.BatchNorm2dAddReLU` a :class:`SyncBatchNormAddReLU`. (torch's own converter turns
        a fused layer into a plain ``torch.nn.SyncBatchNorm``, dropping the ReLU unless
        :func:`tritonbn.convert_model` made the fusion and a :class:`tritonbn.FusedReLU` follows it.)
        """
        module_output = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # a fused layer keeps its fusion: BatchNorm2dReLU -> SyncBatchNormReLU, *AddReLU -> SyncBatchNormAddReLU
            target = cls
            if getattr(module, "takes_residual", False):
                target = SyncBatchNormAddReLU
            elif getattr(module, "applies_relu", False):
                target = SyncBatchNormReLU
            module_output = target(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
                detach_stats=getattr(module, "detach_stats", False),
            )
            if module.affine:
                with torch.no_grad():
                    module_output.weight = module.weight
                    module_output.bias = module.bias
            module_output.running_mean = module.running_mean
            module_output.running_var = module.running_var
            module_output.num_batches_tracked = module.num_batches_tracked
            module_output.training = module.training
            if hasattr(module, "qconfig"):
                module_output.qconfig = module.qconfig
        for name, child in module.named_children():
            module_output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return module_output


class SyncBatchNormReLU(SyncBatchNorm):
    """``relu(SyncBatchNorm(x))`` fused: the ReLU applied in the normalising pass and its mask folded into
    the backward passes. What :meth:`SyncBatchNorm.convert_sync_batchnorm` makes of a
    :class:`tritonbn.BatchNorm2dReLU`; input (N, C, *spatial), same parameters, buffers and state_dict."""

    applies_relu = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _mark_relu_output(self._forward(input, relu=True))


class SyncBatchNormAddReLU(SyncBatchNorm):
    """``relu(SyncBatchNorm(x) + residual)`` fused: ``forward(x, residual)``, what
    :meth:`SyncBatchNorm.convert_sync_batchnorm` makes of a :class:`tritonbn.BatchNorm2dAddReLU`.

    A ``residual`` of another dtype or shape is computed unfused, as torch computes
    ``relu(sync_bn(x) + residual)``.
    """

    applies_relu = True
    takes_residual = True

    def forward(self, input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if not _fusable_residual(input, residual):
            return torch.relu(self._forward(input) + residual)
        return _mark_relu_output(self._forward(input, residual, relu=True))
