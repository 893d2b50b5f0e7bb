"""A fusion survives every conversion: the model computes the same function, or the conversion raises.

convert_model(fuse_relu=True) puts the ReLU into the batch norm before it and leaves a FusedReLU where the
ReLU was. The FusedReLU passes through only the fused layer's own (marked) output and applies the ReLU to
anything else, so a later conversion that rebuilds the layer without its ReLU (torch's
convert_sync_batchnorm), or a model cut and reassembled, cannot silently drop it; tritonbn's own
conversions keep the fusion (SyncBatchNormReLU, SyncBatchNormAddReLU).
"""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_batch_norms
from torch import nn

import tritonbn


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


def _same_function(a: nn.Module, b: nn.Module, device: str, what: str) -> None:
    """Equal outputs in eval mode, and in train mode (one step each, on copies) with equal running stats."""
    x = torch.randn(4, 2, 3, 3, device=device)
    a, b = a.to(device), b.to(device)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=1e-5, rtol=1e-5, msg=f"{what}: eval")
    a2, b2 = copy.deepcopy(a).train(), copy.deepcopy(b).train()
    torch.testing.assert_close(a2(x), b2(x), atol=1e-5, rtol=1e-5, msg=f"{what}: train")
    for (k, v), (k2, v2) in zip(a2.state_dict().items(), b2.state_dict().items(), strict=True):
        assert k == k2, what
        torch.testing.assert_close(v, v2, atol=1e-5, rtol=1e-5, msg=f"{what}: {k}")


def test_reported_case_sync_conversion_keeps_relu(path):
    m = tritonbn.SyncBatchNorm.convert_sync_batchnorm(tritonbn.BatchNorm2dReLU(1).eval())
    assert type(m) is tritonbn.SyncBatchNormReLU
    assert m(-torch.ones(1, 1, 1, 1, device=path)).item() == 0.0


def _conversions():
    def pickled(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    def state_dict_into_torch(m):
        fresh = _model()
        fresh.load_state_dict(m.state_dict())
        return fresh

    def state_dict_into_fused(m):
        fresh = tritonbn.convert_model(_model(), fuse_relu=True)
        fresh.load_state_dict(m.state_dict())
        return fresh

    def slice_then_replace_bn(m):
        s = m[:]  # a new Sequential holding the same layers
        bn = nn.BatchNorm2d(3)
        bn.load_state_dict(s[1].state_dict())
        s[1] = bn
        return s

    return {
        "tritonbn-convert_sync_batchnorm": lambda m: tritonbn.SyncBatchNorm.convert_sync_batchnorm(m),
        "torch-convert_sync_batchnorm": lambda m: nn.SyncBatchNorm.convert_sync_batchnorm(m),
        "revert_model": tritonbn.revert_model,
        "deepcopy": copy.deepcopy,
        "deepcopy-then-torch-sync": lambda m: nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(m)),
        # a model cut and reassembled from its layers (a feature extractor), then converted by torch
        "rebuilt-then-torch-sync": lambda m: nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(*m.children())),
        "slice-then-replace-bn": slice_then_replace_bn,
        "rebuilt-then-revert": lambda m: tritonbn.revert_model(nn.Sequential(*m.children())),
        "pickle": pickled,
        "pickle-then-torch-sync": lambda m: nn.SyncBatchNorm.convert_sync_batchnorm(pickled(m)),
        "state_dict-into-torch": state_dict_into_torch,
        "state_dict-into-fused": state_dict_into_fused,
        "convert_model-again": lambda m: tritonbn.convert_model(m, fuse_relu=True),
    }


@pytest.mark.parametrize("conversion", list(_conversions()))
def test_fused_model_survives_conversion(path, conversion):
    reference = randomise_batch_norms(_model())
    fused = tritonbn.convert_model(copy.deepcopy(reference), fuse_relu=True)
    assert type(fused[1]) is tritonbn.BatchNorm2dReLU and type(fused[2]) is tritonbn.FusedReLU
    _same_function(fused, reference, path, "fused")
    converted = _conversions()[conversion](fused)
    _same_function(converted, reference, path, conversion)


