"""torch.func and forward-mode AD on every path: vmap, jacrev, jacfwd, jvp, hessian, per-sample gradients
and ensembles, against torch where torch is right and against the float64 reference where it is not (third
order in train mode)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import assert_close, make_input
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, stack_module_state, vmap

import tritonbn
from tritonbn import reference

F64 = torch.float64


def _pair(ours_cls, theirs_cls, C, device, *, eval_mode=False, **kwargs):
    """A tritonbn layer and torch's, with the same random (non-default) parameters and statistics."""
    theirs = theirs_cls(C, **kwargs).to(device, F64)
    with torch.no_grad():
        if theirs.affine:
            theirs.weight.copy_(torch.rand(C, dtype=F64) + 0.5)
            theirs.bias.copy_(torch.randn(C, dtype=F64))
        if theirs.track_running_stats:
            theirs.running_mean.copy_(torch.randn(C, dtype=F64))
            theirs.running_var.copy_(torch.rand(C, dtype=F64) + 0.5)
    ours = ours_cls(C, **kwargs).to(device, F64)
    ours.load_state_dict(theirs.state_dict())
    if eval_mode:
        ours.eval(), theirs.eval()
    return ours, theirs


def _close(got, want, atol=1e-10, rtol=1e-8):
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_vmap_jacrev_of_an_eval_layer(path):
    """The Jacobian of every sample's output w.r.t. its input (the (4, 1, 3, 2, 2, 1, 3, 2, 2) case)."""
    ours, theirs = _pair(tritonbn.BatchNorm2d, nn.BatchNorm2d, 3, path, eval_mode=True)
    x = torch.randn(4, 1, 3, 2, 2, dtype=F64, device=path)
    got = vmap(jacrev(ours))(x)
    assert got.shape == (4, 1, 3, 2, 2, 1, 3, 2, 2)
    _close(got, vmap(jacrev(theirs))(x))


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (3, 2, 2, 3)], ids=["2x3x1x1", "3x2x2x3"])
def test_jacrev_and_jacfwd_of_batch_statistics(path, shape):
    """track_running_stats=False normalises with the batch statistics: every output depends on every
    input of its channel, and the Jacobian says so in reverse and in forward mode."""
    ours, theirs = _pair(tritonbn.BatchNorm2d, nn.BatchNorm2d, shape[1], path, track_running_stats=False)
    x = make_input(shape, F64, path)
    want = jacrev(theirs)(x)
    _close(jacrev(ours)(x), want)
    _close(jacfwd(ours)(x), want)
    assert want.abs().sum() > 0


@pytest.mark.parametrize("mode", ["eval", "train", "train-add-relu"])
def test_hessians_in_every_composition(path, mode):
    """Second derivatives of a non-linear loss w.r.t. input and weight, by hessian (jacfwd over jacrev) and
    by jacrev/jacfwd over jacrev/jacfwd, against the float64 reference. The Hessian is symmetric; torch's
    own batch norm is right in eval mode (checked too) but not for ∂(∂L/∂w)/∂x in train mode."""
    training, fused = mode != "eval", mode == "train-add-relu"
    x = make_input((3, 2, 2), F64, path)
    w = torch.rand(2, dtype=F64, device=path) + 0.5
    b = torch.randn(2, dtype=F64, device=path)
    rm, rv = torch.randn(2, dtype=F64, device=path), torch.rand(2, dtype=F64, device=path) + 0.5
    rm, rv = (None, None) if training else (rm, rv)
    seed, res = torch.randn_like(x), torch.randn_like(x)

    def loss(bn):
        return lambda x, w: (bn(x, rm, rv, w, b, training) * seed).sin().sum()

    def ours(x, rm, rv, w, b, training):
        if fused:
            return tritonbn.batch_norm_relu(x, rm, rv, w, b, training, residual=res)
        return tritonbn.batch_norm(x, rm, rv, w, b, training)

    def ref(x, rm, rv, w, b, training):
        y = reference.batch_norm(x, rm, rv, w, b, training=training)
        return torch.relu(y + res) if fused else y

    both = (0, 1)
    want = jacrev(jacrev(loss(ref), both), both)(x, w)
    transforms = {
        "hessian": lambda f: hessian(f, both),
        "rev-rev": lambda f: jacrev(jacrev(f, both), both),
        "fwd-fwd": lambda f: jacfwd(jacfwd(f, both), both),
        "rev-fwd": lambda f: jacrev(jacfwd(f, both), both),
    }
    if tritonbn.launch.INTERPRET and tritonbn.launch.uses_triton(x):  # numpy runs every program: the essentials
        transforms = {k: transforms[k] for k in (("hessian", "fwd-fwd") if mode == "train" else ("hessian",))}
    for name, transform in transforms.items():
        got = transform(loss(ours))(x, w)
        for i in both:
            for j in both:
                assert_close(got[i][j], want[i][j], F64, "grad2", f"{name}: ∂²L/∂{'xw'[i]}∂{'xw'[j]}")
        _close(got[0][1].movedim(-1, 0), got[1][0])  # ∂²L/∂x∂w is ∂²L/∂w∂x transposed
    if mode == "eval":
        theirs = hessian(loss(nn.functional.batch_norm), both)(x, w)
        for i in both:
            for j in both:
                _close(theirs[i][j], want[i][j])


