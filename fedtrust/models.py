"""Models: ResNet-18 for small images (Geiping et al. 2020) and a small ConvNet.

ResNet-18 follows the CIFAR variant used by "Inverting Gradients" (Geiping et
al. 2020) and its reference code: a 3x3 stride-1 stem, no max-pool, width 64
and [2, 2, 2, 2] basic blocks. The blocks are torchvision's, so parameter names
match ``torchvision.models.resnet18`` (``conv1.weight``, ``layer1.0.bn1.bias``,
``fc.weight`` ...). With 10 classes it has 11,173,962 parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as _tv_resnet18

MODEL_NAMES = ("resnet18", "convnet")


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    """ResNet-18 for small images (32x32 CIFAR, 28x28 MNIST).

    Parameters
    ----------
    num_classes:
        Size of the output layer.
    in_channels:
        Image channels (3 for CIFAR, 1 for MNIST).
    width:
        Channels of the stem and the first stage (64 in the paper).
    """
    model = _tv_resnet18(num_classes=num_classes, width_per_group=64)
    if width != 64:
        raise ValueError(f"resnet18 width must be 64 (torchvision BasicBlock), got {width}")
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class ConvNet(nn.Module):
    """A small convolutional network for fast tests and CPU experiments.

    Three 3x3 convolutions with ReLU (the last two with stride 2), global
    average pooling over a 4x4 grid and a linear classifier; no normalisation
    layers, so its gradient depends on each image alone.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def get_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build a model by name (``"resnet18"`` or ``"convnet"``)."""
    if name == "resnet18":
        return resnet18(num_classes=num_classes, in_channels=in_channels)
    if name == "convnet":
        return ConvNet(num_classes=num_classes, in_channels=in_channels)
    raise ValueError(f"model={name!r} is not known; allowed: {', '.join(MODEL_NAMES)}")

