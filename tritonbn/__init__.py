"""tritonbn: batch normalization in Triton, drop-in for torch.nn, with gradients right at every order."""

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
