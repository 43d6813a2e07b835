"""Pure-PyTorch reference of every op: the default backend and the oracle the kernels are tested against."""
