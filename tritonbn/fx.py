"""Batch-norm fusion through ``torch.fx``: :func:`fuse_fx` fuses what a model's ``forward`` calls.

:func:`tritonbn.convert_model` (``fuse_relu=True``) sees only modules: it fuses a ``BatchNorm2d`` and a
``ReLU`` that are neighbours in an ``nn.Sequential``. Most networks apply the ReLU in ``forward`` instead;
torchvision's ResNet blocks do::

    out = self.bn1(out)
    out = self.relu(out)          # one nn.ReLU(inplace=True) module, called several times
    ...
    out = self.bn2(out)
    out += identity
    out = self.relu(out)

:func:`fuse_fx` traces the model with ``torch.fx`` and rewrites the graph, as
``torch.ao.quantization.quantize_fx.fuse_fx`` does for convolutions and batch norms.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.proxy import TraceError
from torch.nn.modules.batchnorm import _BatchNorm

from tritonbn.distributed import SyncBatchNorm, SyncBatchNormAddReLU
from tritonbn.functional import _is_relu_output
from tritonbn.modules import (
    _FUSE_RELU,
    _TO_TRITON,
    BatchNorm2d,
    BatchNorm2dAddReLU,
    FrozenBatchNorm2d,
    FusedReLU,
    _retype,
)

__all__ = ["fuse_fx"]

# the batch norm (exact type, torch's or tritonbn's) and the fused layer that computes relu(bn(x) + residual)
_FUSE_ADD_RELU = {
    nn.BatchNorm2d: BatchNorm2dAddReLU,
    BatchNorm2d: BatchNorm2dAddReLU,
    nn.SyncBatchNorm: SyncBatchNormAddReLU,
    SyncBatchNorm: SyncBatchNormAddReLU,
}
_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_)


def _inplace_function(op):
    """``a op= b`` as a function: ``a`` changed in place when it supports it (a tensor), and the result
    returned -- the name the statement rebinds. (``torch.fx`` would write ``operator.iadd(a, b)`` out as
    ``a += b; iadd = a``, which rebinds ``a`` itself: wrong for an int, whose other names keep the old value.)
    """

    def function(a, b):
        return op(a, b)

    function.__name__ = function.__qualname__ = f"_{op.__name__}"
    function.__module__ = __name__
    function.__doc__ = f"``a {_INPLACE_SYMBOLS[op.__name__]}= b``, returning the result."
    return function


_INPLACE_SYMBOLS = {
    "iadd": "+", "iand": "&", "ifloordiv": "//", "ilshift": "<<", "imatmul": "@", "imod": "%", "imul": "*",
    "ior": "|", "ipow": "**", "irshift": ">>", "isub": "-", "itruediv": "/", "ixor": "^",
}  # fmt: skip
_INPLACE_OPERATORS = tuple(_INPLACE_SYMBOLS)
#: operator name -> its function in the graph (module attributes, so generated code and pickles find them)
_INPLACE = {name: _inplace_function(getattr(operator, name)) for name in _INPLACE_OPERATORS}
globals().update({f.__name__: f for f in _INPLACE.values()})
_iadd = _INPLACE["iadd"]
_OPERATOR_INPLACE = tuple(getattr(operator, name) for name in _INPLACE_OPERATORS)


class _Proxy(fx.Proxy):
    """A proxy that records ``a += b`` as the in-place operation it is (a call of :data:`_INPLACE`'s function).

    ``torch.fx.Proxy`` has no in-place operators, so Python evaluates ``out += identity`` as
    ``out = out + identity``: a new tensor. The traced model then differs from the eager one wherever another
    name still refers to ``out`` (a feature returned before the add, say), and an in-place add could not be
    told apart from an out-of-place one.
    """


def _inplace_method(name):
    function = _INPLACE[name]

    def method(self, other):
        return self.tracer.create_proxy("call_function", function, (self, other), {})

    method.__name__ = f"__{name}__"
    return method


for _name in _INPLACE_OPERATORS:
    setattr(_Proxy, f"__{_name}__", _inplace_method(_name))


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with every batch norm and every tritonbn layer a leaf (a ``call_module`` node,
    its hooks kept), in-place operators recorded as such, and this module's own graph functions kept as
    calls (so a model holding an already fused part traces to the same graph)."""

    def __init__(self):
        super().__init__(autowrap_functions=(_relu_unless_fused, _inplace_residual, *_INPLACE.values()))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (_BatchNorm, FrozenBatchNorm2d, FusedReLU)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)


