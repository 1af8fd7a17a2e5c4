"""The artifact store: atomic writes, content keys, hash verification on read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
    m2 = torch.nn.Linear(2, 2)
    m2.load_state_dict(m.state_dict())
    assert fingerprint(m) == fingerprint(m2)                  # the same class and weights
    assert fingerprint(torch.tensor(3)) != fingerprint(torch.tensor(4))  # 0-dim tensors (BN's counters)
    bn, seen = torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)
    seen(torch.rand(4, 2, 3, 3))                               # updates running stats and the 0-dim counter
    assert fingerprint(bn) != fingerprint(seen)


def test_fingerprint_of_a_model_covers_normalisation_outside_its_state_dict():
    # mean/std kept as non-persistent buffers (ResNet50Norm01, the zoo's preprocessing) are not in the
    # state dict: two models with the same weights but other preprocessing must not share cached results
    from probelib.models.resnet import ImageNetResNet

    a, b = ImageNetResNet("resnet18", 10), ImageNetResNet("resnet18", 10)
    b.load_state_dict(a.state_dict())
    assert fingerprint(a) == fingerprint(b)
    b.mean.fill_(0.5)
    assert set(a.state_dict()) == set(b.state_dict()) and fingerprint(a) != fingerprint(b)
    lin = torch.nn.Linear(2, 2)
    relu, tanh = torch.nn.Sequential(lin, torch.nn.ReLU()), torch.nn.Sequential(lin, torch.nn.Tanh())
    assert relu.state_dict().keys() == tanh.state_dict().keys()  # same weights, another function
    assert fingerprint(relu) != fingerprint(tanh)


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


def test_same_key_under_another_name_is_shared_not_recomputed(tmp_path):
    """Two notebooks naming one computation differently (``at`` vs ``AT(2)``) compute it once; a
    twin is used only when its seal records the full key and its bytes verify."""
    store = Store(tmp_path)
    key, calls = "ab" * 32, []

    def compute():
        calls.append(1)
        return {"pred": np.arange(4)}

    store.cached_arrays("predictions", "set-at", key, compute)
    shared = store.cached_arrays("predictions", "set-AT(2)", key, compute)
    assert len(calls) == 1 and np.array_equal(shared["pred"], np.arange(4))
    assert not store.path("predictions", "set-AT(2)", key, ".npz").exists()  # nothing copied
    other = "ab" * 8 + "cd" * 24  # same 16-character file prefix, another key: not a twin
    store.cached_arrays("predictions", "set-other", other, lambda: {"pred": np.zeros(2)})
    assert store.cached_arrays("predictions", "set-x", other, compute)["pred"].shape == (2,)
    twin = store.path("predictions", "set-at", key, ".npz")
    twin.write_bytes(twin.read_bytes()[:-8])  # damaged: neither it nor a twin of it is used
    store.path("predictions", "set-other", other, ".npz").rename(store.path("predictions", "moved", key, ".npz"))
    store.cached_arrays("predictions", "set-y", key, compute)
    assert len(calls) == 2
    assert store.cached_json("records", "b", key, lambda: {"v": 2}) == {"v": 2}  # json twins too
    store.path("records", "b", key, ".json").rename(store.path("records", "a", key, ".json"))
    store.path("records", "b", key, ".json.seal.json").rename(store.path("records", "a", key, ".json.seal.json"))
    assert store.cached_json("records", "c", key, lambda: {"v": 3}) == {"v": 2}


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


# ----------------------------------------------------------------------------- seals: type and time
@pytest.mark.parametrize("seal", [
    "[1, 2]", "null", "42", '"text"', "{}", '{"sha256": null, "sealed_at": 1}',
    '{"sha256": 123, "sealed_at": 1}', '{"sealed_at": 1}', '{"sha256": "%s", "sealed_at": "yesterday"}',
    '{"sha256": "%s", "sealed_at": null}', '{"sha256": "%s", "sealed_at": true}',
    '{"sha256": "%s", "sealed_at": NaN}', '{"sha256": "%s", "sealed_at": 1e300}',
    '{"sha256": ["%s"], "sealed_at": 1}', '{"sha256": "%s", "sealed_at": 1, "meta": [1]}',
])
def test_malformed_seal_means_recompute_never_a_crash(tmp_path, seal):
    store = Store(tmp_path)
    store.cached_json("k", "n", "key", lambda: {"v": 1})
    path = store.path("k", "n", "key", ".json")
    sha = json.loads(path.with_name(path.name + ".seal.json").read_text())["sha256"]
    path.with_name(path.name + ".seal.json").write_text(seal.replace("%s", sha))
    assert store.verify(path) is False
    assert store.cached_json("k", "n", "key", lambda: {"v": 2}) == {"v": 2}
    assert store.verify(path) is True


def test_fresh_recomputes_even_a_seal_dated_in_the_future(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.cached_json("k", "n", "key", lambda: {"v": 1})
    path = store.path("k", "n", "key", ".json")
    seal = path.with_name(path.name + ".seal.json")
    record = json.loads(seal.read_text())
    seal.write_text(json.dumps(dict(record, sealed_at=time.time() + 10 * 86400)))  # a skewed clock
    monkeypatch.setenv("PROBELIB_FRESH_SINCE", repr(time.time()))
    fresh = default_store(tmp_path)
    assert fresh.cached_json("k", "n", "key", lambda: {"v": 2}) == {"v": 2}
    assert default_store(tmp_path).cached_json("k", "n", "key", lambda: {"v": 3}) == {"v": 2}  # once per run
    monkeypatch.setenv("PROBELIB_FRESH_SINCE", repr(time.time() + 1))  # the next --fresh run
    assert default_store(tmp_path).cached_json("k", "n", "key", lambda: {"v": 4}) == {"v": 4}


# ----------------------------------------------------------------------------- shared folders
def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = Store(tmp_path)
        store.cached_arrays("neighbours", "demo", "k" * 64, lambda: {"a": np.arange(3)})
        store.cached_json("tables", "t", "abc", lambda: {"x": 1})
        with atomic_write(tmp_path / "plain.txt") as tmp:
            tmp.write_text("x")
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert len(files) == 5
        assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}
        os.umask(0o027)
        with atomic_write(tmp_path / "group.txt") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "group.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def _other_host_writer(folder, name: str, suffix: str = ".tmp", age_s: float = 0.0) -> Path:
    """A temporary as a live writer on another host names it: a pid that does not run here."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tmp = Path(folder) / f".{name}.{proc.pid}@otherhost.abcd{suffix}"
    tmp.write_text("half-written by a live writer elsewhere")
    if age_s:
        os.utime(tmp, (time.time() - age_s, time.time() - age_s))
    return tmp


