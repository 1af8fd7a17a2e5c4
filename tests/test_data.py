"""The data layer: embedded sets, relabel rules, and every real loader on files written in the
real on-disk layouts (MNIST idx, CIFAR python pickles, ImageFolder trees)."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from probelib.data import (DatasetNotFoundError, dataset_status, held_out_label_map, load_dataset,
                           parse_name)
from probelib.data.files import read_cifar_batch


# ----------------------------------------------------------------------------- embedded
def test_mnist5kwo9_matches_the_definition():
    s = load_dataset("mnist5kwo9")
    assert len(s.ood) == 500 and len(s.train) + len(s.test) == 4500
    assert len(s.train) == 3600 and len(s.test) == 900
    assert s.train.y.unique().tolist() == list(range(9)) and s.test.y.unique().tolist() == list(range(9))
    assert s.num_classes == 9 and s.held_out == 9 and s.ood.y.unique().tolist() == [-1]
    assert s.train.x.dtype == torch.float32 and s.train.x.shape[1:] == (1, 28, 28)
    assert 0 <= s.train.x.min() and s.train.x.max() <= 1
    full = load_dataset("mnist5k")
    # OOD = digit 9's train split then its test split, exactly those images
    nine = torch.cat([full.train.x[full.train.y == 9], full.test.x[full.test.y == 9]])
    assert torch.equal(s.ood.x, nine)
    assert torch.bincount(full.train.y).tolist() == [400] * 10
    assert torch.bincount(full.test.y).tolist() == [100] * 10


def test_embedded_split_is_deterministic_and_disjoint():
    a, b = load_dataset("mnist5k"), load_dataset("mnist5k")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    flat_train = {tuple(r) for r in a.train.x.flatten(1)[:, ::7].numpy().round(3).tolist()}
    overlap = sum(tuple(r) in flat_train for r in a.test.x.flatten(1)[:, ::7].numpy().round(3).tolist())
    assert overlap <= 2  # MNIST has a few near-duplicates; a leaking split would share hundreds


def test_digits_smallest_real_set():
    s = load_dataset("digitswo3")
    assert s.train.x.shape[1:] == (1, 8, 8) and float(s.train.x.max()) == 1.0
    assert len(s.train) + len(s.test) + len(s.ood) == 1797
    assert s.class_names == ["0", "1", "2", "4", "5", "6", "7", "8", "9"]


# ----------------------------------------------------------------------------- relabel rules
@pytest.mark.parametrize("base,n,k,expected", [
    ("mnist", 10, 9, {c: c for c in range(9)}),
    ("mnist", 10, 4, {0: 0, 1: 1, 2: 2, 3: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8}),
    ("cifar10", 10, 0, {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 0}),
    ("cifar10", 10, 5, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 9: 8}),
    ("cifar10", 10, 9, {c: c for c in range(9)}),
    ("cifar100coarse", 20, 0, {**{c: c for c in range(1, 19)}, 19: 0}),
    ("cifar100coarse", 20, 7, {c: c - (c > 7) for c in range(20) if c != 7}),
    ("imgnet100", 100, 0, {c: c - 1 for c in range(1, 100)}),
    ("mnist5k", 10, 0, {c: c - 1 for c in range(1, 10)}),
])
def test_relabel_rules(base, n, k, expected):
    m = held_out_label_map(base, n, k)
    assert m == expected
    assert sorted(m.values()) == list(range(n - 1))


@pytest.mark.parametrize("name,error", [
    ("mnist5kwo10", "out of range"), ("cifar10wo12", "out of range"), ("cifar100wo3", "no held-out"),
    ("cifar11", "Did you mean 'cifar10'"), ("mnsit5k", "mnist5k"),
])
def test_bad_names(name, error):
    with pytest.raises(ValueError, match=error):
        parse_name(name)


# ----------------------------------------------------------------------------- MNIST idx
def _write_idx(path, array: np.ndarray):
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    with open(path, "wb") as fh:
        fh.write(struct.pack(">BBBB", 0, 0, code, array.ndim))
        fh.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        fh.write(array.tobytes())


def _mnist_tree(root, n_train=30, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        data[prefix] = (x, y)
    return data


def test_mnist_idx_files(tmp_path):
    data = _mnist_tree(tmp_path)
    s = load_dataset("mnistwo4", root=tmp_path)
    x, y = data["train"]
    keep = y != 4
    assert torch.allclose(s.train.x[:, 0], torch.from_numpy(x[keep]).float() / 255)
    assert s.train.y.tolist() == [v - (v > 4) for v in y[keep].tolist()]
    xt = data["t10k"][0][data["t10k"][1] == 4]
    assert len(s.ood) == int((y == 4).sum()) + len(xt)
    assert torch.allclose(s.ood.x[-len(xt):, 0], torch.from_numpy(xt).float() / 255)


def test_mnist_missing_file_names_path_and_source(tmp_path):
    _mnist_tree(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and "yann.lecun.com" in msg and "data/README.md" in msg


# ----------------------------------------------------------------------------- CIFAR pickles
def _py2_style_pickle(obj, path):
    """Pickle like the published batches (protocol 2; NumPy globals under numpy.core)."""
    raw = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def _cifar10_tree(root, per_batch=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        labels[:10] = list(range(10))
        _py2_style_pickle({"batch_label": f"batch {name}", "labels": labels, "data": data,
                           "filenames": [f"img{i}.png" for i in range(per_batch)]}, folder / name)
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _py2_style_pickle({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072},
                      folder / "batches.meta")
    return batches


def test_cifar10_batches_and_wo0_truck_rule(tmp_path):
    batches = _cifar10_tree(tmp_path)
    s = load_dataset("cifar10", root=tmp_path)
    assert len(s.train) == 60 and len(s.test) == 12 and s.class_names[9] == "truck"
    d, labels = batches["data_batch_1"]
    assert torch.allclose(s.train.x[0], torch.from_numpy(d[0].reshape(3, 32, 32)).float() / 255)
    w = load_dataset("cifar10wo0", root=tmp_path)
    train_y = torch.cat([torch.tensor(batches[f"data_batch_{i}"][1]) for i in range(1, 6)])
    assert w.train.y.tolist() == [0 if v == 9 else v for v in train_y.tolist() if v != 0]
    assert w.class_names[0] == "truck" and "airplane" not in w.class_names
    assert len(w.ood) == int((train_y == 0).sum()) + batches["test_batch"][1].count(0)


def test_cifar100_coarse_wo0(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 40), ("test", 20)):
        coarse = (np.arange(n) % 20).tolist()
        _py2_style_pickle({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                           "fine_labels": (np.arange(n) % 100).tolist(), "coarse_labels": coarse,
                           "filenames": [f"{i}.png" for i in range(n)]}, folder / split)
    _py2_style_pickle({"fine_label_names": [f"f{i}" for i in range(100)],
                       "coarse_label_names": [f"c{i}" for i in range(20)]}, folder / "meta")
    s = load_dataset("cifar100coarsewo0", root=tmp_path)
    assert s.num_classes == 19 and s.class_names[0] == "c19" and s.class_names[1] == "c1"
    assert sorted(set(s.train.y.tolist())) == list(range(19))
    assert len(s.ood) == 2 + 1
    fine = load_dataset("cifar100", root=tmp_path)
    assert fine.num_classes == 100 and fine.train.y[:5].tolist() == [0, 1, 2, 3, 4]


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    _cifar10_tree(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(DatasetNotFoundError, match=r"refusing to load \S*print"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetNotFoundError):
        read_cifar_batch(target)


def test_cifar_partial_set_names_missing_batch(tmp_path):
    _cifar10_tree(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_batch"):
        load_dataset("cifar10wo0", root=tmp_path)


# ----------------------------------------------------------------------------- folders
def _jpeg(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=95)


WNIDS = ["n01440764", "n01443537", "n01484850"]


def test_imagenet_folders_and_imgnet100_class_list(tmp_path):
    for split in ("train", "val"):
        for i, w in enumerate(WNIDS):
            for j in range(2):
                _jpeg(tmp_path / "imagenet" / split / w / f"{w}_{j}.JPEG", (300, 260), 10 * i + j)
    s = load_dataset("imagenet", root=tmp_path)
    x, y = s.train[0]
    assert x.shape == (3, 224, 224) and y == 0 and len(s.test) == 6
    # imgnet100 demands a list of exactly 100 wnids
    (tmp_path / "imagenet100.txt").write_text("\n".join(WNIDS))
    with pytest.raises(DatasetNotFoundError, match="100 distinct wnids"):
        load_dataset("imgnet100", root=tmp_path)
    fake = WNIDS + [f"n9{i:07d}" for i in range(97)]
    (tmp_path / "imagenet100.txt").write_text("\n".join(fake))
    with pytest.raises(DatasetNotFoundError, match="class folder"):
        load_dataset("imgnet100", root=tmp_path)
    for w in fake[3:]:
        for split in ("train", "val"):
            (tmp_path / "imagenet" / split / w).mkdir(parents=True)
            _jpeg(tmp_path / "imagenet" / split / w / "a.JPEG", (130, 140), 1)
    s = load_dataset("imgnet100wo1", root=tmp_path)
    assert s.num_classes == 99 and len(s.ood) == 4
    x, y = s.train[0]
    assert x.shape == (3, 112, 112) and y == 0
    labels = [s.train[i][1] for i in range(len(s.train))]
    assert sorted(set(labels)) == list(range(99))  # re-indexed 0..98 in order


def test_tinyimagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(WNIDS[::-1]))
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {w}, other" for w in WNIDS))
    for i, w in enumerate(WNIDS):
        _jpeg(base / "train" / w / "images" / f"{w}_0.JPEG", (64, 64), i)
    ann = []
    for i, w in enumerate(WNIDS):
        _jpeg(base / "val" / "images" / f"val_{i}.JPEG", (64, 64), 100 + i)
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann))
    s = load_dataset("tinyimagenet", root=tmp_path)
    assert s.class_names[0] == f"thing {WNIDS[0]}"
    x, y = s.test[2]
    assert x.shape == (3, 64, 64) and y == 2
    (base / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_1.JPEG"):
        load_dataset("tinyimagenet", root=tmp_path)


def test_imagenet_v2_numeric_folders(tmp_path):
    base = tmp_path / "imagenetv2-matched-frequency-format-val"
    for c in (0, 2, 10):
        _jpeg(base / str(c) / "a.jpeg", (240, 250), c)
    s = load_dataset("imagenet-v2", root=tmp_path)
    assert s.train is None
    assert [s.test[i][1] for i in range(3)] == [0, 2, 10]  # numeric order, not "0","10","2"
    (base / "n0123").mkdir()
    with pytest.raises(DatasetNotFoundError, match="named 0..999"):
        load_dataset("imagenet-v2", root=tmp_path)


def test_stylized_imagenet(tmp_path):
    for i, w in enumerate(WNIDS):
        _jpeg(tmp_path / "stylized-imagenet" / "val" / w / "x.png", (224, 224), i)
    s = load_dataset("stylized-imagenet", root=tmp_path)
    assert [s.test[i][1] for i in range(3)] == [0, 1, 2]


def test_missing_dataset_error_names_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10wo0", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "toronto.edu" in msg and str(tmp_path) in msg


def test_env_var_sets_data_root(tmp_path, monkeypatch):
    _cifar10_tree(tmp_path)
    monkeypatch.setenv("PROBELIB_DATA", str(tmp_path))
    assert len(load_dataset("cifar10").train) == 60
    found = {r["dataset"]: r["found"] for r in dataset_status()}
    assert found["cifar10"] and found["mnist5k"] and found["digits"] and not found["imagenet"]


def test_cli_lists_embedded_sets(capsys):
    from probelib.__main__ import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "mnist5k" in out and "digits" in out and "embedded" in out


# ------------------------------------------------------------------ the one sampler
def _reference_selection(labels: list[int], n_images: int | None, seed: int) -> list[int]:
    """The documented selection, written out slowly: per class in sorted order, one draw of
    ``default_rng(seed).permutation`` over that class's positions, keep max(1, round(n·N_c/N))."""
    if n_images is None or n_images >= len(labels):
        return list(range(len(labels)))
    rng, kept = np.random.default_rng(seed), []
    for c in sorted(set(labels)):
        where = [i for i, v in enumerate(labels) if v == c]
        kept += [where[j] for j in rng.permutation(len(where))[:max(1, int(round(n_images * len(where) / len(labels))))]]
    return sorted(kept)


