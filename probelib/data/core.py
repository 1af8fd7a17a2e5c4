"""Dataset containers shared by every loader: in-memory tensor sets, lazy relabelled subsets, splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing (or partial) under the data root. The message says where to put it."""


class TensorSet(Dataset):
    """An in-memory split: ``x`` float32 N×C×H×W in [0, 1], ``y`` int64 N."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"images and labels differ in length: {len(x)} vs {len(y)}")
        self.x = x
        self.y = y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __repr__(self) -> str:
        return f"TensorSet(x={tuple(self.x.shape)}, y={tuple(self.y.shape)})"

    def subset(self, index: torch.Tensor) -> "TensorSet":
        """The images at ``index`` (a boolean mask or integer indices)."""
        return TensorSet(self.x[index], self.y[index])


class RelabelledSubset(Dataset):
    """A lazy view of ``base`` holding the items at ``indices`` with labels mapped by ``label_map``."""

    def __init__(self, base: Dataset, indices: list[int], label_map: dict[int, int]):
        self.base, self.indices, self.label_map = base, list(indices), dict(label_map)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        return x, self.label_map[int(y)]


def as_tensors(data: Dataset, batch_size: int = 256, num_workers: int = 0,
               desc: str = "loading") -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a dataset (TensorSet or lazy Dataset) into ``(x, y)`` tensors."""
    if isinstance(data, TensorSet):
        return data.x, data.y
    xs, ys = [], []
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    for x, y in tqdm(loader, desc=desc, leave=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys).long()


def labels_of(data: Dataset) -> torch.Tensor:
    """The labels of every item of ``data`` (read without loading the images where the set allows)."""
    if hasattr(data, "y") and isinstance(data.y, torch.Tensor):
        return data.y
    if hasattr(data, "targets"):
        return torch.as_tensor(data.targets, dtype=torch.long)
    if isinstance(data, RelabelledSubset):
        base = labels_of(data.base)
        return torch.tensor([data.label_map[int(base[i])] for i in data.indices], dtype=torch.long)
    return torch.tensor([int(data[i][1]) for i in range(len(data))], dtype=torch.long)


def subsample(data, n_images: int | None, *, seed: int = 0):
    """About ``n_images`` items of ``data``, stratified by label and seeded; all of it when
    ``n_images`` is None or >= its length.

    Per class c (of N_c items among N), a seeded permutation (``np.random.default_rng(seed)``, classes
    in sorted order) keeps its first ``max(1, round(n_images·N_c/N))``; the kept items stay in their
    original order (test splits are often sorted by class: a plain ``x[:n]`` would be a label shift).
    ``data``: a Dataset (returns a Dataset: ``TensorSet.subset`` for in-memory sets, else a
    ``torch.utils.data.Subset``) or an ``(x, y)`` pair of tensors (returns an ``(x, y)`` pair).
    """
    if n_images is not None and (isinstance(n_images, bool) or int(n_images) != n_images or n_images < 1):
        raise ValueError(f"n_images must be a positive integer or None (all images), got {n_images!r}")
    pair = isinstance(data, (tuple, list))
    if pair:
        if len(data) != 2:
            raise ValueError(f"data must be a Dataset or an (x, y) pair, got a sequence of {len(data)}")
        x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        data = TensorSet(x, y)
    if n_images is None or n_images >= len(data):
        return (data.x, data.y) if pair else data
    y = labels_of(data).numpy()
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    keep = [rng.permutation(np.flatnonzero(y == c))[:max(1, int(round(n_images * count / len(y))))]
            for c, count in zip(classes, counts)]
    index = np.sort(np.concatenate(keep))
    if hasattr(data, "subset") and hasattr(data, "x"):  # TensorSet and alike
        sub = data.subset(torch.from_numpy(index))
        return (sub.x, sub.y) if pair else sub
    return Subset(data, index.tolist())


@dataclass
class Splits:
    """The splits an experiment needs.

    ``train``/``test`` hold the seen classes (relabelled 0..C-1 for ``…woK`` names); ``ood``
    holds the unseen class K's images (its train split, then its test split) with label -1,
    or is ``None`` when no class is held out. ``fingerprint`` is the content fingerprint of the
    files the splits were read from (``probelib.data.data_fingerprint``; None for lazy folder sets
    and splits built by hand: cache keys then hash the tensors or the image files themselves).
    """

    name: str
    base: str
    train: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]
    held_out: int | None = None
    held_out_name: str | None = None
    ood: Dataset | None = None
    image_shape: tuple[int, int, int] = field(default=(1, 28, 28))
    fingerprint: str | None = field(default=None, compare=False)  # data_fingerprint of the files read

    def __repr__(self) -> str:
        parts = [f"train={len(self.train)}", f"test={len(self.test)}"]
        if self.ood is not None:
            parts.append(f"ood={len(self.ood)} (class {self.held_out}: {self.held_out_name})")
        return f"Splits({self.name!r}, {', '.join(parts)}, num_classes={self.num_classes})"
