"""Drop-in modules: identical behaviour, state, repr and errors to torch.nn; convert/revert; frozen BN."""

from __future__ import annotations

import copy
import io
import pickle
import re

import pytest
import torch
from helpers import assert_close, make_input
from torch import nn

import tritonbn
from tritonbn import reference

CLASSES = [
    (nn.BatchNorm1d, tritonbn.BatchNorm1d, (6, 3, 5)),
    (nn.BatchNorm1d, tritonbn.BatchNorm1d, (6, 3)),
    (nn.BatchNorm2d, tritonbn.BatchNorm2d, (3, 3, 4, 5)),
    (nn.BatchNorm3d, tritonbn.BatchNorm3d, (2, 3, 2, 3, 4)),
]
CLASS_IDS = ["1d-ncl", "1d-nc", "2d", "3d"]


def _pair(theirs_cls, ours_cls, device, **kwargs):
    theirs = theirs_cls(3, **kwargs).to(device)
    ours = ours_cls(3, **kwargs).to(device)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize(("theirs_cls", "ours_cls", "shape"), CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}, {"momentum": 0.5, "eps": 1e-3}],
    ids=["default", "cumulative", "no-affine", "no-running-stats", "momentum-eps"],
)
def test_module_parity_over_train_and_eval_steps(path, theirs_cls, ours_cls, shape, kwargs):
    theirs, ours = _pair(theirs_cls, ours_cls, path, **kwargs)
    assert isinstance(ours, theirs_cls)
    for step, training in enumerate([True, True, True, False]):
        theirs.train(training)
        ours.train(training)
        x = make_input(shape, torch.float32, path, mean=step).requires_grad_()
        x_t = x.detach().clone().requires_grad_()
        y, y_t = ours(x), theirs(x_t)
        torch.testing.assert_close(y, y_t, atol=2e-5, rtol=2e-5)
        dy = torch.randn_like(y)
        y.backward(dy)
        y_t.backward(dy)
        torch.testing.assert_close(x.grad, x_t.grad, atol=1e-4, rtol=1e-4)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("theirs_cls", "ours_cls", "shape"), CLASSES[1:3], ids=CLASS_IDS[1:3])
def test_state_dict_repr_pickle_deepcopy(theirs_cls, ours_cls, shape):
    theirs, ours = theirs_cls(4, momentum=None), ours_cls(4, momentum=None)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert repr(ours_cls(4, detach_stats=True)).endswith("track_running_stats=True, detach_stats=True)")
    ours.load_state_dict(theirs.state_dict())  # strict
    theirs.load_state_dict(ours.state_dict())
    for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
        assert type(clone) is ours_cls and clone.detach_stats is False
        for a, b in zip(clone.state_dict().values(), ours.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    theirs.load_state_dict(torch.load(buf))


@pytest.mark.parametrize(
    ("cls", "bad_shape"),
    [
        (tritonbn.BatchNorm1d, (2, 3, 4, 5)),
        (tritonbn.BatchNorm2d, (2, 3, 4)),
        (tritonbn.BatchNorm3d, (2, 3, 4, 5)),
    ],
)
def test_wrong_input_dim_errors_match_torch(cls, bad_shape):
    torch_cls = cls.__mro__[2]
    x = torch.randn(bad_shape)
    with pytest.raises(Exception) as theirs:
        torch_cls(3)(x)
    with pytest.raises(type(theirs.value), match=re.escape(str(theirs.value))):
        cls(3)(x)


def test_one_value_per_channel_in_training_matches_torch():
    x = torch.randn(1, 3)
    with pytest.raises(ValueError) as theirs:
        nn.BatchNorm1d(3)(x)
    with pytest.raises(ValueError, match=re.escape(str(theirs.value))):
        tritonbn.BatchNorm1d(3)(x)


def test_wrong_num_features_matches_torch(kernels):
    x = torch.randn(4, 5, device=kernels)
    with pytest.raises(RuntimeError) as theirs:
        nn.BatchNorm1d(3).to(kernels)(x.cpu())
    with pytest.raises(RuntimeError, match=re.escape(str(theirs.value))):
        tritonbn.BatchNorm1d(3).to(kernels)(x)


def _net():
    return nn.Sequential(
        nn.Conv2d(2, 3, 1),
        nn.BatchNorm2d(3),
        nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3, affine=False)),
        nn.Flatten(),
        nn.BatchNorm1d(12, momentum=None),
    )


def test_convert_and_revert_model(kernels):
    net = _net().to(kernels).eval()
    calls = []
    net[1].register_forward_hook(lambda mod, inp, out: calls.append(type(mod)))
    params_before = {n: p for n, p in net.named_parameters()}
    buffers_before = {n: b for n, b in net.named_buffers()}
    x = torch.randn(4, 2, 2, 2, device=kernels)
    expected = net(x)

    converted = tritonbn.convert_model(net)
    assert converted is net  # the root is not a batch norm, so it is kept and its children replaced
    assert type(net[1]) is tritonbn.BatchNorm2d and type(net[2][1]) is tritonbn.BatchNorm2d
    assert type(net[4]) is tritonbn.BatchNorm1d
    assert not net[1].training
    for n, p in net.named_parameters():
        assert p is params_before[n]  # shared, not copied
    for n, b in net.named_buffers():
        assert b is buffers_before[n]
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    assert calls[-1] is tritonbn.BatchNorm2d  # the forward hook moved along

    reverted = tritonbn.revert_model(net)
    assert type(reverted[1]) is nn.BatchNorm2d and not hasattr(reverted[1], "detach_stats")
    assert calls and reverted(x) is not None and calls[-1] is nn.BatchNorm2d


