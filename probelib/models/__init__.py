"""Architectures of both papers behind one registry, plus checkpoints and feature extraction.

``build_model(arch, num_classes, in_channels=None, image_size=None, **kwargs)`` builds:

* ``CNN002`` — TRADES' small CNN (NCG, MNIST); ``dropout``. features: conv stack, 1024-d at 28 px.
* ``WRN-<depth>-<widen>`` — WideResNet; ``norm``, ``groups``, ``dropout``. features: pooled, 64·widen-d.
  Named: ``WRN-40-10`` (NCG's CIFAR net, dropout 0, 640-d), ``WRN-40-2`` (Burns' CIFAR net,
  dropout 0.3, 128-d), ``WRN-16-1`` (the embedded mnist5k AdaBN default, 64-d).
* ``ResNet50Norm01`` — NCG's ImageNet-100 ResNet-50 (112 px). features: 2048-d.
* ``resnet50`` / ``wide_resnet50_2`` — torchvision's, ``weights`` = local file or weights name. 2048-d.
* ``LargeMLP`` / ``LargeMLPv3`` / ``LargeMLPv4`` — d→w→w→w→C, w = 256 / 512 / 1024;
  ``in_features``. features: last hidden layer, w-d.

``load_pretrained(source, checkpoint, ...)`` (:mod:`probelib.models.pretrained`) builds a model
from weights already on disk: torchvision ResNets, RobustBench's CIFAR-10 WideResNets, or a plain
state dict for any architecture above.

Every model takes images in [0, 1] (normalisation, where wanted, is inside the model), and
has ``features(x) -> (N, D)`` (the representation NCG uses for feature-space neighbours)
and ``classifier`` (the module that maps features to logits): ``model(x) ==
model.classifier(model.features(x))``. ``model.arch_config`` holds the arguments that rebuild
it, which checkpoints store.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from probelib._util import INFERENCE_BATCH_SIZE, compute_device, eval_mode, iter_batches, unknown_name
from probelib.models.checkpoint import (CheckpointError, CheckpointMismatchError, UnsafeCheckpointError,
                                        load_checkpoint, read_checkpoint, save_checkpoint)
from probelib.models.cnn import CNN002
from probelib.models.mlp import MLP, MLP_WIDTHS
from probelib.models.pretrained import load_pretrained, read_state_dict, save_external
from probelib.models.torchvision_names import TORCHVISION_ARCHS
from probelib.models.wrn import NORMS, WideResNet
from probelib.models.zoo import ZOO, zoo_names

__all__ = ["build_model", "model_names", "save_checkpoint", "load_checkpoint", "read_checkpoint",
           "extract_features", "prefer_channels_last", "CheckpointMismatchError", "CheckpointError", "UnsafeCheckpointError", "CNN002", "WideResNet", "NormalizedResNet",
           "MLP", "NORMS", "load_pretrained", "read_state_dict", "save_external", "zoo_names", "ZOO"]

_WRN = re.compile(r"^WRN-(\d+)-(\d+)$")
# Named WideResNets and their default dropout (each paper's setting).
_WRN_NAMED = {"WRN-40-10": 0.0, "WRN-40-2": 0.3, "WRN-16-1": 0.0}
_DEFAULTS = {  # arch family -> (in_channels, image_size)
    "CNN002": (1, 28), "WRN": (3, 32), "ResNet50Norm01": (3, 112), "resnet50": (3, 224),
    "wide_resnet50_2": (3, 224),
}


def __getattr__(name: str) -> Any:  # NormalizedResNet imports torchvision: on first use only
    if name == "NormalizedResNet":
        from probelib.models.resnet import NormalizedResNet
        return NormalizedResNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_names() -> list[str]:
    """The architecture names :func:`build_model` accepts (``WRN-<depth>-<widen>`` is a pattern)."""
    return ["CNN002", *_WRN_NAMED, "WRN-<depth>-<widen>", "ResNet50Norm01", *TORCHVISION_ARCHS, *MLP_WIDTHS]


def build_model(arch: str, num_classes: int, in_channels: int | None = None, image_size: int | None = None,
                **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` (see the module docstring) for ``num_classes`` classes.

    ``in_channels``/``image_size`` default to the architecture's usual input (CNN002 1×28,
    WRN 3×32, ResNet50Norm01 3×112). Extra keyword arguments: ``dropout`` (CNN002, WRN),
    ``norm`` and ``groups`` (WRN: batch | group | instance | instance-affine | layer | none),
    ``weights`` (resnet50, wide_resnet50_2: a local file or a torchvision weights name),
    ``in_features`` (MLPs; else in_channels·image_size²).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    config: dict[str, Any] = {"arch": arch, "num_classes": num_classes}

    def take(allowed: dict[str, Any]) -> dict[str, Any]:
        extra = set(kwargs) - set(allowed)
        if extra:
            raise TypeError(f"build_model({arch!r}) got unexpected keyword argument(s) {sorted(extra)}; "
                            f"it accepts {sorted(allowed) or 'none besides in_channels/image_size'}")
        return {k: kwargs.get(k, v) for k, v in allowed.items()}

    m = _WRN.match(arch) if isinstance(arch, str) else None
    if arch == "CNN002":
        in_channels = in_channels or _DEFAULTS["CNN002"][0]
        image_size = image_size or _DEFAULTS["CNN002"][1]
        opts = take({"dropout": 0.5})
        model = CNN002(num_classes, in_channels, image_size, **opts)
    elif m:
        in_channels = in_channels or _DEFAULTS["WRN"][0]
        image_size = image_size or _DEFAULTS["WRN"][1]
        opts = take({"dropout": _WRN_NAMED.get(arch, 0.0), "norm": "batch", "groups": 4})
        model = WideResNet(int(m[1]), int(m[2]), num_classes, in_channels, **opts)
    elif arch == "ResNet50Norm01" or arch in TORCHVISION_ARCHS:
        in_channels = in_channels or 3
        image_size = image_size or _DEFAULTS[arch][1]
        if in_channels != 3:
            raise ValueError(f"{arch} normalises with ImageNet's RGB mean/std and needs in_channels=3, "
                             f"got {in_channels}")
        opts = take({"weights": None} if arch in TORCHVISION_ARCHS else {})
        from probelib.models.resnet import build_resnet  # imports torchvision (seconds): only when asked
        model = build_resnet(arch, num_classes, opts.pop("weights", None))
    elif arch in MLP_WIDTHS:
        opts = take({"in_features": None})
        d = opts["in_features"]
        if d is None:
            if not (in_channels and image_size):
                raise ValueError(f"{arch} needs in_features=D (the input dimension), "
                                 "or in_channels and image_size to flatten images")
            d = in_channels * image_size * image_size
        opts["in_features"] = int(d)
        model = MLP(int(d), num_classes, width=MLP_WIDTHS[arch])
    else:
        raise unknown_name("architecture", arch, model_names())
    if in_channels is not None:
        config["in_channels"] = in_channels
    if image_size is not None:
        config["image_size"] = image_size
    config.update({k: v for k, v in opts.items() if k != "weights"})
    model.arch_config = config
    return prefer_channels_last(model)


def prefer_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-d weights in channels-last (NHWC) memory, in place, when it has 2-d
    convolutions; other models are returned as they are.

    The values and every result are unchanged (up to float rounding); only the memory order differs.
    On the CPU, oneDNN's convolutions run 1.2× (CNN002) to 1.8× (the WideResNets) faster on it
    (bench/README.md); inputs may stay NCHW (each convolution's output follows its weight).
    Every model :func:`build_model` and :func:`load_pretrained` return gets it.
    """
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def extract_features(model: nn.Module, data: torch.Tensor | Dataset, *, batch_size: int = INFERENCE_BATCH_SIZE,
                     device: str | torch.device | None = None, desc: str | None = "features") -> torch.Tensor:
    """``model.features`` of every item of ``data`` (a tensor, TensorSet, Dataset or DataLoader) in order.

    Eval mode (each module's mode is restored afterwards), no gradients, batches of ``batch_size``
    (:func:`probelib._util.iter_batches`; ``desc=None`` hides the progress bar); returns float32
    (N, D) on the CPU. ``device`` defaults to where the model's parameters are, as in
    :func:`probelib.metrics.predict` (:func:`probelib._util.compute_device`); the model is moved
    there if needed.
    """
    if not hasattr(model, "features"):
        raise TypeError(f"{type(model).__name__} has no features(x) method; build it with build_model")
    device = compute_device(model, device)
    model.to(device)
    with eval_mode(model):
        out = [model.features(x).float().cpu() for x in iter_batches(data, batch_size, device, desc)]
    return torch.cat(out) if out else torch.empty(0, 0)
