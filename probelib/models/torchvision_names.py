"""torchvision's ResNet family by name (architectures, block plans, weights enums) and ImageNet's
mean/std, without importing torchvision: importing it costs seconds, and only the ResNet builds in
:mod:`probelib.models.resnet` need it."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: build_model's registered torchvision networks: name -> (weights enum, width_per_group).
TORCHVISION_ARCHS = {"resnet50": ("ResNet50_Weights", 64), "wide_resnet50_2": ("Wide_ResNet50_2_Weights", 128)}

#: torchvision's ResNet family: name -> (block "basic" | "bottleneck", layers, groups, width_per_group).
TORCHVISION_RESNETS: dict[str, tuple[str, tuple[int, ...], int, int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64), "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64), "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64), "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8), "resnext101_64x4d": ("bottleneck", (3, 4, 23, 3), 64, 4),
}
TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
                       "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
                       "wide_resnet50_2": "Wide_ResNet50_2_Weights", "wide_resnet101_2": "Wide_ResNet101_2_Weights",
                       "resnext50_32x4d": "ResNeXt50_32X4D_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
                       "resnext101_64x4d": "ResNeXt101_64X4D_Weights"}
