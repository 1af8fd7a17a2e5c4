"""Small shared helpers: device choice, seeding and the error messages every module uses."""

from __future__ import annotations

import contextlib
import difflib
import itertools
import os
import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


_DEVICE_TYPES = ("cpu", "cuda", "mps")

#: Images per batch when a model only predicts (no gradients). 256, not 512: on the CPU a 512-batch's
#: activations fault in fresh pages for every batch (CNN002, 1 thread: 1.13 M vs 0.51 M minor page
#: faults for the same predictions), and CNN002 predicts 25–30 % faster in batches of 256 with one or
#: two threads; WRN-16-1 and the MLPs are as fast or faster (bench/README.md).
INFERENCE_BATCH_SIZE = 256


def local_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` when given, else CUDA when present, else CPU.

    The environment variable ``PROBELIB_DEVICE`` overrides the automatic choice. A device
    this machine does not have (``"cuda"`` without CUDA, ``"cuda:3"`` with two GPUs, ``"mps"``
    off Apple silicon) or a malformed name (``"gpu"``) is refused with the fix.
    """
    if device is None:
        device = os.environ.get("PROBELIB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    fix = "pass device='cpu' (or leave device=None to choose automatically)"
    if not isinstance(device, torch.device):
        if not isinstance(device, str):
            raise TypeError(f"device must be a str or torch.device such as 'cpu' or 'cuda:0', got "
                            f"{type(device).__name__} {device!r}")
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device={device!r} is not a device name; use one of 'cpu', 'cuda', 'cuda:<index>' "
                             f"or 'mps' (no spaces), or leave device=None to choose automatically") from None
    if device.type not in _DEVICE_TYPES:
        raise ValueError(f"device={str(device)!r} is not supported by probelib; use one of 'cpu', 'cuda', "
                         f"'cuda:<index>' or 'mps'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available here; {fix}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r} was asked for but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:"
                             f"{torch.cuda.device_count() - 1}); pass one of those or device='cuda'")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={str(device)!r} was asked for but MPS is not available here; {fix}")
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


def check_images_or_features(x: torch.Tensor, name: str = "images", allow_uint8: bool = False) -> torch.Tensor:
    """Check model inputs: 4-D (and 3-D, N×H×W) tensors are images (see :func:`check_images`;
    uint8 too when ``allow_uint8``, for APIs that divide it by 255 themselves); 1-D and 2-D
    ones are feature vectors (N×D), which may hold any finite float. Returns ``x``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim >= 3 and allow_uint8 and x.dtype == torch.uint8:
        return x
    if x.ndim == 4:
        return check_images(x, name)
    if x.ndim == 3:  # N×H×W: pixels, not feature vectors
        check_images(x.unsqueeze(1), name)
        return x
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be float (images N×C×H×W in [0, 1] or feature vectors N×D), got "
                         f"dtype {x.dtype} shape {tuple(x.shape)}; convert with x.float() (/ 255 for uint8 pixels)")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; pass finite inputs")
    return x


def check_labels(y, num_classes: int | None = None, name: str = "labels", n: int | None = None,
                 where: str = "", allow_unseen: bool = False) -> np.ndarray:
    """``y`` as an int64 array after checking it: integer dtype (bool and float refused, never
    truncated), 1-D, in 0..num_classes−1 when given, and of length ``n`` when given.

    ``where`` (a file or dataset) is named in the message so the user knows what to fix.
    ``allow_unseen`` also admits −1, the label of a held-out class's (OOD) images.
    """
    low = -1 if allow_unseen else 0
    src = f" in {where}" if where else ""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}{src} must be integer class indices, got dtype {arr.dtype}; labels are never "
                         "rounded or truncated: pass integers (e.g. y.long() after checking they are whole)")
    if arr.ndim != 1:
        raise ValueError(f"{name}{src} must be 1-D (one label per image), got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name}{src} has {len(arr)} labels for {n} images; pass one label per image")
    unseen = " (or -1 for a held-out class)" if allow_unseen else ""
    if arr.size and num_classes is not None and (arr.min() < low or arr.max() >= num_classes):
        bad = arr[(arr < low) | (arr >= num_classes)]
        raise ValueError(f"{name}{src} must lie in 0..{num_classes - 1} ({num_classes} classes){unseen}, got "
                         f"{len(bad)} outside, e.g. {int(bad[0])}; check the label file or num_classes")
    if arr.size and num_classes is None and arr.min() < low:
        raise ValueError(f"{name}{src} must be class indices >= 0{unseen}, got {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def check_name(name: object, kind: str = "name") -> str:
    """Return ``name`` if it is safe as one path component inside its folder, else raise.

    Refused: non-strings, empty or blank names, ``.``/``..``, separators (``/``, ``\\``),
    drive letters or other ``:``, NUL and control characters, leading/trailing spaces or a
    trailing dot, and Windows device names. Every place where a name becomes a path uses it.
    """
    fix = "use letters, digits, '-', '_', '.' and '+' only (one path component, no folders)"
    if not isinstance(name, str):
        raise TypeError(f"{kind} must be a string, got {type(name).__name__} {name!r}")
    bad = None
    if not name.strip():
        bad = "is empty"
    elif name in (".", "..") or name.startswith(".."):
        bad = "would leave its folder"
    elif any(c in name for c in "/\\"):
        bad = "holds a path separator"
    elif ":" in name:
        bad = "holds ':' (a drive or stream)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        bad = "holds a NUL or control character"
    elif name != name.strip() or name.endswith("."):
        bad = "starts or ends with a space or ends with '.'"
    elif name.split(".")[0].upper() in _RESERVED:
        bad = "is a reserved device name"
    elif len(name.encode()) > 200:
        bad = "is longer than 200 bytes"
    if bad:
        raise ValueError(f"{kind} {name!r} {bad}; {fix}")
    return name


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every module of ``model`` in eval mode for the ``with`` block and restore each
    module's own train/eval flag afterwards, also when the block raises."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def _to_float_images(x: torch.Tensor, checked: bool = False) -> torch.Tensor:
    if not checked:  # batches from a Dataset/DataLoader: checked one by one as they come
        check_images_or_features(x, "images", allow_uint8=True)
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x if x.dtype == torch.float32 else x.float()


def iter_batches(data, batch_size: int = INFERENCE_BATCH_SIZE, device: torch.device | None = None,
                 desc: str | None = None) -> Iterable[torch.Tensor]:
    """Yield float32 image batches on ``device`` from a tensor (float in [0, 1] or uint8), a
    Dataset (items ``(x, y)`` or ``x``) or a DataLoader (its own batching is kept).

    Images (N×C×H×W) must be float in [0, 1] or uint8 (divided by 255 here); float outside
    [0, 1] (e.g. 0–255 pixels), NaN or inf is refused. Other shapes are feature vectors
    (N×D, any finite float). A tensor is checked whole before the first batch."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, torch.Tensor):
        if data.ndim < 2:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(data.shape)}")
        check_images_or_features(data, "images", allow_uint8=True)
        starts = range(0, len(data), batch_size)
        for s in tqdm(starts, desc=desc, leave=False, disable=desc is None):
            yield _to_float_images(data[s:s + batch_size].to(device, non_blocking=True), checked=True)
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        x = getattr(data, "x", None)
        if isinstance(x, torch.Tensor):  # TensorSet and alike: slice the tensor directly
            yield from iter_batches(x, batch_size, device, desc)
            return
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, DataLoader):
        raise TypeError("data must be an image tensor N×C×H×W, a torch Dataset or a DataLoader, "
                        f"got {type(data).__name__}")
    for batch in tqdm(data, desc=desc, leave=False, disable=desc is None):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        yield _to_float_images(x.to(device, non_blocking=True))


def _first_tensor(model: torch.nn.Module) -> torch.Tensor | None:
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; CPU for a model with neither."""
    t = _first_tensor(model)
    return torch.device("cpu") if t is None else t.device


def compute_device(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """The device to run ``model`` on, one rule for every ``device=None`` argument that comes with a
    model (``predict``, ``extract_features``, the AdaBN and TENT arms): ``device`` when given
    (checked by :func:`default_device`), else where the model's parameters (or buffers) already
    are, so a model the caller put on the CPU stays there; a model with neither follows
    :func:`default_device` (``PROBELIB_DEVICE``, else CUDA when present, else CPU)."""
    if device is not None:
        return default_device(device)
    t = _first_tensor(model)
    return default_device() if t is None else t.device