@pytest.mark.parametrize(
    ("mode", "fused"),
    [("eval", False), ("train", False), ("detached", False), ("train", True), ("eval", True)],
    ids=["eval", "train", "detached", "train-add-relu", "eval-add-relu"],
)
def test_jvp_with_every_tangent(path, mode, fused):
    """Forward mode for tangents on input, weight, bias (and residual) against the float64 reference."""
    C = 3
    x = make_input((4, C, 5), F64, path)
    w = torch.rand(C, dtype=F64, device=path) + 0.5
    b = torch.randn(C, dtype=F64, device=path)
    r = torch.randn_like(x)
    rm, rv = torch.randn(C, dtype=F64, device=path), torch.rand(C, dtype=F64, device=path) + 0.5
    training, detach = mode != "eval", mode == "detached"

    def ours(x, w, b, r):
        if fused:
            return tritonbn.batch_norm_relu(x, rm.clone(), rv.clone(), w, b, training, residual=r, detach_stats=detach)
        return tritonbn.batch_norm(x, rm.clone(), rv.clone(), w, b, training, detach_stats=detach)

    def ref(x, w, b, r):
        y = reference.batch_norm(x, rm, rv, w, b, training=training, detach_stats=detach)
        return torch.relu(y + r) if fused else y

    primals = (x, w, b, r)
    tangents = tuple(torch.randn_like(t) for t in primals)
    y, dy = jvp(ours, primals, tangents)
    y_ref, dy_ref = jvp(ref, primals, tangents)
    assert_close(y, y_ref, F64, "y")
    assert_close(dy, dy_ref, F64, "grad", "tangent")
    # each tangent alone, and only some of them: missing tangents are zero
    for i in range(3 + fused):
        only = tuple(t if j == i else torch.zeros_like(t) for j, t in enumerate(tangents))
        _, got = jvp(ours, primals, only)
        assert_close(got, jvp(ref, primals, only)[1], F64, "grad", f"tangent of argument {i}")
    _, got = jvp(lambda x: ours(x, w, b, r), (x,), (tangents[0],))
    assert_close(got, jvp(lambda x: ref(x, w, b, r), (x,), (tangents[0],))[1], F64, "grad", "tangent of x only")


def test_third_order_in_forward_and_mixed_modes(path):
    """Third derivatives in train mode, where torch's own batch norm is wrong: jvp of jvp of jvp, and jvp
    over grad over grad, against the float64 reference."""
    x = make_input((3, 2, 4), F64, path)
    w = torch.rand(2, dtype=F64, device=path) + 0.5
    seed = torch.randn_like(x)
    u, v, t = (torch.randn_like(x) for _ in range(3))

    def loss(bn):
        return lambda x: (bn(x, None, None, w, None, training=True) * seed).pow(3).sum()

    def third_forward(bn):
        f = loss(bn)

        def d1(x):
            return jvp(f, (x,), (u,))[1]

        def d2(x):
            return jvp(d1, (x,), (v,))[1]

        return jvp(d2, (x,), (t,))[1]

    def third_mixed(bn):
        def g2(x):
            return jvp(grad(loss(bn)), (x,), (v,))[1]  # Hessian·v

        return jvp(g2, (x,), (t,))[1]  # ∂(H·v)/∂x · t

    for third in (third_forward, third_mixed):
        got, want = third(tritonbn.batch_norm), third(reference.batch_norm)
        assert want.abs().max() > 0
        assert_close(got, want, F64, "grad2", third.__name__)


