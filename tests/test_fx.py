"""fuse_fx: batch norms fused with the ReLU (and add) that a traced forward applies after them.

The ResNet blocks below are torchvision's BasicBlock and Bottleneck, their forward code copied as it is
(one shared ``nn.ReLU(inplace=True)``, ``out += identity``, a downsample branch); with torchvision
installed its resnet18/resnet50 are checked too. Each fused model is compared with the unfused eager
model: outputs, input and parameter gradients for a random ``grad_output``, and running statistics.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_batch_norms
from torch import nn

import tritonbn
import tritonbn.launch
from tritonbn.fx import fuse_fx

# --- torchvision.models.resnet, the parts the blocks use (forward code copied exactly) -------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding"""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion: int = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    expansion: int = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class TinyResNet(nn.Module):
    """torchvision's ResNet (stem, ``_make_layer``, ``_forward_impl``) with 4 stem channels and two stages of
    one block: the second stage downsamples (stride 2 and a conv1x1 + batch norm branch)."""

    def __init__(self, block, norm_layer=nn.BatchNorm2d) -> None:
        super().__init__()
        self._norm_layer = norm_layer
        self.inplanes = 4
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 4 // block.expansion or 1, 1)
        self.layer2 = self._make_layer(block, 8 // block.expansion, 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, 5)

    def _make_layer(self, block, planes, blocks, stride=1):
        norm_layer = self._norm_layer
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x


# --- helpers ----------------------------------------------------------------------------------------------


def _kinds(model: nn.Module) -> dict[str, int]:
    """How many batch-norm layers of each type ``model`` holds."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            name = f"{type(m).__module__.split('.')[0]}.{type(m).__name__}"
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def exact_convs():
    """float32 convolutions in float32 on a GPU too (TF32 or another algorithm would round the fused and the
    reference model's convolutions differently)."""
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=True, allow_tf32=False):
        yield


def _native(monkeypatch) -> str:
    """The plain CPU path (torch ops): for the checks whose numerics the kernel tests already cover."""
    monkeypatch.setattr(tritonbn.launch, "INTERPRET", False)
    return "cpu"


def _same_numerics(fused: nn.Module, reference: nn.Module, shared: nn.Module, inputs, training: bool) -> None:
    """``fused`` (sharing parameters and buffers with ``shared``) computes what ``reference`` (an unfused copy of
    ``shared``) computes: outputs, gradients of every input and parameter for a random grad_output, and the
    running statistics afterwards."""
    fused.train(training)
    reference.train(training)
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    xs_ref = [x.detach().clone().requires_grad_() for x in inputs]
    y, y_ref = fused(*xs), reference(*xs_ref)
    ys, ys_ref = (y, y_ref) if isinstance(y, tuple) else ((y,), (y_ref,))
    for a, b in zip(ys, ys_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg="output")
    grads_out = [torch.randn_like(a) for a in ys]
    params = dict(shared.named_parameters())
    params_ref = dict(reference.named_parameters())
    assert list(params) == list(params_ref)
    grads = torch.autograd.grad(ys, xs + list(params.values()), grads_out)
    grads_ref = torch.autograd.grad(ys_ref, xs_ref + list(params_ref.values()), grads_out)
    names = [f"input {i}" for i in range(len(xs))] + list(params)
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")
    state, state_ref = shared.state_dict(), reference.state_dict()
    assert list(state) == list(state_ref)
    for k in state:
        torch.testing.assert_close(state[k], state_ref[k], atol=1e-6, rtol=1e-5, msg=k)


# --- fused layers, counted ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block, expected",
    [
        (BasicBlock, {"tritonbn.BatchNorm2dReLU": 3, "tritonbn.BatchNorm2dAddReLU": 2, "tritonbn.BatchNorm2d": 1}),
        (Bottleneck, {"tritonbn.BatchNorm2dReLU": 5, "tritonbn.BatchNorm2dAddReLU": 2, "tritonbn.BatchNorm2d": 1}),
    ],
)
def test_resnet_blocks_are_fused(block, expected):
    """Stem bn → relu, each block's bn → relu and bn → += identity → relu are fused; the downsample batch norm
    (no ReLU after it) is converted unfused. The model itself is untouched, its tensors shared."""
    model = TinyResNet(block)
    before = {name: type(m) for name, m in model.named_modules()}
    gm = fuse_fx(model)
    assert isinstance(gm, torch.fx.GraphModule) and type(gm).__name__ == "TinyResNet"
    assert _kinds(gm) == expected
    assert {name: type(m) for name, m in model.named_modules()} == before, "fuse_fx changed its argument"
    # (the containers of a GraphModule are plain modules: indexed by qualified name)
    assert type(gm.get_submodule("layer2.0.downsample.1")) is tritonbn.BatchNorm2d
    last = "bn2" if block is BasicBlock else "bn3"
    assert type(gm.get_submodule(f"layer2.0.{last}")) is tritonbn.BatchNorm2dAddReLU
    # the shared ReLU module stays (torchvision calls it several times): only its calls left the graph
    assert gm.get_submodule("layer1.0.relu") is model.layer1[0].relu and type(gm.relu) is nn.ReLU
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(gm.get_submodule(t), nn.ReLU) for t in calls)
    assert list(gm.state_dict()) == list(model.state_dict())
    for (k, v), (k2, v2) in zip(gm.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2 and v.data_ptr() == v2.data_ptr(), k


@pytest.mark.parametrize("arch, fused, add_fused, unfused", [("resnet18", 9, 8, 3), ("resnet50", 33, 16, 4)])
def test_torchvision_resnets(arch, fused, add_fused, unfused, monkeypatch):
    """torchvision's own networks: every block's bn → relu and bn → += identity → relu, and the stem's bn → relu
    fused; the downsample batch norms converted unfused; state_dict keys unchanged."""
    torchvision = pytest.importorskip("torchvision")
    model = getattr(torchvision.models, arch)(weights=None)
    gm = fuse_fx(model)
    assert _kinds(gm) == {
        "tritonbn.BatchNorm2dReLU": fused,
        "tritonbn.BatchNorm2dAddReLU": add_fused,
        "tritonbn.BatchNorm2d": unfused,
    }
    assert list(gm.state_dict()) == list(model.state_dict())
    if arch != "resnet18":
        return  # (the same blocks: numerics on the smaller network only)
    # float64: in train mode the last stage's batch norms see 2 values per channel, which amplifies rounding
    device = _native(monkeypatch)
    reference = copy.deepcopy(model).double()
    x = torch.randn(2, 3, 32, 32, device=device, dtype=torch.float64)
    _same_numerics(gm.double(), reference, gm, [x], training=True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_resnet_numerics(path, block, training, exact_convs):
    """Output, input/weight/bias gradients and running statistics of the fused model equal the eager model's
    (torch's batch norm, the shared in-place ReLU, ``out += identity``)."""
    model = randomise_batch_norms(TinyResNet(block)).to(path).train(training)
    reference = copy.deepcopy(model)
    gm = fuse_fx(model)
    assert all(m.training == training for m in gm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    _same_numerics(gm, reference, model, [torch.randn(2, 3, 6, 6, device=path)], training)


def test_train_eval_state_is_kept_per_layer():
    model = TinyResNet(BasicBlock).eval()
    model.layer2.train()
    gm = fuse_fx(model)
    assert not gm.training and not gm.bn1.training and gm.get_submodule("layer2.0.bn2").training
    assert gm.get_submodule("layer2.0.downsample.1").training and not gm.get_submodule("layer1.0.bn2").training


def test_relu_and_add_forms(path):
    """Every ReLU and add spelling is fused; the other operand of the add may come first, or be a number
    computed in the graph (the fused layer then computes torch's relu(bn(x) + n))."""

    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.bns = nn.ModuleList(nn.BatchNorm2d(3) for _ in range(12))

        def forward(self, x):
            b = self.bns
            return (
                torch.relu(b[0](x)),
                F.relu(b[1](x)),
                F.relu(b[2](x), inplace=True),
                b[3](x).relu(),
                b[4](x).relu_(),
                torch.relu_(b[5](x)),
                F.relu_(b[6](x)),
                torch.relu(x + b[7](x)),
                F.relu(torch.add(b[8](x), x)),
                b[9](x).add_(x).relu(),
                b[10](x).add(x, alpha=1).relu_(),
                torch.relu(b[11](x) + x.size(0)),
            )

    model = randomise_batch_norms(Forms()).to(path)
    reference = copy.deepcopy(model)
    gm = fuse_fx(model)
    types = [type(gm.get_submodule(f"bns.{i}")) for i in range(12)]
    assert types == [tritonbn.BatchNorm2dReLU] * 7 + [tritonbn.BatchNorm2dAddReLU] * 5
    _same_numerics(gm, reference, model, [torch.randn(2, 3, 2, 2, device=path)], training=True)


def test_sync_batch_norm_is_fused_into_the_sync_layers(monkeypatch):
    """torch's and tritonbn's SyncBatchNorm become SyncBatchNormReLU / SyncBatchNormAddReLU (without a
    process group they are batch norms: compared with torch's SyncBatchNorm, which is then F.batch_norm)."""
    device = _native(monkeypatch)
    model = randomise_batch_norms(TinyResNet(BasicBlock, norm_layer=nn.SyncBatchNorm))
    model.layer1[0].bn1 = tritonbn.convert_model(model.layer1[0].bn1)
    gm = fuse_fx(model)
    assert _kinds(gm) == {
        "tritonbn.SyncBatchNormReLU": 3,
        "tritonbn.SyncBatchNormAddReLU": 2,
        "tritonbn.SyncBatchNorm": 1,
    }
    reference = copy.deepcopy(model)
    _same_numerics(gm, reference, model, [torch.randn(2, 3, 4, 4, device=device)], training=True)


def test_conversion_options():
    """BatchNorm1d/3d are converted unfused (detach_stats passed on); subclasses and tritonbn's layers, as
    convert_model leaves them; a model converted with convert_model(fuse_relu=True) keeps its fusion."""

    class MyBN(nn.BatchNorm2d):
        pass

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn1d = nn.BatchNorm1d(3)
            self.mine = MyBN(3)
            self.seq = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())

        def forward(self, x):
            return torch.relu(self.bn1d(x.flatten(2))), torch.relu(self.mine(x)), self.seq(x)

    gm = fuse_fx(Mixed(), detach_stats=True)
    assert type(gm.bn1d) is tritonbn.BatchNorm1d and gm.bn1d.detach_stats
    assert type(gm.mine) is MyBN
    seq = gm.get_submodule("seq")
    assert type(seq.get_submodule("0")) is tritonbn.BatchNorm2dReLU and seq.get_submodule("0").detach_stats
    assert type(seq.get_submodule("1")) is nn.ReLU
    gm = fuse_fx(tritonbn.convert_model(Mixed(), fuse_relu=True)).get_submodule("seq")
    assert type(gm.get_submodule("0")) is tritonbn.BatchNorm2dReLU and type(gm.get_submodule("1")) is tritonbn.FusedReLU


def test_a_fused_relu_survives_torch_sync_conversion(monkeypatch):
    """Where a ReLU was fused, the graph keeps a pass-through that applies it again if the fused layer is
    replaced by one without it (torch's convert_sync_batchnorm), as FusedReLU does for convert_model;
    tritonbn's converter keeps the fusion; fusing again changes nothing; under torch.compile the graph holds
    no ReLU."""
    device = _native(monkeypatch)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(torch.relu(self.bn(x)))

    model = randomise_batch_norms(Net()).eval()
    x = torch.randn(2, 3, 2, 2, device=device)
    expected = model(x)
    gm = fuse_fx(model)
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(gm))
    ours = tritonbn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(gm))
    again = fuse_fx(gm)
    assert (type(theirs.bn), type(ours.bn), type(again.bn)) == (
        nn.SyncBatchNorm,
        tritonbn.SyncBatchNormReLU,
        tritonbn.BatchNorm2dReLU,
    )
    for m in (gm, theirs, ours, again):
        torch.testing.assert_close(m(x), expected)
    torch._dynamo.reset()
    (graph,) = torch._dynamo.explain(gm)(x).graphs
    assert "relu" not in graph.code, graph.code


