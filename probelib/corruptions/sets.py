"""Readers of the published "-C" sets (CIFAR-10-C npy layout, Tiny-ImageNet-C / ImageNet-C
folders), the writer of new sets in the CIFAR-10-C layout, the embedded ``mnist5k-c``, and the
``corrupt`` command line."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from probelib._util import check_labels, unknown_name
from probelib.corruptions.generator import (CORRUPTIONS, GENERATOR_VERSION, SEVERITIES, _check_corruption,
                                            _check_severity, corrupt, parameter_set, severity_parameters)
from probelib.corruptions.manifest import (_MANIFEST_FORMAT, CorruptedSetError, _check_committed,
                                           _file_entry, _matches, _read_manifest, _write_manifest)

# --------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class _Published:
    folder: str
    layout: str          # "npy" or "folders"
    source: str
    num_classes: int | None = None   # labels are checked against it (npy sets)


PUBLISHED: dict[str, _Published] = {
    "cifar10-c": _Published("CIFAR-10-C", "npy", "https://zenodo.org/record/2535967", 10),
    "cifar100-c": _Published("CIFAR-100-C", "npy", "https://zenodo.org/record/3555552", 100),
    "tinyimagenet-c": _Published("Tiny-ImageNet-C", "folders", "https://zenodo.org/record/2536630"),
    "imagenet-c": _Published("ImageNet-C", "folders", "https://zenodo.org/record/2235448"),
    "mnist5k-c": _Published("mnist5k-c", "npy", "generated on first use by probelib (embedded)", 10),
}
_LAYOUT_TEXT = {"npy": "<corruption>.npy (5·N×H×W×C uint8, severity-major) and labels.npy",
                "folders": "<corruption>/<severity 1..5>/<wnid>/*.JPEG"}


def corrupted_sets() -> list[str]:
    """Names :func:`load_corrupted` knows (a folder path in either layout also works)."""
    return list(PUBLISHED)


def _set_folder(dataset: str | os.PathLike, root) -> tuple[Path, str | None]:
    from probelib.data import DatasetNotFoundError, data_root

    if isinstance(dataset, str) and dataset in PUBLISHED:
        spec = PUBLISHED[dataset]
        folder = data_root(root) / spec.folder
        if dataset == "mnist5k-c":
            ensure_mnist5k_c(root)
        elif not folder.is_dir():
            raise DatasetNotFoundError(
                f"corrupted set {dataset!r} not found: looked at {folder}. Expected layout there: "
                f"{_LAYOUT_TEXT[spec.layout]}. Published at {spec.source}. Place it there or point "
                "PROBELIB_DATA (or root=) at the folder holding it; probelib never downloads.")
        return folder, dataset
    for cand in (Path(dataset), data_root(root) / str(dataset)):
        if cand.is_dir():
            return cand, None
    raise unknown_name("corrupted dataset", dataset, list(PUBLISHED) + ["<a folder in either layout>"])


def _read_sidecar(folder: Path, corruption: str) -> dict | None:
    path = folder / f"{corruption}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptedSetError(f"unreadable sidecar {path}: {err}; delete it and regenerate the set") from err


def available_corruptions(dataset: str | os.PathLike, root=None) -> list[str]:
    """The corruptions a set on disk holds (discovered from its files, in canonical order; for a
    set written by probelib, those its manifest commits)."""
    folder, _ = _set_folder(dataset, root)
    manifest = _read_manifest(folder) if folder.is_dir() else None
    if manifest is not None:
        return [c for c in CORRUPTIONS if f"{c}.npy" in manifest["files"]]
    return [c for c in CORRUPTIONS if (folder / f"{c}.npy").exists() or (folder / c).is_dir()]


def _open_npy(path: Path) -> np.ndarray:
    from probelib.data import DatasetNotFoundError

    if not path.exists():
        raise DatasetNotFoundError(f"missing file {path} (CIFAR-10-C layout: {_LAYOUT_TEXT['npy']}); copy it from "
                                   "the published set, or regenerate the set with `python -m probelib corrupt`")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptedSetError(f"cannot read {path}: {err} (truncated or not a .npy file?); "
                                "delete it and copy or regenerate it") from err


def _load_npy_set(folder: Path, corruption: str, severity: int):
    from probelib.data import TensorSet

    path = folder / f"{corruption}.npy"
    _check_committed(folder, corruption)
    arr = _open_npy(path)
    side = _read_sidecar(folder, corruption)
    sevs = list(side.get("severities", SEVERITIES)) if side else list(SEVERITIES)
    if severity not in sevs:
        raise CorruptedSetError(f"{path} holds severities {sevs} only (see {path.with_suffix('.json')}); "
                                f"severity {severity} is not in it: regenerate with --severities")
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)) or arr.dtype != np.uint8:
        raise CorruptedSetError(f"{path} has shape {arr.shape} dtype {arr.dtype}; expected uint8 "
                                "(rows, H, W, C) with C in {1, 3} or (rows, H, W)")
    rows = arr.shape[0]
    if rows % len(sevs):
        raise CorruptedSetError(f"{path} has {rows} rows, not divisible by the {len(sevs)} severities "
                                "it should hold (truncated copy?)")
    n = rows // len(sevs)
    labels_path = folder / "labels.npy"
    labels = np.asarray(_open_npy(labels_path))
    if labels.ndim != 1 or len(labels) not in (rows, n):
        raise CorruptedSetError(f"{labels_path} has shape {labels.shape}; expected ({rows},) or ({n},) "
                                f"to match {path}")
    num_classes = next((p.num_classes for p in PUBLISHED.values() if p.folder == folder.name), None)
    try:  # integers in 0..C−1 (C known for the published sets), never rounded from floats
        check_labels(labels, num_classes, "labels", where=str(labels_path), allow_unseen=True)
    except ValueError as err:
        raise CorruptedSetError(f"{err}; delete it and copy or regenerate the set") from None
    block = sevs.index(severity)
    x = np.array(arr[block * n:(block + 1) * n])
    y = labels[block * n:(block + 1) * n] if len(labels) == rows else labels
    if x.ndim == 3:
        x = x[..., None]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
    return TensorSet(xt.contiguous(), torch.from_numpy(y.astype(np.int64)))


def _load_folder_set(folder: Path, corruption: str, severity: int, dataset: str | None,
                     image_size: int | None, classes: Sequence[str] | None):
    from torchvision import transforms

    from probelib.data import DatasetNotFoundError
    from probelib.data.files import ImageFiles

    base = folder / corruption / str(severity)
    if not base.is_dir():
        parent = folder / corruption
        have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise DatasetNotFoundError(f"missing folder {base} (layout: {_LAYOUT_TEXT['folders']}); "
                                   f"{parent} holds severities {have or 'none'}: copy severity "
                                   f"{severity} from the published set, or pick one of those")
    wnids = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not wnids:
        raise DatasetNotFoundError(f"no class folders in {base} (layout: {_LAYOUT_TEXT['folders']})")
    wanted = list(classes) if classes is not None else wnids
    absent = [c for c in wanted if c not in wnids]
    if absent:
        raise DatasetNotFoundError(f"class folder {base / absent[0]} missing ({len(absent)} of "
                                   f"{len(wanted)} requested classes absent)")
    paths, targets = [], []
    exts = {".jpeg", ".jpg", ".png"}
    for label, wnid in enumerate(wanted):
        imgs = sorted(p for p in (base / wnid).iterdir() if p.suffix.lower() in exts)
        paths += imgs
        targets += [label] * len(imgs)
    if not paths:
        raise DatasetNotFoundError(f"no images under {base}")
    if image_size is None:
        tf = transforms.ToTensor()
    else:
        tf = transforms.Compose([transforms.Resize(round(image_size * 8 / 7)),
                                 transforms.CenterCrop(image_size), transforms.ToTensor()])
    return ImageFiles(paths, targets, tf)


def load_corrupted(dataset: str | os.PathLike, corruption: str, severity: int,
                   root: str | os.PathLike | None = None, *, image_size: int | None = None,
                   classes: Sequence[str] | None = None) -> Dataset:
    """One corruption at one severity of a "-C" set: images float32 [0, 1] NCHW with int64 labels.

    ``dataset``: ``cifar10-c``, ``cifar100-c`` (``<root>/CIFAR-10-C/<corruption>.npy`` +
    ``labels.npy``, memory-mapped; only the severity's rows are read) → a :class:`TensorSet`;
    ``tinyimagenet-c``, ``imagenet-c`` (``<root>/<Set>/<corruption>/<severity>/<wnid>/*.JPEG``)
    → a lazy Dataset (``as_tensors`` materialises it); ``mnist5k-c`` (generated on first use);
    or the path of any folder in either layout (e.g. one written by ``python -m probelib corrupt``).
    Folder sets: ``image_size=None`` keeps the stored size (ImageNet-C's 224 crop, Burns & Steinhardt);
    ``image_size=112`` applies NCG's Resize(128) + CenterCrop(112); ``classes`` restricts to these
    wnids, labelled by their position in the list (NCG's ImageNet-100 mapping).
    """
    _check_corruption(corruption)
    severity = _check_severity(severity)
    folder, name = _set_folder(dataset, root)
    layout = PUBLISHED[name].layout if name else None
    if layout is None:
        layout = "npy" if (folder / "labels.npy").exists() or any(folder.glob("*.npy")) else "folders"
    if layout == "npy":
        if not (folder / f"{corruption}.npy").exists():
            from probelib.data import DatasetNotFoundError
            have = [c for c in CORRUPTIONS if (folder / f"{c}.npy").exists()]
            raise DatasetNotFoundError(f"missing file {folder / f'{corruption}.npy'}: this set holds "
                                       f"{have or 'no corruptions'}")
        return _load_npy_set(folder, corruption, severity)
    return _load_folder_set(folder, corruption, severity, name, image_size, classes)


# --------------------------------------------------------------------------- writer / CLI
def _versions() -> dict:
    import PIL
    import scipy
    import skimage

    from probelib import __version__
    return {"probelib": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-image": skimage.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__}


def _to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    return np.round(x.clamp(0, 1).mul(255).permute(0, 2, 3, 1).cpu().numpy()).astype(np.uint8)


def _source_images(dataset: str, split: str, root) -> tuple[np.ndarray, np.ndarray]:
    from probelib.data import as_tensors, load_dataset

    splits = load_dataset(dataset, root)
    data = getattr(splits, split, None)
    if data is None:
        raise ValueError(f"dataset {dataset!r} has no {split!r} split; use --split test "
                         f"{'or train' if splits.train is not None else ''} (ood needs a …wo<K> name)")
    x, y = as_tensors(data, desc=f"reading {dataset} {split}")
    return _to_uint8_nhwc(x), y.numpy()


def write_corrupted(images: np.ndarray, labels: np.ndarray, out: str | os.PathLike,
                    corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES,
                    seed: int = 0, *, dataset: str = "", split: str = "", batch_size: int = 2000,
                    progress: bool = True, provenance: dict | None = None) -> Path:
    """Write ``<out>/<corruption>.npy`` (rows severity-major, one N-block per severity in
    ``severities``), ``labels.npy``, a JSON sidecar per corruption and ``manifest.json``.

    ``images``: uint8 N×H×W×C (grey images are stored N×H×W×1). Every file is written atomically
    and the manifest (size and SHA-256 of every file, and what the set was computed from: the
    source images and labels, seed, severities, generator version, ``provenance``) is rewritten
    last after each corruption, so readers see only committed corruptions whose files agree.
    Corruptions already committed for the same inputs are skipped, so an interrupted run resumes;
    other inputs (new labels or images, another seed) first withdraw the old commit, then rewrite.
    """
    from probelib.store import atomic_write, fingerprint, write_text_atomic

    corruptions = list(CORRUPTIONS if corruptions is None else corruptions)
    for c in corruptions:
        _check_corruption(c)
    severities = sorted({_check_severity(s, "severities") for s in severities})
    if not severities:
        raise ValueError("severities must name at least one of 1..5")
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 N×H×W×C with C in {{1, 3}}, got {images.dtype} {images.shape}; "
                         "convert float N×C×H×W images in [0, 1] with probelib.corruptions.to_uint8_images(x)")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    rows = n * len(severities)
    shape = (rows, *images.shape[1:])
    lab_dtype = np.uint8 if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256) else np.int64
    all_labels = np.tile(labels.astype(lab_dtype), len(severities))
    meta = {"dataset": dataset, "split": split, "seed": int(seed), "severities": severities, "n": n,
            "image_shape": list(images.shape[1:]), "generator": GENERATOR_VERSION,
            "source": fingerprint("corrupted-set-source-v1", images, all_labels)}
    if provenance:
        meta["provenance"] = json.loads(json.dumps(provenance))
    try:
        manifest = _read_manifest(out)
    except CorruptedSetError:
        manifest = None
    if manifest is None or manifest["meta"] != meta:
        # other inputs (or no commit yet): withdraw every commit before any file is touched
        manifest = {"format": _MANIFEST_FORMAT, "version": 1, "meta": meta, "files": {}}
        _write_manifest(out, manifest)
    if not _matches(out, "labels.npy", manifest):
        manifest["files"].pop("labels.npy", None)
        _write_manifest(out, manifest)
        with atomic_write(out / "labels.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, all_labels)
        manifest["files"]["labels.npy"] = _file_entry(out / "labels.npy")
        _write_manifest(out, manifest)
    bar = tqdm(corruptions, desc="corrupting", disable=not progress)
    for c in bar:
        bar.set_postfix_str(c)
        names = (f"{c}.npy", f"{c}.json")
        if all(_matches(out, name, manifest) for name in names):
            continue
        if any(name in manifest["files"] for name in names):
            for name in names:
                manifest["files"].pop(name, None)
            _write_manifest(out, manifest)
        with atomic_write(out / f"{c}.npy") as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for b, s in enumerate(severities):
                for start in range(0, n, batch_size):
                    part = images[start:start + batch_size]
                    mm[b * n + start:b * n + start + len(part)] = corrupt(part, c, s, seed,
                                                                          first_index=start)
            mm.flush()
            del mm
        side = dict(meta, corruption=c, corruption_index=CORRUPTIONS.index(c),
                    parameter_set=parameter_set(*images.shape[1:3]),
                    parameters={str(s): severity_parameters(c, s, *images.shape[1:3]) for s in severities},
                    layout="rows severity-major: row b*n + i = image i at severities[b]",
                    versions=_versions())
        write_text_atomic(out / f"{c}.json", json.dumps(side, indent=1))
        for name in names:
            manifest["files"][name] = _file_entry(out / name)
        _write_manifest(out, manifest)
    return out


def _mnist5k_c_complete(folder: Path, provenance: dict) -> bool:
    """Whether the generated mnist5k-c under ``folder`` is committed whole, for the current data and
    generator, with every file matching its manifest."""
    try:
        manifest = _read_manifest(folder)
    except CorruptedSetError:
        return False
    if manifest is None:
        return False
    meta = manifest["meta"]
    expected = {"dataset": "mnist5k", "split": "test", "seed": 0, "severities": list(SEVERITIES),
                "generator": GENERATOR_VERSION, "provenance": provenance}
    if any(meta.get(k) != v for k, v in expected.items()):
        return False
    names = ["labels.npy"] + [f"{c}{ext}" for c in CORRUPTIONS for ext in (".npy", ".json")]
    return all(_matches(folder, name, manifest) for name in names)


def ensure_mnist5k_c(root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Generate ``<data root>/mnist5k-c`` (mnist5k test split, 19 corruptions × 5 severities,
    seed 0) unless it is already complete for the current mnist5k data and generator (its
    manifest commits every file and the files match it); return its folder. A damaged,
    interrupted or stale set is regenerated (only the parts that need it)."""
    from probelib.data import data_fingerprint, data_root
    from probelib.store import one_writer

    folder = data_root(root) / PUBLISHED["mnist5k-c"].folder
    provenance = {"mnist5k_files": data_fingerprint("mnist5k", root)}
    if _mnist5k_c_complete(folder, provenance):
        return folder
    with one_writer(folder.parent / f".{folder.name}.lock"):  # notebooks side by side generate it once
        if _mnist5k_c_complete(folder, provenance):
            return folder
        x, y = _source_images("mnist5k", "test", root)
        return write_corrupted(x, y, folder, CORRUPTIONS, SEVERITIES, 0, dataset="mnist5k", split="test",
                               progress=progress, provenance=provenance)


def _split_list(text: str | None, kind: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{kind} is empty; give a comma-separated list")
    return items


def _cli_corrupt(args: argparse.Namespace) -> int:
    corruptions = _split_list(args.corruptions, "corruptions") or list(CORRUPTIONS)
    for c in corruptions:
        _check_corruption(c)
    sev_text = _split_list(args.severities, "severities")
    try:
        severities = [int(s) for s in sev_text] if sev_text else list(SEVERITIES)
    except ValueError:
        raise ValueError(f"--severities must be integers in 1..5, got {args.severities!r}") from None
    for s in severities:
        _check_severity(s, "--severities")
    if args.seed < 0:
        raise ValueError(f"--seed must be ≥ 0, got {args.seed}")
    x, y = _source_images(args.dataset, args.split, args.root)
    out = write_corrupted(x, y, args.out, corruptions, severities, args.seed,
                          dataset=args.dataset, split=args.split)
    print(f"wrote {len(corruptions)} corruption file(s) × {len(severities)} severities of "
          f"{len(x)} images to {out}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``corrupt DATASET --out DIR ...`` to the probelib command line."""
    p = subparsers.add_parser(
        "corrupt", help="write a dataset's split under common corruptions in the CIFAR-10-C layout",
        description="Write DIR/<corruption>.npy (rows severity-major: one block of N images per "
                    "severity, in ascending order; all five unless --severities restricts them, "
                    "recorded in DIR/<corruption>.json), DIR/labels.npy (the labels repeated per "
                    "severity block) and DIR/manifest.json (size and SHA-256 of every file, written "
                    "last: readers use only what it commits). Committed files for the same inputs are "
                    "skipped, so re-running resumes or repairs.")
    p.add_argument("dataset", help="a dataset name load_dataset knows (mnist5k, digits, cifar10, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--corruptions", default=None,
                   help=f"comma-separated names (default: all 19): {','.join(CORRUPTIONS)}")
    p.add_argument("--severities", default=None, help="comma-separated severities in 1..5 (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=["test", "train", "ood"])
    p.add_argument("--root", default=None, help="data root (default $PROBELIB_DATA or ./data)")
    p.set_defaults(func=_cli_corrupt)