def test_per_sample_gradients_in_eval_mode(path):
    """vmap(grad(f)) over the samples of a conv + batch norm model in eval mode: each sample's parameter
    gradients, as torch gives them."""
    torch.manual_seed(1)
    theirs = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    theirs = theirs.to(path, F64).eval()
    with torch.no_grad():
        theirs[1].running_mean.normal_()
        theirs[1].running_var.uniform_(0.5, 1.5)
    ours = tritonbn.convert_model(copy.deepcopy(theirs))
    assert isinstance(ours[1], tritonbn.BatchNorm2d)
    x = torch.randn(5, 2, 4, 4, dtype=F64, device=path)
    target = torch.randint(0, 2, (5,), device=path)

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(params, xi, ti):
            out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
            return nn.functional.cross_entropy(out, ti.unsqueeze(0))

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)

    got, want = per_sample(ours), per_sample(theirs)
    assert got.keys() == want.keys()
    for name in want:
        _close(got[name], want[name])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ensemble_of_layers_with_stacked_state(path, mode):
    """vmap over models (torch.func.stack_module_state): parameters and running statistics batched, the
    statistics updated per model in training, as torch does."""
    pairs = [_pair(tritonbn.BatchNorm2d, nn.BatchNorm2d, 3, path, momentum=0.3) for _ in range(4)]
    x = make_input((4, 5, 3, 2, 2), F64, path)  # one batch per model

    def run(models):
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        if mode == "eval":
            base.eval()

        def call(p, b, xi):
            return functional_call(base, (p, b), (xi,))

        return vmap(call)(params, buffers, x), buffers

    (y, bufs), (y_t, bufs_t) = run([p[0] for p in pairs]), run([p[1] for p in pairs])
    _close(y, y_t)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        _close(bufs[name], bufs_t[name])
    if mode == "train":
        assert not torch.equal(bufs["running_mean"], torch.stack([p[1].running_mean for p in pairs]))


