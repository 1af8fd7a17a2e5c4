"""Model checkpoints that a researcher can trust: atomic, code-free, self-describing.

A checkpoint is a plain dict saved with ``torch.save`` and read with
``torch.load(weights_only=True)`` (a file from elsewhere cannot run code)::

    {"format": "probelib.checkpoint/1",
     "arch": {"arch": "CNN002", "num_classes": 9, "in_channels": 1, ...},  # build_model kwargs
     "state_dict": {...tensors...},
     "metadata": {...plain values: dataset, method, eps, beta, seed, epoch, hyper-parameters,
                  probelib_version, ...}}
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from probelib.store import atomic_write

FORMAT = "probelib.checkpoint/1"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into; the message lists what differs."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: damaged, truncated, or not a torch checkpoint (names the file)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint holds Python objects that ``weights_only`` loading refuses (they could run code)."""


def plain(value: Any, where: str = "metadata") -> Any:
    """``value`` converted to what ``torch.load(weights_only=True)`` reads back: dicts with string
    keys, lists, str/int/float/bool/None and tensors (numpy values and paths are converted)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return plain(value.to_dict(orient="records"), where)
    raise TypeError(f"{where} holds a {type(value).__name__}, which a weights_only checkpoint cannot store; "
                    "pass plain values (numbers, strings, lists, dicts, tensors)")


def arch_config(model: nn.Module) -> dict | None:
    """The ``build_model`` arguments that rebuild ``model`` (None for a model built elsewhere)."""
    return getattr(model, "arch_config", None)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None,
                    **metadata: Any) -> Path:
    """Save ``model``'s weights, its architecture and ``metadata`` atomically to ``path``.

    A model checkpoint's model must come from :func:`probelib.models.build_model` (so it can be
    rebuilt). ``extra`` adds top-level entries (a training state: optimizer, RNG, history, stored
    as given); such a state may hold any model (``arch=None``: readable, not rebuildable).
    ``metadata`` holds plain values; ``probelib_version`` and ``saved_at`` are added.
    """
    from probelib import __version__

    config = arch_config(model)
    if config is None and not extra:
        raise ValueError("this model was not built with probelib.models.build_model, so its architecture "
                         "cannot be rebuilt from a checkpoint; build it with build_model(arch, num_classes, ...)")
    meta = plain(dict(metadata))
    meta.setdefault("probelib_version", __version__)
    meta.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    payload = {"format": FORMAT, "arch": plain(config, "arch") if config is not None else None,
               "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               "metadata": meta}
    if extra:  # stored as given (optimizer state dicts keep their int keys)
        payload.update(extra)
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (weights_only load, checked to be a probelib checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    payload = load_weights_only(path, fix="delete it and re-run (train_or_load retrains a model whose stored "
                                          "checkpoint is missing), or copy it again from its source")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a probelib checkpoint (expected a dict with format {FORMAT!r}); "
                         "for a bare state dict use model.load_state_dict(torch.load(path, weights_only=True))")
    return payload


def load_weights_only(path: Path, *, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with probelib's errors: an
    :class:`UnsafeCheckpointError` for a pickle that would run code, a :class:`CheckpointError`
    (ending with ``fix``) for a truncated, damaged or foreign file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if found:  # weights_only refused a Python global: the file could run code
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {str(path)!r}: it holds Python objects beyond tensors and plain "
                f"containers ({found[0][:200]}), which could run code when unpickled; probelib loads "
                "checkpoints with weights_only=True only. Do not load it with weights_only=False unless you trust "
                "its source; re-save just the weights from trusted code: torch.save(model.state_dict(), path)"
            ) from None
        reason = "not a torch zip checkpoint: a plain pickle, which probelib never unpickles, or damaged bytes"
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        detail = str(err).splitlines()[0][:160] if str(err).strip() else "empty or truncated file"
        reason = f"{type(err).__name__}: {detail}"
    raise CheckpointError(f"checkpoint {str(path)!r} is truncated or damaged ({reason}); {fix}")


def state_problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], file: str = "checkpoint"
                   ) -> list[str]:
    """How ``state`` (read from a ``file``) differs from a model's ``own`` state dict, one phrase per
    kind: model weights it lacks, its weights the model lacks, shapes that differ (first examples)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {file} {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights missing from the {file} (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} {file} weights the model lacks (e.g. {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} weight shapes differ ({'; '.join(shapes[:3])})")
    return problems


def _describe(config: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def check_state_fits(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     stored_arch: Mapping | None = None) -> None:
    """Raise :class:`CheckpointMismatchError` listing how ``state`` (and its arch) differ from ``model``."""
    problems = []
    model_arch = arch_config(model)
    if stored_arch is not None and model_arch is not None:
        for key in sorted(set(stored_arch) | set(model_arch)):
            a, b = stored_arch.get(key, "<absent>"), model_arch.get(key, "<absent>")
            if _differs(a, b):
                problems.append(f"{key}: checkpoint {a!r}, model {b!r}")
    problems += state_problems(model.state_dict(), state)
    if problems:
        stored = _describe(stored_arch) if stored_arch else "unknown architecture"
        raise CheckpointMismatchError(f"{source} ({stored}) does not fit the model: " + "; ".join(problems)
                                      + ". Build the model with the checkpoint's arguments above, or call "
                                      "load_checkpoint(path) without model= to rebuild the stored architecture")


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return False
    return a != b


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`; return ``(model, metadata)``.

    Without ``model`` the architecture is rebuilt from the stored ``build_model`` arguments.
    With ``model`` the weights go into it, after checking that architecture, class count and
    every weight shape agree (a :class:`CheckpointMismatchError` says what differs).
    The model is returned in eval mode on ``device`` (CPU by default).
    """
    from probelib.models import build_model

    payload = read_checkpoint(path)
    stored_arch = dict(payload["arch"]) if payload.get("arch") else None
    if model is None:
        if stored_arch is None:
            raise ValueError(f"checkpoint {str(path)!r} holds a model not built by build_model; pass the model "
                             "to load the weights into: load_checkpoint(path, model=...)")
        kwargs = dict(stored_arch)
        model = build_model(kwargs.pop("arch"), **kwargs)
    check_state_fits(model, payload["state_dict"], f"checkpoint {str(path)!r}", stored_arch)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    if device is not None:
        model.to(device)
    return model, dict(payload["metadata"])
