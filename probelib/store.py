"""The ``precomputed/`` artifact store: content-addressed, atomically written, hash-verified.

Every artifact lives at ``<root>/<kind>/<name>-<key[:16]><ext>`` where ``key`` is a
:func:`fingerprint` of everything the artifact depends on (data, model weights, parameters),
so a changed input never reuses a stale result. Beside each artifact a small JSON *seal*
(``<file>.seal.json``) records its SHA-256; an artifact whose seal is missing or does not
match (a crash between the two writes, a damaged file) is treated as absent and recomputed.
The name only labels the file: an artifact asked for under one name is also found under any
other name whose seal records the same key (:meth:`Store.twins`), so two notebooks that name
one computation differently compute it once.

Nothing here unpickles: arrays go through ``np.load(allow_pickle=False)``, records through JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import secrets
import socket
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, sweeps by age only
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "writer_temporary", "one_writer", "remove_stale_temporaries", "STALE_AFTER_S", "fingerprint", "file_sha256", "Store", "default_store"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its files
    return True


STALE_AFTER_S = 2 * 86400.0
"""A temporary written on another host (or in the old naming) is swept only when untouched this long
and its lock is free: a pid says nothing across hosts, and a lock may not be honoured across hosts
(e.g. NFS mounted ``nolock``)."""


def _host() -> str:
    """This host's name as it appears in temporary names (letters, digits, ``-`` and ``_`` only)."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return name or "unknown-host"


def _writer_of(rest: str) -> tuple[int | None, str | None]:
    """``(pid, host)`` from a temporary name's tail ``<pid>@<host>.<random>...``; legacy
    ``<pid>.<random>...`` gives ``(pid, None)``; anything else ``(None, None)``."""
    head = rest.split(".", 1)[0]
    pid, _, host = head.partition("@")
    if not pid.isdigit():
        return None, None
    return int(pid), (host or None)


def _try_lock(path: Path) -> "int | None":
    """A file descriptor holding an exclusive lock on ``path``, or None if a writer holds it (or it
    cannot be opened or locked here: then the writer may be alive). A missing ``path`` locks as free."""
    if fcntl is None:
        return -1  # no locks here: the caller goes by age alone
    try:  # read-write where allowed: NFS emulates flock with POSIX locks, whose write locks need it
        try:
            fd = os.open(path, os.O_RDWR)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return -1
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str, suffix: str,
                             max_age_s: float | None = None) -> list[Path]:
    """Delete the temporaries ``<folder>/<prefix><pid>@<host>.<random><suffix>`` (and their ``.lock``)
    of writers that are gone; return the paths removed.

    A writer holds an exclusive ``flock`` on ``<temporary>.lock`` for as long as the temporary is in
    use (see :func:`writer_temporary`). A temporary is removed only when that lock is free and either
    it was written on this host by a pid that no longer runs here, or it (and its lock) has not been
    touched for ``max_age_s`` (default :data:`STALE_AFTER_S`). So a live writer on another host or
    container sharing the folder keeps its file even where locks are not shared across hosts.
    """
    removed: list[Path] = []
    folder = Path(folder)
    max_age = STALE_AFTER_S if max_age_s is None else float(max_age_s)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    host, now = _host(), time.time()
    for f in entries:
        name = f.name
        lock_suffix = suffix + ".lock"
        if name.startswith(prefix) and name.endswith(lock_suffix):
            temporary, lock = f.with_name(name[:-len(".lock")]), f
        elif name.startswith(prefix) and name.endswith(suffix):
            temporary, lock = f, f.with_name(name + ".lock")
        else:
            continue
        pid, writer_host = _writer_of(temporary.name[len(prefix):])
        if pid is None:
            continue
        if pid == os.getpid() and writer_host in (None, host):
            continue
        try:
            touched = max((p.stat().st_mtime for p in (temporary, lock) if p.exists()), default=0.0)
        except OSError:
            continue
        fd = _try_lock(lock)
        if fd is None:
            continue  # a writer holds it (or we cannot tell): keep
        try:
            dead_here = fcntl is not None and writer_host == host and not _pid_alive(pid)
            if dead_here or now - touched > max_age:
                for p in (temporary, lock):
                    try:
                        p.unlink()
                        removed.append(p)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        break
        finally:
            if fd >= 0:
                os.close(fd)
    return removed


