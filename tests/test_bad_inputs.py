"""Bad inputs: each raises a clear error that names the input and the fix, before any output is written.

One test per case. Where the call would write something (a store artifact, a generated set, a
results folder), the test also checks that nothing was written. The last section plants pickles
that would run code and shows that every reader refuses them.
"""

from __future__ import annotations

import json
import pickle
import re
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from probelib import corruptions as C
from probelib._util import UnknownNameError
from probelib.adabn import label_shift
from probelib.attacks import cw_l2, fmn_l2, pgd
from probelib.corruptions import CorruptedSetError
from probelib.data import DatasetNotFoundError, load_dataset
from probelib.models import (CheckpointError, CheckpointMismatchError, UnsafeCheckpointError, build_model,
                             load_checkpoint, save_checkpoint)
from probelib.metrics import predict_labels
from probelib.neighbours import knn
from probelib.store import Store, file_sha256
from probelib.parameters import load_parameter_file
from probelib.runner import run_suite
from probelib.training import checkpoint_key, default_config, train_or_load


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (empty when it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _tiny_model(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_model("LargeMLP", num_classes, in_features=64)


def _images(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.zeros(n, dtype=torch.long)


# ----------------------------------------------------------------------------- data on disk
def test_missing_data_root_names_path_layout_and_source(tmp_path):
    root = tmp_path / "no-such-root"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=root)
    msg = str(err.value)
    assert str(root / "cifar-10-batches-py") in msg          # the path looked at
    assert "data_batch_1" in msg and "test_batch" in msg      # the layout expected there
    assert "cs.toronto.edu" in msg and "PROBELIB_DATA" in msg  # where it is published, how to point at it
    assert not root.exists()                                  # nothing created, nothing downloaded


def test_corrupted_set_without_labels_npy(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((5 * 2, 32, 32, 3), np.uint8))
    with pytest.raises(DatasetNotFoundError) as err:
        C.load_corrupted("cifar10-c", "fog", 1, root=tmp_path)
    msg = str(err.value)
    assert str(folder / "labels.npy") in msg and "copy it from the published set" in msg
    assert _files(tmp_path) == ["CIFAR-10-C/fog.npy"]


def test_truncated_npy_names_the_file(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.zeros(10, np.uint8))
    np.save(folder / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    data = (folder / "fog.npy").read_bytes()
    (folder / "fog.npy").write_bytes(data[:len(data) // 3])  # a copy cut short
    with pytest.raises(CorruptedSetError, match=re.escape(str(folder / "fog.npy")) + ".*truncated.*"
                                                "delete it and copy or regenerate it"):
        C.load_corrupted("cifar10-c", "fog", 1, root=tmp_path)


def test_missing_severity_folder_lists_the_severities_present(tmp_path):
    from PIL import Image

    for sev in (1, 2):
        (tmp_path / "ImageNet-C" / "fog" / str(sev) / "n01440764").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ImageNet-C" / "fog" / str(sev) / "n01440764" / "a.png")
    with pytest.raises(DatasetNotFoundError) as err:
        C.load_corrupted("imagenet-c", "fog", 3, root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "ImageNet-C" / "fog" / "3") in msg
    assert "holds severities ['1', '2']" in msg and "copy severity 3 from the published set" in msg


# ----------------------------------------------------------------------------- arrays
def test_images_of_the_wrong_shape():
    x, y = _images()
    with pytest.raises(ValueError, match=r"x must have shape N×C×H×W.*got shape \(4, 8, 8\).*x\.unsqueeze\(1\)"):
        cw_l2(_tiny_model(), x[:, 0], y, binary_search_steps=1, steps=2, progress=False)


def test_images_of_the_wrong_dtype():
    x, y = _images()
    with pytest.raises(ValueError, match=r"x must be float in \[0, 1\], got dtype torch.uint8.*x\.float\(\) / 255"):
        fmn_l2(_tiny_model(), (x * 255).to(torch.uint8), y, steps=2, progress=False)


def test_images_outside_zero_one():
    x, y = _images()
    with pytest.raises(ValueError, match=r"x must hold finite values in \[0, 1\], got range.*"
                                         r"divide uint8 pixels by 255"):
        cw_l2(_tiny_model(), x * 255, y, binary_search_steps=1, steps=2, progress=False)


def test_writing_a_corrupted_set_from_float_images_writes_nothing(tmp_path):
    out = tmp_path / "set"
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    with pytest.raises(ValueError, match=r"images must be uint8 N×H×W×C.*got float32 \(3, 8, 8, 1\)"
                                         r".*to_uint8_images"):
        C.write_corrupted(images, np.zeros(3, np.int64), out, ["fog"], progress=False)
    assert not out.exists()


# ----------------------------------------------------------------------------- names
def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'cifar1O'\. Did you mean 'cifar10'\?"
                                               r" Valid dataset names: .*mnist5kwo0"):
        load_dataset("cifar1O")


def test_unknown_architecture_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown architecture 'CNN02'\. Did you mean 'CNN002'\?"
                                               r" Valid architecture names: .*WRN-<depth>-<widen>"):
        build_model("CNN02", 10)


def test_unknown_corruption_suggests_the_closest_and_generates_nothing(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown corruption 'gausian_noise'\. Did you mean 'gaussian_noise'\?"
                                               r" Valid corruption names: .*zoom_blur"):
        C.load_corrupted("mnist5k-c", "gausian_noise", 1, root=tmp_path)
    assert _files(tmp_path) == []  # the embedded mnist5k-c was not generated for a bad request


def test_unknown_training_method_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown training method 'trade'\. Did you mean 'trades'\?"
                                               r" Valid training method names: at, mixup, natural, trades"):
        default_config("mnist5kwo9", "trade")


def test_unknown_attack_norm_suggests_the_closest():
    x, y = _images()
    with pytest.raises(UnknownNameError, match=r"unknown norm 'linfinity'\. Did you mean 'linf'\? "
                                               r"Valid norm names: l2, linf"):
        pgd(_tiny_model(), x, y, 0.5, norm="linfinity")


def test_unknown_normalisation_layer_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown norm 'btach'\. Did you mean 'batch'\?.*instance-affine"):
        build_model("WRN-16-2", 10, norm="btach")


def test_unknown_neighbour_metric_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown metric 'L2'\. Did you mean 'l2'\? "
                                               r"Valid metric names: l1, l2, linf"):
        knn(np.zeros((3, 2)), np.zeros((1, 2)), metric="L2", progress=False)


# ----------------------------------------------------------------------------- values
def test_held_out_class_out_of_range():
    with pytest.raises(ValueError, match=r"held-out class K=10 is out of range for 'mnist5k', which has 10 "
                                         r"classes: use K in 0\.\.9"):
        load_dataset("mnist5kwo10")


def test_severity_out_of_range_generates_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5, got 6"):
        C.load_corrupted("mnist5k-c", "fog", 6, root=tmp_path)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_eps_not_positive(eps):
    x, y = _images()
    with pytest.raises(ValueError, match=rf"eps must be a finite number > 0, got {eps}\. .*e\.g\. eps=2\.0"):
        pgd(_tiny_model(), x, y, eps)
    with pytest.raises(ValueError, match=rf"eps must be a finite number > 0, got {eps}\. method='trades' needs "
                                         r"a positive L2 budget, e\.g\. eps=2\.0"):
        default_config("mnist5kwo9", "trades", eps=eps)


# ----------------------------------------------------------------------------- checkpoints and models
def test_checkpoint_of_another_class_count(tmp_path):
    path = save_checkpoint(build_model("CNN002", 9), tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, model=build_model("CNN002", 10))
    msg = str(err.value)
    assert str(path) in msg and "num_classes: checkpoint 9, model 10" in msg
    assert "load_checkpoint(path) without model=" in msg


def test_checkpoint_of_another_architecture(tmp_path):
    path = save_checkpoint(build_model("CNN002", 9), tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, model=build_model("LargeMLP", 9, in_features=784))
    msg = str(err.value)
    assert str(path) in msg and "arch: checkpoint 'CNN002', model 'LargeMLP'" in msg
    assert "Build the model with the checkpoint's arguments" in msg


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_checkpoint_file(tmp_path, damage):
    path = save_checkpoint(build_model("LargeMLP", 3, in_features=4), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"", "garbage": b"\x00not a checkpoint" * 9}[damage])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "damaged" in msg and "delete it and re-run" in msg
    assert not isinstance(err.value, UnsafeCheckpointError)


