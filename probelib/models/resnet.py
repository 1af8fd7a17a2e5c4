"""ResNet-50 family with ImageNet mean/std normalisation inside ``forward`` (inputs stay in [0, 1]).

* ``ResNet50Norm01`` — NCG's ImageNet-100 network (spec §4): torchvision's Bottleneck
  [3, 4, 6, 3] ResNet-50, Kaiming fan-out init, trained from scratch on 112 px images.
* ``resnet50`` / ``wide_resnet50_2`` — torchvision's networks for the AdaBN ImageNet studies,
  with weights from a local file (``weights="/path/to/file.pth"``) or torchvision's weights
  enum (``weights="IMAGENET1K_V1"``; downloads into torch's hub cache, or fails clearly).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from probelib._util import check_choice
from probelib.models.torchvision_names import (IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_ARCHS, TORCHVISION_RESNETS,
                                              TORCHVISION_WEIGHTS)

__all__ = ["NormalizedResNet", "ImageNetResNet", "build_resnet", "IMAGENET_MEAN", "IMAGENET_STD", "TORCHVISION_ARCHS",
           "TORCHVISION_RESNETS", "TORCHVISION_WEIGHTS"]
_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class NormalizedResNet(ResNet):
    """A torchvision ResNet whose ``forward`` first normalises [0, 1] input with ImageNet mean/std.

    ``features(x)``: the globally average-pooled output of layer4 (**2048-d** for ResNet-50;
    ``512·block.expansion`` in general). ``classifier``
    is ``fc``. The state dict has exactly torchvision's keys (the mean/std buffers are not
    saved), so torchvision checkpoints load unchanged.
    """

    def __init__(self, num_classes: int = 1000, width_per_group: int = 64, *, block: type = Bottleneck,
                 layers: Sequence[int] = (3, 4, 6, 3), groups: int = 1):
        super().__init__(block, list(layers), num_classes=num_classes, groups=groups, width_per_group=width_per_group)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = 512 * block.expansion

    @property
    def classifier(self) -> nn.Module:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled layer4 activations (N, feature_dim) of the normalised input."""
        x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.fc(self.features(x))


def _state_dict_from_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; pass the path of a torchvision "
                                "state dict (.pth) saved with torch.save(model.state_dict(), path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _state_dict_from_enum(arch: str, name: str) -> dict:
    from torchvision.models import get_weight

    enum_name, _ = TORCHVISION_ARCHS[arch]
    try:
        weights = get_weight(f"{enum_name}.{name}")
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"weights={name!r} is neither an existing file nor a member of torchvision's "
                         f"{enum_name} (e.g. 'IMAGENET1K_V1', 'IMAGENET1K_V2', 'DEFAULT'): {err}") from None
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError, ...)
        raise RuntimeError(f"could not download torchvision's {enum_name}.{name} ({type(err).__name__}: {err}). "
                           f"Fetch {weights.url} on a machine with network access and pass its local path "
                           f"as weights='/path/to/{Path(weights.url).name}'") from None


def build_resnet(arch: str, num_classes: int = 1000, weights: str | os.PathLike | None = None
                 ) -> NormalizedResNet:
    """``ResNet50Norm01``, ``resnet50`` or ``wide_resnet50_2``, optionally with ``weights`` loaded."""
    width = 64 if arch == "ResNet50Norm01" else TORCHVISION_ARCHS[arch][1]
    model = NormalizedResNet(num_classes=num_classes, width_per_group=width)
    if weights is None:
        return model
    path = Path(weights)
    if path.exists() or os.sep in str(weights) or str(weights).endswith((".pth", ".pt")):
        state = _state_dict_from_file(path)
    elif arch in TORCHVISION_ARCHS:
        state = _state_dict_from_enum(arch, str(weights))
    else:
        raise FileNotFoundError(f"weights file {str(weights)!r} does not exist")
    fc = state.get("fc.weight")
    if fc is not None and fc.shape[0] != num_classes:
        raise ValueError(f"the weights have a {fc.shape[0]}-class fc layer but num_classes={num_classes}; "
                         f"build with num_classes={fc.shape[0]} (and replace model.fc afterwards if needed)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"the weights do not fit {arch}: missing keys {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                         f"unexpected keys {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
    return model


class ImageNetResNet(NormalizedResNet):
    """A torchvision ResNet/ResNeXt/Wide ResNet that normalises [0, 1] input with ImageNet mean/std.

    The state dict has exactly torchvision's keys (mean/std are not saved). ``features(x)``: the
    pooled layer4 output (512·expansion-d: 512 for resnet18/34, 2048 otherwise); ``classifier``: ``fc``.
    """

    def __init__(self, arch: str, num_classes: int = 1000):
        check_choice("torchvision architecture", arch, TORCHVISION_RESNETS)
        block, layers, groups, width = TORCHVISION_RESNETS[arch]
        super().__init__(num_classes, width, block=_BLOCKS[block], layers=layers, groups=groups)
