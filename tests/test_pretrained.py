"""load_pretrained: torchvision, RobustBench-layout and plain state-dict checkpoints load with the
logits of the model that saved them; damaged, unsafe or mismatched files fail with clear errors.

Tolerance: logits are compared with ``atol=1e-5`` (the same weights and operations; only
summation order may differ), which a wrong key mapping or missing normalisation exceeds by far.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torchvision
from torch import nn

from probelib.models import CheckpointError, CheckpointMismatchError, UnsafeCheckpointError, build_model
from probelib.models.pretrained import guess_torchvision_arch, load_pretrained, read_state_dict, save_external, zoo_path
from probelib.models.zoo import ZOO, ZooEntry, zoo_names

ATOL = 1e-5
#: relative tolerance between two builds of one network: probelib's models run channels-last, a
#: reference built here runs NCHW, and the two sum in different orders (≈2e-5 relative seen on ResNet-50)
RTOL = 1e-4


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a mis-mapped BN layer shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _close(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, rtol=RTOL, atol=ATOL), (ya - yb).abs().max()


# ----------------------------------------------------------------------------- torchvision

@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_weights_load_with_imagenet_normalisation(arch, tmp_path, images, one_thread):
    torch.manual_seed(0)
    ref = _randomise_bn(getattr(torchvision.models, arch)(num_classes=7))
    path = tmp_path / f"{arch}.pth"
    torch.save(ref.state_dict(), path)  # exactly as torchvision publishes its weights
    model = load_pretrained("torchvision", path, arch=arch)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((images - mean) / std)
        got = model(images)
    assert torch.allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert torch.allclose(model.classifier(model.features(images)), got, rtol=RTOL, atol=ATOL)
    assert model.pretrained_source["num_classes"] == 7 and not model.training
    if arch == "resnet50":  # probelib's registered build: it can be saved as a probelib checkpoint
        assert model.arch_config == {"arch": "resnet50", "num_classes": 7, "in_channels": 3, "image_size": 224}


def test_torchvision_wrong_architecture_names_keys_and_guess(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained("torchvision", path, arch="resnet50")
    msg = str(err.value)
    assert "layer1.0.conv3.weight" in msg and "missing" in msg  # first missing key
    assert "shapes differ" in msg and "arch='resnet18'" in msg  # and the architecture the file fits
    assert guess_torchvision_arch(torchvision.models.resnet34(num_classes=5).state_dict()) == "resnet34"


def test_torchvision_missing_file_says_where_it_is_published(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ResNet50_Weights.*downloads nothing"):
        load_pretrained("torchvision", tmp_path / "resnet50.pth", arch="resnet50")
    with pytest.raises(ValueError, match="resnet101"):
        load_pretrained("torchvision", tmp_path / "x.pth", arch="resnet5O")


# ----------------------------------------------------------------------------- RobustBench layout

def test_robustbench_standard_wrn_28_10_loads_from_zoo_layout(tmp_path, images, one_thread):
    """The zoo's ``Standard`` (a WRN-28-10, no preprocessing) from <model_dir>/cifar10/Linf/Standard.pt."""
    torch.manual_seed(0)
    ref = _randomise_bn(ZOO["Standard"].build())
    path = zoo_path("Standard", tmp_path / "models", "cifar10", "Linf")
    save_external(ref, "robustbench", path)  # {'state_dict': {'module.…': …}}
    assert path == tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    model = load_pretrained("robustbench", "Standard", model_dir=tmp_path / "models", threat_model="Linf")
    _close(model, ref, images[:1])
    keys = list(ref.state_dict())
    assert keys[:2] == ["conv1.weight", "block1.layer.0.bn1.weight"] and "block1.layer.0.convShortcut.weight" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"] and model.pretrained_source["preprocessing"] is None


def test_robustbench_drops_unused_sub_block1_and_checks_stored_normalisation(tmp_path, images, monkeypatch,
                                                                             one_thread):
    import probelib.models.pretrained as P

    monkeypatch.setitem(P.ZOO, "tiny", ZooEntry("tiny", "wrn", 10, 1, "cifar10", {"Linf": "gid"}))
    ref = _randomise_bn(P.ZOO["tiny"].build())
    state = dict(ref.state_dict())
    state.update({f"sub_block1.{k[len('block1.'):]}": v.clone() for k, v in state.items() if k.startswith("block1.")})
    state["mu"] = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)  # as Rice2020Overfitting's class saves it
    path = zoo_path("tiny", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, path)
    _close(load_pretrained("robustbench", "tiny", model_dir=tmp_path), ref, images)
    state["mu"] = torch.zeros(1, 3, 1, 1)
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError, match="normalisation mu"):
        load_pretrained("robustbench", "tiny", model_dir=tmp_path)


