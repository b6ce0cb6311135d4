"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition"), built without
importing torchvision: the encoder of the colorizers.

Why not ``torchvision.models.resnet18``: importing torchvision imports ``torchvision.ops``, which
imports ``torch._dynamo``, and that costs about 4 s of the ~10 s that ``astrogan colorize`` took on
the 2-core CPU. The CLI only needs the layers.

The network is torchvision's, module for module: the same names (``conv1``, ``bn1``, ``layer1.0.
conv1``, ..., ``fc``), so torchvision's ImageNet state dict loads into it, and the same construction
and initialisation order, so that under one seed it holds the same random weights and leaves the
random generator in the same state as ``torchvision.models.resnet18(weights=None)``
(``tests/test_models.py`` checks both against torchvision). Checkpoints trained with either are
interchangeable and the default run's numbers do not move.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual connection (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's order of operations, not just its maths: autograd sums the gradients of a
        # tensor used several times (a U-Net skip, this block's two branches) in the order the
        # forward pass used it, so another order changes the last bits of training
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 for 3-channel input with a ``num_classes`` classifier, as torchvision builds it."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._cin = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 1)
        self.layer2 = self._layer(128, 2)
        self.layer3 = self._layer(256, 2)
        self.layer4 = self._layer(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's init, in module order
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _layer(self, cout: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != cout:  # built before the block, as torchvision does
            downsample = nn.Sequential(nn.Conv2d(self._cin, cout, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(cout))
        first = BasicBlock(self._cin, cout, stride, downsample)
        self._cin = cout
        return nn.Sequential(first, BasicBlock(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