def _create(path: Path) -> int:
    """Create ``path`` exclusively with mode 0o666 less the umask (as ``open`` does); return its fd."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)


@contextlib.contextmanager
def writer_temporary(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a new empty file ``.<name>.<pid>@<host>.<random><suffix>`` beside ``path``, created with
    the user's umask and locked (``flock`` on a ``.lock`` beside it) while the block runs; both are
    removed on exit unless the block renamed the temporary away. Dead writers' temporaries of the
    same ``path`` are swept first (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_stale_temporaries(path.parent, prefix, suffix)
    while True:
        tmp = path.with_name(f"{prefix}{os.getpid()}@{_host()}.{secrets.token_hex(4)}{suffix}")
        lock = tmp.with_name(tmp.name + ".lock")
        try:
            lock_fd = _create(lock)
        except FileExistsError:
            continue
        break
    try:
        if fcntl is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        os.close(_create(tmp))
        yield tmp
    finally:
        try:
            tmp.unlink(missing_ok=True)
        finally:
            lock.unlink(missing_ok=True)
            os.close(lock_fd)


@contextlib.contextmanager
def one_writer(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing, never deleted: removing
    it would let two writers lock two different files) while the block runs, so processes that
    would compute the same thing (notebooks run side by side) do it one after the other; the
    second then finds the first's result. Where there are no locks, the block runs unlocked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    An exception (or a kill) leaves ``path`` as it was: never a half-written file. The file gets
    the user's umask (as a plain ``open`` would), so colleagues sharing the folder can read it.
    The temporary (see :func:`writer_temporary`) names its writer's pid and host and is locked
    while in use, so a later write of the same file sweeps it once its writer is gone, and never
    while a writer on another host may still be using it.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: a folder of that name is in the way; move or delete it "
                                "(probelib never deletes folders)")
    with writer_temporary(path, ".tmp") as tmp:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _update(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.nn.Module):  # its weights, and what shapes its outputs beyond them: the class and
        # every buffer, the non-persistent ones too (normalisation kept inside the model is not in its state dict)
        obj = {"module": f"{type(obj).__module__}.{type(obj).__qualname__}", "structure": repr(obj),
               "state": obj.state_dict(), "buffers": dict(obj.named_buffers())}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
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
    """A stable SHA-256 hex digest of tensors, arrays, modules (their class, structure, weights and every
    buffer), and plain values."""
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

    ``fresh_since`` (a UNIX time, the start of a ``python -m probelib run --fresh``) makes every
    artifact not sealed by this same fresh run count as absent, so the run recomputes everything
    once without deleting anything. The run is recognised by ``fresh_token`` (default: derived from
    ``fresh_since``) recorded in the seals it writes, never by comparing clocks: a seal dated in the
    future (another host's clock, a hand-edited seal) does not survive ``--fresh``.
    """

    #: A seal dated further in the future than this (seconds) is not trusted at all.
    CLOCK_SLACK_S = 300.0

    def __init__(self, root: str | os.PathLike = "precomputed", fresh_since: float | None = None,
                 fresh_token: str | None = None):
        self.root = Path(root)
        self.fresh_since = fresh_since
        if fresh_token is None and fresh_since is not None:
            fresh_token = f"fresh-since:{float(fresh_since)!r}"
        self.fresh_token = fresh_token

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
        if self.fresh_token is not None:
            record["fresh_token"] = self.fresh_token
        write_text_atomic(self._seal_path(path), json.dumps(record, default=str))

    def _valid_record(self, record: Any) -> bool:
        """Whether a parsed seal has the right types and a believable date (and, under ``--fresh``,
        was written by this fresh run)."""
        if not isinstance(record, dict):
            return False
        sha, sealed_at = record.get("sha256"), record.get("sealed_at")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            return False
        if isinstance(sealed_at, bool) or not isinstance(sealed_at, (int, float)) or not math.isfinite(sealed_at):
            return False
        if not 0 < sealed_at <= time.time() + self.CLOCK_SLACK_S:
            return False
        if not isinstance(record.get("meta", {}), dict):
            return False
        if self.fresh_token is not None:
            if record.get("fresh_token") != self.fresh_token:
                return False
            if self.fresh_since is not None and sealed_at < self.fresh_since - self.CLOCK_SLACK_S:
                return False
        return True

    def verify(self, path: str | os.PathLike) -> bool:
        """True when ``path`` exists and has a well-formed seal that matches its bytes (under
        ``--fresh``: a seal written by this fresh run). Anything else, a malformed seal included,
        is False: the artifact is recomputed."""
        path = Path(path)
        seal = self._seal_path(path)
        try:
            record = json.loads(seal.read_text())
        except (OSError, ValueError, RecursionError):
            return False
        if not self._valid_record(record):
            return False
        try:
            return record["sha256"] == file_sha256(path)
        except OSError:
            return False

    def twins(self, kind: str, key: str, ext: str, but: Path | None = None) -> Iterator[Path]:
        """Verified artifacts of ``kind`` stored under another name with this very ``key`` (its seal
        records the full key): the key covers everything an artifact depends on and the name nothing,
        so notebooks that name the same computation differently share one result."""
        try:
            candidates = sorted((self.root / kind).glob(f"*-{key[:16]}{ext}"))
        except OSError:
            return
        for path in candidates:
            if path == but:
                continue
            try:
                record = json.loads(self._seal_path(path).read_text())
            except (OSError, ValueError, RecursionError):
                continue
            if isinstance(record, dict) and isinstance(record.get("meta"), dict) \
                    and record["meta"].get("key") == key and self.verify(path):
                yield path

    def cached_arrays(self, kind: str, name: str, key: str,
                      compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Load the arrays stored under (kind, name, key) — or under another name with the same key
        (:meth:`twins`) — or compute, store and return them."""
        path = self.path(kind, name, key, ".npz")
        for found in itertools.chain([path] if self.verify(path) else [], self.twins(kind, key, ".npz", but=path)):
            try:
                with np.load(found, allow_pickle=False) as f:
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
        """Load the JSON record stored under (kind, name, key) — or under another name with the same key
        (:meth:`twins`) — or compute, store and return it."""
        path = self.path(kind, name, key, ".json")
        for found in itertools.chain([path] if self.verify(path) else [], self.twins(kind, key, ".json", but=path)):
            try:
                return json.loads(found.read_text())
            except (OSError, ValueError):
                pass  # sealed but unreadable: recompute
        value = compute()
        write_text_atomic(path, json.dumps(value))
        self.seal(path, kind=kind, name=name, key=key)
        return json.loads(json.dumps(value))


def default_store(root: str | os.PathLike | None = None) -> Store:
    """The store at ``root``, else ``$PROBELIB_PRECOMPUTED``, else the project's ``precomputed/``
    (:func:`probelib.paths.project_path`, whatever the working directory).

    ``$PROBELIB_FRESH_SINCE`` (set by ``run --fresh``; ``$PROBELIB_FRESH_TOKEN`` names the run when
    set) is honoured.
    """
    if not (root or os.environ.get("PROBELIB_PRECOMPUTED")):
        from probelib.paths import project_path

        root = project_path("precomputed")
    root = root or os.environ["PROBELIB_PRECOMPUTED"]
    fresh = os.environ.get("PROBELIB_FRESH_SINCE")
    try:
        fresh_since = float(fresh) if fresh else None
    except ValueError:
        raise ValueError(f"PROBELIB_FRESH_SINCE={fresh!r} is not a UNIX time; unset it, or set it to "
                         "time.time() of the run that should recompute everything") from None
    return Store(root, fresh_since=fresh_since, fresh_token=os.environ.get("PROBELIB_FRESH_TOKEN") or None)