def test_vmap_over_weights_with_shared_input(path):
    """Only the weight is vmapped (x and running statistics shared): in training every weight sees the same
    batch statistics and the running statistics are updated once, as torch does."""
    x = make_input((4, 3, 5), F64, path)
    ws = torch.rand(6, 3, dtype=F64, device=path) + 0.5
    results = []
    for bn in (tritonbn.batch_norm, nn.functional.batch_norm):
        rm, rv = torch.zeros(3, dtype=F64, device=path), torch.ones(3, dtype=F64, device=path)
        y = vmap(lambda w, rm=rm, rv=rv, bn=bn: bn(x, rm, rv, w, None, True, 0.5))(ws)
        results.append((y, rm, rv))
    for got, want in zip(*results, strict=True):
        _close(got, want)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_vmap_float32_and_vmapped_dim_anywhere(path, layout):
    """float32 inputs, the vmapped dimension not first, fused add + ReLU with an unbatched residual."""
    x = make_input((2, 3, 4, 5), torch.float32, path, layout)
    xs = torch.stack([x, 2 * x + 1, -x], dim=2)  # vmapped at dim 2
    res = torch.randn(2, 3, 4, 5, device=path)
    ours = tritonbn.BatchNorm2dAddReLU(3).to(path)
    theirs = nn.BatchNorm2d(3, track_running_stats=False).to(path)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    ours.track_running_stats, ours.running_mean, ours.running_var = False, None, None
    got = vmap(ours, in_dims=(2, None))(xs, res)
    want = vmap(lambda x: torch.relu(theirs(x) + res), in_dims=2)(xs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_primitive_rules_match_their_formulas(path):
    """The vmap and jvp rules of the two primitives of the differentiable backward, for tangents on every
    argument and any mix of vmapped and shared arguments, against the same formulas in torch ops."""
    from tritonbn.autograd import channel_affine, channel_sum

    shape, C = (3, 2, 4), 2
    t1, t2, like = (make_input(shape, F64, path) for _ in range(3))
    gate = torch.randn(shape, dtype=F64, device=path)
    mu1, a1, mu2, a2, g = (torch.randn(C, dtype=F64, device=path) for _ in range(5))

    def per_channel(v):
        return v.reshape(1, -1, 1)

    def affine_ref(t1, mu1, a1, t2, mu2, a2, g):
        z = per_channel(a1) * (t1 - per_channel(mu1)) + per_channel(a2) * (t2 - per_channel(mu2)) + per_channel(g)
        return torch.where(gate <= 0, 0, z)

    def sum_ref(t1, mu1, t2=None, mu2=None):
        u = t1 - per_channel(mu1)
        return (u if t2 is None else u * (t2 - per_channel(mu2))).sum((0, 2))

    cases = [
        (lambda *a: channel_affine(like, *a, gate), affine_ref, (t1, mu1, a1, t2, mu2, a2, g)),
        # a missing coefficient is 1
        (
            lambda t1, mu1, t2, mu2: channel_affine(like, t1, mu1, None, t2, mu2, None, None, gate),
            lambda t1, mu1, t2, mu2: affine_ref(t1, mu1, torch.ones_like(mu1), t2, mu2, torch.ones_like(mu2), 0 * mu1),
            (t1, mu1, t2, mu2),
        ),
        (lambda *a: channel_sum(*a), sum_ref, (t1, mu1, t2, mu2)),
        (lambda *a: channel_sum(*a), sum_ref, (t1, mu1)),
    ]
    for ours, ref, args in cases:
        tangents = tuple(torch.randn_like(a) for a in args)
        _close(jvp(ours, args, tangents)[1], jvp(ref, args, tangents)[1])
        batched = tuple(torch.stack([a, 2 * a - 1, -a]) for a in args)
        in_dims = tuple(0 if i % 2 == 0 else None for i in range(len(args)))  # every other one shared
        mixed = tuple(b if d == 0 else a for a, b, d in zip(args, batched, in_dims, strict=True))
        _close(vmap(ours, in_dims)(*mixed), vmap(ref, in_dims)(*mixed))


def test_vmap_refuses_an_in_place_update_of_unbatched_running_stats(path):
    """Train mode with shared (unbatched) running statistics under vmap, and a Jacobian w.r.t. the running
    statistics (not differentiable): torch's errors, word for word."""
    x = torch.randn(3, 4, 2, 5, dtype=F64, device=path)
    rv = torch.rand(2, dtype=F64, device=path) + 0.5
    for attempt in (
        lambda cls, bn: vmap(cls(2).to(path, F64))(x),
        lambda cls, bn: jacrev(lambda rm: bn(x[0], rm, rv, training=False))(torch.zeros_like(rv)),
    ):
        errors = []
        for cls, bn in ((tritonbn.BatchNorm1d, tritonbn.batch_norm), (nn.BatchNorm1d, nn.functional.batch_norm)):
            with pytest.raises(RuntimeError) as info:
                attempt(cls, bn)
            errors.append(str(info.value))
        assert errors[0] == errors[1]


def test_vmap_corner_cases(path):
    """Half inputs with float32 parameters, (N, C) inputs, nested vmap with chunks, running statistics
    vmapped at dim 1 and updated from a shared input: as torch gives them, and running statistics as a loop
    over the vmapped indices gives them (torch's nested vmap updates them wrongly)."""
    x = make_input((4, 3), torch.float16, path)
    xs = torch.stack([x, 2 * x, x - 1])
    w = torch.rand(3, device=path) + 0.5
    got = vmap(lambda x: tritonbn.batch_norm(x, None, None, w, None, True))(xs)
    want = vmap(lambda x: nn.functional.batch_norm(x.float(), None, None, w, None, True).half())(xs)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)

    x = make_input((2, 3, 2, 3, 4), F64, path)  # (outer, inner, N, C, L)
    rm = torch.randn(2, 3, 3, dtype=F64, device=path).transpose(1, 2)  # (outer, C, inner): a strided view

    def nested(bn, rm):
        def inner(x, rm):
            return bn(x, rm, torch.ones_like(rm), None, None, True, 0.5)

        return vmap(vmap(inner, in_dims=(0, 1), chunk_size=2), in_dims=(0, 0))(x, rm)

    rm_loop = rm.clone()
    for o in range(2):
        for i in range(3):
            r = rm_loop[o, :, i]
            nn.functional.batch_norm(x[o, i], r, torch.ones_like(r), None, None, True, 0.5)
    _close(nested(tritonbn.batch_norm, rm), nested(nn.functional.batch_norm, rm.clone()))
    _close(rm, rm_loop)

    shared = make_input((4, 3, 2), F64, path)
    rms = torch.zeros(5, 3, dtype=F64, device=path)
    rms_t = rms.clone()
    for bn, buf in ((tritonbn.batch_norm, rms), (nn.functional.batch_norm, rms_t)):
        vmap(lambda rm, bn=bn: bn(shared, rm, torch.ones_like(rm), None, None, True, 0.5), in_dims=1)(buf.T)
    _close(rms, rms_t)
    assert rms.abs().sum() > 0


