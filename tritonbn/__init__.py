"""tritonbn: batch normalization in Triton, drop-in for torch.nn, with gradients right at every order.

The public names and submodules are imported on first use (PEP 562), so that ``import tritonbn.schema`` --
the result-file columns the dashboard and the tools share -- loads neither torch nor triton. When torch is
already loaded, ``import tritonbn`` registers the custom ops (``torch.ops.tritonbn.*``) at once, as a
program that loads a ``torch.export`` artifact expects; ``import tritonbn.ops`` does it in any order.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm2dAddReLU",
    "BatchNorm2dReLU",
    "BatchNorm3d",
    "FrozenBatchNorm2d",
    "FusedReLU",
    "SyncBatchNorm",
    "SyncBatchNormAddReLU",
    "SyncBatchNormReLU",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_relu",
    "convert_model",
    "fuse_fx",
    "revert_model",
    "__version__",
]

#: the submodule that defines each public name
_EXPORTS = {
    **dict.fromkeys(("SyncBatchNorm", "SyncBatchNormAddReLU", "SyncBatchNormReLU"), "distributed"),
    **dict.fromkeys(("batch_norm", "batch_norm_backward", "batch_norm_relu"), "functional"),
    **dict.fromkeys(
        ("BatchNorm1d", "BatchNorm2d", "BatchNorm2dAddReLU", "BatchNorm2dReLU", "BatchNorm3d", "FrozenBatchNorm2d"),
        "modules",
    ),
    **dict.fromkeys(("FusedReLU", "convert_model", "revert_model"), "modules"),
    "fuse_fx": "fx",
}

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports on first use
    from tritonbn.distributed import SyncBatchNorm, SyncBatchNormAddReLU, SyncBatchNormReLU
    from tritonbn.functional import batch_norm, batch_norm_backward, batch_norm_relu
    from tritonbn.fx import fuse_fx
    from tritonbn.modules import (
        BatchNorm1d,
        BatchNorm2d,
        BatchNorm2dAddReLU,
        BatchNorm2dReLU,
        BatchNorm3d,
        FrozenBatchNorm2d,
        FusedReLU,
        convert_model,
        revert_model,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"tritonbn.{module}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"tritonbn.{name}") is not None:
        value = importlib.import_module(f"tritonbn.{name}")  # a submodule: tritonbn.launch, tritonbn.ops, ...
    else:
        raise AttributeError(f"module 'tritonbn' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if "torch" in sys.modules:  # a torch program: the custom ops exist from the import on, as they always did
    importlib.import_module("tritonbn.ops")
