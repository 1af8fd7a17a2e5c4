"""The artifact store: atomic writes, content keys, hash verification on read."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from probelib.store import Store, atomic_write, default_store, fingerprint


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temp file left behind


def test_fingerprint_tracks_content_not_identity():
    a = torch.arange(6.0).reshape(2, 3)
    assert fingerprint(a, "pixel") == fingerprint(a.clone(), "pixel")
    assert fingerprint(a, "pixel") != fingerprint(a, "feature")
    b = a.clone()
    b[1, 2] += 1e-6
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) != fingerprint(a.double())
    assert fingerprint(a.numpy()) == fingerprint(a.numpy().copy())
    assert fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    m = torch.nn.Linear(2, 2)
    assert fingerprint(m) == fingerprint(m.state_dict())


def test_cached_arrays_computes_once_and_recomputes_damaged(tmp_path):
    store = Store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"idx": np.arange(5), "dist": np.linspace(0, 1, 5)}

    first = store.cached_arrays("neighbours", "demo", "k" * 64, compute)
    again = store.cached_arrays("neighbours", "demo", "k" * 64, compute)
    assert len(calls) == 1 and np.array_equal(first["idx"], again["idx"])
    path = store.path("neighbours", "demo", "k" * 64, ".npz")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # damage one byte
    path.write_bytes(bytes(raw))
    assert not store.verify(path)
    third = store.cached_arrays("neighbours", "demo", "k" * 64, compute)
    assert len(calls) == 2 and np.array_equal(third["dist"], first["dist"]) and store.verify(path)


def test_unsealed_artifact_counts_as_absent(tmp_path):
    store = Store(tmp_path)
    store.cached_json("tables", "t", "abc", lambda: {"x": 1})
    path = store.path("tables", "t", "abc", ".json")
    path.with_name(path.name + ".seal.json").unlink()  # as if killed between the two writes
    assert store.cached_json("tables", "t", "abc", lambda: {"x": 2}) == {"x": 2}


def test_fresh_since_recomputes_once(tmp_path, monkeypatch):
    Store(tmp_path).cached_json("k", "n", "key", lambda: {"v": 1})
    monkeypatch.setenv("PROBELIB_FRESH_SINCE", str(time.time() + 1e-3))
    time.sleep(0.01)
    store = default_store(tmp_path)
    assert store.cached_json("k", "n", "key", lambda: {"v": 2}) == {"v": 2}
    assert store.cached_json("k", "n", "key", lambda: {"v": 3}) == {"v": 2}