def test_torch_sync_conversion_unfuses_and_tritonbn_keeps_fusion(path):
    fused = tritonbn.convert_model(randomise_batch_norms(_model()), fuse_relu=True)
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(fused))
    assert type(theirs[1]) is nn.SyncBatchNorm and type(theirs[2]) is tritonbn.FusedReLU
    ours = tritonbn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(fused))
    assert type(ours[1]) is tritonbn.SyncBatchNormReLU and type(ours[2]) is tritonbn.FusedReLU
    x = torch.randn(4, 3, 2, 2, device=path)
    for model, passes in ((theirs, False), (ours, True)):
        model = model.to(path).eval()
        y = model[1](x)
        assert (model[2](y) is y) == passes, "FusedReLU passes through exactly the fused layer's output"
        torch.testing.assert_close(model[2](y), torch.relu(y))
    # and from there back to tritonbn's single-process layers, still fused
    back = tritonbn.convert_model(nn.SyncBatchNorm.convert_sync_batchnorm(ours))
    _same_function(back, fused, path, "sync and back")


def test_convert_model_fuses_an_already_converted_model(path):
    """convert_model(model) then convert_model(model, fuse_relu=True) fuses (the second sees tritonbn layers)."""
    reference = randomise_batch_norms(_model())
    twice = tritonbn.convert_model(tritonbn.convert_model(copy.deepcopy(reference)), fuse_relu=True)
    assert type(twice[1]) is tritonbn.BatchNorm2dReLU and type(twice[2]) is tritonbn.FusedReLU
    _same_function(twice, reference, path, "converted twice")
    sync = tritonbn.convert_model(nn.Sequential(nn.SyncBatchNorm(3), nn.ReLU()), fuse_relu=True)
    assert type(sync[0]) is tritonbn.SyncBatchNormReLU


def test_add_relu_layer_converts_to_sync_and_refuses_revert(path):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = tritonbn.BatchNorm2dAddReLU(3)

        def forward(self, x):
            return self.bn(self.conv(x), x)

    block = randomise_batch_norms(Block()).to(path)
    x = torch.randn(4, 3, 2, 2, device=path)
    want = block.eval()(x)
    sync = tritonbn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(block))
    assert type(sync.bn) is tritonbn.SyncBatchNormAddReLU
    torch.testing.assert_close(sync.eval()(x), want)
    before = copy.deepcopy(block.state_dict())
    message = "revert_model: 'bn' (BatchNorm2dAddReLU) has no torch.nn equivalent: it takes a residual."
    with pytest.raises(ValueError, match=re.escape(message)):
        tritonbn.revert_model(block)
    assert type(block.bn) is tritonbn.BatchNorm2dAddReLU, "a refused revert changed the model"
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())


def test_hand_placed_fused_layer_refuses_revert_before_changing_anything():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), tritonbn.BatchNorm2d(3), nn.Sequential(tritonbn.BatchNorm2dReLU(3)))
    message = "'2.0' (BatchNorm2dReLU) has no torch.nn equivalent: it applies a ReLU that no FusedReLU follows"
    with pytest.raises(ValueError, match=re.escape(message)):
        tritonbn.revert_model(model)
    assert type(model[1]) is tritonbn.BatchNorm2d, "a refused revert converted a layer"
    with pytest.raises(ValueError, match="BatchNorm2dReLU has no torch.nn equivalent"):
        tritonbn.revert_model(tritonbn.BatchNorm2dReLU(3))