def test_explicit_backward_under_vmap_and_jvp(path):
    """tritonbn.batch_norm_backward inside vmap and jvp: the same formulas, per vmapped index."""
    xs = make_input((3, 4, 2, 3), F64, path)
    gs = torch.randn_like(xs)
    w = torch.rand(2, dtype=F64, device=path) + 0.5

    def stats(x):
        return x.mean((0, 2)), (x.var((0, 2), unbiased=False) + 1e-5).rsqrt()

    def ours(g, x):
        return tritonbn.batch_norm_backward(g, x, w, *stats(x))

    def ref(g, x):
        return reference.batch_norm_backward(g, x, w, *stats(x))

    for got, want in zip(vmap(ours)(gs, xs), vmap(ref)(gs, xs), strict=True):
        _close(got, want)
    primals, tangents = (gs[0], xs[0]), (gs[1], xs[1])
    for got, want in zip(jvp(ours, primals, tangents)[1], jvp(ref, primals, tangents)[1], strict=True):
        _close(got, want)
    dx = vmap(lambda g, x: tritonbn.batch_norm_backward(g, x, None, *stats(x))[0])(gs, xs)
    _close(dx, vmap(lambda g, x: reference.batch_norm_backward(g, x, None, *stats(x))[0])(gs, xs))


def test_forward_mode_inside_torch_compile(path):
    """torch.compile around jvp and forward_ad: never a silent wrong tangent (the custom ops have no jvp
    rule and gave zeros). Under a transform the autograd Function runs in a graph break: right on the plain
    CPU path; where Dynamo cannot trace around the kernels it raises."""
    x = make_input((4, 2, 3), F64, path)
    t = torch.randn_like(x)

    def tangent(x, t):
        return jvp(lambda a: tritonbn.batch_norm(a, None, None, None, None, True), (x,), (t,))[1]

    def dual(x, t):
        with fwAD.dual_level():
            return fwAD.unpack_dual(tritonbn.batch_norm(fwAD.make_dual(x, t), None, None, None, None, True)).tangent

    want = tangent(x, t)
    assert want.abs().sum() > 0
    for fn in (tangent, dual):
        torch._dynamo.reset()
        try:
            got = torch.compile(fn, backend="eager")(x, t)
        except Exception:  # noqa: BLE001 - a refusal is allowed on the kernels' path, a wrong tangent never
            assert tritonbn.launch.uses_triton(x), "the plain CPU path must compile"
            continue
        _close(got, want)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_ad_dual_tensors(path, mode):
    """torch.autograd.forward_ad outside torch.func: a module's output carries the tangent."""
    ours, theirs = _pair(tritonbn.BatchNorm1d, nn.BatchNorm1d, 3, path, eval_mode=mode == "eval")
    x, t = make_input((6, 3), F64, path), torch.randn(6, 3, dtype=F64, device=path)
    tangents = []
    for module in (ours, theirs):
        with fwAD.dual_level():
            out = fwAD.unpack_dual(module(fwAD.make_dual(x, t)))
            tangents.append(out.tangent)
    assert tangents[0] is not None
    _close(tangents[0], tangents[1])
    _close(ours.running_mean, theirs.running_mean)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_autograd_vectorized_apis(path, mode):
    """torch.autograd.functional's vectorize=True and autograd.grad's is_grads_batched batch with torch's
    legacy vmap, which bypasses the vmap rules: tritonbn computes those batched tensors with torch ops."""
    ours, theirs = _pair(tritonbn.BatchNorm1d, nn.BatchNorm1d, 3, path, eval_mode=mode == "eval")
    if mode == "train":
        ours.track_running_stats = theirs.track_running_stats = False
        ours.running_mean = ours.running_var = theirs.running_mean = theirs.running_var = None
    x = make_input((4, 3), F64, path)
    for kwargs in ({"vectorize": True}, {"vectorize": True, "strategy": "forward-mode"}):
        _close(
            torch.autograd.functional.jacobian(ours, x, **kwargs),
            torch.autograd.functional.jacobian(theirs, x, **kwargs),
        )

    def cube(module):
        return lambda x: module(x).pow(3).sum()

    want = torch.autograd.functional.hessian(cube(theirs), x, vectorize=True)
    _close(torch.autograd.functional.hessian(cube(ours), x, vectorize=True), want)
    xr = x.clone().requires_grad_()
    seeds = torch.randn(5, 4, 3, dtype=F64, device=path)
    got = torch.autograd.grad(ours(xr), xr, seeds, is_grads_batched=True)[0]
    _close(got, torch.autograd.grad(theirs(xr), xr, seeds, is_grads_batched=True)[0])