@pytest.mark.parametrize("n_images, seed", [(1, 0), (37, 0), (100, 3), (499, 7), (None, 0), (10_000, 1)])
def test_subsample_selects_the_documented_stratified_items(n_images, seed):
    """data.subsample (the one sampler: training subsets, AdaBN study subsets) keeps exactly the items
    of the documented per-class seeded draw, for in-memory sets, (x, y) pairs and lazy subsets."""
    from torch.utils.data import Subset

    from probelib.data import subsample
    from probelib.data.core import RelabelledSubset

    splits = load_dataset("digitswo9")
    want = _reference_selection(splits.train.y.tolist(), n_images, seed)
    got = subsample(splits.train, n_images, seed=seed)
    assert torch.equal(got.x, splits.train.x[want]) and torch.equal(got.y, splits.train.y[want])
    x, y = splits.test.x, splits.test.y
    want = _reference_selection(y.tolist(), n_images, seed)
    xs, ys = subsample((x, y), n_images, seed=seed)
    assert torch.equal(xs, x[want]) and torch.equal(ys, y[want])
    lazy = RelabelledSubset(splits.train, list(range(0, len(splits.train), 2)), {c: c for c in range(9)})
    want = _reference_selection([int(lazy[i][1]) for i in range(len(lazy))], n_images, seed)
    got = subsample(lazy, n_images, seed=seed)
    if isinstance(got, Subset):
        assert list(got.indices) == want
    else:
        assert got is lazy and want == list(range(len(lazy)))


def test_subsample_is_stratified_and_refuses_bad_counts():
    from probelib.data import subsample

    y = torch.arange(100) % 4
    x = torch.rand(100, 1, 2, 2)
    xs, ys = subsample((x, y), 20, seed=0)
    assert len(ys) == 20 and torch.bincount(ys).tolist() == [5, 5, 5, 5]
    assert subsample((x, y), None)[0] is x
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_images must be a positive integer"):
            subsample((x, y), bad)
    with pytest.raises(ValueError, match="differ in length"):
        subsample((x, y[:5]), 3)