def test_robustbench_dm_family_and_preprocessing(tmp_path, images, one_thread):
    """A DMWideResNet-layout entry (Swish, CIFAR-10 mean/std inside) and the sub_block1 weights the
    zoo's TRADES-code WideResNets carry unused."""
    entry = ZooEntry("tiny_dm", "dm", 10, 1, "cifar10", {"Linf": "x"})
    ref = _randomise_bn(entry.build())
    assert list(ref.state_dict())[0] == "init_conv.weight" and "logits.weight" in ref.state_dict()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    plain = ZooEntry("tiny_dm", "dm", 10, 1, None).build()
    plain.load_state_dict(ref.state_dict())
    with torch.no_grad():
        assert torch.allclose(ref(images), plain.eval()((images - mean) / std), rtol=RTOL, atol=ATOL)
    # a TRADES-code entry with its unused sub_block1 copy of block1 in the file
    assert ZOO["Zhang2019Theoretically"].family == "wrn" and ZOO["Zhang2019Theoretically"].depth == 34
    small = _randomise_bn(ZooEntry("s", "wrn", 10, 1, None).build())
    state = {**small.state_dict(), **{f"sub_block1.{k[len('block1.'):]}": v.clone()
                                      for k, v in small.state_dict().items() if k.startswith("block1.")}}
    path = zoo_path("Carmon2019Unlabeled", tmp_path, "cifar10", "Linf")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"WRN-28-10.*shapes differ|shapes differ.*WRN-28-10"):
        load_pretrained("robustbench", "Carmon2019Unlabeled", model_dir=tmp_path)  # a WRN-10-1 is not a WRN-28-10


def test_robustbench_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained("robustbench", "Standard", model_dir=tmp_path, threat_model="corruptions")
    msg = str(err.value)
    assert "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC" in msg and str(tmp_path / "cifar10" / "corruptions" / "Standard.pt") in msg
    with pytest.raises(ValueError, match="Standard"):
        load_pretrained("robustbench", "Standrd", model_dir=tmp_path)
    assert "Standard" in zoo_names("corruptions") and "Gowal2020Uncovering_70_16" not in zoo_names("corruptions")


def test_robustbench_layout_with_a_probelib_architecture(tmp_path, one_thread):
    torch.manual_seed(0)
    ref = build_model("CNN002", 9).eval()
    save_external(ref, "robustbench", zoo_path("mine", tmp_path, "mnist5kwo9", "Linf"))
    model = load_pretrained("robustbench", "mine", model_dir=tmp_path, dataset="mnist5kwo9", arch="CNN002",
                            num_classes=9)
    _close(model, ref, torch.rand(3, 1, 28, 28))


# ----------------------------------------------------------------------------- plain state dicts

