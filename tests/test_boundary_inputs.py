"""Inputs checked at the boundary (issue 15): images, labels, BatchNorm, devices, names that become
paths, empty training, MNIST's raw files, and the runner's parameters and folders.

Every call here would, before these checks, have returned a silently wrong number or written a
wrong file; each must now raise an error that names the input and the fix, before any work.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from probelib import adabn as A
from probelib import metrics
from probelib._util import default_device
from probelib.data import load_dataset
from probelib.models import build_model
from probelib.metrics import predict_labels
from probelib.ncg import ncg, ncg_report
from probelib.neighbours import nearest_neighbours
from probelib.store import Store

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _images(n: int = 12, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def _bn_model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, classes)).eval()


def _mlp(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_model("LargeMLP", classes, in_features=64)


# ----------------------------------------------------------------------------- images in [0, 1]
IMAGE_RANGE = r"must hold finite values in \[0, 1\].*divide uint8 pixels by 255"


def test_nearest_neighbours_refuses_0_255_and_uint8_pixels(tmp_path):
    x, q = _images(20), _images(5, seed=1)
    y = torch.arange(20) % 3
    store = Store(tmp_path / "store")
    with pytest.raises(ValueError, match="queries " + IMAGE_RANGE):
        nearest_neighbours(x, y, q * 255, store=store, progress=False)
    with pytest.raises(ValueError, match=r"reference_x must be float in \[0, 1\], got dtype torch.uint8"):
        nearest_neighbours((x * 255).to(torch.uint8), y, q, store=store, progress=False)
    assert _files(tmp_path) == []


def test_feature_space_vectors_stay_unbounded():
    """N×D feature vectors (feature-space NCG) are legitimately outside [0, 1]."""
    g = torch.Generator().manual_seed(0)
    fx, fq = 50 * torch.randn(30, 7, generator=g), 50 * torch.randn(4, 7, generator=g)
    nn_ = nearest_neighbours(fx, torch.arange(30) % 3, fq, store=False, progress=False)
    assert len(nn_) == 4
    pred = predict_labels(nn.Linear(7, 3), fx, store=False)
    assert pred.shape == (30,)
    with pytest.raises(ValueError, match="queries holds NaN or infinite values"):
        nearest_neighbours(fx, torch.arange(30) % 3, fq / 0, store=False, progress=False)


@pytest.mark.parametrize("bad", ["0-255", "nan", "above-one"])
def test_predict_refuses_out_of_range_images(bad):
    x = _images()
    x = {"0-255": x * 255, "nan": x.masked_fill(x > 0.9, float("nan")), "above-one": x * 1.0001 + 1e-4}[bad]
    model = _mlp()
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        metrics.predict(model, x)
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        predict_labels(model, x, store=False)


def test_metrics_predict_and_predict_labels_convert_uint8():
    x = _images()
    u8 = (x * 255).round().to(torch.uint8)
    # metrics.predict documents uint8 (divided by 255): the same logits as the float images
    assert torch.allclose(metrics.predict(_mlp(), u8), metrics.predict(_mlp(), u8.float() / 255))
    assert (predict_labels(_mlp(), u8, store=False) == predict_labels(_mlp(), u8.float() / 255, store=False)).all()


def test_predict_labels_writes_nothing_for_0_255_images(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        predict_labels(_mlp(), _images() * 255, store=store, name="p")
    assert _files(tmp_path) == []


def test_adapt_bn_refuses_0_255_images_from_tensor_and_loader():
    model = _bn_model()
    before = [t.clone() for t in (model[1].running_mean, model[1].running_var)]
    x = _images() * 255
    with pytest.raises(ValueError, match="data " + IMAGE_RANGE):
        A.adapt_bn(model, x)
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        A.adapt_bn(model, DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=4))
    assert torch.equal(model[1].running_mean, before[0]) and torch.equal(model[1].running_var, before[1])


def test_shift_grid_refuses_a_source_of_0_255_images():
    x, y = _images(), torch.arange(12) % 3
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        A.shift_grid(_bn_model(), lambda c, s: (x * 255, y), corruptions=["fog"], severities=[1])
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        A.shift_grid(_bn_model(), lambda c, s: (x, y), corruptions=["fog"], severities=[1], clean=(x * 255, y))


@pytest.mark.parametrize("study", ["label_shift", "black_border_study", "evaluate_arms", "arm_logits",
                                   "bn_statistics_comparison"])
def test_adabn_studies_refuse_0_255_images(study):
    x, y = _images() * 255, torch.arange(12) % 3
    call = {"label_shift": lambda: A.label_shift(_bn_model(), x, y, ks=(3,), ms=(0,)),
            "black_border_study": lambda: A.black_border_study(_bn_model(), x, y),
            "evaluate_arms": lambda: A.evaluate_arms(_bn_model(), x, y),
            "arm_logits": lambda: A.arm_logits(_bn_model(), x),
            "bn_statistics_comparison": lambda: A.bn_statistics_comparison(_bn_model(), x)}[study]
    with pytest.raises(ValueError, match=IMAGE_RANGE):
        call()


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("labels,match", [
    (np.array([0, 1.5, 2]), "must be integer class indices, got dtype float64.*never rounded"),
    (np.array([0.0, 1.0, 2.0]), "must be integer class indices, got dtype float64"),
    (np.array([True, False, True]), "must be integer class indices, got dtype bool"),
    (np.array([0, 1, 3]), r"must lie in 0\.\.2 \(3 classes\), got 1 outside, e\.g\. 3"),
    (np.array([0, -1, 2]), r"must lie in 0\.\.2.*e\.g\. -1"),
])
def test_ncg_report_checks_labels(labels, match):
    good = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="predictions " + match):
        ncg_report(labels, good, 3, n_boot=10)
    with pytest.raises(ValueError, match="nn_labels " + match):
        ncg_report(good, labels, 3, n_boot=10)


def test_ncg_does_not_truncate_float_labels():
    with pytest.raises(ValueError, match="predictions must be integer class indices"):
        ncg(np.array([1.5, 2.0]), np.array([1, 2]))


def test_nearest_neighbours_refuses_float_labels():
    with pytest.raises(ValueError, match="reference_y must be integer class indices, got dtype float32"):
        nearest_neighbours(_images(4), torch.tensor([0, 1.5, 1, 0]), _images(2), store=False, progress=False)
    with pytest.raises(ValueError, match="reference_y has 3 labels for 4 images"):
        nearest_neighbours(_images(4), torch.tensor([0, 1, 1]), _images(2), store=False, progress=False)


def _py2_pickle(obj, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def _cifar10(root: Path, labels_of_batch_2) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = labels_of_batch_2 if name == "data_batch_2" else list(range(10))
        _py2_pickle({"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": labels}, folder / name)
    _py2_pickle({"label_names": [f"c{i}" for i in range(10)]}, folder / "batches.meta")


@pytest.mark.parametrize("labels,match", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 10], r"must lie in 0\.\.9 \(10 classes\).*e\.g\. 10"),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, -1], r"must lie in 0\.\.9.*e\.g\. -1"),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 1.5], "must be integer class indices, got dtype float64"),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], "has 9 labels for 10 images"),
])
def test_cifar_batch_labels_are_checked(tmp_path, labels, match):
    _cifar10(tmp_path, labels)
    with pytest.raises(ValueError, match=r"dataset 'cifar10': labels in \S*data_batch_2 " + match):
        load_dataset("cifar10", root=tmp_path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        fh.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def _mnist(root: Path, train_labels: np.ndarray | None = None) -> dict:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", 20), ("t10k", 10)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10 if prefix == "t10k" or train_labels is None else train_labels
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.asarray(y))
        data[prefix] = (x, y)
    return data


def test_mnist_idx_labels_are_checked(tmp_path):
    _mnist(tmp_path / "a", train_labels=np.array([10] + [1] * 19))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte must lie in 0\.\.9.*e\.g\. 10"):
        load_dataset("mnist", root=tmp_path / "a")
    _mnist(tmp_path / "b", train_labels=np.arange(19) % 10)
    with pytest.raises(ValueError, match="has 19 labels for 20 images"):
        load_dataset("mnist", root=tmp_path / "b")


def test_mnist_reads_raw_idx_not_stale_processed_files(tmp_path):
    data = _mnist(tmp_path)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name, n in (("training.pt", 20), ("test.pt", 10)):  # torchvision's legacy cache, stale
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.full((n,), 7)), processed / name)
    s = load_dataset("mnist", root=tmp_path)
    assert torch.equal(s.train.x[:, 0], torch.from_numpy(data["train"][0]).float() / 255)
    assert s.train.y.tolist() == data["train"][1].tolist()


def test_mnist_truncated_idx_names_the_file(tmp_path):
    _mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*truncated or damaged"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("labels,match", [
    (np.array([0, 1.5, 2, 3, 4]), "must be integer class indices, got dtype float64"),
    (np.array([0, 1, 2, 3, 10]), r"must lie in 0\.\.9 \(10 classes\) \(or -1 for a held-out class\)"),
])
def test_corrupted_set_labels_are_checked(tmp_path, labels, match):
    from probelib import corruptions as C

    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((25, 32, 32, 3), np.uint8))
    np.save(folder / "labels.npy", labels)
    with pytest.raises(C.CorruptedSetError, match=r"labels in \S*labels\.npy " + match):
        C.load_corrupted("cifar10-c", "fog", 1, root=tmp_path)


def test_check_labels_hostile_values():
    from probelib._util import check_labels

    assert check_labels(np.array([0, 9], np.uint8), 10).dtype == np.int64
    with pytest.raises(ValueError, match=r"must lie in 0\.\.9"):
        check_labels(np.array([10], np.int64), 10)
    with pytest.raises(ValueError, match="must be 1-D"):
        check_labels(np.zeros((2, 2), np.int64), 10)


# ----------------------------------------------------------------------------- AdaBN without BatchNorm
NO_BN = r"needs a model with BatchNorm layers.*MLP has none.*adabn = source.*arms=\(.source.,\) only"


@pytest.mark.parametrize("study", ["adapt_bn", "shift_grid", "label_shift", "black_border_study",
                                   "evaluate_arms", "ncg_under_adabn", "arm_logits"])
def test_adabn_on_a_model_without_batch_norm_is_refused(study):
    x, y = _images(), torch.arange(12) % 3
    model = _mlp()
    call = {"adapt_bn": lambda: A.adapt_bn(model, x),
            "shift_grid": lambda: A.shift_grid(model, lambda c, s: (x, y), corruptions=["fog"], severities=[1]),
            "label_shift": lambda: A.label_shift(model, x, y, ks=(3,), ms=(0,)),
            "black_border_study": lambda: A.black_border_study(model, x, y),
            "evaluate_arms": lambda: A.evaluate_arms(model, x, y),
            "ncg_under_adabn": lambda: A.ncg_under_adabn(model, x, y, lambda c, s: (x, y), corruptions=["fog"],
                                                         severities=[1]),
            "arm_logits": lambda: A.arm_logits(model, x, "adabn")}[study]
    with pytest.raises(ValueError, match=NO_BN):
        call()


def test_source_arm_alone_still_scores_a_model_without_batch_norm():
    x, y = _images(), torch.arange(12) % 3
    rows = A.evaluate_arms(_mlp(), x, y, arms=("source",))
    assert [r["arm"] for r in rows] == ["source"]


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device,match", [
    ("gpu", r"device='gpu' is not a device name; use one of 'cpu', 'cuda'"),
    ("cuda:0 ", r"device='cuda:0 ' is not a device name"),
    ("CUDA", r"device='CUDA' is not a device name"),
    ("meta", r"device='meta' is not supported by probelib"),
    ("cuda:99", r"cuda:99' was asked for but (CUDA is not available here|this machine has)"),
])
def test_default_device_names_the_fix(device, match):
    with pytest.raises(ValueError, match=match):
        default_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("entry", ["metrics.predict", "adapt_bn", "arm_logits",
                                   "predict_labels", "nearest_neighbours"])
def test_cuda_without_cuda_gives_probelibs_message_everywhere(entry, tmp_path):
    x = _images()
    store = Store(tmp_path / "store")
    nearest_neighbours(x, torch.arange(12) % 3, x[:2], store=store, name="nn", progress=False)  # cached now
    call = {"metrics.predict": lambda: metrics.predict(_bn_model(), x, device="cuda"),
            "adapt_bn": lambda: A.adapt_bn(_bn_model(), x, A.AdaBNSettings(device="cuda")),
            "arm_logits": lambda: A.arm_logits(_bn_model(), x, "adabn", adabn=A.AdaBNSettings(device="cuda")),
            "predict_labels": lambda: predict_labels(_bn_model(), x, store=False, device="cuda"),
            "nearest_neighbours": lambda: nearest_neighbours(x, torch.arange(12) % 3, x[:2], store=store, name="nn",
                                                             device="cuda", progress=False)}[entry]
    with pytest.raises(ValueError, match=r"device='cuda' was asked for but CUDA is not available here; "
                                         r"pass device='cpu'"):
        call()


# ----------------------------------------------------------------------------- names that become paths
BAD_NAMES = ["../escape", "a/../../b", "/abs/path", "..", ".", "", " ", "a\\b", "C:\\x", "C:x", "a\x00b",
             "name ", "dot."]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_store_names_cannot_leave_the_store(tmp_path, name):
    store = Store(tmp_path / "store")
    with pytest.raises(ValueError, match=r"store name .*(would leave its folder|separator|is empty|':'|NUL|space)"):
        store.cached_arrays("neighbours", name, "0" * 16, lambda: {"a": np.arange(3)})
    with pytest.raises(ValueError, match="store kind"):
        store.path(name, "ok", "0" * 16, ".npz")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "sub/dir", ""])
def test_table_and_figure_names_stay_in_results(tmp_path, name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from probelib.report import save_figure, save_table

    out = tmp_path / "deep" / "results"
    with pytest.raises(ValueError, match="table name"):
        save_table(pd.DataFrame({"a": [1]}), name, out)
    fig = plt.figure()
    with pytest.raises(ValueError, match="figure name"):
        save_figure(fig, name, out)
    plt.close(fig)
    assert _files(tmp_path) == []


def test_artifact_names_from_entry_points_are_checked(tmp_path):
    store = Store(tmp_path / "store")
    x = _images()
    with pytest.raises(ValueError, match=r"name '\.\./\.\./x' would leave its folder"):
        nearest_neighbours(x, torch.arange(12) % 3, x[:2], store=store, name="../../x", progress=False)
    with pytest.raises(ValueError, match=r"name 'a/b'"):
        predict_labels(_mlp(), x, store=store, name="a/b")
    assert _files(tmp_path) == []


def test_check_name_accepts_the_names_probelib_makes():
    from probelib._util import check_name

    for name in ("mnist5kwo9-cnn002-trades6-eps2-seed0", "pixel_ncg", "a+b.c", "corrupted_ncg_smoke-mnist5kwo9-c"):
        assert check_name(name) == name


# ----------------------------------------------------------------------------- training that takes no step
def test_mixup_with_batch_size_one_is_refused_and_nothing_is_stored(tmp_path):
    from probelib.training import default_config, train_or_load

    store = Store(tmp_path / "store")
    cfg = default_config("digits", "mixup", epochs=1, max_train=40, max_test=20, batch_size=1)
    with pytest.raises(ValueError, match=r"method='mixup'.*batch_size >= 2.*no optimiser step"):
        train_or_load(cfg, store=store, device="cpu", progress=False)
    assert _files(tmp_path) == []


def test_training_on_one_image_with_mixup_is_refused():
    from probelib.data import Splits, TensorSet
    from probelib.training import TrainConfig, train

    x = _images(1)
    one = TensorSet(x, torch.zeros(1, dtype=torch.long))
    splits = Splits("one", "one", one, one, 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no optimiser step"):
        train(_mlp(), splits, TrainConfig(method="mixup", epochs=1, batch_size=8), progress=False)


# ----------------------------------------------------------------------------- the runner
@pytest.fixture(autouse=False)
def no_kernel(monkeypatch) -> list:
    """Record instead of executing: a check that works never lets a notebook start."""
    import probelib.runner as S

    started: list = []
    monkeypatch.setattr(S, "execute_notebook", lambda nb, *a, **k: started.append(nb.stem))
    return started


def _run(args: list[str], capsys) -> tuple[int, str]:
    from probelib.__main__ import main

    rc = main(["run", "--only", "30", *args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("key,value,match", [
    ("eps", "abc", r"eps='abc' is refused: eps must be a finite number > 0"),
    ("eps", "0", r"eps=0 is refused"),
    ("eps", "-1", r"eps=-1 is refused"),
    ("eps", "inf", r"eps=inf is refused"),
    ("eps", "nan", r"eps=nan is refused"),
    ("severity", "0", r"severity=0 is refused: severity must be an integer in 1\.\.5"),
    ("severity", "6", r"severity=6 is refused"),
    ("severity", "5.0", r"severity=5\.0 is refused"),
    ("n_images", "0", r"n_images=0 is refused: n_images must be None \(all\) or an integer >= 1"),
    ("smoke", "1", r"smoke=1 is refused: smoke must be True or False"),
    ("smoke", "yes", r"smoke='yes' is refused"),
    ("momentum", "1.5", r"momentum=1\.5 is refused"),
    ("device", "gpu", r"device='gpu' is refused.*not a device name"),
    ("bn_severity", "True", r"bn_severity=True is refused"),
])
def test_runner_refuses_bad_parameter_values_before_any_kernel(tmp_path, capsys, no_kernel, key, value, match):
    only = "40" if key in ("eps", "severity") else "30"
    out = tmp_path / "results"
    from probelib.__main__ import main

    rc = main(["run", "--only", only, "--out", str(out), "-p", key, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: parameter "), err
    import re
    assert re.search(match, err), err
    assert not out.exists() and no_kernel == []


def test_runner_parses_false_in_any_case():
    from probelib.parameters import parse_parameter_value

    assert [parse_parameter_value(v) for v in ("false", "FALSE", "true", "none")] == [False, False, True, None]


def test_runner_refuses_wrong_types_from_a_parameter_file(tmp_path, no_kernel):
    from probelib.parameters import load_parameter_file
    from probelib.runner import run_suite

    params = tmp_path / "p.yaml"
    out = tmp_path / "results"
    for only, text, match in (("30-33", "severities: [0, 1]\n", r"severities=\[0, 1\] is refused"),
                              ("01", "methods: [natural, trade]\n", r"methods=\['natural', 'trade'\] is refused"),
                              ("01", "spaces: [pixel, pxel]\n", r"spaces=\['pixel', 'pxel'\] is refused"),
                              ("01", "chance_methods: [natural, trade]\n",
                               r"chance_methods=\['natural', 'trade'\] is refused: chance_methods must be a non-empty list"),
                              ("01", "n_bins: 0\n",
                               r"n_bins=0 is refused: n_bins must be an integer >= 1 \(notebook 01_ncg_tables\)"),
                              ("30-33", "n_images: 2.5\n", r"n_images=2\.5 is refused"),
                              ("30-33", "arms: source\n", r"arms='source' is refused")):
        params.write_text(text)
        with pytest.raises(ValueError, match=match):
            run_suite(only=only, parameters=load_parameter_file(params), out=out, progress=False)
    assert not out.exists() and no_kernel == []


def test_runner_refuses_a_negative_timeout(tmp_path, capsys, no_kernel):
    rc, err = _run(["--out", str(tmp_path / "r"), "--timeout", "-5"], capsys)
    assert rc == 2 and "--timeout must be a finite number of seconds > 0" in err and err.count("\n") == 1


def test_runner_refuses_an_out_that_is_a_file(tmp_path, capsys, no_kernel):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    rc, err = _run(["--out", str(out)], capsys)
    assert rc == 2 and f"--out '{out}' is a file, not a folder" in err and err.count("\n") == 1
    rc, err = _run(["--out", str(out / "sub")], capsys)
    assert rc == 2 and "cannot be created" in err and "is a file" in err


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write in: a 0500 folder, or (for root, whom modes do not stop) /sys."""
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    for folder in (ro, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no folder unwritable by this user")


def test_runner_refuses_an_unwritable_out_and_store(tmp_path, capsys, monkeypatch, no_kernel):
    ro = _unwritable_dir(tmp_path)
    rc, err = _run(["--out", str(ro / "probelib-results")], capsys)
    assert rc == 2 and "--out" in err and "is not writable" in err and err.count("\n") == 1, err
    monkeypatch.setenv("PROBELIB_PRECOMPUTED", str(ro / "probelib-store"))
    out = tmp_path / "results"
    rc, err = _run(["--out", str(out)], capsys)
    assert rc == 2 and "the artifact store" in err and "PROBELIB_PRECOMPUTED" in err and err.count("\n") == 1, err
    assert not out.exists() and no_kernel == []


def test_runner_reports_a_full_disk_in_one_line(tmp_path, capsys, monkeypatch, no_kernel):
    import probelib.runner as S

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "index.md"))

    monkeypatch.setattr(S, "write_report", full)
    rc, err = _run(["--out", str(tmp_path / "results")], capsys)
    assert rc == 1 and err.count("\n") == 1, err
    assert "No space left on device" in err and "index.md" in err and "free space" in err
