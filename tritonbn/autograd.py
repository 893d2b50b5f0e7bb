"""Autograd for batch normalization, right at every order.

The first backward runs fused Triton kernels (:func:`tritonbn.launch.bn_backward`): one pass reduces Σdy
and Σdy·(x - mean) per channel and computes dweight, dbias and the dx coefficients inside the kernel, one
elementwise pass writes dx (a single pass when the statistics are constants or a channel block fits one
tile). When the caller asks for a differentiable backward (``create_graph=True``, as
physics-informed nets and gradient penalties do), the backward is instead composed of two differentiable
Triton primitives whose own backwards are made of the same two primitives, so every order works:

* :func:`channel_sum` -- per-channel ``Σ (t1 - mu1)·(t2 - mu2)`` over N and the spatial dims;
* :func:`channel_affine` -- elementwise ``a1[c]·(t1 - mu1[c]) + a2[c]·(t2 - mu2[c]) + g[c]``.

In that mode the backward evaluates its closed form with these primitives, the batch statistics re-derived
from ``x`` around the saved mean so that they carry their dependence on ``x``; autograd differentiates that
graph to any order. All per-channel (C,) arithmetic in between is ordinary torch.

``torch.func``: the Functions use the ``setup_context`` form and have

* **vmap rules** that fold the vmapped dimension into the channels -- a (B, N, C, *spatial) batch of inputs
  runs as one (N, B·C, *spatial) batch norm, with statistics per (vmapped index, channel) -- on the same
  kernels, no Python loop over B; so ``vmap``, ``jacrev``, ``hessian`` and ``vmap(grad(f))`` work;
* **forward-mode rules** (``jvp``), written with the same primitives, so ``jvp``, ``jacfwd``,
  forward-over-reverse Hessians and ``torch.autograd.forward_ad`` work, at every order.

Each Function computes with the Triton kernels (:mod:`tritonbn.launch`) where they run and with torch ops
(:mod:`tritonbn.native`) elsewhere: the derivatives are the same on every path.
"""

from __future__ import annotations

import torch
from torch.autograd import Function
from torch.autograd import forward_ad as _forward_ad

from tritonbn import launch, native

try:  # tensors left wrapped by a finished torch.func transform (what Function.apply unwraps)
    from torch._C._functorch import is_functorch_wrapped_tensor as _is_functorch_wrapped
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
except ImportError:  # pragma: no cover

    def _is_functorch_wrapped(t):
        return False

    def _unwrap_dead_wrappers(args):
        return args


try:  # what a jvp rule needs to stay differentiable by the transforms around it (see _jvp_rule)
    from torch._C._functorch import _unwrap_for_grad, _wrap_for_grad
    from torch._functorch.pyfunctorch import TransformType, retrieve_current_functorch_interpreter
    from torch.autograd.forward_ad import _set_fwd_grad_enabled
except ImportError:  # pragma: no cover
    retrieve_current_functorch_interpreter = None


__all__ = ["BatchNormFunction", "backward_kernels", "batch_norm_function", "channel_affine", "channel_sum"]

# Autocast: batch norm runs in its input's dtype under torch.autocast, as torch's does, and nothing here is
# autocast-sensitive (Triton kernels and per-channel elementwise ops), so the Functions need neither
# torch.amp.custom_fwd nor custom_bwd (which would also rule out the setup_context form torch.func needs).


def _count(t: torch.Tensor) -> int:
    """Number of elements per channel (N * spatial)."""
    return t.numel() // t.shape[1]


def _impl(t: torch.Tensor):
    """What computes for tensors like ``t``: the Triton launcher, or its torch-op twin where the kernels do
    not run (:mod:`tritonbn.native`)."""
    return launch if launch.uses_triton(t) else native


