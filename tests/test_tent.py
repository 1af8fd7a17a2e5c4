"""TENT and its norm arm (probelib.tent), checked against the paper's definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probelib.models import build_model
from probelib.tent import TentSettings, entropy, norm_logits, tent_arm_logits, tent_logits


def _bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("WRN-10-1", 5, in_channels=1, image_size=12)
    with torch.no_grad():  # source statistics unlike the test batches', so the arms differ from the source
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(3))


def test_norm_arm_uses_each_batch_statistics(one_thread):
    """A conv-BN-linear net by hand: the norm arm normalises with the batch's biased mean/var."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)
        net[1].running_var.fill_(9.0)
        net[1].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        net[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    net.eval()
    xb = torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = net[0](xb)
        mu, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + net[1].eps) * net[1].weight.view(1, -1, 1, 1) + net[1].bias.view(1, -1, 1, 1)
        expected = net[4](net[3](net[2](h)))
        source = net(xb)
    got = norm_logits(net, xb, TentSettings(batch_size=10))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, source, atol=1e-2)
    # per batch: two batches of 5 differ from one batch of 10
    assert not torch.allclose(norm_logits(net, xb, TentSettings(batch_size=5)), got, atol=1e-4)


def test_tent_with_lr_zero_equals_norm(x, one_thread):
    model = _bn_model()
    s = TentSettings(batch_size=16, lr=0.0)
    assert torch.allclose(tent_logits(model, x, s), norm_logits(model, x, s), atol=1e-6, rtol=0)
    assert torch.allclose(tent_arm_logits(model, x, "tent", s), tent_arm_logits(model, x, "norm", s), atol=1e-6)


def test_one_step_lowers_the_batch_entropy(x, one_thread):
    """Tent predicts each batch before its update: the same batch shown twice is predicted once
    before and once after a single Adam step on it, and the second time its entropy is lower."""
    model = _bn_model()
    b = x[:16]
    out = tent_logits(model, torch.cat([b, b]), TentSettings(batch_size=16, lr=1e-2))
    before, after = entropy(out[:16]).mean(), entropy(out[16:]).mean()
    assert after < before - 1e-4, (before, after)
    assert torch.allclose(out[:16], norm_logits(model, b, TentSettings(batch_size=16)), atol=1e-6)
    reset = tent_logits(model, torch.cat([b, b]), TentSettings(batch_size=16, lr=1e-2, reset_each_batch=True))
    assert torch.allclose(reset[:16], reset[16:], atol=1e-6)


def test_episodic_per_setting_and_model_not_mutated(x, one_thread):
    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    s = TentSettings(batch_size=16, lr=1e-2)
    first = tent_logits(model, x, s)
    norm_logits(model, x, s)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    assert torch.equal(tent_logits(model, x, s), first)  # each call starts again from the source weights
    assert not torch.allclose(first, norm_logits(model, x, s), atol=1e-4)  # and the updates did something


def test_errors(x):
    with pytest.raises(ValueError, match="no BatchNorm"):
        tent_logits(build_model("WRN-10-1", 5, in_channels=1, norm="group"), x)
    with pytest.raises(ValueError, match="no BatchNorm"):
        norm_logits(build_model("LargeMLP", 5, in_features=144), x.flatten(1))
    with pytest.raises(ValueError, match="arm"):
        tent_arm_logits(_bn_model(), x, "adabn")
    with pytest.raises(ValueError, match="optimizer"):
        TentSettings(optimizer="rmsprop")
    with pytest.raises(ValueError, match="batch_size"):
        TentSettings(batch_size=0)
    assert TentSettings().lr == 1e-3 and TentSettings().batch_size == 128 and TentSettings().steps == 1