def test_sweep_never_deletes_another_hosts_live_temporary(tmp_path):
    from probelib.store import remove_stale_temporaries, write_text_atomic

    other = _other_host_writer(tmp_path, "table.csv")
    legacy = _other_host_writer(tmp_path, "table.csv")  # the pre-host naming: .<name>.<pid>.<rand>.tmp
    legacy = legacy.rename(tmp_path / f".table.csv.{legacy.name.split('.')[3].split('@')[0]}.k3j1.tmp")
    write_text_atomic(tmp_path / "table.csv", "a,b\n")
    assert other.exists() and legacy.exists()
    remove_stale_temporaries(tmp_path, ".table.csv.", ".tmp")
    assert other.exists() and legacy.exists()
    # the notebook runner's in-progress copies follow the same rule
    partial = _other_host_writer(tmp_path, "01_slow", ".partial.ipynb")
    remove_stale_temporaries(tmp_path, ".01_slow.", ".partial.ipynb")
    assert partial.exists()


def test_sweep_removes_dead_writers_temporaries_by_age_and_lock(tmp_path):
    import fcntl

    from probelib.store import STALE_AFTER_S, remove_stale_temporaries

    old = 2 * STALE_AFTER_S
    dead = _other_host_writer(tmp_path, "table.csv", age_s=old)             # lock free and old: swept
    held = _other_host_writer(tmp_path, "table.csv", age_s=old)             # old but its lock is held: kept
    held = held.rename(held.with_name(held.name.replace("abcd", "efgh")))
    lock = held.with_name(held.name + ".lock")
    lock.write_text("")
    os.utime(lock, (time.time() - old, time.time() - old))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with open(lock) as fh:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = remove_stale_temporaries(tmp_path, ".table.csv.", ".tmp")
        assert dead in removed and not dead.exists()
        assert held.exists() and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    remove_stale_temporaries(tmp_path, ".table.csv.", ".tmp")
    assert not held.exists() and not lock.exists()