def _relu_unless_fused(input: torch.Tensor) -> torch.Tensor:
    """Where a fused batch norm's ReLU was: ``input`` itself when it is a fused layer's unmodified output
    (decided as :class:`tritonbn.FusedReLU` decides), else ``relu(input)``. So the model keeps its ReLU when
    the fused layer is later replaced by one without it (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
    rebuilds a ``BatchNorm2dReLU`` into a plain ``nn.SyncBatchNorm``); under ``torch.compile`` it is decided
    while tracing and costs nothing."""
    return input if _is_relu_output(input) else torch.relu(input)


def _inplace_residual(residual, input):
    """The residual of a fused in-place ``bn(input) += residual``: the sum keeps the batch norm output's dtype
    (``input``'s), where an out-of-place sum would promote it to the residual's, and its shape: a residual
    that broadcasts the output to a larger shape raises the RuntimeError the in-place add raises."""
    if isinstance(residual, torch.Tensor):
        shape = torch.broadcast_shapes(input.shape, residual.shape)
        if shape != input.shape:
            raise RuntimeError(f"output with shape {list(input.shape)} doesn't match the broadcast shape {list(shape)}")
        if residual.dtype != input.dtype:
            return residual.to(input.dtype)
    return residual


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_relu_of(node: fx.Node, value: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is ``relu(value)`` and nothing else: an ``nn.ReLU`` module without hooks,
    ``torch.relu``/``relu_``, ``F.relu``/``relu_`` or the ``Tensor.relu``/``relu_`` method."""
    if not node.args or node.args[0] is not value:
        return False
    if node.op == "call_module":
        m = modules.get(node.target)
        return type(m) is nn.ReLU and len(node.args) == 1 and not node.kwargs and not _hooked(m)
    if node.op == "call_method":
        return node.target in ("relu", "relu_") and len(node.args) == 1 and not node.kwargs
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        if node.target is F.relu:  # F.relu(input, inplace=False)
            return len(node.args) + len(node.kwargs) <= 2 and set(node.kwargs) <= {"inplace"}
        return len(node.args) == 1 and not node.kwargs
    return False


def _residual_of(add: fx.Node, bn: fx.Node) -> tuple[fx.Node, bool] | None:
    """``(residual, in_place)`` when ``add`` is ``bn + residual`` (or ``residual + bn``) of two graph values:
    ``operator.add``, ``torch.add`` and ``Tensor.add`` (``alpha`` 1), or in place on the batch norm's output
    (``operator.iadd``, ``Tensor.add_``); else ``None``."""
    if add.op == "call_function" and add.target is operator.add:
        inplace, keywords = False, False
    elif add.op == "call_function" and add.target is torch.add:
        inplace, keywords = False, True
    elif add.op == "call_function" and add.target in (operator.iadd, _iadd):
        inplace, keywords = True, False
    elif add.op == "call_method" and add.target in ("add", "add_"):
        inplace, keywords = add.target == "add_", True
    else:
        return None
    if len(add.args) != 2 or (add.kwargs and not (keywords and add.kwargs == {"alpha": 1})):
        return None
    a, b = add.args
    if a is bn:
        residual = b
    elif b is bn and not inplace:  # (an in-place add onto the residual would change the residual)
        residual = a
    else:
        return None
    if not isinstance(residual, fx.Node) or residual is bn:
        return None
    return residual, inplace


def _mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` may change a tensor in place (or is a call whose effects are unknown)."""
    kwargs = node.kwargs
    if kwargs.get("inplace") is True or "out" in kwargs:
        return True
    if node.op == "call_method":
        return node.target.endswith("_") or node.target in ("__setitem__", "__iadd__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in _INPLACE.values() or node.target in _OPERATOR_INPLACE or node.target is operator.setitem:
            return True
        return name.endswith("_") and not name.endswith("__") or name.startswith("__i")
    if node.op == "call_module":
        m = modules.get(node.target)
        return m is None or getattr(m, "inplace", False) is True
    return False


def _can_move_to(bn: fx.Node, user: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the batch-norm call ``bn`` can run where ``user`` is, instead of where it is: no node in
    between may change a tensor in place (it could be the batch norm's input)."""
    node = bn.next
    while node is not user:
        if _mutates(node, modules):
            return False
        node = node.next
    return True


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module, shared: set[int]) -> bool:
    """Put ``module`` at ``target`` in ``gm``, unless that would change a module the caller owns."""
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name)
    if id(parent) in shared:
        return False
    setattr(parent, name, module)
    return True


def fuse_fx(module: nn.Module, *, detach_stats: bool = False) -> fx.GraphModule:
    """Trace ``module`` with ``torch.fx`` and fuse its batch norms with the ReLU (and add) after them.

    Returns a new :class:`torch.fx.GraphModule` computing what ``module`` computes; ``module`` itself is not
    changed. In the traced graph, a batch norm module call whose output is used only by

    * a ReLU -- an ``nn.ReLU`` module (e.g. torchvision's shared ``self.relu = nn.ReLU(inplace=True)``),
      ``torch.relu``/``relu_``, ``F.relu``/``relu_`` or ``Tensor.relu``/``relu_`` -- becomes a
      :class:`tritonbn.BatchNorm2dReLU` (a ``SyncBatchNorm``: :class:`tritonbn.SyncBatchNormReLU`). The
      ReLU call becomes a pass-through that, like :class:`tritonbn.FusedReLU`, returns the fused layer's
      output untouched and applies the ReLU to anything else: if the fused layer is later replaced by one
      without the ReLU (``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` rebuilds it into a plain
      ``nn.SyncBatchNorm``), the model still computes ``relu(bn(x))``;
    * an add of a graph value (``+``, ``+=``, ``torch.add``, ``Tensor.add``/``add_``), that add being used
      only by a ReLU -- the tail of every ResNet block, ``out = bn(out); out += identity; out = relu(out)``
      -- becomes a :class:`tritonbn.BatchNorm2dAddReLU` (:class:`tritonbn.SyncBatchNormAddReLU`) called as
      ``(x, residual)`` where the add was; the add and ReLU calls are removed (a layer without the ReLU put
      in its place fails loudly: it takes no residual). In an in-place add the sum keeps the batch norm's
      dtype, as ``+=`` does.

    Batch norms are ``torch.nn.BatchNorm2d``/``SyncBatchNorm`` and tritonbn's, of exactly these types; other
    torch batch norms (``BatchNorm1d``/``3d``) are converted to tritonbn's unfused, as by
    :func:`tritonbn.convert_model` (with ``detach_stats`` for the converted ones), and subclasses are left
    alone. A fused layer shares the parameters, buffers and hooks of the batch norm it replaces and sits at
    the same qualified name, so ``state_dict`` keys and values stay those of ``module`` and training either
    model trains both; each layer's train/eval flag is kept, but Python that reads ``self.training`` (dropout
    called as ``F.dropout(x, training=self.training)``, an ``if self.training:`` branch) is fixed when the model
    is traced: fuse in the mode the model will run in. Modules that the traced ``forward`` does not call (an
    auxiliary head used only in training, say) are not in the result, nor in its ``state_dict``; hooks on
    modules that are not leaves (containers, blocks) ran once while tracing and are not called again. Move or
    cast the returned module (``.cuda()``, ``.half()``):
    ``nn.Module.to`` on the original afterwards changes the shared parameters in place but gives only the
    original's own layers new buffers. The ReLU modules are left in place (torchvision calls one several
    times): only their calls change. Like every ``torch.fx.GraphModule``, the result
    holds the submodules its graph calls under their qualified names, in plain ``nn.Module`` containers
    (``gm.get_submodule("layer1.0.bn1")``, not ``gm.layer1[0]``).

    Left unfused: a batch norm whose add comes after a node that may change a tensor in place (the batch
    norm runs where the add was, and could then see its input changed), a batch norm whose output has another
    user (e.g. a feature returned before the ReLU, or a
    ``+=`` whose operand is used elsewhere), a batch norm module called more than once, a call with extra
    arguments, an add with ``alpha`` or onto the residual in place (``identity += out``), and a batch norm or
    ReLU module with hooks (the fused call would skip them). ``a += b`` is traced as the in-place operation
    it is (plain ``torch.fx.symbolic_trace`` records ``a + b``), so the graph computes what the eager model
    computes when another name still refers to ``a``.

    ``module`` is traced with a ``torch.fx.Tracer`` whose leaves are torch's modules, every batch norm and
    tritonbn's layers. A model with data-dependent control flow, or other Python that ``torch.fx`` cannot
    trace, raises :class:`torch.fx.proxy.TraceError` (a ``ValueError``) naming the model, nothing changed:
    trace it yourself (``concrete_args``, a tracer with your own leaf modules) and pass the
    :class:`torch.fx.GraphModule` -- its graph is used as it is -- or fuse its traceable parts
    (``model.layer1 = tritonbn.fuse_fx(model.layer1)``: the keys stay the same), or use
    ``convert_model(model, fuse_relu=True)``, which fuses ``nn.Sequential`` neighbours only.

    Args:
        module: the model (any ``nn.Module``, or a ``GraphModule`` whose graph is then used as it is).
        detach_stats: given to the batch norms converted from torch's (see :func:`tritonbn.batch_norm`).

    Returns:
        A ``torch.fx.GraphModule`` with the class name of ``module``, taking the same inputs.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        torch.fx.proxy.TraceError: ``module`` does not trace with ``torch.fx`` (the tracer's exception is its
            ``__cause__``).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fuse_fx: expected an nn.Module, got {type(module).__name__}")
    if isinstance(module, fx.GraphModule):
        graph = copy.deepcopy(module.graph)
    else:
        try:
            graph = _Tracer().trace(module)
        except Exception as e:  # noqa: BLE001 - any tracing failure: re-raised as one documented type
            raise TraceError(
                f"fuse_fx: {type(module).__name__} does not trace with torch.fx ({type(e).__name__}: {e}). "
                "Trace it yourself and pass the GraphModule, fuse its traceable submodules, or use "
                "tritonbn.convert_model(model, fuse_relu=True) (nn.Sequential neighbours only)."
            ) from e
    gm = fx.GraphModule(module, graph, type(module).__name__)
    _fuse(gm, {id(m) for m in module.modules()}, detach_stats)
    return gm


def _fuse(gm: fx.GraphModule, shared: set[int], detach_stats: bool) -> None:
    graph = gm.graph
    modules = dict(gm.named_modules(remove_duplicate=False))
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for bn in list(graph.nodes):
        if bn.op != "call_module":
            continue
        old = gm.get_submodule(bn.target)
        cls = type(old)
        if cls not in _TO_TRITON and cls not in _FUSE_RELU:
            continue
        new = old
        if cls in _TO_TRITON:
            new = _retype(old, _TO_TRITON[cls])
            new.detach_stats = detach_stats
        fusable = cls in _FUSE_RELU and calls[bn.target] == 1 and len(bn.args) == 1 and not bn.kwargs
        fusable = fusable and not _hooked(old)
        user = _only_user(bn) if fusable else None
        residual = _residual_of(user, bn) if user is not None else None
        relu = _only_user(user) if residual is not None else None
        movable = residual is not None and _can_move_to(bn, user, modules)
        if movable and relu is not None and _is_relu_of(relu, user, modules):  # bn -> add -> relu
            if not _set_submodule(gm, bn.target, _retype(new, _FUSE_ADD_RELU[cls]), shared):
                continue
            other, inplace = residual
            user.prepend(bn)  # the residual may be computed after the batch norm (torchvision's downsample)
            if inplace:
                with graph.inserting_before(bn):
                    other = graph.call_function(_inplace_residual, (other, bn.args[0]))
            bn.args = (bn.args[0], other)
            relu.replace_all_uses_with(bn)
            graph.erase_node(relu)
            graph.erase_node(user)
        elif user is not None and _is_relu_of(user, bn, modules):  # bn -> relu
            if not _set_submodule(gm, bn.target, _retype(new, _FUSE_RELU[cls]), shared):
                continue
            with graph.inserting_after(bn):
                passed = graph.call_function(_relu_unless_fused, (bn,))
            user.replace_all_uses_with(passed)
            graph.erase_node(user)
        elif new is not old:
            _set_submodule(gm, bn.target, new, shared)
    graph.lint()
    gm.recompile()
