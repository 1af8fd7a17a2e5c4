"""Models people already have: torchvision weights, RobustBench zoo checkpoints, plain state dicts.

``load_pretrained(source, checkpoint, ...)`` builds a model from a checkpoint already on disk,
with the input normalisation inside the model (inputs stay in [0, 1], as every probelib model):

* ``source="torchvision"`` — a ``.pth`` state dict as torchvision saves it, for the ResNet
  family named by ``arch`` (:data:`TORCHVISION_RESNETS`); ImageNet mean/std inside the model.
* ``source="robustbench"`` — a RobustBench zoo checkpoint in the zoo's local layout
  ``<model_dir>/<dataset>/<threat_model>/<name>.pt``, for the CIFAR-10 WideResNet families
  (:data:`ZOO`: RobustBench's ``WideResNet`` and DeepMind's ``DMWideResNet`` key layouts), with
  the zoo's preprocessing (``Standard``: none beyond [0, 1]). A folder in the same layout
  holding another architecture loads with ``arch=`` (any :func:`probelib.models.build_model` name).
* ``source="state_dict"`` — a plain state dict for any registered probelib architecture
  (``arch``, ``num_classes`` and the other :func:`build_model` arguments).

Loading is weights-only (``torch.load(weights_only=True)``, or safetensors for
``.safetensors`` files); nothing is downloaded. Wrappers (``{"state_dict": ...}``,
``{"model": ...}``, ``{"model_state_dict": ...}``, probelib checkpoints) and key prefixes
(``module.`` from DataParallel, ``model.``, ``_orig_mod.`` from ``torch.compile``) are undone.
Every returned model is in eval mode and has ``features(x)`` and ``classifier`` (see
:mod:`probelib.models`), plus ``pretrained_source`` (a dict saying what was loaded from where).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import Bottleneck

from probelib._util import check_choice, unknown_name
from probelib.models.checkpoint import FORMAT, CheckpointError, CheckpointMismatchError, UnsafeCheckpointError
from probelib.models.resnet import TORCHVISION_ARCHS, NormalizedResNet

__all__ = ["load_pretrained", "load_torchvision", "load_robustbench", "load_state_dict_file", "read_state_dict",
           "save_external", "fit_state_dict", "zoo_path", "guess_torchvision_arch", "SOURCES", "EXTERNAL_FORMATS",
           "TORCHVISION_RESNETS", "ZOO", "ZOO_PREPROCESSING", "ZooEntry", "zoo_names",
           "ImageNetResNet", "ZooWideResNet", "ZooDMWideResNet"]

SOURCES = ("torchvision", "robustbench", "state_dict")
#: Wrapper keys under which training scripts nest the state dict (looked through in this order).
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network")
#: Key prefixes added by DataParallel/DDP, wrapper modules and torch.compile.
_PREFIXES = ("module.", "model.", "_orig_mod.")
#: Normalisation buffers some zoo classes save in their state dicts (checked, then dropped).
_NORM_KEYS = ("mu", "sigma", "mean", "std", "normalize.mean", "normalize.std")


# ----------------------------------------------------------------------------- reading files

def read_state_dict(path: str | os.PathLike, *, missing_hint: str = "") -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path`` as a flat ``{key: tensor}`` (weights-only).

    Unwraps ``{"state_dict"|"model_state_dict"|"model"|...: {...}}`` wrappers and probelib
    checkpoints; key prefixes are left for :func:`fit_state_dict`, which knows the model's keys.
    Raises ``FileNotFoundError`` (with ``missing_hint``), :class:`CheckpointError` (truncated or
    not a checkpoint) or :class:`UnsafeCheckpointError` (a pickle that would run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist."
                                + (f" {missing_hint}" if missing_hint else ""))
    if path.suffix == ".safetensors":
        payload: Any = _read_safetensors(path)
    else:
        payload = _torch_load(path)
    state = _unwrap(payload, path)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{str(path)!r} holds a dict whose entries are not all tensors (e.g. {bad[0]!r}: "
                              f"{type(state[bad[0]]).__name__}); pass a file holding a state dict, or "
                              f"{{'state_dict': state_dict}}")
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(f"{str(path)!r} is a safetensors file; install safetensors (pip install safetensors) "
                          "or save the state dict with torch.save instead") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError for damaged headers
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged or truncated ({type(err).__name__}: "
                              f"{str(err)[:160]}); copy it again from its source") from None


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if found:
            raise UnsafeCheckpointError(
                f"refusing to load {str(path)!r}: it holds Python objects beyond tensors and plain containers "
                f"({found[0][:200]}), which could run code when unpickled; probelib loads checkpoints with "
                "weights_only=True only. If you trust its source, re-save just the weights in trusted code: "
                "torch.save(model.state_dict(), path)") from None
        raise CheckpointError(f"checkpoint {str(path)!r} is not a torch checkpoint or is damaged (a plain pickle, "
                              "which probelib never unpickles, or damaged bytes); re-save it with "
                              "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        detail = str(err).splitlines()[0][:160] if str(err).strip() else "empty file"
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or damaged ({type(err).__name__}: {detail}); "
                              "copy it again from its source") from None


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    obj = payload
    for _ in range(4):  # {"checkpoint": {"state_dict": ...}} nests at most a few levels
        if _is_state(obj):
            return {str(k): v for k, v in obj.items()}
        if not isinstance(obj, Mapping):
            break
        if obj.get("format") == FORMAT and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
            continue
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors and len(tensors) >= len(obj) / 2:  # a state dict with a few bookkeeping entries
                return {str(k): v for k, v in tensors.items()}
            break
        obj = inner
    kind = type(payload).__name__
    keys = list(payload)[:6] if isinstance(payload, Mapping) else []
    raise CheckpointError(f"{str(path)!r} holds no state dict (a {kind}{f' with keys {keys}' if keys else ''}); "
                          f"expected a dict of tensors, or one under {list(_WRAPPERS)}")


# ----------------------------------------------------------------------------- fitting a model

def _strip_prefixes(state: Mapping[str, torch.Tensor], own: Sequence[str]) -> dict[str, torch.Tensor]:
    state = dict(state)
    own_set = set(own)
    changed = True
    while changed:
        changed = False
        if own_set and set(state) & own_set:
            break
        for p in _PREFIXES:
            if state and all(k.startswith(p) for k in state) and not all(k.startswith(p) for k in own_set):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
                break
    return state


def _check_norm_buffers(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop normalisation buffers the model keeps out of its state dict, after checking their values."""
    own = model.state_dict()
    for key in _NORM_KEYS:
        if key in state and key not in own:
            value = state.pop(key).float().flatten()
            attr = "mean" if key in ("mu", "mean", "normalize.mean") else "std"
            holder = getattr(model, "normalise", model)
            mine = getattr(holder, attr, None)
            if getattr(holder, "preprocessing", "") is None:
                mine = None  # the zoo entry normalises nothing
            expect = mine.float().flatten() if isinstance(mine, torch.Tensor) else None
            if expect is None or expect.shape != value.shape or not torch.allclose(expect, value, atol=1e-4):
                raise CheckpointMismatchError(
                    f"{source} stores input normalisation {key}={value.tolist()}, but the model normalises with "
                    f"{attr}={None if expect is None else expect.tolist()}; pick the zoo entry or arch whose "
                    "preprocessing matches the checkpoint")
    return state


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                   drop: Sequence[str] = (), hint: str = "") -> nn.Module:
    """Load ``state`` into ``model`` strictly after undoing key prefixes; eval mode.

    ``drop``: key prefixes the model deliberately lacks (e.g. RobustBench's unused ``sub_block1``).
    A mismatch raises :class:`CheckpointMismatchError` naming the first missing and unexpected
    keys and the first differing shape, plus ``hint``.
    """
    own = model.state_dict()
    state = _strip_prefixes(state, list(own))
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in drop)}
    state = _check_norm_buffers(model, state, source)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model weights missing from the file (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} file weights the model lacks (first: {unexpected[0]!r})")
        if shapes:
            parts.append(f"{len(shapes)} shapes differ (first: {shapes[0]})")
        raise CheckpointMismatchError(f"{source} does not fit {_describe_model(model)}: " + "; ".join(parts)
                                      + (f". {hint}" if hint else
                                         ". Check the architecture (arch=...), num_classes and the other build "
                                         "arguments against the code that saved the file"))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _describe_model(model: nn.Module) -> str:
    src = getattr(model, "pretrained_source", None) or {}
    name = src.get("arch") or (getattr(model, "arch_config", None) or {}).get("arch") or type(model).__name__
    return f"the {name} model"