class _NaNModel(nn.Module):
    """A model whose weights have diverged: every output is NaN."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_model_that_returns_nan_stores_no_predictions(tmp_path):
    x, _ = _images(5)
    store = Store(tmp_path / "precomputed")
    with pytest.raises(ValueError, match=r"_NaNModel returned NaN or infinite outputs for 5 of 5 inputs \(first at "
                                         r"index 0\).*diverged.*retrain it with a lower learning rate"):
        predict_labels(_NaNModel(), x, store=store, name="nan-model")
    assert _files(tmp_path) == []


def test_label_shift_with_an_empty_class_subset():
    x, _ = _images(6)
    y = torch.tensor([3, 4, 5, 3, 4, 5])
    model = build_model("WRN-10-1", 6, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match=r"keeping classes 0\.\.0 \(k=1\) leaves no images: the labels present "
                                         r"are \[3, 4, 5\]; choose k so that some labels are below it"):
        label_shift(model, x, y, ks=(1, 6))


# ----------------------------------------------------------------------------- the notebook suite
@pytest.fixture
def tiny_suite(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("epochs = 1\nresults_dir = 'results'")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(epochs)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(folder / "01_train.ipynb"))
    return folder


def test_parameter_file_with_an_unknown_key(tiny_suite, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("epochz: 3\n")
    out = tmp_path / "results"
    with pytest.raises(UnknownNameError, match=r"unknown parameter 'epochz'\. Did you mean 'epochs'\?"):
        run_suite(notebooks_dir=tiny_suite, parameters=load_parameter_file(params), out=out, progress=False)
    assert not out.exists()


def test_notebook_name_that_does_not_exist(repo_root, tmp_path):
    out = tmp_path / "results"
    with pytest.raises(UnknownNameError, match=r"unknown notebook 'ncg_tabels'\. Did you mean 'ncg_tables'\?"
                                               r" Valid notebook names: .*00_precompute"):
        run_suite(notebooks_dir=repo_root / "notebooks", only="ncg_tabels", out=out, progress=False)
    assert not out.exists()


# ----------------------------------------------------------------------------- safe loading
def _leave_mark(path: str) -> str:
    """What a planted pickle would run on load: it leaves a file behind."""
    Path(path).write_text("code ran")
    return "payload"


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_mark, (self.marker,))


def test_the_planted_payload_runs_code_when_unpickled(tmp_path):
    """Positive control: the payload the tests below plant really runs code under plain pickle."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"x": _Payload(marker)}))
    assert marker.read_text() == "code ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_planted_checkpoint_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "probelib.checkpoint/1", "arch": {"arch": "LargeMLP"}, "x": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "could run code" in msg and "weights_only=True" in msg
    assert isinstance(err.value, pickle.UnpicklingError)
    plain = tmp_path / "evil.pkl"  # a plain pickle (not torch's zip format) is refused too
    plain.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=re.escape(str(plain)) + ".*never unpickles"):
        load_checkpoint(plain)
    assert not marker.exists()


