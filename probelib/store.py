"""The ``precomputed/`` artifact store: content-addressed, atomically written, hash-verified.

Every artifact lives at ``<root>/<kind>/<name>-<key[:16]><ext>`` where ``key`` is a
:func:`fingerprint` of everything the artifact depends on (data, model weights, parameters),
so a changed input never reuses a stale result. Beside each artifact a small JSON *seal*
(``<file>.seal.json``) records its SHA-256; an artifact whose seal is missing or does not
match (a crash between the two writes, a damaged file) is treated as absent and recomputed.

Nothing here unpickles: arrays go through ``np.load(allow_pickle=False)``, records through JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_write", "remove_stale_temporaries", "fingerprint", "file_sha256", "Store", "default_store"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its files
    return True


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str, suffix: str) -> list[Path]:
    """Delete ``<folder>/<prefix><pid>.*<suffix>`` files whose writer ``pid`` is no longer running
    (left by a process killed mid-write; never read, only swept here). Files of live writers and
    names without a pid stay. Returns the paths removed."""
    removed = []
    if os.name != "posix":
        return removed
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for f in folder.iterdir():
        name = f.name
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    An exception (or a kill) leaves ``path`` as it was: never a half-written file. The temporary
    name (``.<name>.<pid>.<random>.tmp``) carries the writer's pid, so the temporaries of a killed
    writer are deleted by the next write of the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_stale_temporaries(path.parent, prefix, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _update(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"ndarray{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            _update(h, str(k))
            _update(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _update(h, item)
        h.update(b"]")
    elif isinstance(obj, bytes):
        h.update(b"bytes" + obj)
    elif obj is None or isinstance(obj, (str, int, float, bool, Path)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif hasattr(obj, "x") and hasattr(obj, "y"):  # a TensorSet
        _update(h, ("set", obj.x, obj.y))
    else:
        raise TypeError(f"cannot fingerprint an object of type {type(obj).__name__}")


def fingerprint(*parts: Any) -> str:
    """A stable SHA-256 hex digest of tensors, arrays, modules (their weights), and plain values."""
    h = hashlib.sha256()
    for part in parts:
        _update(h, part)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """A folder of content-addressed artifacts (see the module docstring).

    ``fresh_since`` (a UNIX time) makes artifacts sealed before it count as absent, so
    ``python -m probelib run --fresh`` recomputes everything once without deleting anything.
    """

    def __init__(self, root: str | os.PathLike = "precomputed", fresh_since: float | None = None):
        self.root = Path(root)
        self.fresh_since = fresh_since

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def path(self, kind: str, name: str, key: str, ext: str) -> Path:
        """Where the artifact (kind, name, key) lives; ``ext`` includes the dot.

        ``kind`` and ``name`` must each be one safe path component (see ``check_name``).
        """
        from probelib._util import check_name

        check_name(kind, "store kind")
        check_name(name, "store name")
        return self.root / kind / f"{name}-{key[:16]}{ext}"

    @staticmethod
    def _seal_path(path: Path) -> Path:
        return path.with_name(path.name + ".seal.json")

    def seal(self, path: str | os.PathLike, **meta: Any) -> None:
        """Record the SHA-256 of a freshly written artifact (call after writing it atomically)."""
        path = Path(path)
        record = {"sha256": file_sha256(path), "sealed_at": time.time(), "meta": meta}
        write_text_atomic(self._seal_path(path), json.dumps(record, default=str))

    def verify(self, path: str | os.PathLike) -> bool:
        """True when ``path`` exists, is sealed, matches its seal, and is not older than ``fresh_since``."""
        path = Path(path)
        seal = self._seal_path(path)
        if not path.exists() or not seal.exists():
            return False
        try:
            record = json.loads(seal.read_text())
        except (OSError, ValueError):
            return False
        if self.fresh_since is not None and record.get("sealed_at", 0) < self.fresh_since:
            return False
        return record.get("sha256") == file_sha256(path)

    def cached_arrays(self, kind: str, name: str, key: str,
                      compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Load the arrays stored under (kind, name, key), or compute, store and return them."""
        path = self.path(kind, name, key, ".npz")
        if self.verify(path):
            try:
                with np.load(path, allow_pickle=False) as f:
                    return {k: f[k] for k in f.files}
            except (ValueError, OSError, EOFError, zipfile.BadZipFile):
                pass  # sealed but unreadable (e.g. object arrays, which are never unpickled): recompute
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        for k, a in arrays.items():
            if a.dtype.hasobject:
                raise TypeError(f"array {k!r} for {kind}/{name} has dtype object, which the store would have to "
                                "pickle; return numeric or string arrays (e.g. np.asarray(values, dtype=float))")
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        self.seal(path, kind=kind, name=name, key=key)
        return arrays

    def cached_json(self, kind: str, name: str, key: str, compute: Callable[[], Any]) -> Any:
        """Load the JSON record stored under (kind, name, key), or compute, store and return it."""
        path = self.path(kind, name, key, ".json")
        if self.verify(path):
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                pass  # sealed but unreadable: recompute
        value = compute()
        write_text_atomic(path, json.dumps(value))
        self.seal(path, kind=kind, name=name, key=key)
        return json.loads(json.dumps(value))


def default_store(root: str | os.PathLike | None = None) -> Store:
    """The store at ``root``, else ``$PROBELIB_PRECOMPUTED``, else ``./precomputed``.

    ``$PROBELIB_FRESH_SINCE`` (set by ``run --fresh``) is honoured.
    """
    root = root or os.environ.get("PROBELIB_PRECOMPUTED") or "precomputed"
    fresh = os.environ.get("PROBELIB_FRESH_SINCE")
    return Store(root, fresh_since=float(fresh) if fresh else None)

