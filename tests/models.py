"""Small models shared by the tests and benchmarks."""
import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """LeNet5-Caffe (conv20-conv50-fc500-fc10) on 28×28 inputs, VALID padding: 800 fc1 inputs."""

    def __init__(self, in_channels=1, num_classes=10, widths=(20, 50, 500)):
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
    def __init__(self, sizes=(64, 32, 16, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