@pytest.mark.parametrize("fmt", ["torchvision", "robustbench", "dataparallel", "wrapped", "safetensors"])
def test_state_dict_prefix_and_wrapper_variants_load(fmt, tmp_path, one_thread):
    torch.manual_seed(0)
    ref = _randomise_bn(build_model("WRN-10-1", 4, in_channels=1, image_size=28))
    path = save_external(ref, fmt, tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pt"), epoch=3)
    model = load_pretrained("state_dict", path, arch="WRN-10-1", num_classes=4, in_channels=1, image_size=28)
    _close(model, ref, torch.rand(2, 1, 28, 28))
    assert model.arch_config["arch"] == "WRN-10-1"


def test_nested_prefixes_and_probelib_checkpoint(tmp_path, one_thread):
    from probelib.models import save_checkpoint

    ref = build_model("CNN002", 9).eval()
    torch.save({"epoch": 1, "state_dict": {f"module.model.{k}": v for k, v in ref.state_dict().items()}},
               tmp_path / "nested.pt")
    _close(load_pretrained("state_dict", tmp_path / "nested.pt", arch="CNN002", num_classes=9), ref,
           torch.rand(2, 1, 28, 28))
    save_checkpoint(ref, tmp_path / "probelib.pt")  # num_classes read from the stored architecture
    _close(load_pretrained("state_dict", tmp_path / "probelib.pt", arch="CNN002"), ref, torch.rand(2, 1, 28, 28))


def test_state_dict_wrong_architecture_names_first_keys(tmp_path):
    torch.save(build_model("CNN002", 9).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained("state_dict", tmp_path / "cnn.pt", arch="LargeMLP", num_classes=9, in_features=784)
    msg = str(err.value)
    first_missing = next(iter(build_model("LargeMLP", 9, in_features=784).state_dict()))
    first_unexpected = next(iter(build_model("CNN002", 9).state_dict()))
    assert repr(first_missing) in msg and repr(first_unexpected) in msg
    with pytest.raises(CheckpointMismatchError, match="shapes differ"):
        load_pretrained("state_dict", tmp_path / "cnn.pt", arch="CNN002", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        load_pretrained("state_dict", tmp_path / "cnn.pt", arch="CNN002")


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "Standard.pt"
    torch.save(build_model("CNN002", 9).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_pretrained("state_dict", path, arch="CNN002", num_classes=9)
    st = tmp_path / "m.safetensors"
    save_external(build_model("CNN002", 9), "safetensors", st)
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        read_state_dict(st)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": build_model("CNN002", 9).state_dict(), "hook": _RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_pretrained("state_dict", path, arch="CNN002", num_classes=9)
    raw = tmp_path / "raw.pkl"  # a plain pickle (not a torch zip file) is never unpickled
    raw.write_bytes(pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(CheckpointError):
        read_state_dict(raw)
    zoo = zoo_path("Standard", tmp_path / "zoo")
    zoo.parent.mkdir(parents=True)
    torch.save(_RunsCode(), zoo)
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained("robustbench", "Standard", model_dir=tmp_path / "zoo")


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        read_state_dict(tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="pretrained source"):
        load_pretrained("timm", tmp_path / "meta.pt")


# ----------------------------------------------------------------------------- notebook 06's pipeline

def test_pretrained_ncg_pipeline_on_digits(tmp_path, one_thread):
    """Models written in external formats, loaded by spec, scored against one reference's features."""
    from probelib import ncg
    from probelib.data import as_tensors
    from probelib.neighbours import brute_force_knn
    from probelib.pretrained_ncg import load_models, pretrained_ncg_inputs, reload_check

    torch.manual_seed(0)
    trained = {"a": build_model("LargeMLP", 9, in_features=64).eval(),
               "b": build_model("LargeMLP", 9, in_features=64).eval()}
    save_external(trained["a"], "torchvision", tmp_path / "a.pth")
    save_external(trained["b"], "robustbench", zoo_path("b", tmp_path / "zoo", "digitswo9", "Linf"))
    specs = [{"label": "a", "source": "state_dict", "checkpoint": str(tmp_path / "a.pth"), "arch": "LargeMLP",
              "num_classes": 9, "in_features": 64, "format": "bare"},
             {"label": "b", "source": "robustbench", "checkpoint": "b", "model_dir": str(tmp_path / "zoo"),
              "dataset": "digitswo9", "arch": "LargeMLP", "num_classes": 9, "in_features": 64}]
    loaded = load_models(specs)
    splits = ncg.load_splits("digitswo9")
    tx, _ = as_tensors(splits.test)
    assert reload_check(trained, loaded, tx)["identical"].all()
    feat = pretrained_ncg_inputs(loaded, "digitswo9", "feature", reference="b", store=False)
    pix = pretrained_ncg_inputs(loaded, "digitswo9", "pixel", store=False)
    (trx, try_), (oox, _) = as_tensors(splits.train), as_tensors(splits.ood)
    with torch.no_grad():
        _, idx = brute_force_knn(loaded["b"].features(trx), loaded["b"].features(oox))
    assert (feat["a"].ood_nn_label == try_.numpy()[idx[:, 0]]).mean() > 0.99  # b's features, for a too
    assert (feat["a"].ood_nn_label == feat["b"].ood_nn_label).all()
    assert (feat["a"].ood_pred == pix["a"].ood_pred).all()  # each model's own prediction
    table = ncg.ncg_table(feat, natural="b")
    assert set(table.index) == {"a", "b"} and 0 <= table.loc["a", "mcnemar_p"] <= 1
    with pytest.raises(ValueError, match="9 seen classes"):
        pretrained_ncg_inputs({"c": build_model("LargeMLP", 10, in_features=64)}, "digitswo9", store=False)
    with pytest.raises(ValueError, match="labelled 'a'"):
        load_models([specs[0], specs[0]])


def test_pretrained_verdict_decisions():
    import pandas as pd

    from probelib.pretrained_ncg import corrupted_verdicts, pretrained_verdicts

    table = pd.DataFrame({"ncg": [0.5, 0.6], "ncg_lo": [0.4, 0.5], "ncg_hi": [0.6, 0.7], "chance": [0.1, 0.1],
                          "chi2_p": [0.01, 0.2], "mcnemar_p": [float("nan"), 0.03]}, index=["a", "b"])
    lines = pretrained_verdicts({"pixel": table}, "a", "d")
    assert lines == ["NCG above chance (pretrained, pixel, a, d): YES (0.500 [0.400, 0.600] vs 0.100; χ² p=0.01)",
                     "NCG above chance (pretrained, pixel, b, d): NO (0.600 [0.500, 0.700] vs 0.100; χ² p=0.2)",
                     "b > a NCG (pretrained, pixel, d): YES (0.600 vs 0.500; McNemar p=0.03)"]
    corrupted = pd.DataFrame({"method": ["a", "b", "a", "b"], "ncg": [0.5, 0.4, 0.5, 0.5]})
    assert corrupted_verdicts(corrupted, ["a", "b"], "a", "t") == [
        "b > a corrupted-data NCG (pretrained, t): NO (mean over settings 0.450 vs 0.500)"]
