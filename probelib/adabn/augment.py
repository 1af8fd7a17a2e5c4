"""The training augmentation AdaBN's ``adabn+aug`` arm applies in its statistics pass: random crop after
zero padding, and a horizontal flip, each image's draws a pure function of (seed, its dataset index)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["train_augmentation"]


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _image_draws(seed: int, start: int, n: int, k: int, index: np.ndarray | None = None) -> np.ndarray:
    """n×k pseudo-random uint64 draws, a pure function of (seed, global image index, j); the
    indices are start..start+n−1, or ``index`` when given."""
    index = np.arange(start, start + n, dtype=np.uint64) if index is None else np.asarray(index, dtype=np.uint64)
    idx = index[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(_splitmix64(np.uint64(seed % 2**63)) + idx)


def train_augmentation(x: torch.Tensor, seed: int = 0, start: int = 0, pad: int = 4,
                       flip: bool = True, index: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """The training augmentation, batched: random crop of the original size after zero-padding
    ``pad`` pixels per side, then (if ``flip``) a horizontal flip with probability ½.

    The crop offsets and flips of image ``i`` of the batch are a pure function of ``seed`` and
    its global index ``start + i`` (or ``index[i]``: the dataset indices of a shuffled batch), so
    the result does not depend on how the data is batched or ordered.
    """
    n, _, h, w = x.shape
    if index is not None:
        index = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if index.shape != (n,):
            raise ValueError(f"index must hold one dataset index per image ({n}), got shape {index.shape}")
    draws = _image_draws(seed, start, n, 3, index)
    oy = torch.from_numpy((draws[:, 0] % np.uint64(2 * pad + 1)).astype(np.int64)).to(x.device)
    ox = torch.from_numpy((draws[:, 1] % np.uint64(2 * pad + 1)).astype(np.int64)).to(x.device)
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    rows = oy[:, None] + torch.arange(h, device=x.device)                  # n×h
    cols = ox[:, None] + torch.arange(w, device=x.device)                  # n×w
    if flip:
        flips = torch.from_numpy((draws[:, 2] >> np.uint64(63)).astype(bool)).to(x.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]               # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


class _Augmenter:
    """Applies :func:`train_augmentation` to consecutive batches, tracking the global image index."""

    def __init__(self, seed: int, flip: bool):
        self.seed, self.flip, self.seen = seed, flip, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = train_augmentation(x, self.seed, self.seen, flip=self.flip)
        self.seen += len(x)
        return out

    def at(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Augment a batch whose images are the dataset's images ``index`` (a shuffled pass): each
        image gets the crop and flip it gets in stored order."""
        return train_augmentation(x, self.seed, flip=self.flip, index=index)


def _augmenter(augment, channels: int, seed: int):
    """A function batch -> augmented batch, or None. A fresh one gives the same images again."""
    if augment is None or augment is False:
        return None
    if callable(augment):
        return augment
    if augment is True or augment == "auto":
        augment = "crop" if channels == 1 else "crop+flip"
    if augment not in ("crop", "crop+flip"):
        raise ValueError(f"augment must be None, 'auto', 'crop', 'crop+flip' or a callable, got {augment!r}")
    return _Augmenter(seed, flip=augment == "crop+flip")


def _first_channels(data) -> int:
    if isinstance(data, torch.Tensor):
        return int(data.shape[1])
    x = getattr(data, "x", None)
    if isinstance(x, torch.Tensor):
        return int(x.shape[1])
    item = data.dataset[0] if hasattr(data, "dataset") else data[0]
    item = item[0] if isinstance(item, (list, tuple)) else item
    return int(item.shape[0])
