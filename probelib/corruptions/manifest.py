"""The manifest that commits a corrupted set written by probelib (``manifest.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from probelib.corruptions.generator import CORRUPTIONS, SEVERITIES


class CorruptedSetError(ValueError):
    """A corrupted set on disk is damaged or inconsistent (the message names the file)."""


# A set written by probelib is committed by ``manifest.json``, written last and atomically after
# every corruption: it lists the size and SHA-256 of every file of the set (labels.npy, each
# <corruption>.npy and its .json sidecar) and what the set was computed from. Readers use only
# files the manifest lists and whose bytes match it; a crash at any point leaves either the
# previous committed state or files the manifest does not list (ignored, then rewritten).
MANIFEST = "manifest.json"
_MANIFEST_FORMAT = "probelib corrupted set"


def _regenerate_hint(folder: Path, meta: dict | None = None) -> str:
    meta = meta or {}
    args = [meta.get("dataset") or "<dataset>", "--split", meta.get("split") or "test", "--out", str(folder)]
    if meta.get("severities") and list(meta["severities"]) != list(SEVERITIES):
        args += ["--severities", ",".join(str(s) for s in meta["severities"])]
    if meta.get("seed"):
        args += ["--seed", str(meta["seed"])]
    return (f"regenerate it with `python -m probelib corrupt {' '.join(args)} --corruptions ...` (or "
            "write_corrupted with the same inputs), which rewrites only what is missing or damaged")


def _read_manifest(folder: Path) -> dict | None:
    """The parsed manifest, None when there is none; CorruptedSetError when it is malformed."""
    path = folder / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CorruptedSetError(f"cannot read {path}: {err}; {_regenerate_hint(folder)}") from err
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CorruptedSetError(f"{path} is not valid JSON ({err}); {_regenerate_hint(folder)}") from err
    files = record.get("files") if isinstance(record, dict) else None
    ok = (isinstance(record, dict) and record.get("format") == _MANIFEST_FORMAT and isinstance(record.get("meta"), dict)
          and isinstance(files, dict) and all(
              isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("sha256"), str)
              and isinstance(v.get("size"), int) and not isinstance(v.get("size"), bool) for k, v in files.items()))
    if not ok:
        raise CorruptedSetError(f"{path} is not a probelib corrupted-set manifest; {_regenerate_hint(folder)}")
    return record


def _file_entry(path: Path) -> dict:
    from probelib.data.fingerprint import file_digest

    return {"size": path.stat().st_size, "sha256": file_digest(path)}


def _matches(folder: Path, name: str, manifest: dict) -> bool:
    """Whether ``folder/name`` is listed in ``manifest`` and its bytes are the ones listed."""
    entry = manifest["files"].get(name)
    path = folder / name
    if entry is None:
        return False
    try:
        return path.stat().st_size == entry["size"] and _file_entry(path)["sha256"] == entry["sha256"]
    except OSError:
        return False


def _write_manifest(folder: Path, manifest: dict) -> None:
    from probelib.store import write_text_atomic

    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def _probelib_written(folder: Path) -> bool:
    """Whether a folder without a manifest holds probelib sidecars (an uncommitted probelib set)."""
    for side in folder.glob("*.json"):
        if side.stem in CORRUPTIONS:
            try:
                record = json.loads(side.read_text())
            except (OSError, ValueError):
                return True
            if isinstance(record, dict) and "generator" in record:
                return True
    return False


def _check_committed(folder: Path, corruption: str) -> None:
    """Refuse a corruption of a probelib-written set unless the manifest commits its files as they are.
    Sets without a manifest and without probelib sidecars (the published ones) pass unchecked."""
    manifest = _read_manifest(folder)
    if manifest is None:
        if _probelib_written(folder):
            raise CorruptedSetError(
                f"{folder} was written by probelib but has no {MANIFEST} (the run was interrupted before it "
                f"committed anything, or the manifest was deleted), so its files may disagree; "
                f"{_regenerate_hint(folder)}")
        return
    meta = manifest["meta"]
    names = ["labels.npy", f"{corruption}.npy", f"{corruption}.json"]
    listed = [n for n in names if n in manifest["files"]]
    if f"{corruption}.npy" not in listed and (folder / f"{corruption}.npy").exists():
        raise CorruptedSetError(f"{folder / f'{corruption}.npy'} is not committed in {folder / MANIFEST} (its write "
                                f"was interrupted, or it belongs to another run); {_regenerate_hint(folder, meta)}")
    for name in names:
        if name not in manifest["files"]:
            raise CorruptedSetError(f"{folder / name} is not committed in {folder / MANIFEST}; "
                                    f"{_regenerate_hint(folder, meta)}")
        if not _matches(folder, name, manifest):
            raise CorruptedSetError(f"{folder / name} does not match {folder / MANIFEST} (size or SHA-256 differ: "
                                    f"damaged, truncated or replaced since it was written); "
                                    f"{_regenerate_hint(folder, meta)}")
