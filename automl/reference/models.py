"""Small reference networks: ResNets and MobileNetV2-style networks for 28x28 (MNIST, Fashion-MNIST)
and 32x32 (CIFAR-10) images."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """CIFAR-style residual block; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) of He et al. for CIFAR, adapted to 1x28x28 input, widths 16/32/64."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages = []
        cin = width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet8(num_classes: int = 10) -> ResNet:
    return ResNet(8, num_classes)


def resnet20(num_classes: int = 10) -> ResNet:
    return ResNet(20, num_classes)


class PlainCNN(nn.Module):
    """A small plain CNN (conv-BN-ReLU x3, flatten into two Linear layers) for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 3 * 3, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(self.features(x)))))


def resnet56(num_classes: int = 10) -> ResNet:
    return ResNet(56, num_classes)


class LeNet4(nn.Module):
    """A LeNet-5-style network without BatchNorm: two convolutions, two Linear layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """A MobileNetV2-style network for 1x28x28 input (depthwise convolutions, inverted residuals)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        cfg = [(width, 1, 1, 1), (24, 6, 2, 2), (32, 6, 2, 2), (64, 6, 2, 1), (96, 6, 1, 1)]  # cout, expand, n, stride
        blocks: list[nn.Module] = []
        cin = width
        for cout, expand, n, stride in cfg:
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) for 3x32x32 input at width 0.5.

    The stem keeps the resolution and the first downsampling moves to the second stage (the
    usual CIFAR adaptation), the later stages keep MobileNetV2's widths, depths and expansion 6,
    and the last stride-2 stage runs at stride 1, so the network ends on 4x4 maps; 0.59 M parameters.
    """

    def __init__(self, num_classes: int = 10, width: float = 0.5, in_channels: int = 3) -> None:
        super().__init__()

        def c(channels: int) -> int:
            return max(8, int(channels * width + 4) // 8 * 8)

        stem = c(32)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        cfg = [(16, 1, 1, 1), (24, 6, 2, 2), (32, 6, 3, 2), (64, 6, 4, 2), (96, 6, 3, 1), (160, 6, 3, 1), (320, 6, 1, 1)]
        blocks: list[nn.Module] = []
        cin = stem
        for cout, expand, n, stride in cfg:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c(cout), stride if i == 0 else 1, expand))
                cin = c(cout)
        self.blocks = nn.Sequential(*blocks)
        head = 640
        self.head = nn.Sequential(nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


REFERENCE_MODELS = {"resnet8": resnet8, "resnet20": resnet20, "plaincnn": PlainCNN}


def build_reference_model(arch: str, in_channels: int, num_classes: int = 10) -> nn.Module:
    """A reference architecture for images of ``in_channels`` channels (1: MNIST-like, 3: CIFAR-10)."""
    if arch in ("resnet8", "resnet20", "resnet56"):
        return ResNet(int(arch.removeprefix("resnet")), num_classes, in_channels=in_channels)
    if arch == "mobilenetv2":
        return MobileNetV2Cifar(num_classes, in_channels=in_channels)
    if arch == "plaincnn" and in_channels == 1:
        return PlainCNN(num_classes)
    raise ValueError(f"no reference architecture {arch!r} for {in_channels}-channel images")
