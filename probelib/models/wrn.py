"""WideResNet (Zagoruyko & Komodakis) with a selectable normalisation layer.

Used by both papers: NCG trains ``WRN-40-10`` (dropout 0) on CIFAR; Burns & Steinhardt train
``WRN-40-2`` (dropout 0.3) with batch, group, instance, layer or no normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probelib._util import check_choice

NORMS = ("batch", "group", "instance", "instance-affine", "layer", "none")


def norm_layer(norm: str, channels: int, groups: int = 4) -> nn.Module:
    """The normalisation layer ``norm`` for ``channels`` feature maps.

    ``batch``: BatchNorm2d; ``group``: GroupNorm with ``groups`` groups (Burns: 4);
    ``instance`` / ``instance-affine``: InstanceNorm2d without / with a learned affine;
    ``layer``: GroupNorm(1, C) (normalises over C×H×W per sample); ``none``: identity.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        if channels % groups:
            raise ValueError(f"groups={groups} must divide every layer's channel count; {channels} is not "
                             "divisible. Choose a divisor of 16 (e.g. groups=4).")
        return nn.GroupNorm(groups, channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "instance-affine":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Pre-activation block: norm-ReLU-conv3×3-norm-ReLU-(dropout)-conv3×3 plus shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float, norm: str, groups: int):
        super().__init__()
        self.bn1 = norm_layer(norm, in_planes, groups)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(norm, out_planes, groups)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                 bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As the reference implementation: when the shapes differ, the shortcut sees the
        # pre-activated input; otherwise the raw input.
        o = self.relu1(self.bn1(x))
        if not self.equal_in_out:
            x = o
        out = self.relu2(self.bn2(self.conv1(o)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.shortcut(x))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: 3 groups of (depth−4)/6 BasicBlocks, widths 16/16k/32k/64k.

    ``features(x)``: after the final norm-ReLU and global average pooling, **64·k-d**
    (640-d for WRN-40-10, 128-d for WRN-40-2). The original pools with ``avg_pool2d(8)`` at
    32 px, i.e. over the whole 8×8 map; probelib pools adaptively to 1×1, identical at 32 px
    and valid at other sizes (7×7 at 28 px). ``classifier`` is the final Linear. Conv weights
    ~N(0, √(2/(k²·out))), norm weights 1 and biases 0, Linear bias 0, as both papers' code.
    """

    def __init__(self, depth: int = 40, widen: int = 2, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0, norm: str = "batch", groups: int = 4):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), "
                             f"got depth={depth}")
        if widen < 1:
            raise ValueError(f"WideResNet widen factor must be >= 1, got {widen}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_choice("norm", norm, NORMS)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        blocks = []
        for g, stride in enumerate((1, 2, 2)):
            layers = [BasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                 stride if i == 0 else 1, dropout, norm, groups) for i in range(n)]
            blocks.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = blocks
        self.bn1 = norm_layer(norm, widths[3], groups)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled activations after the final norm-ReLU (N, 64·widen)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
