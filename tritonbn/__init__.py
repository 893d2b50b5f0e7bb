"""tritonbn: batch normalization in Triton, drop-in for torch.nn, with gradients right at every order."""

__version__ = "0.1.0"
