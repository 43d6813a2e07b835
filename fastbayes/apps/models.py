"""Small reference architectures used by the demo, the tests and the benchmarks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """LeNet5-Caffe (conv20-conv50-fc500-fc10) on 28×28 inputs with VALID padding (800 fc1 inputs), as in SBP."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(20, 50, 500)):
        super().__init__()
        c1, c2, f1 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 16, f1)
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """Fully connected net with tanh hidden units (BMRS's MLPs; tanh(0) = 0, so pruned units remove exactly)."""

    def __init__(self, sizes=(784, 150, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


def build(name: str, in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Module:
    """``lenet5`` (LeNet5-Caffe), ``lenet5-bmrs`` (BMRS's Lenet5, 32×32 inputs), ``bmrs-mlp`` (BMRS's Fashion-MNIST
    MLP, 1024-150-150-10 tanh, 32×32 inputs), ``mlp`` (784-150-10) or ``mlp-H1-H2...``."""
    import math
    if name == "lenet5":
        return LeNet5(in_shape[0], num_classes)
    if name == "lenet5-bmrs":
        return LeNet5BMRS(in_shape[0], num_classes)
    if name == "bmrs-mlp":
        return BMRSMLP(math.prod(in_shape), num_classes=num_classes)
    if name.startswith("mlp"):
        hidden = [int(h) for h in name.split("-")[1:]] or [150]
        return MLP((math.prod(in_shape), *hidden, num_classes))
    raise ValueError(f"model must be 'lenet5', 'lenet5-bmrs', 'bmrs-mlp' or 'mlp[-H1-H2...]', got {name!r}")


class LeNet5BMRS(nn.Module):
    """BMRS's Lenet5 (conv 6·C_in and 16·C_in 5×5 filters, fc 120·C_in - 84·C_in - classes) on 32×32 inputs.

    Activations are modules so that gates can sit after them as in BMRS's code (``Conv → ReLU → noise → MaxPool``,
    ``Linear → ReLU → noise``): ``fb.add_gates(model, placement="activation")``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        c = in_channels
        self.conv1, self.act1 = nn.Conv2d(c, 6 * c, 5), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(6 * c, 16 * c, 5), nn.ReLU()
        self.fc1, self.act3 = nn.Linear(16 * c * 25, 120 * c), nn.ReLU()
        self.fc2, self.act4 = nn.Linear(120 * c, 84 * c), nn.ReLU()
        self.fc3 = nn.Linear(84 * c, num_classes)

    def forward(self, x):
        x = F.max_pool2d(self.act1(self.conv1(x)), 2)
        x = F.max_pool2d(self.act2(self.conv2(x)), 2)
        x = self.act3(self.fc1(x.flatten(1)))
        return self.fc3(self.act4(self.fc2(x)))


class BMRSMLP(nn.Sequential):
    """BMRS's Fashion-MNIST "1 × 150" MLP as its released code builds it (``make_mlp(in_dim=32*32, n_layers=1,
    hidden_dim=150)``): Linear(1024, 150) → Tanh → Linear(150, 150) → Tanh → Linear(150, 10), on flattened 32×32
    inputs.  Gate it after the tanh as BMRS does: ``fb.add_gates(model, placement="activation")``."""

    def __init__(self, in_features: int = 1024, hidden: int = 150, n_layers: int = 1, num_classes: int = 10):
        sizes = [in_features] + [hidden] * (n_layers + 1)
        mods: list[nn.Module] = [nn.Flatten()]
        for i, o in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(i, o), nn.Tanh()]
        super().__init__(*mods, nn.Linear(hidden, num_classes))
