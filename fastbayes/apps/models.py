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
    """``lenet5`` (LeNet5-Caffe), ``lenet5-bmrs`` (32×32 inputs), ``mlp`` (784-150-10, BMRS's Fashion-MNIST MLP) or
    ``mlp-H1-H2...``."""
    import math
    if name == "lenet5":
        return LeNet5(in_shape[0], num_classes)
    if name == "lenet5-bmrs":
        return LeNet5BMRS(in_shape[0], num_classes)
    if name.startswith("mlp"):
        hidden = [int(h) for h in name.split("-")[1:]] or [150]
        return MLP((math.prod(in_shape), *hidden, num_classes))
    raise ValueError(f"model must be 'lenet5', 'lenet5-bmrs' or 'mlp[-H1-H2...]', got {name!r}")


class LeNet5BMRS(nn.Module):
    """BMRS's Lenet5 (conv 6·C_in and 16·C_in 5×5 filters, fc 120·C_in - 84·C_in - classes) on 32×32 inputs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        c = in_channels
        self.conv1 = nn.Conv2d(c, 6 * c, 5)
        self.conv2 = nn.Conv2d(6 * c, 16 * c, 5)
        self.fc1 = nn.Linear(16 * c * 25, 120 * c)
        self.fc2 = nn.Linear(120 * c, 84 * c)
        self.fc3 = nn.Linear(84 * c, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))