# ----------------------------------------------------------------------------- torchvision ResNets

#: torchvision's ResNet family: name -> (block, layers, groups, width_per_group).
TORCHVISION_RESNETS: dict[str, tuple[type, tuple[int, ...], int, int]] = {
    "resnet18": (TVBasicBlock, (2, 2, 2, 2), 1, 64), "resnet34": (TVBasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64), "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1, 64), "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), 1, 128), "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (Bottleneck, (3, 4, 23, 3), 32, 8), "resnext101_64x4d": (Bottleneck, (3, 4, 23, 3), 64, 4),
}
_TV_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
               "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
               "wide_resnet50_2": "Wide_ResNet50_2_Weights", "wide_resnet101_2": "Wide_ResNet101_2_Weights",
               "resnext50_32x4d": "ResNeXt50_32X4D_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
               "resnext101_64x4d": "ResNeXt101_64X4D_Weights"}


class ImageNetResNet(NormalizedResNet):
    """A torchvision ResNet/ResNeXt/Wide ResNet that normalises [0, 1] input with ImageNet mean/std.

    The state dict has exactly torchvision's keys (mean/std are not saved). ``features(x)``: the
    pooled layer4 output (512·expansion-d: 512 for resnet18/34, 2048 otherwise); ``classifier``: ``fc``.
    """

    def __init__(self, arch: str, num_classes: int = 1000):
        check_choice("torchvision architecture", arch, TORCHVISION_RESNETS)
        block, layers, groups, width = TORCHVISION_RESNETS[arch]
        super().__init__(num_classes, width, block=block, layers=layers, groups=groups)


