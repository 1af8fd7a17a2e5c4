"""MLPs for the feature-space classifiers of NCG (spec §4): LargeMLP (width 256), v3 (512), v4 (1024)."""

from __future__ import annotations

import torch
from torch import nn

MLP_WIDTHS = {"LargeMLP": 256, "LargeMLPv3": 512, "LargeMLPv4": 1024}


class MLP(nn.Module):
    """d → w → w → w → C with ReLU (inputs of any shape are flattened to d features).

    ``features(x)`` is the last hidden layer (N, w); ``classifier`` is the final Linear.
    PyTorch's default Linear initialisation, as in the original code.
    """

    def __init__(self, in_features: int, num_classes: int, width: int = 256, depth: int = 3):
        super().__init__()
        if in_features < 1 or width < 1 or depth < 1:
            raise ValueError(f"MLP needs in_features, width and depth >= 1, got {in_features}, {width}, {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.feature_dim = width
        self.in_features = in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (N, width)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))
