"""The corruption generator: names and published parameters (derived from the registry that
noise.py, blur.py, weather.py and digital.py fill), and :func:`corrupt` (spec §2–§4)."""

from __future__ import annotations

import cv2
import numpy as np

from probelib._util import unknown_name
from probelib.corruptions import blur, digital, noise, weather  # noqa: F401  (they register the corruptions)
from probelib.corruptions.registry import FAMILIES, REGISTRY, SEVERITIES, Corruption
from probelib.corruptions.streams import _ImageStreams

# --------------------------------------------------------------------------- names (all derived)
_ORDERED: list[Corruption] = sorted(REGISTRY.values(), key=lambda c: c.index)
assert [c.index for c in _ORDERED] == list(range(len(_ORDERED))), "corruption indices must be 0..N-1"
CORRUPTIONS: list[str] = [c.name for c in _ORDERED]  # position = "corruption index" (seeding)
BENCHMARK: list[str] = [c.name for c in _ORDERED if c.benchmark]
EXTRA: list[str] = [c.name for c in _ORDERED if not c.benchmark]
GROUPS: dict[str, list[str]] = {g: [c.name for c in _ORDERED if c.group == g] for g in (*FAMILIES, "extra")}
DETERMINISTIC = frozenset(c.name for c in _ORDERED if c.deterministic)
#: spec §5: strictly increasing mean change with severity at 32 and 64 px
MONOTONE: tuple[str, ...] = tuple(c.name for c in _ORDERED if c.monotone)
#: name -> {"cifar": (sev1..sev5), "tin": (...), "in": (...)}
PARAMS: dict[str, dict[str, tuple]] = {c.name: c.params for c in _ORDERED}
#: Bumped whenever the bytes ``corrupt`` returns change (2: shot_noise samples by inverting the
#: exact output-level distribution); sets written by another version are regenerated.
GENERATOR_VERSION = 2


def corruption_names(extra: bool = False) -> list[str]:
    """The 15 benchmark corruptions in canonical order; with ``extra`` also the 4 validation ones."""
    return list(CORRUPTIONS if extra else BENCHMARK)


def corruption_group(name: str) -> str:
    """The group (``noise``, ``blur``, ``weather``, ``digital`` or ``extra``) of a corruption."""
    return REGISTRY[_check_corruption(name)].group


def _check_corruption(name: str) -> str:
    if name not in CORRUPTIONS:
        raise unknown_name("corruption", name, CORRUPTIONS)
    return name


def _check_severity(severity, name: str = "severity") -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"{name} must be an integer in 1..5, got {severity!r}")
    return int(severity)


def parameter_set(height: int, width: int) -> str:
    """``'cifar'`` (S ≤ 32), ``'tin'`` (S ≤ 64) or ``'in'`` for S = max(height, width)."""
    s = max(height, width)
    return "cifar" if s <= 32 else "tin" if s <= 64 else "in"


def severity_parameters(corruption: str, severity: int, height: int = 32, width: int | None = None):
    """The published parameters of ``corruption`` at ``severity`` for images of this size."""
    _check_corruption(corruption)
    severity = _check_severity(severity)
    return REGISTRY[corruption].params[parameter_set(height, width or height)][severity - 1]


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
    """OpenCV RGB2GRAY (uint8 luma) of N×H×W×3 images → N×H×W."""
    n, h, w, _ = rgb.shape
    return cv2.cvtColor(np.ascontiguousarray(rgb).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0, *,
            first_index: int = 0) -> np.ndarray:
    """Corrupt a batch of uint8 images (N×H×W×C with C ∈ {1, 3}, or N×H×W) like the "-C" sets.

    Parameters come from the CIFAR, Tiny-ImageNet or ImageNet set by S = max(H, W) (spec §2).
    Image k of the batch draws from ``default_rng([seed, corruption index, severity,
    first_index + k])``: the same bytes for any batch split (pass ``first_index`` when you feed
    a dataset in pieces). Grey images are corrupted as RGB and returned as luma. Results are
    truncated to uint8 like the originals. Returns an array of the input's shape.
    """
    _check_corruption(corruption)
    severity = _check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or first_index < 0:
        raise ValueError(f"first_index must be an integer ≥ 0, got {first_index!r}")
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {arr.dtype}; convert float images "
                         "in [0, 1] with np.round(x * 255).astype(np.uint8)")
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
        raise ValueError(f"images must have shape N×H×W×C with C in {{1, 3}} (or N×H×W for grey), "
                         f"got {arr.shape}; move channels last with x.transpose(0, 2, 3, 1)")
    n, h, w = arr.shape[:3]
    if h < 4 or w < 4:
        raise ValueError(f"images must be at least 4×4 pixels, got {h}×{w}")
    grey = arr.ndim == 3 or arr.shape[-1] == 1
    rgb = np.repeat(arr.reshape(n, h, w, 1), 3, axis=-1) if grey else arr
    pset = parameter_set(h, w)
    entry = REGISTRY[corruption]
    params = entry.params[pset][severity - 1]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    chunk = max(1, (1 << 20) // (h * w))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rngs = () if entry.deterministic else _ImageStreams(seed, entry.index, severity,
                                                             int(first_index) + start, stop - start)
        y = entry.apply(np.ascontiguousarray(rgb[start:stop]), params, rngs, pset)
        if y.dtype != np.uint8:
            if entry.may_be_nan:
                y = np.nan_to_num(y, nan=0.0)
            y = np.clip(y, 0, 255, out=y if y.flags.writeable else None)
        out[start:stop] = y                                    # float → uint8 truncates
    if grey:
        return _luma_u8(out).reshape(arr.shape)
    return out
