"""Small models shared by the tests and benchmarks."""
import torch.nn.functional as F
from torch import nn

from fastbayes.apps.models import MLP, LeNet5  # noqa: F401


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