def _impl_of(*tensors: torch.Tensor | None):
    """:func:`_impl` for the first tensor, but :mod:`tritonbn.native` if any of them is batched by torch's
    legacy vmap (``torch.autograd.functional``'s ``vectorize=True``, ``autograd.grad``'s
    ``is_grads_batched``), which the kernels cannot read and which bypasses the vmap rules."""
    for t in tensors:
        if t is not None and native._legacy_batched(t):
            return native
    return _impl(tensors[0])


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform or a ``torch.autograd.forward_ad`` dual level is active: then the
    Functions run through ``Function.apply``, which applies their vmap and jvp rules."""
    return torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0


def _jvp_rule(rule):
    """A Function's ``jvp`` from ``rule(ctx, saved_tensors, *tangents)``, differentiable by outer transforms.

    torch runs an autograd.Function's jvp with forward-mode AD switched off, so under ``torch.func.jvp``
    (or ``jacfwd``) nested in another forward-mode transform the rule's own computation is invisible to
    the outer one and forward-over-forward derivatives come out wrong (pytorch/pytorch#197867). Here the
    rule runs one functorch level down, as the Function's forward does, with forward-mode AD on, on the
    saved tensors and tangents unwrapped from the current level, and its result is wrapped back.
    """

    def jvp(ctx, *tangents):
        saved = ctx.saved_tensors
        interpreter = None
        if retrieve_current_functorch_interpreter is not None and torch._C._are_functorch_transforms_active():
            interpreter = retrieve_current_functorch_interpreter()
        if interpreter is None or interpreter.key() != TransformType.Jvp:
            return rule(ctx, saved, *tangents)
        level = interpreter.level()

        def unwrap(t):
            return _unwrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t

        with torch.enable_grad(), _set_fwd_grad_enabled(True), interpreter.lower():
            out = rule(ctx, tuple(map(unwrap, saved)), *map(unwrap, tangents))
        if isinstance(out, tuple):
            return tuple(_wrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t for t in out)
        return _wrap_for_grad(out, level)

    return staticmethod(jvp)


# ------------------------------------------------------------------ vmap: the vmapped dim into the channels


def _fold(t: torch.Tensor | None, dim: int | None, B: int) -> torch.Tensor | None:
    """(N, C, *spatial) per vmapped index, batched at ``dim`` (None: the same for every index) ->
    (N, B·C, *spatial): channel b·C + c holds channel c of index b."""
    if t is None:
        return None
    t = t.movedim(dim, 0) if dim is not None else t.expand(B, *t.shape)
    return t.movedim(0, 1).flatten(1, 2)


def _fold_channels(t: torch.Tensor | None, dim: int | None, B: int) -> torch.Tensor | None:
    """(C,) per vmapped index, batched at ``dim`` (None: the same for every index) -> (B·C,)."""
    if t is None:
        return None
    t = t.movedim(dim, 0) if dim is not None else t.expand(B, *t.shape)
    return t.reshape(-1)


def _unfold(t: torch.Tensor, B: int) -> torch.Tensor:
    """(rows, B·C, ...) -> (rows, B, C, ...): a view whose vmapped dim is 1."""
    return t.unflatten(1, (B, -1))


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class _ChannelSum(Function):
    """Σ (t1 - mu1)·(t2 - mu2) per channel (``t2`` optional: then Σ (t1 - mu1))."""

    @staticmethod
    def forward(t1, mu1, t2, mu2):
        if t2 is None:
            out, _ = _impl_of(t1, mu1).channel_sums(t1, mu1, want_sum_u=True)
        else:
            _, out = _impl_of(t1, t2, mu1, mu2).channel_sums(t1, mu1, t2, mu2)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.out_dtype = output.dtype

    @staticmethod
    def vmap(info, in_dims, t1, mu1, t2, mu2):
        B = info.batch_size
        out = _ChannelSum.apply(
            _fold(t1, in_dims[0], B),
            _fold_channels(mu1, in_dims[1], B),
            _fold(t2, in_dims[2], B),
            _fold_channels(mu2, in_dims[3], B),
        )
        return out.unflatten(0, (B, -1)), 0

    @_jvp_rule
    def jvp(ctx, saved, dt1, dmu1, dt2, dmu2):
        # d Σ(t1 - mu1)(t2 - mu2) = Σ(dt1 - dmu1)(t2 - mu2) + Σ(t1 - mu1)(dt2 - dmu2)
        t1, mu1, t2, mu2 = saved
        acc = ctx.out_dtype
        out = None
        if t2 is None:
            if dt1 is not None:
                out = channel_sum(dt1)
            if dmu1 is not None:
                out = _add(out, -dmu1.to(acc) * _count(t1))
        else:
            if dt1 is not None:
                out = channel_sum(dt1, dmu1, t2, mu2)
            elif dmu1 is not None:
                out = -dmu1.to(acc) * channel_sum(t2, mu2)
            if dt2 is not None:
                out = _add(out, channel_sum(t1, mu1, dt2, dmu2))
            elif dmu2 is not None:
                out = _add(out, -dmu2.to(acc) * channel_sum(t1, mu1))
        return out if out is not None else t1.new_zeros(t1.shape[1], dtype=acc)

    @staticmethod
    def backward(ctx, g):
        t1, mu1, t2, mu2 = ctx.saved_tensors
        need_t1, need_mu1, need_t2, need_mu2 = ctx.needs_input_grad
        d_t1 = d_mu1 = d_t2 = d_mu2 = None
        if t2 is None:
            if need_t1:
                d_t1 = channel_affine(t1, g=g)
            if need_mu1:
                d_mu1 = (-g * _count(t1)).to(mu1.dtype)
            return d_t1, d_mu1, None, None
        if need_t1:
            d_t1 = channel_affine(t1, t2, mu2, g)
        if need_mu1:
            d_mu1 = (-g * channel_sum(t2, mu2)).to(mu1.dtype)
        if need_t2:
            d_t2 = channel_affine(t2, t1, mu1, g)
        if need_mu2:
            d_mu2 = (-g * channel_sum(t1, mu1)).to(mu2.dtype)
        return d_t1, d_mu1, d_t2, d_mu2


class _ChannelAffine(Function):
    """[not gate <= 0]·(a1·(t1 - mu1) + a2·(t2 - mu2) + g), per channel, shaped and laid out like ``like``.

    ``gate`` (optional, not differentiated: it is piecewise constant) is how ReLU enters the graph:
    relu(z) = [z > 0]·z.
    """

    @staticmethod
    def forward(like, t1, mu1, a1, t2, mu2, a2, g, gate):
        impl = _impl_of(like, t1, t2, mu1, a1, mu2, a2, g)
        return impl.channel_affine(like, t1, mu1, a1, t2, mu2, a2, g, gate=gate, gate_output=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        like, t1, mu1, a1, t2, mu2, a2, g, gate = inputs
        ctx.save_for_backward(t1, mu1, a1, t2, mu2, a2, gate)
        ctx.save_for_forward(like, t1, mu1, a1, t2, mu2, a2, gate)

    @staticmethod
    def vmap(info, in_dims, like, t1, mu1, a1, t2, mu2, a2, g, gate):
        B = info.batch_size
        shape = like.shape if in_dims[0] is None else like.movedim(in_dims[0], 0).shape[1:]
        # ``like`` gives the output's shape and dtype only: an empty folded tensor will do
        folded_like = like.new_empty((shape[0], B * shape[1], *shape[2:]))
        out = _ChannelAffine.apply(
            folded_like,
            _fold(t1, in_dims[1], B),
            _fold_channels(mu1, in_dims[2], B),
            _fold_channels(a1, in_dims[3], B),
            _fold(t2, in_dims[4], B),
            _fold_channels(mu2, in_dims[5], B),
            _fold_channels(a2, in_dims[6], B),
            _fold_channels(g, in_dims[7], B),
            _fold(gate, in_dims[8], B),
        )
        return _unfold(out, B), 1

    @_jvp_rule
    def jvp(ctx, saved, _dlike, dt1, dmu1, da1, dt2, dmu2, da2, dg, _dgate):
        # d [gate]·(a1(t1 - mu1) + a2(t2 - mu2) + g)
        #   = [gate]·(da1(t1 - mu1) + da2(t2 - mu2) + (dg - a1·dmu1 - a2·dmu2)) + [gate]·(a1·dt1 + a2·dt2)
        # (the gate is piecewise constant; each term comes with its coefficient): at most two launches.
        like, t1, mu1, a1, t2, mu2, a2, gate = saved
        if t1 is None:
            dt1 = dmu1 = da1 = None
        if t2 is None:
            dt2 = dmu2 = da2 = None
        const = dg
        if dmu1 is not None:
            const = _add(const, -a1 * dmu1)
        if dmu2 is not None:
            const = _add(const, -a2 * dmu2)
        out = None
        if da1 is not None or da2 is not None or const is not None:
            u1, u2 = (t1 if da1 is not None else None), (t2 if da2 is not None else None)
            out = channel_affine(like, u1, mu1, da1, u2, mu2, da2, const, gate)
        if dt1 is not None or dt2 is not None:
            b1, b2 = (a1 if dt1 is not None else None), (a2 if dt2 is not None else None)
            out = _add(out, channel_affine(like, dt1, None, b1, dt2, None, b2, None, gate))
        return out if out is not None else channel_affine(like)

    @staticmethod
    def backward(ctx, go):
        t1, mu1, a1, t2, mu2, a2, gate = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [None] * 9
        if gate is not None:
            go = channel_affine(go, go, gate=gate)
        sum_go = None
        if need[2] or need[5] or need[7]:
            sum_go = channel_sum(go)
        for i, (t, mu, a) in ((1, (t1, mu1, a1)), (4, (t2, mu2, a2))):
            if t is None:
                continue
            if need[i]:
                grads[i] = channel_affine(t, go, None, a)
            if need[i + 1] and mu is not None:
                grads[i + 1] = (-a * sum_go).to(mu.dtype)
            if need[i + 2]:
                grads[i + 2] = channel_sum(go, None, t, mu).to(a.dtype)
        if need[7]:
            grads[7] = sum_go
        return tuple(grads)


def channel_sum(
    t1: torch.Tensor,
    mu1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    mu2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable per-channel ``Σ (t1 - mu1)·(t2 - mu2)`` (or ``Σ (t1 - mu1)``) in the accumulation dtype."""
    return _ChannelSum.apply(t1, mu1, t2, mu2)


def channel_affine(
    like: torch.Tensor,
    t1: torch.Tensor | None = None,
    mu1: torch.Tensor | None = None,
    a1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    mu2: torch.Tensor | None = None,
    a2: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable ``[not gate <= 0]·(a1·(t1 - mu1) + a2·(t2 - mu2) + g)`` with (C,) coefficients, like ``like``.

    Any term may be omitted; a missing ``mu`` is 0 and a missing coefficient of a given term is 1.
    """
    if t1 is not None and a1 is None:
        a1 = _ones_per_channel(like, t1)
    if t2 is not None and a2 is None:
        a2 = _ones_per_channel(like, t2)
    return _ChannelAffine.apply(like, t1, mu1, a1, t2, mu2, a2, g, gate)


def _ones_per_channel(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.ones(
        like.shape[1], dtype=launch.acc_dtype(torch.promote_types(like.dtype, t.dtype)), device=like.device
    )


def backward_kernels(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    *,
    stats_grad: bool,
    need_input: bool = True,
    need_weight: bool = True,
    need_bias: bool = True,
    relu_output: torch.Tensor | None = None,
    need_residual: bool = False,
    bias_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Fused first-order backward: ``(dx, dweight, dbias, dresidual)``; not differentiable.

    ``stats`` (≥ 2, C) holds the forward's mean and invstd in its first two rows. ``stats_grad`` says
    whether the forward's statistics depend on ``x`` (train mode, statistics not detached)::

        dbias   = Σ dy
        dweight = Σ dy·x̂ = invstd · Σ dy·(x - mean)
        dx      = w·invstd·dy - w·invstd³·(x - mean)·Σ dy·(x - mean) / M - w·invstd·Σ dy / M   (stats_grad)
        dx      = w·invstd·dy                                                                 (otherwise)

    (the batch-norm backward of Ioffe & Szegedy 2015, as torch's ``native_batch_norm_backward``).
    ``dweight`` is computed only with a ``weight`` (in its dtype); ``dbias`` when ``need_bias``, in
    ``bias_dtype`` (default: the weight's dtype, else the accumulation dtype). With ``relu_output`` (the output y of a
    fused batch norm + ReLU) every dy above is zeroed where y <= 0 (as torch's ReLU backward), inside the kernels,
    and ``need_residual`` returns that gated dy as the residual's gradient. One launch (one reduction pass that also
    writes dx) when the statistics are constants or a channel block fits one tile; else two.
    """
    dx, dw, db, dres, _ = _impl(x).backward_passes(
        grad_output,
        x,
        weight,
        stats,
        stats_grad,
        need_input,
        need_weight,
        need_bias,
        relu_output,
        need_residual,
        bias_dtype,
        False,
    )
    return dx, dw, db, dres


class BatchNormFunction(Function):
    """(y, stats) with y = act((x - mean)·weight·invstd + bias [+ residual]), batch or running statistics.

    ``act`` is the identity or, with ``relu``, a fused ReLU (the ResNet block's bn -> add -> relu).
    ``stats`` (≥ 2, C; rows mean and invstd, then on the kernels weight·invstd and the variance) are the
    statistics used (not differentiable). Written with ``setup_context`` so that ``torch.func`` transforms
    work too; gradients of the non-differentiable output are not materialised. Its vmap rule folds the
    vmapped dimension into the channels; its jvp is the forward-mode derivative of y (see
    :func:`_forward_tangent`).
    """

    @staticmethod
    def forward(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        use_batch_stats,
        momentum,
        eps,
        detach_stats,
        residual=None,
        relu=False,
    ):
        return _impl(x).bn_forward(
            x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, residual, relu
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, _, _, use_batch_stats, _, eps, detach_stats, *rest = inputs
        relu = rest[1] if len(rest) > 1 else False
        y, stats = output
        ctx.save_for_backward(x, weight, stats, y if relu else None)
        ctx.save_for_forward(x, weight, stats, y if relu else None)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)
        ctx.stats_grad = use_batch_stats and not detach_stats
        ctx.eps = eps
        ctx.relu = relu
        ctx.bias_dtype = bias.dtype if bias is not None else None

    @staticmethod
    def backward(ctx, grad_output, _grad_stats=None):
        return _backward(ctx, grad_output)

    @staticmethod
    def vmap(
        info,
        in_dims,
        x,
        weight,
        bias,
        running_mean,
        running_var,
        use_batch_stats,
        momentum,
        eps,
        detach_stats,
        residual=None,
        relu=False,
    ):
        # (B, N, C, *spatial) -> one (N, B·C, *spatial) batch norm: statistics per (vmapped index, channel).
        B = info.batch_size
        x_dim, rm_dim, rv_dim = in_dims[0], in_dims[3], in_dims[4]
        if (
            use_batch_stats
            and x_dim is not None
            and ((running_mean is not None and rm_dim is None) or (running_var is not None and rv_dim is None))
        ):
            raise RuntimeError(_VMAP_RUNNING_STATS_ERROR)  # torch's refusal, word for word
        running = [_fold_channels(t, d, B) for t, d in ((running_mean, rm_dim), (running_var, rv_dim))]
        if use_batch_stats:  # updated in place: private copies, written back below
            running = [t.clone() if t is not None else None for t in running]
        y, stats = BatchNormFunction.apply(
            _fold(x, x_dim, B),
            _fold_channels(weight, in_dims[1], B),
            _fold_channels(bias, in_dims[2], B),
            *running,
            use_batch_stats,
            momentum,
            eps,
            detach_stats,
            _fold(residual, in_dims[9] if len(in_dims) > 9 else None, B),
            relu,
        )
        if use_batch_stats:
            with torch.no_grad():
                for buf, dim, new in ((running_mean, rm_dim, running[0]), (running_var, rv_dim, running[1])):
                    if buf is None:
                        continue
                    if dim is None:  # x is not vmapped either: every index computed the same update
                        buf.copy_(new[: buf.numel()])
                    else:
                        buf.movedim(dim, 0).copy_(new.view(B, -1))
        return (_unfold(y, B), _unfold(stats, B)), (1, 1)

    @_jvp_rule
    def jvp(ctx, saved, dx, dw, db, _drm, _drv, _dt, _dm, _de, _dd, dres=None, _drelu=None):
        x, weight, stats, y = saved
        return _forward_tangent(ctx, x, weight, stats[0], stats[1], y, dx, dw, db, dres), None


# What torch's batching rule for batch norm raises (aten/src/ATen/functorch/BatchRulesNorm.cpp).
_VMAP_RUNNING_STATS_ERROR = (
    "Batch norm got a batched tensor as input while the running_mean or running_var, which will be updated in "
    "place, were not batched.\nIf you are using a module and do not need eval mode, please set "
    "`track_running_stats` to be False.If you are using a prebuilt module and do not need eval mode, please see "
    "the functorch website for resources on how to patch your module to work with vmap"
)


def _batch_stats_of(ctx, x, mean, invstd):
    """The statistics the forward normalised with, as functions of ``x`` when they depend on it.

    In train mode they are re-derived around the saved mean c0 (mean = c0 + Σ(x - c0)/M,
    var = Σ(x - c0)²/M - (Σ(x - c0)/M)², accurate since x - c0 is centred) with the differentiable
    primitives, so that derivatives of any order see their dependence on ``x``; otherwise (running
    statistics, or detached batch statistics) they are the saved constants.
    """
    if not ctx.stats_grad:
        return mean, invstd
    count = _count(x)
    delta = channel_sum(x, mean) / count
    var = channel_sum(x, mean, x, mean) / count - delta * delta
    return mean + delta, torch.rsqrt(var + ctx.eps)


def _forward_tangent(ctx, x, weight, mean, invstd, y, dx, dw, db, dres):
    """The tangent of y = act((x - mean)·r·w + b [+ residual]) for tangents dx, dw, db, dres (any None).

    With r = invstd and, where the statistics depend on x (train mode, not detached),
    dmean = Σdx/M and dr = -r³·Σ(x - mean)·dx/M (Σ(x - mean) = 0 removes the dmean term of dvar)::

        dy = w·r·(dx - dmean) + (w·dr + dw·r)·(x - mean) + db [+ dres]      (zeroed where y <= 0 with a fused ReLU)

    the jvp of torch's ``batch_norm`` (its ``batch_norm_jvp``). Built from the differentiable primitives,
    so forward-over-forward and forward-over-reverse derivatives are right at every order.
    """
    acc = mean.dtype
    mu, r = _batch_stats_of(ctx, x, mean, invstd)
    w = weight.to(acc) if weight is not None else None
    coef_x = r * dw.to(acc) if dw is not None and w is not None else None
    dmean = scale = None
    if dx is not None:
        scale = r * w if w is not None else r
        if ctx.stats_grad:
            count = _count(x)
            dmean = channel_sum(dx) / count
            dr = -r * r * r * channel_sum(dx, None, x, mu) / count
            coef_x = _add(coef_x, dr * w if w is not None else dr)
    g = db.to(acc) if db is not None and ctx.bias_dtype is not None else None
    out = None
    if dx is not None or coef_x is not None or g is not None:
        out = channel_affine(x, dx, dmean, scale, x if coef_x is not None else None, mu, coef_x, g)
    out = _add(out, dres)
    if out is None:
        return torch.zeros_like(x)
    if ctx.relu:  # torch's ReLU jvp: the tangent where the output is positive
        out = channel_affine(out, out, gate=y)
    return out


def _backward(ctx, grad_output):
    """The backward of :class:`BatchNormFunction` and of its eager twin (kernels, or the differentiable
    composition when a graph of the backward is being recorded)."""
    needs = ctx.needs_input_grad
    if grad_output is None:
        return (None,) * len(needs)
    x, weight, stats, y = ctx.saved_tensors
    need_x, need_w, need_b = needs[:3]
    need_b = need_b and ctx.bias_dtype is not None
    need_res = len(needs) > 9 and needs[9]
    if torch.is_grad_enabled() or transforms_active():
        dx, dw, db, dres = _differentiable_backward(
            ctx, grad_output, x, weight, stats[0], stats[1], y, (need_x, need_w, need_b), need_res
        )
    else:
        dx, dw, db, dres, _ = _impl_of(x, grad_output).backward_passes(
            grad_output, x, weight, stats, ctx.stats_grad, need_x, need_w, need_b, y, need_res, ctx.bias_dtype, False
        )
    return (dx, dw, db, None, None, None, None, None, None, dres, None)[: len(needs)]


class _EagerBatchNormFunction(Function):
    """:class:`BatchNormFunction` in the classic ``forward(ctx, ...)`` form, for calls outside torch.func
    transforms: the C++ apply runs it without binding arguments or a separate ``setup_context`` call, and
    its one output is ``y`` (the statistics are saved, not returned)."""

    @staticmethod
    def forward(
        ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, detach_stats, residual, relu
    ):
        y, stats = _impl(x).bn_forward(
            x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, residual, relu
        )
        ctx.save_for_backward(x, weight, stats, y if relu else None)
        ctx.set_materialize_grads(False)
        ctx.stats_grad = use_batch_stats and not detach_stats
        ctx.eps = eps
        ctx.relu = relu
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    def backward(ctx, grad_output):
        return _backward(ctx, grad_output)


_EAGER_APPLY = super(Function, _EagerBatchNormFunction).apply


def batch_norm_function(*args) -> torch.Tensor:
    """``BatchNormFunction.apply(*args)[0]`` (all 11 arguments, positional) without its per-call cost.

    ``Function.apply`` binds the arguments with ``inspect.signature`` on every call of a Function with
    ``setup_context`` (~80 µs of host time per layer). Outside torch.func transforms and forward-mode AD
    this runs the same computation as a classic ``forward(ctx, ...)`` Function through the C++ apply
    directly; inside them it takes torch's path, which applies the vmap and jvp rules.
    """
    if transforms_active():
        return BatchNormFunction.apply(*args)[0]
    if _is_functorch_wrapped(args[0]):  # a tensor left over from a finished transform (as Function.apply)
        args = _unwrap_dead_wrappers(args)
    return _EAGER_APPLY(*args)


def _differentiable_backward(ctx, grad_output, x, weight, mean, invstd, y, needs, need_res):
    """The backward's closed form written with the differentiable primitives (for ``create_graph=True``
    and inside ``torch.func`` transforms).

    The statistics come from :func:`_batch_stats_of`, so that in train mode the gradient carries their
    dependence on ``x`` into every higher order. The ReLU mask (zero where y <= 0) is piecewise constant.
    """
    g = grad_output
    if ctx.relu:
        g = channel_affine(g, g, gate=y.detach())
    mu, r = _batch_stats_of(ctx, x, mean, invstd)
    dx, dw, db = closed_form_backward(g, x, weight, mu, r, ctx.stats_grad, needs, ctx.bias_dtype)
    return dx, dw, db, (g if need_res else None)


def closed_form_backward(
    g: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    stats_grad: bool,
    needs: tuple[bool, bool, bool] = (True, True, True),
    bias_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The formulas of :func:`backward_kernels` for given statistics, with the differentiable primitives.

    ``(dx, dweight, dbias)`` for dy = ``g``; ``needs`` says which to compute (dweight only with a
    ``weight``; dbias in ``bias_dtype``, default the weight's dtype, else the accumulation dtype).
    ``mean``/``invstd`` are (C,) in the accumulation dtype; ``stats_grad`` selects the train-mode dx.
    Vmappable and differentiable, forward and reverse, at every order.
    """
    need_x, need_w, need_b = needs
    need_w = need_w and weight is not None
    r = invstd
    scale = r * weight.to(r.dtype) if weight is not None else r
    sum_g = channel_sum(g) if need_b or (need_x and stats_grad) else None
    sum_g_xmu = channel_sum(g, None, x, mean) if need_w or (need_x and stats_grad) else None
    dx = dw = db = None
    if need_x:
        if stats_grad:
            count = _count(x)
            dx = channel_affine(x, g, None, scale, x, mean, -scale * r * r * sum_g_xmu / count, -scale * sum_g / count)
        else:
            dx = channel_affine(x, g, None, scale)
    if need_w:
        dw = (r * sum_g_xmu).to(weight.dtype)
    if need_b:
        db = sum_g.to(bias_dtype or (weight.dtype if weight is not None else r.dtype))
    return dx, dw, db


def _update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """running = (1 - momentum)·running + momentum·batch, with the unbiased variance (O(C) torch ops)."""
    with torch.no_grad():
        if running_mean is not None:
            new = running_mean.to(mean.dtype) * (1 - momentum) + mean * momentum
            running_mean.copy_(new)
        if running_var is not None:
            unbiased = var * (count / (count - 1)) if count > 1 else var
            new = running_var.to(var.dtype) * (1 - momentum) + unbiased * momentum
            running_var.copy_(new)
