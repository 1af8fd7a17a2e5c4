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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probelib._util import check_choice, unknown_name
from probelib.models.checkpoint import (FORMAT, CheckpointError, CheckpointMismatchError, load_weights_only,
                                        state_problems)
from probelib.models.torchvision_names import TORCHVISION_ARCHS, TORCHVISION_RESNETS, TORCHVISION_WEIGHTS
from probelib.models.zoo import ZOO

__all__ = ["load_pretrained", "load_torchvision", "load_robustbench", "load_state_dict_file", "read_state_dict",
           "save_external", "fit_state_dict", "zoo_path", "guess_torchvision_arch", "SOURCES", "EXTERNAL_FORMATS"]

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
        payload = load_weights_only(path, fix=_REFETCH)
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


_REFETCH = "copy it again from its source"


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
    parts = state_problems(own, state, "file")
    if parts:
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


# ----------------------------------------------------------------------------- loaders

def guess_torchvision_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The :data:`TORCHVISION_RESNETS` name whose keys and shapes ``state`` has, if any."""
    state = _strip_prefixes(state, ["conv1.weight"])
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    w = state.get("layer1.0.conv2.weight")
    for name, (block, layers, groups, width) in TORCHVISION_RESNETS.items():
        if tuple(layers) != blocks or (block == "bottleneck") != bottleneck or w is None:
            continue
        planes = int(64 * width / 64) * groups if block == "bottleneck" else 64
        if tuple(w.shape[:2]) == (planes, planes // groups):
            return name
    return None


def _finish(model: nn.Module, info: dict[str, Any], device: str | torch.device | None) -> nn.Module:
    from probelib.models import prefer_channels_last

    model.pretrained_source = info
    prefer_channels_last(model).eval()
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
    enum = TORCHVISION_WEIGHTS[arch]
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
        from probelib.models.resnet import ImageNetResNet
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
    payload = load_weights_only(Path(path), fix=_REFETCH) if Path(path).suffix != ".safetensors" else None
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
