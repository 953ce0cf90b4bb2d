"""CIFAR ResNets (He et al. 2016) with option-A identity shortcuts.

Parameter names match akamaster/pytorch_resnet_cifar10 so that its checkpoints load as they are
(after stripping DataParallel's ``module.`` prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)


class ChannelScatterShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling, then input channel ``src[i]`` goes to output ``dst[i]``.

    The dense network zero-pads the channels on both sides (``dst = src + pad``). Keeping the mapping as
    explicit index buffers lets a pruner remove input and output channels independently.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        self.stride = stride
        self.out_channels = out_channels
        self.register_buffer("src", torch.arange(in_channels), persistent=False)
        self.register_buffer("dst", torch.arange(in_channels) + pad, persistent=False)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        return out.index_copy(1, self.dst, x.index_select(1, self.src))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (option-A) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ChannelScatterShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: three stages of n basic blocks with 16, 32 and 64 channels."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in CIFAR_RESNET_DEPTHS:
            raise ValueError(f"CIFAR ResNet depth must be one of {CIFAR_RESNET_DEPTHS}, got {depth}")
        blocks = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks, stride=1)
        self.layer2 = self._make_layer(32, blocks, stride=2)
        self.layer3 = self._make_layer(64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.shape[3]).flatten(1)
        return self.linear(out)