def guess_torchvision_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The :data:`TORCHVISION_RESNETS` name whose keys and shapes ``state`` has, if any."""
    state = _strip_prefixes(state, ["conv1.weight"])
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    w = state.get("layer1.0.conv2.weight")
    for name, (block, layers, groups, width) in TORCHVISION_RESNETS.items():
        if tuple(layers) != blocks or (block is Bottleneck) != bottleneck or w is None:
            continue
        planes = int(64 * width / 64) * groups if block is Bottleneck else 64
        if tuple(w.shape[:2]) == (planes, planes // groups):
            return name
    return None


# ----------------------------------------------------------------------------- RobustBench WideResNets

#: Input normalisation of the zoo's entries (applied inside the model): name -> (mean, std).
ZOO_PREPROCESSING: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "pm1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # x ↦ 2x − 1
    "rony": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "augustin": ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
                 (0.24703225141799082, 0.24348516474564, 0.26158783926049628)),
}


class _Normalise(nn.Module):
    """(x − mean) / std with non-persistent buffers (identity when ``preprocessing`` is None)."""

    def __init__(self, preprocessing: str | None, channels: int):
        super().__init__()
        if preprocessing is not None:
            check_choice("zoo preprocessing", preprocessing, ZOO_PREPROCESSING)
            mean, std = ZOO_PREPROCESSING[preprocessing]
            if len(mean) != channels:
                raise ValueError(f"preprocessing {preprocessing!r} is for {len(mean)}-channel input, "
                                 f"the model takes {channels}")
        else:
            mean, std = (0.0,) * channels, (1.0,) * channels
        self.preprocessing = preprocessing
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.preprocessing is None else (x - self.mean) / self.std


class _ZooBlock(nn.Module):
    """RobustBench ``WideResNet``'s BasicBlock: keys bn1, conv1, bn2, conv2, convShortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes  # as the zoo: the stride does not enter
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                     bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        if not self.equal_in_out:  # the shortcut then sees the pre-activated input
            x = o
        out = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return out + (x if self.equal_in_out else self.convShortcut(x))