def test_fused_relu_is_a_relu_for_any_other_input(path):
    assert isinstance(tritonbn.FusedReLU(), nn.ReLU)
    x = torch.randn(5, device=path)
    torch.testing.assert_close(tritonbn.FusedReLU()(x), torch.relu(x))
    y = x.clone()
    tritonbn.FusedReLU(inplace=True)(y)
    torch.testing.assert_close(y, torch.relu(x))
    assert repr(tritonbn.FusedReLU(inplace=True)) == "FusedReLU(inplace=True)"
    # the fused layer's output passes; anything computed from it (a hook's result, a copy) gets the ReLU
    bn = randomise_batch_norms(nn.Sequential(tritonbn.BatchNorm2dReLU(3)))[0].to(path).eval()
    y = bn(torch.randn(2, 3, 2, 2, device=path))
    assert tritonbn.FusedReLU()(y) is y
    shifted = y - 1.0
    torch.testing.assert_close(tritonbn.FusedReLU()(shifted), torch.relu(shifted))
    x = torch.randn(2, 3, 2, 2, device=path)
    model = nn.Sequential(bn, tritonbn.FusedReLU()).eval()
    for hook in (lambda module, args, out: out - 1.0, lambda module, args, out: out.sub_(1.0)):  # new, in place
        handle = bn.register_forward_hook(hook)
        torch.testing.assert_close(model(x), torch.relu(bn(x)))
        handle.remove()


def test_fused_sync_layers_single_process(path):
    """SyncBatchNormReLU / SyncBatchNormAddReLU outside a process group: relu(bn(x) [+ r]), with gradients."""
    for cls in (tritonbn.SyncBatchNormReLU, tritonbn.SyncBatchNormAddReLU):
        m = randomise_batch_norms(nn.Sequential(cls(3)))[0].to(path)
        ref = nn.BatchNorm2d(3).to(path)
        ref.load_state_dict(m.state_dict())
        x = torch.randn(4, 3, 2, 3, device=path, requires_grad=True)
        r = torch.randn_like(x, requires_grad=True)
        args = (x, r) if cls.takes_residual else (x,)
        y = m(*args)
        y_ref = torch.relu(ref(x) + r) if cls.takes_residual else torch.relu(ref(x))
        torch.testing.assert_close(y, y_ref)
        dy = torch.randn_like(y)
        inputs = [x, m.weight, m.bias] + ([r] if cls.takes_residual else [])
        inputs_ref = [x, ref.weight, ref.bias] + ([r] if cls.takes_residual else [])
        for g, g_ref in zip(
            torch.autograd.grad(y, inputs, dy), torch.autograd.grad(y_ref, inputs_ref, dy), strict=True
        ):
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.running_var, ref.running_var)
    # a residual the kernels do not take: torch's relu(bn(x) + r), with torch's promotion and errors
    for cls in (tritonbn.BatchNorm2dAddReLU, tritonbn.SyncBatchNormAddReLU):
        m = cls(3).to(path)
        ref = nn.BatchNorm2d(3).to(path)
        for residual in (r.detach().double(), r.detach()[:1]):
            y = m(x, residual)
            assert y.dtype == residual.dtype
            torch.testing.assert_close(y, torch.relu(ref(x) + residual), msg=f"{cls.__name__}: {residual.dtype}")
        with pytest.raises(RuntimeError, match="size of tensor a"):
            m(x, r[:, :2])
    y = tritonbn.batch_norm_relu(x, None, None, training=True, residual=r.detach().double())
    torch.testing.assert_close(y, torch.relu(F.batch_norm(x, None, None, training=True) + r.detach().double()))


def test_fused_placeholder_compiles_without_graph_break(path):
    """The placeholder's check traces: fused, and unfused after torch's conversion, both with fullgraph."""
    reference = randomise_batch_norms(_model()).to(path).eval()
    fused = tritonbn.convert_model(copy.deepcopy(reference), fuse_relu=True).eval()
    unfused = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(fused)).eval()
    x = torch.randn(4, 2, 3, 3, device=path)
    for model, relus in ((fused, 0), (unfused, 1)):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), reference(x), atol=1e-5, rtol=1e-5)
        torch._dynamo.reset()
        (graph,) = torch._dynamo.explain(model)(x).graphs
        assert graph.code.count("relu") == relus, graph.code  # the fused graph holds no separate ReLU
