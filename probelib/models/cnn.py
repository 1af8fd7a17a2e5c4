"""CNN002: the small CNN of TRADES (``small_cnn``) that NCG trains on MNIST (NCG spec §4)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def cnn002_feature_size(image_size: int) -> int:
    """Side of the conv stack's output map for square ``image_size`` inputs (no padding)."""
    side = ((image_size - 4) // 2 - 4) // 2
    return side


class CNN002(nn.Module):
    """conv 32-32, maxpool, conv 64-64, maxpool (3×3, no padding), then fc 200-200-C with dropout.

    ``features(x)`` is the flattened output of the conv stack after the second max-pool:
    64·4·4 = **1024-d** at 28 px (the NCG feature-space representation for MNIST).
    ``classifier`` (fc1, ReLU, Dropout(0.5), fc2, ReLU, fc3) maps it to logits. Convs are
    Kaiming-normal with zero bias; **fc3's weight and bias start at 0** (so every input gets
    uniform logits at initialisation), as in TRADES' SmallCNN.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 dropout: float = 0.5):
        super().__init__()
        side = cnn002_feature_size(image_size)
        if side < 1:
            raise ValueError(f"CNN002 needs images of at least 16 px (it uses unpadded 3×3 convs and two "
                             f"max-pools); got image_size={image_size}. Use an MLP (e.g. 'LargeMLP') "
                             "for tiny images such as the 8×8 'digits'.")
        self.feature_dim = 64 * side * side
        self.conv = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 3)), ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU(inplace=True)),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU(inplace=True)),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(self.feature_dim, 200)), ("relu1", nn.ReLU(inplace=True)),
            ("drop", nn.Dropout(dropout)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU(inplace=True)),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened conv-stack output (N, 1024 at 28 px)."""
        return torch.flatten(self.conv(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
