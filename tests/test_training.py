"""Losses, the training loop, resumption, divergence, configs and train_or_load (probelib.training)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probelib.data import subsample
from probelib.attacks import pgd
from probelib.data import load_dataset
from probelib.models import build_model, load_checkpoint
from probelib.models.checkpoint import read_checkpoint
from probelib.store import Store
from probelib.training import (TrainConfig, TrainingDivergedError, at_loss, config_names, default_config,
                               get_config, mixup_loss, natural_loss, scale_milestones, train,
                               train_or_load, trades_loss)

D, C = 6, 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


class _Recorder(nn.Module):
    """A linear classifier over flattened inputs that records the mode of every forward call."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(D, C)
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.linear(x.flatten(1))


def _tiny(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = _Recorder()
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(C, D, generator=g))
        model.linear.bias.copy_(torch.randn(C, generator=g))
    x = torch.rand(4, 1, 2, 3, generator=g)
    y = torch.tensor([0, 2, 1, 2])
    return model, x, y


def _softmax_rows(z):
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def test_natural_loss_is_cross_entropy():
    model, x, y = _tiny()
    loss, _, _ = natural_loss(model, x, y)
    p = _softmax_rows(model.linear(x.flatten(1)))
    expected = -torch.log(p[torch.arange(4), y]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_trades_loss_matches_a_direct_computation():
    model, x, y = _tiny()
    model.train()
    eps, beta, steps = 0.5, 6.0, 10
    loss, _, _ = trades_loss(model, x, y, eps, beta=beta, steps=steps, generator=torch.Generator().manual_seed(1))
    # 1 clean + 10 inner forwards in eval mode, then the outer clean + adversarial forwards in train mode.
    assert model.modes == [False] * 11 + [True, True]
    # Independent version: for a linear model, grad_δ KL(p‖q(x+δ)) = Wᵀ(q − p) in closed form.
    W, b = model.linear.weight.detach(), model.linear.bias.detach()
    xf = x.flatten(1)
    g = torch.Generator().manual_seed(1)
    p = _softmax_rows(xf @ W.T + b)
    delta = 0.001 * torch.randn(x.shape, generator=g).flatten(1)
    for _ in range(steps):
        q = _softmax_rows((xf + delta) @ W.T + b)
        grad = (q - p) @ W
        delta = delta + (2 * eps / steps) * grad / grad.norm(dim=1, keepdim=True)
        delta = (xf + delta).clamp(0, 1) - xf
        norms = delta.norm(dim=1, keepdim=True)
        delta = torch.where(norms > eps, delta * eps / norms, delta)
    x_adv = (xf + delta).clamp(0, 1)
    q = _softmax_rows(x_adv @ W.T + b)
    ce = -torch.log(p[torch.arange(4), y]).mean()
    kl = (p * (torch.log(p) - torch.log(q))).sum(1).mean()
    assert torch.allclose(loss.detach(), ce + beta * kl, atol=1e-5)
    # The clean softmax is not detached: the KL term sends gradient through the clean branch too.
    loss.backward()
    assert model.linear.weight.grad is not None


def test_trades_steps_randomly_where_the_gradient_is_zero():
    model = build_model("LargeMLP", num_classes=3, in_features=6)  # a zero last layer: constant logits
    nn.init.zeros_(model.classifier.weight)
    nn.init.zeros_(model.classifier.bias)
    x = torch.full((2, 6), 0.5)
    from probelib.training import trades_adversary
    x_adv = trades_adversary(model, x, eps=0.3, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose((x_adv - x).norm(dim=1), torch.full((2,), 0.3), atol=1e-4)  # random steps fill the ball


def test_feature_space_adversaries_are_not_boxed_to_the_unit_interval():
    """Feature vectors (N×D, e.g. post-ReLU CNN features well above 1) are attacked without the
    [0, 1] image box (the NCG code's (−1e10, 1e10) bounds); images stay in [0, 1]."""
    from probelib.training import trades_adversary
    torch.manual_seed(0)
    model = build_model("LargeMLP", num_classes=3, in_features=6)
    nn.init.normal_(model.classifier.weight)
    x = 5 + torch.rand(8, 6)  # features far outside [0, 1]
    y = torch.zeros(8, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for x_adv in (pgd(model, x, y, eps=0.5, generator=g).x_adv, trades_adversary(model, x, eps=0.5, generator=g)):
        assert x_adv.min() > 4  # not clipped into [0, 1]
        assert ((x_adv - x).norm(dim=1) <= 0.5 + 1e-5).all() and ((x_adv - x).norm(dim=1) > 0.1).all()
    images = torch.rand(4, 1, 6, 1)
    img_model = nn.Sequential(nn.Flatten(), model)
    assert 0 <= pgd(img_model, images, y[:4], eps=3.0, generator=g).x_adv.min()
    assert pgd(img_model, images, y[:4], eps=3.0, generator=g).x_adv.max() <= 1
    with pytest.raises(ValueError, match="bounds"):
        pgd(model, x, y, eps=0.5, bounds=(1, 0))


def test_at_loss_matches_a_direct_pgd():
    model, x, y = _tiny()
    model.train()
    eps, steps = 0.5, 10
    loss, logits, _ = at_loss(model, x, y, eps, steps=steps, generator=torch.Generator().manual_seed(3))
    assert model.modes[-1] is True and set(model.modes[:-1]) == {False}
    W, b = model.linear.weight.detach(), model.linear.bias.detach()
    xf = x.flatten(1)
    g = torch.Generator().manual_seed(3)
    onehot = F.one_hot(y, C).float()

    def project(d):
        n = d.norm(dim=1, keepdim=True)
        return d * torch.clamp(eps / (n + 1e-12), max=1.0)

    x_adv = (xf + project((2 * torch.rand(x.shape, generator=g).flatten(1) - 1) * eps)).clamp(0, 1)
    for _ in range(steps):
        grad = (_softmax_rows(x_adv @ W.T + b) - onehot) @ W  # d CE / d x for a linear model
        x_adv = (x_adv + (2 * eps / steps) * grad / (grad.norm(dim=1, keepdim=True) + 1e-12)).clamp(0, 1)
        x_adv = (xf + project(x_adv - xf)).clamp(0, 1)
    expected = -torch.log(_softmax_rows(x_adv @ W.T + b)[torch.arange(4), y]).mean()
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_mixup_loss_matches_a_direct_computation():
    model, _, _ = _tiny()
    g0 = torch.Generator().manual_seed(5)
    x = torch.rand(5, 1, 2, 3, generator=g0)  # odd: the last sample is dropped
    y = torch.tensor([0, 1, 2, 2, 1])
    loss, _, labels = mixup_loss(model, x, y, C, alpha=1.0, generator=torch.Generator().manual_seed(7))
    lam = float(torch.rand((), generator=torch.Generator().manual_seed(7)))
    xm = lam * x[:2] + (1 - lam) * x[2:4]
    t = lam * F.one_hot(y[:2], C).float() + (1 - lam) * F.one_hot(y[2:4], C).float()
    logq = torch.log(_softmax_rows(model.linear(xm.flatten(1))))
    expected = torch.where(t > 0, t * (torch.log(t) - logq), torch.zeros_like(t)).sum() / 2
    assert torch.allclose(loss.detach(), expected, atol=1e-6)
    assert torch.equal(labels, y[:2] if lam >= 0.5 else y[2:4])


def _mlp_config(method, eps=None, **kw):
    base = dict(dataset="mnist5kwo9", arch="LargeMLP", method=method, eps=eps, epochs=8, batch_size=64,
                lr=0.05, schedule="constant", max_train=2400, max_test=300)
    base.update(kw)
    return TrainConfig(**base)


def test_augmentation_is_a_crop_and_flip_of_the_padded_image():
    from probelib.training.batches import augment_batch, crop_and_flip

    x = torch.rand(5, 2, 8, 8)
    out = augment_batch(x, "crop+flip", torch.Generator().manual_seed(0), padding=2)
    g = torch.Generator().manual_seed(0)  # the same draws: offsets, then flips
    off, flip = torch.randint(0, 5, (2, 5), generator=g), torch.rand(5, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(5):
        crop = padded[i, :, off[0, i]:off[0, i] + 8, off[1, i]:off[1, i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert torch.equal(out, crop_and_flip(x, off[0], off[1], flip, padding=2))
    assert augment_batch(x, "none") is x


def test_train_takes_a_train_config():
    splits = _small_splits(16)
    with pytest.raises(TypeError, match="cfg must be a TrainConfig"):
        train(build_model("LargeMLP", num_classes=9, in_features=784), splits, {"epochs": 1})


@pytest.mark.slow
def test_trades_and_at_are_more_robust_than_natural(tmp_path):
    """A short run on mnist5kwo9 (2 400 images, 8 epochs, an MLP on pixels so that it stays fast):
    PGD-L2 accuracy at the training eps=2 (natural ≈ 0.1, TRADES/AT ≈ 0.5 when this was written)."""
    splits = load_dataset("mnist5kwo9")
    store = Store(tmp_path)
    robust = {}
    test_x, test_y = None, None
    for method, eps in (("natural", None), ("trades", 2.0), ("at", 2.0)):
        cfg = _mlp_config(method, eps)
        model, history = train_or_load(cfg, splits, device="cpu", store=store, progress=False)
        if test_x is None:
            test = cfg.prepare(splits).test
            test_x, test_y = test.x, test.y
        adv = pgd(model, test_x, test_y, 2.0, generator=torch.Generator().manual_seed(0)).x_adv
        with torch.no_grad():
            robust[method] = (model(adv).argmax(1) == test_y).float().mean().item()
        assert history["test_acc"].iloc[-1] > 0.8, (method, history)
    assert robust["trades"] > robust["natural"] + 0.2, robust
    assert robust["at"] > robust["natural"] + 0.2, robust


def _small_splits(n=64):
    s = load_dataset("mnist5kwo9")
    return dataclasses.replace(s, train=subsample(s.train, n, seed=0), test=subsample(s.test, 32, seed=0))


class _Interrupt(Exception):
    pass


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    splits = _small_splits()
    cfg = TrainConfig(method="trades", eps=2.0, epochs=2, batch_size=32, lr=0.05, steps=2, augment="crop+flip",
                      schedule="multistep", milestones=(1,))
    kwargs = dict(progress=False, device="cpu")

    def fresh():
        torch.manual_seed(0)
        return build_model("CNN002", 9)

    full, full_hist = train(fresh(), splits, cfg, checkpoint_path=tmp_path / "full.pt", **kwargs)

    def stop(epoch, history):
        if epoch == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(fresh(), splits, cfg, checkpoint_path=tmp_path / "cut.pt", callback=stop, **kwargs)
    assert read_checkpoint(tmp_path / "cut.pt")["epoch"] == 1
    torch.manual_seed(123)  # different global RNG and init: the resumed run must not depend on them
    resumed, hist = train(build_model("CNN002", 9), splits, cfg, checkpoint_path=tmp_path / "cut.pt", **kwargs)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert list(hist["epoch"]) == [1, 2] and hist["loss"].tolist() == full_hist["loss"].tolist()
    # Resuming with different settings is refused and says what differs.
    with pytest.raises(ValueError, match="lr: checkpoint 0.05, now 0.1"):
        train(fresh(), splits, cfg.replace(lr=0.1), checkpoint_path=tmp_path / "cut.pt", **kwargs)


class _NaNAfter(nn.Module):
    """An MLP whose logits turn NaN from its ``n``-th training-mode forward on."""

    def __init__(self, n):
        super().__init__()
        self.net = build_model("LargeMLP", num_classes=9, in_features=784)
        self.n, self.calls = n, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                out = out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    splits = _small_splits()
    path = tmp_path / "state.pt"
    model = _NaNAfter(n=4)  # two batches per epoch: epoch 2, batch 2 diverges
    with pytest.raises(TrainingDivergedError, match="nan at epoch 2, batch 2 of 2.*epoch 1 is kept"):
        train(model, splits, TrainConfig(epochs=3, batch_size=32), checkpoint_path=path, progress=False, device="cpu")
    state = read_checkpoint(path)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_bad_inputs_fail_before_writing(tmp_path):
    splits = _small_splits(16)
    model = build_model("LargeMLP", num_classes=9, in_features=784)
    path = tmp_path / "x.pt"
    with pytest.raises(ValueError, match="Valid training method names"):
        TrainConfig(method="tradez")
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        TrainConfig(method="trades", eps=0)
    with pytest.raises(ValueError, match="needs eps"):
        TrainConfig(method="at")
    with pytest.raises(ValueError, match="Valid schedule names"):
        TrainConfig(schedule="cos")
    with pytest.raises(ValueError, match="amp=True"):
        train(model, splits, TrainConfig(amp=True), device="cpu", checkpoint_path=path)
    assert not path.exists()
    with pytest.raises(ValueError, match="Valid dataset names"):
        default_config("mnist6kwo9")
    with pytest.raises(ValueError, match="paper='adabn' has training settings"):
        default_config("imagenet", paper="adabn")
    with pytest.raises(ValueError, match="Valid architecture names"):
        default_config("mnist5kwo9", arch="CNN2")


def test_default_configs_follow_the_papers():
    cfg = default_config("mnist5kwo9", method="trades", eps=2.0)
    assert cfg.name == "mnist5kwo9-cnn002-trades6-eps2-seed0"
    assert (cfg.arch, cfg.optimizer, cfg.lr, cfg.momentum, cfg.batch_size) == ("CNN002", "sgd", 0.01, 0.9, 128)
    assert cfg.milestones == scale_milestones(cfg.epochs) and scale_milestones(70) == (40, 50, 60)
    assert scale_milestones(7) == (4, 5, 6)
    assert cfg.replace(epochs=7).milestones == (4, 5, 6)
    assert cfg.replace(max_train=256).key != cfg.key and cfg.replace(notes="x").key == cfg.key
    c10 = default_config("cifar10wo0", method="at")
    assert (c10.arch, c10.optimizer, c10.batch_size, c10.epochs, c10.eps) == ("WRN-40-10", "adam", 64, 70, 2.0)
    assert default_config("imgnet100wo0").arch == "ResNet50Norm01"
    burns = default_config("cifar10", paper="adabn")
    assert (burns.arch, burns.nesterov, burns.lr, burns.weight_decay, burns.schedule, burns.augment, burns.epochs) == \
        ("WRN-40-2", True, 0.1, 5e-4, "cosine", "crop+flip", 100)
    assert dict(burns.model_kwargs)["dropout"] == 0.3
    small = default_config("mnist5k", paper="adabn")
    assert small.augment == "crop" and "flip" in small.notes and small.arch.startswith("WRN-")
    feat = default_config("cifar10wo0", method="at", space="feature")
    assert (feat.arch, feat.eps, feat.batch_size) == ("LargeMLP", 1.0, 128)
    assert default_config("mnist5kwo9", method="natural", eps=2.0).eps is None
    names = config_names()
    assert cfg.name in names and get_config(cfg.name) == cfg
    with pytest.raises(ValueError, match="Valid training config names"):
        get_config("mnist5kwo9-cnn002-trades")


def test_train_or_load_trains_once_then_loads(tmp_path, capsys):
    splits = load_dataset("digits")
    cfg = default_config("digits", epochs=1, max_train=200, max_test=100)
    store = Store(tmp_path)
    model, history = train_or_load(cfg, splits, device="cpu", store=store, progress=False)
    again, history2 = train_or_load(cfg, splits, device="cpu", store=store, progress=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert history.equals(history2) and list(history.columns)[:6] == ["epoch", "lr", "loss", "train_acc",
                                                                        "test_acc", "seconds"]
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(files) == 2 and files[0].startswith(cfg.name) and files[1].endswith(".seal.json")
    _, meta = load_checkpoint(tmp_path / "checkpoints" / files[0])
    assert meta["method"] == "natural" and meta["epoch"] == 1 and meta["config"]["dataset"] == "digits"

    from probelib.__main__ import main
    assert main(["train", "--list"]) == 0
    assert "mnist5kwo9-cnn002-at-eps2-seed0" in capsys.readouterr().out
