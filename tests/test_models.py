"""Architectures, features, checkpoints (probelib.models)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from probelib.models import (CheckpointMismatchError, build_model, extract_features, load_checkpoint, model_names,
                             save_checkpoint)
from probelib.models.wrn import NORMS


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model.features(x), model(x)


@pytest.mark.parametrize("arch, kwargs, shape, dim", [
    ("CNN002", dict(num_classes=9, in_channels=1, image_size=28), (2, 1, 28, 28), 1024),
    ("WRN-40-10", dict(num_classes=9), (1, 3, 8, 8), 640),  # pooled: the dim does not depend on size
    ("WRN-40-2", dict(num_classes=10), (2, 3, 32, 32), 128),
    ("WRN-16-2", dict(num_classes=10, in_channels=1, image_size=28), (2, 1, 28, 28), 128),
    ("ResNet50Norm01", dict(num_classes=99), (2, 3, 112, 112), 2048),
    ("LargeMLP", dict(num_classes=9, in_features=1024), (2, 1024), 256),
    ("LargeMLPv3", dict(num_classes=9, in_features=640), (2, 640), 512),
    ("LargeMLPv4", dict(num_classes=99, in_features=2048), (2, 2048), 1024),
])
def test_shapes_and_feature_dims(arch, kwargs, shape, dim):
    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    feats, logits = _forward(model, torch.rand(shape))
    assert feats.shape == (shape[0], dim)
    assert logits.shape == (shape[0], kwargs["num_classes"])
    with torch.no_grad():
        assert torch.allclose(model.classifier(feats), logits, atol=1e-5)
    assert model.arch_config["arch"] == arch


def test_cnn002_matches_spec():
    torch.manual_seed(0)
    model = build_model("CNN002", num_classes=9)
    fc3 = model.classifier.fc3
    assert torch.count_nonzero(fc3.weight) == 0 and torch.count_nonzero(fc3.bias) == 0
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(0, 0)] * 4 and [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    # Zero last layer: every input gets the same uniform logits at initialisation.
    _, logits = _forward(model, torch.rand(3, 1, 28, 28))
    assert torch.equal(logits, torch.zeros(3, 9))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]
    with pytest.raises(ValueError, match="at least 16 px"):
        build_model("CNN002", num_classes=10, image_size=8)


@pytest.mark.parametrize("norm", NORMS)
def test_wrn_norms_run(norm):
    model = build_model("WRN-10-1", num_classes=5, in_channels=1, image_size=12, norm=norm)
    feats, logits = _forward(model, torch.rand(2, 1, 12, 12))
    assert feats.shape == (2, 64) and torch.isfinite(logits).all()
    kinds = {type(m).__name__ for m in model.modules()}
    expected = {"batch": "BatchNorm2d", "group": "GroupNorm", "instance": "InstanceNorm2d",
                "instance-affine": "InstanceNorm2d", "layer": "GroupNorm", "none": "Identity"}[norm]
    assert expected in kinds


def test_wrn_named_dropouts_and_bad_names():
    assert build_model("WRN-40-2", 10).arch_config["dropout"] == 0.3
    assert build_model("WRN-40-10", 10).arch_config["dropout"] == 0.0
    with pytest.raises(ValueError, match="Valid architecture names"):
        build_model("WRN40-2", 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model("WRN-12-2", 10)
    with pytest.raises(ValueError, match="norm"):
        build_model("WRN-10-1", 10, norm="batchnorm")
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("CNN002", 10, norm="batch")
    assert "CNN002" in model_names() and "WRN-<depth>-<widen>" in model_names()


def test_resnet_normalises_inside_and_loads_local_weights(tmp_path):
    torch.manual_seed(0)
    ref = build_model("resnet50", num_classes=7)
    path = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("resnet50", num_classes=7, weights=path)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.rand(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        manual = torch.nn.functional.adaptive_avg_pool2d(
            ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(
                (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))))))))), 1).flatten(1)
        assert torch.allclose(ref.features(x), manual, atol=1e-5)
    with pytest.raises(ValueError, match="num_classes=7"):
        build_model("resnet50", num_classes=1000, weights=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("wide_resnet50_2", num_classes=1000, weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="in_channels=3"):
        build_model("ResNet50Norm01", num_classes=10, in_channels=1)


def test_extract_features_matches_and_restores_mode():
    from probelib.data import TensorSet

    torch.manual_seed(0)
    model = build_model("CNN002", num_classes=9)
    x = torch.rand(10, 1, 28, 28)
    model.train()
    feats = extract_features(model, TensorSet(x, torch.zeros(10, dtype=torch.long)), batch_size=4, device="cpu")
    assert model.training
    model.eval()
    with torch.no_grad():
        assert torch.allclose(feats, model.features(x), atol=1e-6)
    assert feats.dtype == torch.float32 and feats.shape == (10, 1024)
    assert torch.allclose(extract_features(model, x, batch_size=3, device="cpu"), feats, atol=1e-6)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = build_model("WRN-10-1", num_classes=9, in_channels=1, image_size=28, norm="group", groups=2)
    with torch.no_grad():  # make the state distinctive (BN buffers absent with group norm)
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = save_checkpoint(model, tmp_path / "m.pt", dataset="mnist5kwo9", method="trades", eps=2.0, beta=6.0,
                           seed=0, epoch=3, hyper_parameters={"lr": 0.01, "milestones": (1, 2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # atomic: no temp left behind
    loaded, meta = load_checkpoint(path)
    assert loaded.arch_config == model.arch_config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert meta["method"] == "trades" and meta["epoch"] == 3 and meta["hyper_parameters"]["milestones"] == [1, 2]
    assert meta["probelib_version"]
    with pytest.raises(CheckpointMismatchError, match="num_classes: checkpoint 9, model 10"):
        load_checkpoint(path, model=build_model("WRN-10-1", num_classes=10, in_channels=1, image_size=28,
                                                norm="group", groups=2))
    with pytest.raises(CheckpointMismatchError, match="norm: checkpoint 'group', model 'batch'"):
        load_checkpoint(path, model=build_model("WRN-10-1", num_classes=9, in_channels=1, image_size=28))
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(model, tmp_path / "bad.pt", note=object())
    assert not (tmp_path / "bad.pt").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_loading_runs_no_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "probelib.checkpoint/1", "arch": {"arch": "LargeMLP"}, "x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_extract_features_device_none_uses_the_models_device(monkeypatch):
    """device=None runs where the model's parameters are (as predict does), never the automatic
    CUDA-when-present choice: with PROBELIB_DEVICE naming a device probelib refuses, consulting the
    automatic rule would raise."""
    monkeypatch.setenv("PROBELIB_DEVICE", "meta")
    torch.manual_seed(0)
    model = build_model("CNN002", num_classes=9).eval()
    x = torch.rand(5, 1, 28, 28)
    feats = extract_features(model, x, desc=None)
    assert next(model.parameters()).device == torch.device("cpu")
    assert torch.equal(feats, extract_features(model, x, device="cpu", desc=None))  # same process, same op
    with pytest.raises(ValueError, match="device='gpu' is not a device name"):
        extract_features(model, x, device="gpu", desc=None)