# --- left alone -------------------------------------------------------------------------------------------


class _Features(nn.Module):
    """bn → relu, but the pre-activation is returned too."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        pre = self.bn(x)
        return F.relu(pre), pre


class _AddWithAlias(nn.Module):
    """An in-place add whose operand has another name: eager returns the mutated tensor for both."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn(x)
        pre = out
        out += x
        out = self.relu(out)
        return out, pre


class _AddUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        s = self.bn(x) + x
        return torch.relu(s), s


class _AddOntoResidual(nn.Module):
    """``identity += bn(x)`` changes the residual in place, which another name still refers to."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x * 1
        before = identity
        identity += self.bn(x)
        return self.relu(identity), before * 2  # (before is identity: changed by the +=)


class _AlphaOrConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x):
        return torch.relu(torch.add(self.bn(x), x, alpha=2)), torch.relu(self.bn2(x) + 1.0)


class _SharedBN(nn.Module):
    """One batch norm module called twice: fusing one call would change the other."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return torch.relu(self.bn(x)), self.bn(x * 2)


class _InputChangedBeforeTheAdd(nn.Module):
    """The batch norm's input is changed in place between the batch norm and the add: fusing would move the
    batch norm after the change."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x, r):
        x = x * 1
        y = self.bn(x)
        x.mul_(2)
        return torch.relu(y + r), x


_LEFT_ALONE = [
    _Features,
    _AddWithAlias,
    _AddUsedTwice,
    _AddOntoResidual,
    _AlphaOrConstant,
    _SharedBN,
]


@pytest.mark.parametrize("cls", _LEFT_ALONE, ids=lambda c: c.__name__)
def test_not_fused(cls, monkeypatch):
    """A batch norm whose output (or add) has another user, an add onto the residual, with alpha or of a
    constant, a batch norm called twice: converted, not fused, and the graph computes what eager does."""
    device = _native(monkeypatch)
    model = randomise_batch_norms(cls()).to(device)
    reference = copy.deepcopy(model)
    gm = fuse_fx(model)
    assert set(_kinds(gm)) == {"tritonbn.BatchNorm2d"}
    _same_numerics(gm, reference, model, [torch.randn(2, 3, 2, 2, device=device)], training=True)


def test_no_batch_norm_is_moved_past_an_in_place_change(monkeypatch):
    """Fusing bn -> add -> relu runs the batch norm where the add was; not when a node in between may change
    its input in place (eager then normalises the unchanged input; without gradients, as autograd refuses
    a saved input changed in place)."""
    device = _native(monkeypatch)
    model = randomise_batch_norms(_InputChangedBeforeTheAdd()).to(device).eval()
    gm = fuse_fx(model)
    assert set(_kinds(gm)) == {"tritonbn.BatchNorm2d"}
    x, r = torch.randn(2, 3, 2, 2, device=device), torch.randn(2, 3, 2, 2, device=device)
    with torch.no_grad():
        for got, want in zip(gm(x, r), model(x, r), strict=True):
            torch.testing.assert_close(got, want)


class _IntArithmetic(nn.Module):
    """``m += 1`` on an int rebinds ``m`` only: ``n``, the same value under another name, keeps it."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        n = x.size(1)
        m = n
        m += 1
        return torch.relu(self.bn(x)), x.new_full((1,), n), x.new_full((1,), m)


