"""The data side of the training loop: batches, augmentation, stratified subsets, labels and
content fingerprints of a split (in-memory tensors or lazy datasets alike)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from probelib._util import check_choice
from probelib.data.core import as_tensors
from probelib.data.fingerprint import file_digest
from probelib.store import fingerprint

__all__ = ["AUGMENTS", "augment_batch", "crop_and_flip", "in_memory", "batches",
           "data_signature"]

AUGMENTS = ("none", "crop", "crop+flip")


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None = None,
                  padding: int = 4) -> torch.Tensor:
    """The training augmentation: ``none``, ``crop`` (zero-pad ``padding``, random crop back to
    size) or ``crop+flip`` (plus a horizontal flip, p = ½), vectorised per batch.

    Offsets, then flips, are drawn from ``generator`` (CPU) so runs are reproducible.
    """
    check_choice("augment", kind, AUGMENTS)
    if kind == "none":
        return x
    off = torch.randint(0, 2 * padding + 1, (2, len(x)), generator=generator)
    flip = torch.rand(len(x), generator=generator) < 0.5 if kind == "crop+flip" else None
    return crop_and_flip(x, off[0], off[1], flip, padding)


def crop_and_flip(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, flip: torch.Tensor | None = None,
                  padding: int = 4) -> torch.Tensor:
    """Images ``x`` (N×C×H×W) zero-padded by ``padding``, cropped back to H×W at row/column offsets
    ``rows``/``cols`` (N each, in 0..2·padding) and, where ``flip`` (N booleans), mirrored left-right.
    The geometry of :func:`augment_batch`, for callers that draw the offsets their own way."""
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding,) * 4)
    r = (rows.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    q = (cols.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    n_idx, c_idx = torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None]
    out = padded[n_idx, c_idx, r, q]
    if flip is not None:
        out = torch.where(flip.to(dev)[:, None, None, None], out.flip(3), out)
    return out


def in_memory(data: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` of a set held as tensors (a TensorSet and alike), else None."""
    if hasattr(data, "x") and hasattr(data, "y") and isinstance(data.x, torch.Tensor):
        return data.x, data.y
    return None


def batches(data: Dataset, batch_size: int, generator: torch.Generator | None = None, *, shuffle: bool = False,
            order: torch.Tensor | None = None, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches of ``data``, in its order, shuffled by a randperm from
    ``generator`` (``shuffle``), or in a given ``order`` of indices (a DDP shard). In-memory sets
    are indexed directly; lazy datasets go through a DataLoader (shuffled by the same ``generator``).

    Not :func:`probelib._util.iter_batches`: the loop needs the labels, and the seeded shuffle
    draws from ``generator`` exactly as before (the augmentation and attack noise that follow
    come from the same stream, so a run's weights depend on it)."""
    tensors = in_memory(data)
    if tensors is not None:
        x, y = tensors
        if order is None:
            order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
        return
    if order is not None:
        data, shuffle = Subset(data, order.tolist()), False
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator if shuffle else None,
                        num_workers=num_workers)
    for x, y in loader:
        yield x, torch.as_tensor(y).long()


def data_signature(data: Dataset) -> str:
    """A content fingerprint of a split: its tensors when in memory; for lazy sets the bytes of every
    image file with its label, order and transform (``probelib.data.fingerprint.file_digest``,
    memoised), through relabelled subsets, ``Subset`` and ``ConcatDataset``; any other dataset is
    materialised and its tensors hashed (slow, never stale)."""
    tensors = in_memory(data)
    if tensors is not None:
        return fingerprint(*tensors)
    if hasattr(data, "paths") and hasattr(data, "targets"):  # ImageFiles
        return fingerprint("files-v1", [file_digest(p) for p in data.paths], [int(t) for t in data.targets],
                           repr(getattr(data, "transform", None)))
    if hasattr(data, "base") and hasattr(data, "indices") and hasattr(data, "label_map"):  # RelabelledSubset
        return fingerprint("relabelled-v1", data_signature(data.base), [int(i) for i in data.indices],
                           sorted((int(k), int(v)) for k, v in data.label_map.items()))
    if isinstance(data, torch.utils.data.Subset):
        return fingerprint("subset-v1", data_signature(data.dataset), [int(i) for i in data.indices])
    if isinstance(data, torch.utils.data.ConcatDataset):
        return fingerprint("concat-v1", [data_signature(d) for d in data.datasets])
    return fingerprint("materialised-v1", *as_tensors(data, desc="fingerprinting"))

