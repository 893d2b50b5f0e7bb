"""tritonbn: batch normalization in Triton, drop-in for torch.nn, with gradients right at every order."""

from tritonbn.distributed import SyncBatchNorm
from tritonbn.functional import batch_norm, batch_norm_backward
from tritonbn.modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    FrozenBatchNorm2d,
    convert_model,
    revert_model,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FrozenBatchNorm2d",
    "SyncBatchNorm",
    "batch_norm",
    "batch_norm_backward",
    "convert_model",
    "revert_model",
    "__version__",
]