def test_in_place_operators_of_non_tensors_keep_python_semantics():
    model = _IntArithmetic()
    gm = fuse_fx(model)
    _, n, m = gm(torch.randn(2, 3, 2, 2))
    assert (n.item(), m.item()) == (3, 4)


def test_fusing_a_model_with_a_fused_part_again(monkeypatch):
    """``model.layer1 = fuse_fx(model.layer1)``, then the whole model: the pass-through ReLU and the in-place
    residual's dtype survive the second trace, and the result computes what eager does."""
    device = _native(monkeypatch)
    model = randomise_batch_norms(_WideResidual()).to(device)
    reference = copy.deepcopy(model)

    class Outer(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, identity):
            return self.inner(x, identity)

    twice = fuse_fx(Outer(fuse_fx(model)))
    names = {n.target.__name__ for n in twice.graph.nodes if n.op == "call_function"}
    assert {"_inplace_residual"} <= names
    x = torch.randn(2, 3, 2, 2, device=device)
    y, y2 = twice(x, x.double())
    assert (y.dtype, y2.dtype) == (torch.float32, torch.float64)
    ry, ry2 = reference(x, x.double())
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(y2, ry2)


def test_in_place_residual_that_would_broadcast_raises_as_in_eager(monkeypatch):
    device = _native(monkeypatch)
    model = _WideResidual().to(device)
    gm = fuse_fx(model)
    x, wide = torch.randn(1, 3, 2, 2, device=device), torch.randn(2, 3, 2, 2, device=device, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"output with shape \[1, 3, 2, 2\] doesn't match the broadcast shape"):
        model(x, wide)
    with pytest.raises(RuntimeError, match=r"output with shape \[1, 3, 2, 2\] doesn't match the broadcast shape"):
        gm(x, wide)


