"""``tritonbn-bench``: time tritonbn against cuDNN, PyTorch's native CUDA kernel and torch.compile."""
