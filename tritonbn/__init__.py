"""tritonbn: batch normalization in Triton, drop-in for torch.nn, with gradients right at every order.

The public names are imported on first use (PEP 562), so that ``import tritonbn.schema`` -- the result-file
columns the dashboard and the tools share -- loads neither torch nor triton.
"""

from __future__ import annotations

import importlib
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
}

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports on first use
    from tritonbn.distributed import SyncBatchNorm, SyncBatchNormAddReLU, SyncBatchNormReLU
    from tritonbn.functional import batch_norm, batch_norm_backward, batch_norm_relu
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
    if module is None:
        raise AttributeError(f"module 'tritonbn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tritonbn.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