def test_hooked_modules_are_not_fused():
    model = TinyResNet(BasicBlock)
    model.layer1[0].bn1.register_forward_hook(lambda m, i, o: None)
    model.layer2[0].relu.register_forward_pre_hook(lambda m, i: None)
    gm = fuse_fx(model)
    types = {name: type(m) for name, m in gm.named_modules()}
    assert types["layer1.0.bn1"] is tritonbn.BatchNorm2d  # its hook would see the ReLU's output
    assert types["layer1.0.bn2"] is tritonbn.BatchNorm2dAddReLU
    assert types["layer2.0.bn1"] is types["layer2.0.bn2"] is tritonbn.BatchNorm2d  # the ReLU's hook would not run
    assert len(gm.get_submodule("layer1.0.bn1")._forward_hooks) == 1


class _WideResidual(nn.Module):
    """A float64 residual added to a float32 batch norm's output, in place and out of place."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, identity):
        out = self.bn(x)
        out += identity
        return self.relu(out), self.relu(self.bn2(x) + identity)


def test_residual_dtype_as_in_eager(monkeypatch):
    """``out += identity`` keeps ``out``'s dtype and ``out + identity`` promotes: so do the fused layers."""
    device = _native(monkeypatch)
    model = randomise_batch_norms(_WideResidual()).to(device)
    reference = copy.deepcopy(model)
    gm = fuse_fx(model)
    assert _kinds(gm) == {"tritonbn.BatchNorm2dAddReLU": 2}
    x = torch.randn(2, 3, 2, 2, device=device)
    y, y2 = gm(x, x.double())
    assert (y.dtype, y2.dtype) == (torch.float32, torch.float64)
    reference(x, x.double())  # (the same running-statistics update)
    _same_numerics(gm, reference, model, [x, x.double()], training=True)


