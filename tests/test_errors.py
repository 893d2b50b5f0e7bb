"""Bad input gets torch's exception type and message; nothing the caller owns is modified."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torch.nn.functional as F

import tritonbn


def _ones(n, dtype=torch.float32):
    return torch.ones(n, dtype=dtype)


def _torch_error(*args, **kwargs) -> Exception:
    """The exception torch.nn.functional.batch_norm raises for these arguments (skip if this torch has none)."""
    try:
        F.batch_norm(*args, **kwargs)
    except Exception as e:  # whatever torch raises is the expectation
        return e
    pytest.skip("this torch version accepts this input")


BAD_CALLS = {
    "running_mean-size": lambda x: ((x, _ones(4), _ones(3)), {}),
    "running_var-size": lambda x: ((x, _ones(3), _ones(4)), {}),
    "weight-size": lambda x: ((x, _ones(3), _ones(3)), {"weight": _ones(4)}),
    "bias-size": lambda x: ((x, _ones(3), _ones(3)), {"bias": _ones(2)}),
    "all-sizes": lambda x: ((x, _ones(2), _ones(2)), {"weight": _ones(2), "bias": _ones(2)}),
    "eps-zero-train": lambda x: ((x, _ones(3), _ones(3)), {"training": True, "eps": 0.0}),
    "eps-negative-train": lambda x: ((x, _ones(3), _ones(3)), {"training": True, "eps": -1.0}),
    "eps-negative-eval": lambda x: ((x, _ones(3), _ones(3)), {"eps": -1e-5}),
    "eval-without-running-stats": lambda x: ((x, None, None), {}),
    "one-value-per-channel": lambda x: ((x[:1, :, :1], None, None), {"training": True}),
    "one-dim-input": lambda x: ((x[0, 0], None, None), {"training": True}),
    "one-dim-input-with-running-stats": lambda x: ((x[0, 0], _ones(3), _ones(3)), {"training": True}),
    "weight-on-meta": lambda x: ((x, _ones(3), _ones(3)), {"weight": torch.ones(3, device="meta")}),
    "running-mean-on-meta-train": lambda x: ((x, torch.zeros(3, device="meta"), _ones(3)), {"training": True}),
    "integer-input": lambda x: ((x.int(), _ones(3), _ones(3)), {"training": True}),
    "mixed-dtype-float-input": lambda x: ((x, _ones(3, torch.float16), _ones(3)), {"training": True}),
    "mixed-dtype-double-input": lambda x: ((x.double(), _ones(3), _ones(3)), {"training": True}),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_functional_errors_match_torch(kernels, case):
    x = torch.randn(4, 3, 5)
    args, kwargs = BAD_CALLS[case](x)
    theirs = _torch_error(*args, **kwargs)
    snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(type(theirs), match=re.escape(str(theirs))):
        tritonbn.batch_norm(*args, **kwargs)
    for before, after in zip(snapshot, args, strict=True):
        if isinstance(before, torch.Tensor) and not before.is_meta:  # (meta tensors hold no values)
            assert torch.equal(before, after), "a failed call modified its arguments"


def test_explicit_backward_rejects_mismatched_grad_output(kernels):
    x = torch.randn(4, 3, 5, device=kernels)
    with pytest.raises(RuntimeError, match="grad_output must have the shape of input"):
        tritonbn.batch_norm_backward(torch.randn(4, 3, 6, device=kernels), x, None, _ones(3), _ones(3))


def test_only_running_stats_are_written(kernels):
    """Weight, bias, input and grad_output stay as they were; only the running statistics move."""
    x = torch.randn(4, 3, 5, device=kernels, requires_grad=True)
    w, b = torch.randn(3, device=kernels, requires_grad=True), torch.randn(3, device=kernels, requires_grad=True)
    rm, rv = torch.zeros(3, device=kernels), torch.ones(3, device=kernels)
    snapshot = [t.detach().clone() for t in (x, w, b)]
    y = tritonbn.batch_norm(x, rm, rv, w, b, training=True)
    dy = torch.randn_like(y)
    dy0 = dy.clone()
    y.backward(dy)
    for before, t in zip(snapshot, (x, w, b), strict=True):
        assert torch.equal(before, t.detach())
    assert torch.equal(dy, dy0)
    assert not torch.equal(rm, torch.zeros(3, device=kernels)) and not torch.equal(rv, torch.ones(3, device=kernels))


MORE_BAD_CALLS = {
    "running_mean-only-train": lambda x: ((x, None, _ones(3)), {"training": True}),
    "running_var-only-train": lambda x: ((x, _ones(3), None), {"training": True}),
    "momentum-none": lambda x: ((x, _ones(3), _ones(3)), {"training": True, "momentum": None}),
    "one-dim-input-eval": lambda x: ((x[0, 0], _ones(5), _ones(5)), {}),
    "two-dim-running-mean": lambda x: ((x, torch.zeros(1, 3), _ones(3)), {"training": True}),
    "one-value-per-channel-2d": lambda x: ((x[:1, :, 0], None, None), {"training": True}),
    "one-sample-no-channels": lambda x: ((x[:1, :0, :1], None, None), {"training": True}),
    "half-input-double-stats": lambda x: ((x.half(), _ones(3, torch.float64), _ones(3, torch.float64)), {}),
    "double-input-float-weight": lambda x: (
        (x.double(), _ones(3, torch.float64), _ones(3, torch.float64)),
        {"weight": _ones(3)},
    ),
}


@pytest.mark.parametrize("case", list(MORE_BAD_CALLS))
def test_more_functional_errors_match_torch(kernels, case):
    x = torch.randn(4, 3, 5)
    args, kwargs = MORE_BAD_CALLS[case](x)
    theirs = _torch_error(*args, **kwargs)
    with pytest.raises(type(theirs), match=re.escape(str(theirs))):
        tritonbn.batch_norm(*args, **kwargs)


def test_mixed_precision_parameters_are_accepted(kernels):
    """fp16/bf16 input with float32 parameters and statistics is the mixed-precision case torch allows."""
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 3, 5, device=kernels, dtype=dtype)
        y = tritonbn.batch_norm(x, torch.zeros(3, device=kernels), torch.ones(3, device=kernels), training=True)
        assert y.dtype == dtype


_PARAM_DTYPES = [None, torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_dtype_mix_gets_torch_verdict(path, dtype, training):
    """Every mix of input, weight, bias, running_mean and running_var dtypes (each absent or any floating
    type): torch's exception type and message, or torch's acceptance with its output dtype and values."""
    x = torch.randn(4, 3, 2)
    for w_dt, b_dt, rm_dt, rv_dt in itertools.product(_PARAM_DTYPES, repeat=4):
        if not training and (rm_dt is None or rv_dt is None):
            continue  # (eval needs both: covered by eval-without-running-stats)

        def call(fn, device, dtypes=(rm_dt, rv_dt, w_dt, b_dt)):
            values = (0.5, 2.0, 1.5, -0.5)  # running_mean, running_var, weight, bias
            args = [
                None if d is None else torch.full((3,), v, dtype=d, device=device)
                for d, v in zip(dtypes, values, strict=True)
            ]
            try:
                return fn(x.to(device=device, dtype=dtype), *args, training=training, momentum=0.1)
            except Exception as e:  # whatever torch raises is the expectation
                return e

        what = f"input {dtype}, weight {w_dt}, bias {b_dt}, running_mean {rm_dt}, running_var {rv_dt}"
        theirs, ours = call(F.batch_norm, path), call(tritonbn.batch_norm, path)
        if isinstance(theirs, Exception):
            assert type(ours) is type(theirs) and str(ours) == str(theirs), f"{what}: {ours!r} != {theirs!r}"
        else:
            assert isinstance(ours, torch.Tensor), f"{what}: torch accepts, tritonbn raised {ours!r}"
            assert ours.dtype == theirs.dtype, what
            torch.testing.assert_close(ours.cpu().float(), theirs.float(), atol=2e-2, rtol=2e-2, msg=what)


@pytest.mark.parametrize("dim", [2, 4])
def test_dtype_verdict_is_not_decided_by_a_fake_trace(path, monkeypatch, dim):
    """A first call under FakeTensorMode (shape inference, export) must not make torch's verdict for real
    tensors 'accepted': the probe runs outside dispatch modes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tritonbn import functional

    monkeypatch.setattr(functional, "_DTYPE_VERDICTS", {})
    shape = (4, 3) + (2,) * (dim - 2)

    def args():
        return torch.randn(shape, dtype=torch.bfloat16, device=path), torch.ones(3, dtype=torch.float16, device=path)

    x, w = args()
    theirs = _torch_error(x, None, None, w, None, training=True)
    with FakeTensorMode(), pytest.raises(type(theirs), match=re.escape(str(theirs))):
        tritonbn.batch_norm(*args()[:1], None, None, args()[1], None, training=True)
    with pytest.raises(type(theirs), match=re.escape(str(theirs))):
        tritonbn.batch_norm(x, None, None, w, None, training=True)
