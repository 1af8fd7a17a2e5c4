"""Small shared helpers: device choice, seeding and the error messages every module uses."""

from __future__ import annotations

import difflib
import os
import random
from collections.abc import Iterable

import numpy as np
import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` when given, else CUDA when present, else CPU.

    The environment variable ``PROBELIB_DEVICE`` overrides the automatic choice.
    """
    if device is None:
        device = os.environ.get("PROBELIB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available here; "
                         "pass device='cpu' (or leave device=None to choose automatically)")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU ``torch.Generator`` seeded alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class UnknownNameError(ValueError):
    """A name (dataset, architecture, corruption, method, ...) that probelib does not know."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``name`` of ``kind``: it lists the valid names and the closest."""
    valid = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Valid {kind} names: {', '.join(valid)}")


def check_choice(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return ``name`` if it is one of ``valid``, else raise :func:`unknown_name`'s error."""
    valid = list(valid)
    if name not in valid:
        raise unknown_name(kind, name, valid)
    return name


def check_positive(name: str, value: float, fix: str = "") -> float:
    """Raise a ValueError naming ``name`` when ``value`` is not a finite number > 0."""
    try:
        ok = float(value) > 0 and np.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}. {fix}".rstrip())
    return value


def check_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check that ``x`` is a float tensor N×C×H×W with values in [0, 1]; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape N×C×H×W, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape N×C×H×W (4 dimensions), got shape {tuple(x.shape)}; "
                         "add a channel axis with x.unsqueeze(1) for grey images")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be float in [0, 1], got dtype {x.dtype}; "
                         "convert uint8 images with x.float() / 255")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must hold finite values in [0, 1], got range "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]; divide uint8 pixels by 255")
    return x


def check_finite_outputs(out: torch.Tensor, model: object) -> torch.Tensor:
    """Raise a ValueError naming ``model`` when its outputs ``out`` (N×C) hold NaN or inf; return ``out``."""
    bad = ~torch.isfinite(out.reshape(len(out), -1)).all(dim=1) if out.numel() else torch.zeros(0, dtype=torch.bool)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise ValueError(f"{type(model).__name__} returned NaN or infinite outputs for {int(bad.sum())} of {len(out)} "
                         f"inputs (first at index {first}); its weights may have diverged (retrain it with a lower "
                         "learning rate, or load another checkpoint) or the inputs are not finite")
    return out
