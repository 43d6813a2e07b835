"""The layer types fastbayes gates and prunes, defined once (used by nn, graph, prune and dllp)."""
from __future__ import annotations

from torch import nn

BATCH_NORMS = nn.modules.batchnorm._BatchNorm   # BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm*
CONV = nn.modules.conv._ConvNd
WEIGHTED = (nn.Linear, CONV)
# element-wise activations a gate can sit after (placement="activation"): the output keeps the layer's units
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
               nn.Tanhshrink)
POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
         nn.modules.pooling._AdaptiveAvgPoolNd)
# f(s·z) = s·f(z) for s >= 0: a gate after these folds into the layer before them (ReLU(s·z) = s·ReLU(z))
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout, *POOLS)


def units(layer: nn.Module) -> tuple[int, int]:
    """(units, unit dim) of a layer's output: out_features on the last dim of a Linear, channels on dim 1 of a
    Conv or BatchNorm."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, -1
    if isinstance(layer, CONV):
        return layer.out_channels, 1
    if isinstance(layer, BATCH_NORMS):
        return layer.num_features, 1
    raise ValueError(f"cannot gate a {type(layer).__name__}: expected Linear, Conv or BatchNorm")