def test_planted_pickle_in_the_store_is_not_unpickled(tmp_path):
    """Even an artifact whose seal matches (a forged seal) is read without pickle: it is recomputed."""
    marker = tmp_path / "ran"
    store = Store(tmp_path / "store")
    path = store.path("neighbours", "x", "k" * 16, ".npz")
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:
        np.savez(fh, indices=np.array([_Payload(marker)], dtype=object))
    (path.parent / (path.name + ".seal.json")).write_text(json.dumps({"sha256": file_sha256(path), "sealed_at": time.time()}))
    assert store.verify(path)
    got = store.cached_arrays("neighbours", "x", "k" * 16, lambda: {"indices": np.arange(3)})
    assert np.array_equal(got["indices"], np.arange(3)) and not marker.exists()
    with np.load(path, allow_pickle=False) as f:  # the planted file was replaced by the recomputed one
        assert np.array_equal(f["indices"], np.arange(3))


def test_planted_pickle_in_a_store_checkpoint_and_training_state_is_refused(tmp_path):
    marker = tmp_path / "ran"
    store = Store(tmp_path / "store")
    cfg = default_config("digits", "natural", epochs=1, max_train=40, max_test=20)
    evil = {"format": "probelib.checkpoint/1", "x": _Payload(marker)}
    state = store.path("checkpoints", cfg.name, checkpoint_key(cfg), ".state.pt")
    state.parent.mkdir(parents=True)
    torch.save(evil, state)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(state))):
        train_or_load(cfg, store=store, device="cpu", progress=False)
    state.unlink()
    final = store.path("checkpoints", cfg.name, checkpoint_key(cfg), ".pt")
    torch.save(evil, final)
    store.seal(final)  # even sealed, it is loaded with weights_only=True
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(final))):
        train_or_load(cfg, store=store, device="cpu", progress=False)
    assert not marker.exists()


def test_planted_pickle_in_a_corrupted_set_is_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((5, 32, 32, 3), np.uint8))
    np.save(folder / "labels.npy", np.array([_Payload(marker)] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(CorruptedSetError, match=re.escape(str(folder / "labels.npy"))):
        C.load_corrupted("cifar10-c", "fog", 1, root=tmp_path)
    assert not marker.exists()


def test_parameter_file_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "ran"
    params = tmp_path / "params.yaml"
    params.write_text(f"epochs: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path "
                      f"['{marker}']]\n")
    with pytest.raises(ValueError, match=re.escape(str(params)) + r"' is not plain YAML.*no !!python tags"):
        load_parameter_file(params)
    assert not marker.exists()


def test_the_store_never_writes_a_pickle(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(TypeError, match=r"array 'labels' for predictions/p has dtype object.*numeric or string"):
        store.cached_arrays("predictions", "p", "0" * 16, lambda: {"labels": np.array([1, "a", None], dtype=object)})
    assert _files(tmp_path) == []