def test_convert_root_batch_norm_and_skip_subclasses():
    bn = nn.BatchNorm2d(3)
    new = tritonbn.convert_model(bn, detach_stats=True)
    assert type(new) is tritonbn.BatchNorm2d and new.detach_stats and new.weight is bn.weight
    sub = type("MyBatchNorm2d", (nn.BatchNorm2d,), {})(3)
    assert tritonbn.convert_model(sub) is sub  # exact types only (SyncBatchNorm: see test_sync_batchnorm.py)
    # the converted module is independent in its containers: a new buffer on one is not on the other
    new.register_buffer("extra", torch.zeros(1))
    assert "extra" not in dict(bn.named_buffers())


def test_frozen_batch_norm(kernels):
    frozen = tritonbn.FrozenBatchNorm2d(3, eps=1e-3).to(kernels)
    assert repr(frozen) == "FrozenBatchNorm2d(3, eps=0.001)"
    source = nn.BatchNorm2d(3, eps=1e-3)
    with torch.no_grad():
        for t in (source.weight, source.bias, source.running_mean):
            t.copy_(torch.randn(3))
        source.running_var.copy_(torch.rand(3) + 0.5)
    frozen.load_state_dict(source.state_dict())  # num_batches_tracked is accepted and dropped
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert not list(frozen.parameters())
    frozen.train()  # no effect: always the running statistics
    x = make_input((2, 3, 4, 4), torch.float32, kernels).requires_grad_()
    y = frozen(x)
    # torchvision's formula: scale = w * (rv + eps).rsqrt(), shift = b - rm * scale
    w, b, rm, rv = (t.double() for t in (frozen.weight, frozen.bias, frozen.running_mean, frozen.running_var))
    y_ref = reference.batch_norm(x.detach(), rm, rv, w, b, training=False, eps=1e-3)
    assert_close(y, y_ref, torch.float32, "y")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert_close(dx, dy.double() * (w * (rv + 1e-3).rsqrt()).reshape(1, -1, 1, 1), torch.float32, "grad")
    assert torch.equal(frozen.running_mean, source.running_mean.to(kernels))
    with pytest.raises(ValueError, match=re.escape("expected 4D input (got 3D input)")):
        frozen(torch.randn(2, 3, 4, device=kernels))


def test_module_on_half_input_with_float_parameters(path):
    """Mixed precision: fp16 activations, fp32 parameters and buffers (as under autocast)."""
    ours = tritonbn.BatchNorm2d(3).to(path)
    x = make_input((2, 3, 3, 3), torch.float16, path)
    y = ours(x)
    assert y.dtype == torch.float16 and ours.running_mean.dtype == torch.float32
    y_ref = reference.batch_norm(x, None, None, ours.weight, ours.bias, training=True)
    assert_close(y, y_ref, torch.float16, "y")


def test_autocast_behaves_like_torch(kernels):
    """Under autocast batch norm runs in its input's dtype, as torch's does."""
    theirs, ours = _pair(nn.BatchNorm2d, tritonbn.BatchNorm2d, kernels)
    device_type = "cuda" if kernels == "cuda" else "cpu"
    amp_dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    x = torch.randn(2, 3, 4, 4, device=kernels)
    with torch.autocast(device_type, dtype=amp_dtype):
        y_t, y = theirs(x), ours(x)
        y_t16, y16 = theirs(x.to(amp_dtype)), ours(x.to(amp_dtype))
    assert y.dtype == y_t.dtype and y16.dtype == y_t16.dtype


def test_package_imports_its_parts_on_first_use():
    """`import tritonbn` alone loads no torch; with torch loaded it registers the custom ops at once; public
    names, `from tritonbn import *` and submodules resolve in any order."""
    import subprocess
    import sys

    code = (
        "import sys, tritonbn; assert 'torch' not in sys.modules; "
        "from tritonbn import *; assert BatchNorm2d.__module__ == 'tritonbn.modules' and fuse_fx; "
        "assert tritonbn.launch.one_tile and tritonbn.reference.batch_norm; "
        "assert sorted(set(tritonbn.__all__) - {'__version__'}) == sorted(tritonbn._EXPORTS); "
        "assert set(tritonbn.__all__) <= set(dir(tritonbn))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import torch, tritonbn; torch.ops.tritonbn.batch_norm_forward; torch.ops.tritonbn.batch_norm_backward"
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="module 'tritonbn' has no attribute 'nope'"):
        tritonbn.nope  # noqa: B018