class _ZooGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_ZooBlock(in_planes if i == 0 else out_planes, out_planes,
                                               stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _wrn_blocks(depth: int, widen: int) -> int:
    if depth < 10 or (depth - 4) % 6 or widen < 1:
        raise ValueError(f"WideResNet depth must be 6n+4 (>= 10) and width >= 1, got depth={depth}, width={widen}")
    return (depth - 4) // 6


class ZooWideResNet(nn.Module):
    """RobustBench's ``WideResNet`` (TRADES' code; the zoo's ``Standard`` is WRN-28-10) with its
    state-dict layout: ``conv1``, ``block{1,2,3}.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``,
    ``bn1``, ``fc``. The zoo entry's preprocessing runs first (``preprocessing=None``: none).
    ``features(x)``: pooled after the final BN-ReLU (64·widen-d); ``classifier``: ``fc``.
    """

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
                 preprocessing: str | None = None):
        super().__init__()
        n = _wrn_blocks(depth, widen)
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalise = _Normalise(preprocessing, in_channels)
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _ZooGroup(n, ch[0], ch[1], 1)
        self.block2 = _ZooGroup(n, ch[1], ch[2], 2)
        self.block3 = _ZooGroup(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self.feature_dim = ch[3]
        _wrn_init(self)

    @property
    def classifier(self) -> nn.Module:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled activations after the final BN-ReLU (avg_pool2d(8) at 32 px, as the zoo)."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalise(x)))))
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _DMBlock(nn.Module):
    """DeepMind's WideResNet block (RobustBench ``DMWideResNet``): explicit 'SAME' padding,
    keys batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = o
        v = F.pad(o, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return out + (self.shortcut(x) if self.has_shortcut else x)


class _DMGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*[_DMBlock(in_planes if i == 0 else out_planes, out_planes,
                                              stride if i == 0 else 1, activation) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}  # the zoo's Swish is x·sigmoid(x) = SiLU


class ZooDMWideResNet(nn.Module):
    """RobustBench's ``DMWideResNet`` (DeepMind's; Gowal et al., Rebuffi et al., ...) with its
    state-dict layout: ``init_conv``, ``layer.<g>.block.<i>.{batchnorm_0,conv_0,batchnorm_1,conv_1,
    shortcut}``, ``batchnorm``, ``logits``. CIFAR-10 mean/std inside (the zoo's entries);
    ``activation`` ``"silu"`` (the zoo's Swish) or ``"relu"``. ``features``: 64·width-d.
    """

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_channels: int = 3,
                 preprocessing: str | None = "cifar10", activation: str = "silu"):
        super().__init__()
        check_choice("activation", activation, _ACTIVATIONS)
        act = _ACTIVATIONS[activation]
        n = _wrn_blocks(depth, width)
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.normalise = _Normalise(preprocessing, in_channels)
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(_DMGroup(n, ch[0], ch[1], 1, act), _DMGroup(n, ch[1], ch[2], 2, act),
                                   _DMGroup(n, ch[2], ch[3], 2, act))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = act()
        self.logits = nn.Linear(ch[3], num_classes)
        self.feature_dim = ch[3]
        _wrn_init(self)

    @property
    def classifier(self) -> nn.Module:
        return self.logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled activations after the final BN-activation (64·width-d)."""
        out = self.layer(self.init_conv(self.normalise(x)))
        return torch.flatten(F.adaptive_avg_pool2d(self.relu(self.batchnorm(out)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def _wrn_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ZooEntry:
    """One RobustBench CIFAR-10 WideResNet: its family (``"wrn"``: ``WideResNet`` layout;
    ``"dm"``: ``DMWideResNet``), depth, width, preprocessing (a :data:`ZOO_PREPROCESSING` key or
    None) and the Google Drive id the zoo publishes it under, per threat model."""

    name: str
    family: str
    depth: int
    width: int
    preprocessing: str | None
    gdrive: Mapping[str, str] = field(default_factory=dict)
    activation: str = "silu"

    def build(self, num_classes: int = 10) -> nn.Module:
        """The architecture with random weights."""
        if self.family == "wrn":
            return ZooWideResNet(self.depth, self.width, num_classes, preprocessing=self.preprocessing)
        return ZooDMWideResNet(self.depth, self.width, num_classes, preprocessing=self.preprocessing,
                               activation=self.activation)


def _zoo(name: str, family: str, depth: int, width: int, preprocessing: str | None, gdrive: dict) -> ZooEntry:
    return ZooEntry(name, family, depth, width, preprocessing, gdrive)


#: RobustBench's CIFAR-10 WideResNet entries (facts from robustbench/model_zoo/cifar10.py):
#: name -> :class:`ZooEntry`. ``sub_block1`` weights some entries carry are unused by the zoo's
#: forward and are dropped on loading.
ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    _zoo('Carmon2019Unlabeled', 'wrn', 28, 10, None, {'Linf': '15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ'}),
    _zoo('Sehwag2020Hydra', 'wrn', 28, 10, None, {'Linf': '1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y'}),
    _zoo('Wang2020Improving', 'wrn', 28, 10, None, {'Linf': '1T939mU4kXYt5bbvM55aT4fLBvRhyzjiQ'}),
    _zoo('Hendrycks2019Using', 'wrn', 28, 10, 'pm1', {'Linf': '1-DcJsYw2dNEOyF9epks2QS7r9nqBDEsw'}),
    _zoo('Rice2020Overfitting', 'wrn', 34, 20, 'cifar10', {'Linf': '1vC_Twazji7lBjeMQvAD9uEQxi9Nx2oG-'}),
    _zoo('Zhang2019Theoretically', 'wrn', 34, 10, None, {'Linf': '1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_'}),
    _zoo('Huang2020Self', 'wrn', 34, 10, None, {'Linf': '1nInDeIyZe2G-mJFxQJ3UoclQNomWjMgm'}),
    _zoo('Zhang2019You', 'wrn', 34, 10, None, {'Linf': '1kB2qqPQ8qUNmK8VKuTOhT1X4GT46kAoA'}),
    _zoo('Zhang2020Attacks', 'wrn', 34, 10, None, {'Linf': '1lBVvLG6JLXJgQP2gbsTxNHl6s3YAopqk'}),
    _zoo('Wu2020Adversarial_extra', 'wrn', 28, 10, None, {'Linf': '1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp'}),
    _zoo('Wu2020Adversarial', 'wrn', 34, 10, None,
         {'Linf': '13LBcgNvhFppCFG22i1xATrahFPfMgXGf', 'L2': '1M5AZ0EZQt7d2AlTmsnqZcfx91-x7YEAV'}),
    _zoo('Gowal2020Uncovering_70_16', 'dm', 70, 16, 'cifar10', {'Linf': '1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl'}),
    _zoo('Gowal2020Uncovering_70_16_extra', 'dm', 70, 16, 'cifar10', {'Linf': '1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ'}),
    _zoo('Gowal2020Uncovering_34_20', 'dm', 34, 20, 'cifar10', {'Linf': '1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O'}),
    _zoo('Gowal2020Uncovering_28_10_extra', 'dm', 28, 10, 'cifar10', {'Linf': '1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2'}),
    _zoo('Sehwag2021Proxy', 'wrn', 34, 10, None,
         {'Linf': '1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm', 'L2': '1UviikNzpltVFsgMuqQ8YhpmvGczGRS4S'}),
    _zoo('Sitawarin2020Improving', 'wrn', 34, 10, None, {'Linf': '12teknvo6dQGSWBaGnbNFwFO3-Y8j2eB6'}),
    _zoo('Cui2020Learnable_34_20', 'wrn', 34, 20, None, {'Linf': '1y7BUxPhQjNlb4w4BUlDyYJIS4w4fsGiS'}),
    _zoo('Cui2020Learnable_34_10', 'wrn', 34, 10, None, {'Linf': '16s9pi_1QgMbFLISVvaVUiNfCzah6g2YV'}),
    _zoo('Zhang2020Geometry', 'wrn', 28, 10, None, {'Linf': '1UoG1JhbAps1MdMc6PEFiZ2yVXl_Ii5Jk'}),
    _zoo('Rebuffi2021Fixing_28_10_cutmix_ddpm', 'dm', 28, 10, 'cifar10',
         {'Linf': '1-0EChXbc6pOvx26O17av263bCeqIAz6s', 'L2': '1-DUKcvfDzeWwt0NK7q2XvU-dIi8up8B0'}),
    _zoo('Rebuffi2021Fixing_106_16_cutmix_ddpm', 'dm', 106, 16, 'cifar10',
         {'Linf': '1-4qnkveIkeWoGdF72kpEFHETiY3y4_tF'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_ddpm', 'dm', 70, 16, 'cifar10',
         {'Linf': '1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi', 'L2': '1-8ECIOYF4JB0ywxJOmhkefnv4TW-KuXp'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_extra', 'dm', 70, 16, 'cifar10',
         {'Linf': '1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg', 'L2': '1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708'}),
    _zoo('Sridhar2021Robust', 'wrn', 28, 10, None, {'Linf': '1muDMpOyRlgJ7n2rhS2NpfFGp3rzjuIu0'}),
    _zoo('Sridhar2021Robust_34_15', 'wrn', 34, 15, None, {'Linf': '1-3ii3GX93YqIcmJ3VNsOgYA7ecdnSZ0Z'}),
    _zoo('Rade2021Helper_extra', 'dm', 34, 10, 'cifar10', {'Linf': '1GhAp-0C3ONRy9BxIe0J9vKc082vHvR7t'}),
    _zoo('Rade2021Helper_ddpm', 'dm', 28, 10, 'cifar10', {'Linf': '1AOF6LxnwgS5fCz_lVLYqs_wnUYuv6O7z'}),
    _zoo('Addepalli2021Towards_WRN34', 'wrn', 34, 10, None,
         {'Linf': '1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB', 'corruptions': '1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB'}),
    _zoo('Gowal2021Improving_70_16_ddpm_100m', 'dm', 70, 16, 'cifar10', {'Linf': '10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4'}),
    _zoo('Gowal2021Improving_28_10_ddpm_100m', 'dm', 28, 10, 'cifar10', {'Linf': '12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx'}),
    _zoo('Chen2021LTD_WRN34_10', 'wrn', 34, 10, None, {'Linf': '1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D'}),
    _zoo('Chen2021LTD_WRN34_20', 'wrn', 34, 20, None, {'Linf': '1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm'}),
    _zoo('Standard', 'wrn', 28, 10, None,
         dict.fromkeys(("Linf", "L2", "corruptions"), "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC")),
    _zoo('Jia2022LAS-AT_34_10', 'wrn', 34, 10, None, {'Linf': '1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD'}),
    _zoo('Jia2022LAS-AT_70_16', 'wrn', 70, 16, None, {'Linf': '1-4p-Gr0hjl8wq6qvvTza4x4a5Rmu-Bfr'}),
    _zoo('Pang2022Robustness_WRN28_10', 'dm', 28, 10, 'cifar10', {'Linf': '16ChNkterCp17BXv-xxqpfedb4u2_CjjS'}),
    _zoo('Pang2022Robustness_WRN70_16', 'dm', 70, 16, 'cifar10', {'Linf': '1uQZYUuUiL9BzaQUeXLhjr_RhoyFRrHe3'}),
    _zoo('Addepalli2022Efficient_WRN_34_10', 'wrn', 34, 10, None,
         {'Linf': '1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA', 'corruptions': '1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA'}),
    _zoo('Wang2023Better_WRN-28-10', 'dm', 28, 10, 'cifar10',
         {'Linf': '1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI', 'L2': '1-fwKiJXEqHHUngt8wKsNnHuD4vAPvPXC'}),
    _zoo('Wang2023Better_WRN-70-16', 'dm', 70, 16, 'cifar10',
         {'Linf': '1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap', 'L2': '101UyURyte05tJLA9VFRBN6UDLyn-0sJw'}),
    _zoo('Xu2023Exploring_WRN-28-10', 'dm', 28, 10, 'cifar10', {'Linf': '1k1uJI13ft0h0dfzuEihVpBvjBXwFRH2o'}),
    _zoo('Cui2023Decoupled_WRN-28-10', 'dm', 28, 10, 'cifar10', {'Linf': '1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2'}),
    _zoo('Cui2023Decoupled_WRN-34-10', 'wrn', 34, 10, None, {'Linf': '1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN'}),
    _zoo('Chen2024Data_WRN_34_10', 'wrn', 34, 10, None, {'Linf': '1-AzyMQaoUuwxec6O_Yri5OVtVqnNgR4R'}),
    _zoo('Chen2024Data_WRN_34_20', 'wrn', 34, 20, None, {'Linf': '1-IbKAGtp79tAEm59N0i8QMvMZ3nxSD2-'}),
    _zoo('Bartoldson2024Adversarial_WRN-94-16', 'dm', 94, 16, 'cifar10', {'Linf': '1g6o9H1b6vjoBi1USdCBt64C8B8LPiioX'}),
    _zoo('Bartoldson2024Adversarial_WRN-82-8', 'dm', 82, 8, 'cifar10', {'Linf': '1--jl8qJh624SFqFffvg1IkYR-fZGA2Sr'}),
    _zoo('Rony2019Decoupling', 'wrn', 28, 10, 'rony', {'L2': '1Oua2ZYSxNvoDrtlY9vTtRzyBWHziE4Uy'}),
    _zoo('Gowal2020Uncovering', 'dm', 70, 16, 'cifar10', {'L2': '1QL4SNvYydjIg1uI3VP9SyNt-2kTXRisG'}),
    _zoo('Gowal2020Uncovering_extra', 'dm', 70, 16, 'cifar10', {'L2': '1pkZDCpCBShpAnx92n8PUeNOY1fSiTi0s'}),
    _zoo('Augustin2020Adversarial_34_10', 'wrn', 34, 10, 'augustin', {'L2': '1qPsKS546mKcs71IEhzOS-kLpQFSFhaKL'}),
    _zoo('Augustin2020Adversarial_34_10_extra', 'wrn', 34, 10, 'augustin', {'L2': '1--1MFZja6C2iVWi9MgetYjnSIenRBLT-'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_extra_Linf', 'dm', 70, 16, 'cifar10',
         {'corruptions': '1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_extra_L2', 'dm', 70, 16, 'cifar10',
         {'corruptions': '1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708'}),
    _zoo('Hendrycks2020AugMix_WRN', 'wrn', 40, 2, 'pm1', {'corruptions': '1wy7gSRsUZzCzj8QhmTbcnwmES_2kkNph'}),
]}


def zoo_names(threat_model: str | None = None) -> list[str]:
    """The zoo entries :func:`load_robustbench` knows (for one threat model: Linf, L2, corruptions)."""
    return [n for n, e in ZOO.items() if threat_model is None or threat_model in e.gdrive]


# ----------------------------------------------------------------------------- loaders

def _finish(model: nn.Module, info: dict[str, Any], device: str | torch.device | None) -> nn.Module:
    model.pretrained_source = info
    model.eval()
    if device is not None:
        model.to(device)
    return model


def load_torchvision(path: str | os.PathLike, arch: str = "resnet50", num_classes: int | None = None,
                     device: str | torch.device | None = None) -> nn.Module:
    """A torchvision ResNet (``arch``, see :data:`TORCHVISION_RESNETS`) with the weights saved at
    ``path`` (``torch.save(model.state_dict(), path)``, as torchvision publishes them) and
    ImageNet mean/std inside. ``num_classes``: default the file's ``fc`` rows."""
    if arch not in TORCHVISION_RESNETS:
        raise unknown_name("torchvision architecture", arch, TORCHVISION_RESNETS)
    enum = _TV_WEIGHTS[arch]
    hint = (f"torchvision publishes {arch}'s ImageNet weights as torchvision.models.{enum} (e.g. "
            f"{enum}.IMAGENET1K_V1.url); download that file on a machine with network access and pass its "
            f"path here (probelib downloads nothing)")
    state = read_state_dict(path, missing_hint=hint)
    state = _strip_prefixes(state, ["fc.weight"])
    fc = state.get("fc.weight")
    classes = int(fc.shape[0]) if num_classes is None and fc is not None else int(num_classes or 1000)
    if arch in TORCHVISION_ARCHS:  # probelib's registered build (same keys and normalisation; save_checkpoint works)
        from probelib.models import build_model
        model = build_model(arch, classes)
    else:
        model = ImageNetResNet(arch, classes)
    guess = guess_torchvision_arch(state)
    hint = (f"The file looks like torchvision's {guess}: pass arch={guess!r}" if guess and guess != arch else
            f"torchvision's ResNet names: {', '.join(TORCHVISION_RESNETS)}")
    fit_state_dict(model, state, f"torchvision weights {str(path)!r}", hint=hint)
    return _finish(model, {"source": "torchvision", "path": str(path), "arch": arch, "num_classes": classes},
                   device)


def zoo_path(name: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
             threat_model: str = "Linf") -> Path:
    """Where RobustBench keeps zoo model ``name``: ``<model_dir>/<dataset>/<threat_model>/<name>.pt``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def load_robustbench(name: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
                     threat_model: str = "Linf", *, arch: str | None = None, num_classes: int | None = None,
                     device: str | torch.device | None = None, **arch_kwargs: Any) -> nn.Module:
    """The RobustBench zoo model ``name`` from a local model folder in the zoo's layout
    (:func:`zoo_path`), with the zoo's preprocessing inside the model.

    Known entries (:data:`ZOO`, CIFAR-10 WideResNets; ``threat_model`` Linf, L2 or corruptions)
    build their own architecture. A checkpoint of another architecture kept in the same layout
    (another dataset, your own model) loads with ``arch=`` any :func:`probelib.models.build_model`
    name plus ``num_classes`` and that function's keyword arguments.
    """
    path = zoo_path(name, model_dir, dataset, threat_model)
    entry = ZOO.get(name) if arch is None else None
    if entry is None and arch is None:
        raise unknown_name("RobustBench CIFAR-10 WideResNet entry", name, ZOO) if not path.is_file() else \
            ValueError(f"{str(path)!r} is not a zoo entry probelib knows ({', '.join(list(ZOO)[:6])}, ...: "
                       f"zoo_names()); pass arch= (a build_model name) and num_classes= to load it")
    if entry is not None:
        if dataset != "cifar10":
            raise ValueError(f"probelib knows RobustBench's CIFAR-10 WideResNets; {name!r} under dataset "
                             f"{dataset!r} needs arch= and num_classes=")
        gid = entry.gdrive.get(threat_model)
        if gid is None:
            raise ValueError(f"RobustBench lists {name!r} under threat models {sorted(entry.gdrive)}, "
                             f"not {threat_model!r}")
        hint = (f"RobustBench publishes it as Google Drive file {gid} (https://drive.google.com/uc?id={gid}; "
                f"robustbench.utils.load_model({name!r}, model_dir=..., dataset='cifar10', "
                f"threat_model={threat_model!r}) downloads it there). Put it at {str(path)!r}; probelib "
                "downloads nothing")
        state = read_state_dict(path, missing_hint=hint)
        classes = int(num_classes or 10)
        model = entry.build(classes)
        fit_state_dict(model, state, f"zoo checkpoint {str(path)!r}", drop=("sub_block1.",),
                       hint=f"RobustBench builds {name!r} as a {entry.family.upper()}-{entry.depth}-{entry.width}")
        info = {"source": "robustbench", "path": str(path), "name": name, "arch":
                f"{'DMWideResNet' if entry.family == 'dm' else 'WideResNet'}-{entry.depth}-{entry.width}",
                "preprocessing": entry.preprocessing, "threat_model": threat_model, "num_classes": classes}
        return _finish(model, info, device)
    model = load_state_dict_file(path, arch, num_classes, device=device,
                                 missing_hint=f"expected the zoo layout <model_dir>/<dataset>/<threat_model>/"
                                              f"<name>.pt under {str(model_dir)!r}", **arch_kwargs)
    model.pretrained_source.update(source="robustbench", name=name, threat_model=threat_model)
    return model


def load_state_dict_file(path: str | os.PathLike, arch: str, num_classes: int | None = None, *,
                         device: str | torch.device | None = None, missing_hint: str = "",
                         **arch_kwargs: Any) -> nn.Module:
    """A registered probelib architecture (:func:`probelib.models.build_model`) with the plain
    state dict at ``path`` (any wrapper or key prefix). ``num_classes`` defaults to the class
    count of a probelib checkpoint's stored architecture; otherwise it is required."""
    from probelib.models import build_model

    state = read_state_dict(path, missing_hint=missing_hint or "pass the path of a file written with "
                                                               "torch.save(model.state_dict(), path)")
    if num_classes is None:
        num_classes = _stored_num_classes(path)
        if num_classes is None:
            raise ValueError(f"pass num_classes= for {str(path)!r} (the number of output classes of the saved "
                             f"{arch})")
    model = build_model(arch, int(num_classes), **arch_kwargs)
    fit_state_dict(model, state, f"state dict {str(path)!r}",
                   hint=f"build arguments used: arch={arch!r}, num_classes={num_classes}"
                        + "".join(f", {k}={v!r}" for k, v in arch_kwargs.items())
                        + "; pass those the saving code used (in_channels, image_size, ...)")
    return _finish(model, {"source": "state_dict", "path": str(path), "arch": arch, "num_classes": int(num_classes),
                           **{k: v for k, v in arch_kwargs.items()}}, device)


def _stored_num_classes(path: str | os.PathLike) -> int | None:
    payload = _torch_load(Path(path)) if Path(path).suffix != ".safetensors" else None
    if isinstance(payload, Mapping) and isinstance(payload.get("arch"), Mapping):
        n = payload["arch"].get("num_classes")
        return int(n) if n is not None else None
    return None


def load_pretrained(source: str, checkpoint: str | os.PathLike, *, arch: str | None = None,
                    num_classes: int | None = None, model_dir: str | os.PathLike = "models",
                    dataset: str = "cifar10", threat_model: str = "Linf",
                    device: str | torch.device | None = None, **arch_kwargs: Any) -> nn.Module:
    """A model from a checkpoint on disk, normalisation inside, eval mode (module docstring).

    * ``load_pretrained("torchvision", "resnet50-0676ba61.pth", arch="resnet50")``
    * ``load_pretrained("robustbench", "Standard", model_dir="models", threat_model="Linf")``
    * ``load_pretrained("state_dict", "my.pt", arch="CNN002", num_classes=9)``
    """
    check_choice("pretrained source", source, SOURCES)
    if source == "torchvision":
        if arch is None:
            raise ValueError(f"source='torchvision' needs arch= one of {', '.join(TORCHVISION_RESNETS)}")
        if arch_kwargs:
            raise TypeError(f"source='torchvision' takes no build arguments, got {sorted(arch_kwargs)}")
        return load_torchvision(checkpoint, arch, num_classes, device=device)
    if source == "robustbench":
        return load_robustbench(str(checkpoint), model_dir, dataset, threat_model, arch=arch,
                                num_classes=num_classes, device=device, **arch_kwargs)
    if arch is None:
        from probelib.models import model_names
        raise ValueError(f"source='state_dict' needs arch= a probelib architecture ({', '.join(model_names())})")
    return load_state_dict_file(checkpoint, arch, num_classes, device=device, **arch_kwargs)


# ----------------------------------------------------------------------------- writing external formats

EXTERNAL_FORMATS = ("torchvision", "robustbench", "dataparallel", "wrapped", "safetensors")


def save_external(model: nn.Module, fmt: str, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model``'s weights as other code saves them (atomically), for tests and the
    embedded default of notebook 06: ``"torchvision"`` a bare state dict; ``"robustbench"``
    ``{"state_dict": {"module." + key: ...}}`` as DataParallel-trained zoo entries; ``"dataparallel"``
    a bare state dict with ``module.`` keys; ``"wrapped"`` ``{"model": {"model." + key: ...}, **extra}``
    (``extra``: plain values such as ``epoch``); ``"safetensors"`` a ``.safetensors`` file."""
    from probelib.store import atomic_write

    check_choice("external format", fmt, EXTERNAL_FORMATS)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload: Any
    if fmt == "torchvision":
        payload = state
    elif fmt == "robustbench":
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif fmt == "dataparallel":
        payload = {f"module.{k}": v for k, v in state.items()}
    elif fmt == "wrapped":
        payload = {"model": {f"model.{k}": v for k, v in state.items()}, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file
            save_file(state, str(tmp))
        else:
            torch.save(payload, tmp)
    return path