# --- what does not trace ----------------------------------------------------------------------------------


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x, scale: bool = True):
        y = self.bn(x)
        if y.sum() > 0:  # data-dependent control flow
            y = y * 2
        return torch.relu(y)


def test_untraceable_model_raises_trace_error():
    model = _DataDependent()
    with pytest.raises(torch.fx.proxy.TraceError, match="_DataDependent does not trace with torch.fx") as info:
        fuse_fx(model)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None
    assert type(model.bn) is nn.BatchNorm2d
    with pytest.raises(TypeError, match="expected an nn.Module, got builtin_function_or_method"):
        fuse_fx(torch.relu_)


def test_a_graph_module_is_fused_as_traced(monkeypatch):
    """A model traced by the caller (here with concrete_args) is fused from its own graph."""

    class Flagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x, relu: bool = True):
            y = self.bn(x)
            return torch.relu(y) if relu else y

    device = _native(monkeypatch)
    model = randomise_batch_norms(Flagged()).to(device)
    traced = torch.fx.symbolic_trace(model, concrete_args={"relu": True})
    gm = fuse_fx(traced)
    assert type(gm.bn) is tritonbn.BatchNorm2dReLU and type(traced.bn) is nn.BatchNorm2d
    x = torch.randn(2, 3, 2, 2, device=device)
    torch.testing.assert_close(gm.eval()(x), torch.relu(copy.deepcopy(model).eval()(x)))
