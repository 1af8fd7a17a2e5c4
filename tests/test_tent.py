"""TENT and its norm arm (probelib.tent), checked against the paper's definitions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from probelib.models import build_model
from probelib.adabn import AdaBNSettings
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


def _tent_every_update(model, x, s):
    """TENT by the definition, every update taken (also those no later batch uses)."""
    from probelib.tent import prepare_batch_norm
    work, chosen = prepare_batch_norm(model)
    params = [p for m in chosen for p in (m.weight, m.bias)]
    source = [p.detach().clone() for p in params]
    make = lambda: torch.optim.Adam(params, lr=s.lr, betas=s.betas)  # noqa: E731
    opt, out = make(), []
    for i in range(0, len(x), s.batch_size):
        for _ in range(s.steps):
            logits = work(x[i:i + s.batch_size])
            opt.zero_grad()
            entropy(logits).mean().backward()
            opt.step()
        out.append(logits.detach())
        if s.reset_each_batch:
            with torch.no_grad():
                for p, p0 in zip(params, source):
                    p.copy_(p0)
            opt = make()
    return torch.cat(out)


def test_updates_no_batch_uses_are_skipped_without_changing_a_logit(x, one_thread):
    model = _bn_model()
    for s in (TentSettings(batch_size=16, lr=1e-2), TentSettings(batch_size=20, lr=1e-2, steps=2),
              TentSettings(batch_size=16, lr=1e-2, reset_each_batch=True)):
        assert torch.equal(tent_logits(model, x, s), _tent_every_update(model, x, s)), s


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


# ----------------------------------------------------------------------------- wired into the AdaBN studies

def _corrupted(x: torch.Tensor, y: torch.Tensor):
    """A corrupted-set source for the studies: seeded noise or a darkening box blur."""
    def load(corruption: str, severity: int):
        g = torch.Generator().manual_seed(severity)
        if corruption == "gaussian_noise":
            xc = x + 0.15 * severity * torch.randn(x.shape, generator=g)
        else:  # "box_blur"
            xc = nn.functional.avg_pool2d(x, 3, 1, 1) * (1 - 0.1 * severity)
        return xc.clamp(0, 1), y
    return load


def _labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 5


def test_shift_grid_tent_with_lr_zero_equals_norm_and_carries_mcnemar(x, one_thread):
    from probelib.adabn import STUDY_ARMS, shift_grid
    from probelib.ncg import mcnemar
    model, y = _bn_model(), _labels(len(x))
    load = _corrupted(x, y)
    s0 = TentSettings(batch_size=16, lr=0.0)
    grid = shift_grid(model, load, ["gaussian_noise", "box_blur"], [1, 3], arms=STUDY_ARMS, tent=s0,
                      adabn=AdaBNSettings(device="cpu"))
    assert set(grid["arm"]) == {"source", "adabn", "adabn+aug", "norm", "tent"} and len(grid) == 4 * 5
    by = grid.set_index(["corruption", "severity", "arm"])
    for c, sev in [("gaussian_noise", 1), ("gaussian_noise", 3), ("box_blur", 1), ("box_blur", 3)]:
        for metric in ("accuracy", "confidence", "rms_calibration", "ece"):
            assert by.loc[(c, sev, "tent"), metric] == pytest.approx(by.loc[(c, sev, "norm"), metric], abs=1e-6)
    # the tent rows against source and against adabn, counted image by image from the logits directly
    xc, yc = load("box_blur", 3)
    s = TentSettings(batch_size=16, lr=5e-2)
    grid = shift_grid(model, load, ["box_blur"], [3], arms=STUDY_ARMS, tent=s, adabn=AdaBNSettings(device="cpu"))
    row = grid.set_index("arm").loc["tent"]
    from probelib.adabn import adapt_bn
    from probelib.metrics import predict
    tent_ok = (tent_arm_logits(model, xc, "tent", s, seed=0).argmax(1) == yc).numpy()
    src_ok = (predict(model, xc, desc=None).argmax(1) == yc).numpy()
    ada_ok = (predict(adapt_bn(model, xc), xc, desc=None).argmax(1) == yc).numpy()
    assert row["accuracy"] == pytest.approx(tent_ok.mean(), abs=1e-9)
    vs_src, vs_ada = mcnemar(src_ok, tent_ok), mcnemar(ada_ok, tent_ok)
    assert (row["gained"], row["lost"]) == (vs_src["c"], vs_src["b"]) and row["p_value"] == pytest.approx(vs_src["p"])
    assert row["vs_adabn"] == "adabn"
    assert (row["gained_vs_adabn"], row["lost_vs_adabn"]) == (vs_ada["c"], vs_ada["b"])
    assert row["p_value_vs_adabn"] == pytest.approx(vs_ada["p"])
    assert "lr 0.05" in row["tent_settings"] and "episodic" in row["tent_settings"]
    assert "shuffled" in row["tent_settings"]
    # opt-in: the default arms are Burns & Steinhardt's three
    default = shift_grid(model, load, ["box_blur"], [3], adabn=AdaBNSettings(device="cpu"))
    assert set(default["arm"]) == {"source", "adabn", "adabn+aug"}


def test_tent_severities_scores_tent_arms_only_there_and_comparisons_follow(x, one_thread):
    """tent_severities=[3]: norm/tent rows only at severity 3 (and not on clean), equal to a grid run at
    severity 3 alone; gain charts leave the partial arms out; tent's paired gains and verdict use only
    the settings tent ran on."""
    from probelib.adabn import STUDY_ARMS, adabn_gains, paired_gains, shift_grid, tent_verdict
    model, y = _bn_model(), _labels(len(x))
    load = _corrupted(x, y)
    kw = dict(arms=STUDY_ARMS, tent=TentSettings(batch_size=16, lr=5e-2), adabn=AdaBNSettings(device="cpu"))
    grid = shift_grid(model, load, ["gaussian_noise", "box_blur"], [1, 3], clean=(x, y), tent_severities=[3], **kw)
    tent_rows = grid[grid["arm"].isin(["norm", "tent"])]
    assert set(tent_rows["severity"]) == {3} and len(tent_rows) == 4 and len(grid) == 3 + 4 * 3 + 4
    alone = shift_grid(model, load, ["gaussian_noise", "box_blur"], [3], **kw)
    cols = ["corruption", "arm", "accuracy", "gained", "lost", "gained_vs_adabn", "lost_vs_adabn"]
    pd.testing.assert_frame_equal(tent_rows[cols].reset_index(drop=True),
                                  alone[alone["arm"].isin(["norm", "tent"])][cols].reset_index(drop=True))
    shifted = grid[grid["corruption"] != "clean"]
    assert set(adabn_gains(shifted).columns) == {"adabn", "adabn+aug"}
    assert paired_gains(shifted, "tent")[["gained", "lost"]].sum().tolist() == \
        tent_rows[tent_rows.arm == "tent"][["gained", "lost"]].sum().tolist()
    v = tent_verdict(grid)
    assert "2 corruptions at severity 3" in v and v.p == pytest.approx(tent_verdict(alone).p)
    with pytest.raises(ValueError, match="tent_severities"):
        shift_grid(model, load, ["box_blur"], [3], tent_severities=[6], **kw)


def test_label_shift_tent_adapts_only_the_selected_layers(x, one_thread):
    from probelib.adabn import bn_layers, exclude_last, label_shift
    model, y = _bn_model(), _labels(len(x))
    n_bn = len(bn_layers(model))
    # norm with the last m layers left out = batch statistics in the first n - m layers only
    import copy
    direct = copy.deepcopy(model)
    for i, (_, m) in enumerate(bn_layers(direct)):
        if i < n_bn - 2:
            m.train()
    with torch.no_grad():
        expected = direct(x[:16])
    got = norm_logits(model, x[:16], TentSettings(batch_size=16), layers=exclude_last(2))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, norm_logits(model, x[:16], TentSettings(batch_size=16)), atol=1e-4)
    with pytest.raises(ValueError, match="selects none"):
        norm_logits(model, x, layers=[False] * n_bn)
    table = label_shift(model, x, y, ks=(2, 5), ms=(0, 2), arms=["adabn+aug", "norm", "tent"],
                        tent=TentSettings(batch_size=16, lr=0.0), adabn=AdaBNSettings(device="cpu"))
    assert len(table) == 2 * 2 * 3 and set(table["arm"]) == {"adabn+aug", "norm", "tent"}
    t, n = (table[table.arm == a].set_index(["m", "k"]) for a in ("tent", "norm"))
    assert (t["accuracy"] - n["accuracy"]).abs().max() < 1e-9
    assert (t["vs_adabn"] == "adabn+aug").all()
    assert t[["gained_vs_adabn", "lost_vs_adabn", "p_value_vs_adabn"]].notna().all().all()
    with pytest.raises(ValueError, match="adapted arms only"):
        label_shift(model, x, y, ks=(5,), arms=["source", "tent"], adabn=AdaBNSettings(device="cpu"))


def test_models_without_batch_norm_are_refused_by_every_adapted_arm(x):
    from probelib.adabn import black_border_study, label_shift, shift_grid
    model, y = build_model("WRN-10-1", 5, in_channels=1, image_size=12, norm="group").eval(), _labels(len(x))
    load = _corrupted(x, y)
    for arm in ("norm", "tent", "adabn"):
        with pytest.raises(ValueError, match="no BatchNorm"):
            shift_grid(model, load, ["box_blur"], [1], arms=["source", arm], adabn=AdaBNSettings(device="cpu"))
        with pytest.raises(ValueError, match="no BatchNorm"):
            black_border_study(model, x, y, borders=("black",), arms=["source", arm], adabn=AdaBNSettings(device="cpu"))
        with pytest.raises(ValueError, match="no BatchNorm"):
            label_shift(model, x, y, ks=(5,), ms=(0,), arms=[arm], adabn=AdaBNSettings(device="cpu"))
    assert len(shift_grid(model, load, ["box_blur"], [1], arms=["source"], adabn=AdaBNSettings(device="cpu"))) == 1


def _row(arm, accuracy, gained=None, lost=None, g_ada=None, l_ada=None, n=200, **where):
    from probelib.ncg import mcnemar_counts
    row = {"arm": arm, "accuracy": accuracy, "n": n, "momentum": "None (exact average)", **where}
    if arm != "source":
        row.update(gained=gained, lost=lost, p_value=mcnemar_counts(lost, gained)["p"])
    if arm == "tent":
        row.update(vs_adabn="adabn", gained_vs_adabn=g_ada, lost_vs_adabn=l_ada,
                   p_value_vs_adabn=mcnemar_counts(l_ada, g_ada)["p"], tent_settings="adam lr 0.001")
    return row


def _grid(g_ada: int, l_ada: int) -> "pd.DataFrame":
    import pandas as pd
    rows = []
    for c in ("gaussian_noise", "fog"):
        for s in (1, 2):
            where = {"corruption": c, "severity": s}
            rows += [_row("source", 0.5, **where), _row("adabn", 0.6, 30, 10, **where),
                     _row("tent", 0.6 + (g_ada - l_ada) / 200, 30 + g_ada, 10 + l_ada, g_ada, l_ada, **where)]
    rows += [_row("source", 0.9, corruption="clean", severity=0),
             _row("tent", 0.2, 0, 100, 0, 100, corruption="clean", severity=0)]  # clean rows never count
    return pd.DataFrame(rows)


def test_tent_verdict_can_go_both_ways():
    import pandas as pd
    from probelib.adabn import tent_verdict, tent_verdicts
    from probelib.report import Verdict
    better = tent_verdict(_grid(12, 2))  # the decision: tent beats the AdaBN arm (YES), with McNemar's p
    assert isinstance(better, Verdict) and better.result == "YES" and better.p < 0.05
    assert better.claim.startswith("tent beats adabn on the shift grid")
    assert ": BETTER —" in better and "48 gained, 8 lost" in better and "2 corruptions x 2 severities" in better
    assert "tent vs source: 168 gained, 48 lost" in better
    worse = tent_verdict(_grid(1, 9))
    assert worse.result == "NO" and "4 gained, 36 lost" in worse
    assert tent_verdict(_grid(5, 4)).result == "NOT SIGNIFICANT"
    # label shift: only the label-shifted rows with all layers adapted count
    ls = []
    for m in (0, 2):
        for k, (g, l_) in ((1, (9, 0)), (3, (8, 1)), (5, (0, 40))):
            where = {"exclude": "last", "m": m, "k": k, "source_accuracy": 0.8}
            ls += [_row("adabn+aug", 0.5, 5, 20, **where) | {"gain": -0.3},
                   _row("tent", 0.5 + (g - l_) / 200, 5 + g, 20 + l_, g, l_, **where) | {"vs_adabn": "adabn+aug"}]
    v = tent_verdict(pd.DataFrame(ls))
    assert v.result == "YES" and "k in [1, 3]" in v.claim and "17 gained, 1 lost" in v
    assert "tent vs adabn+aug" in v and v.paper == "not in either paper"
    # borders: one verdict per bordered border, each judged on its own rows
    border = pd.DataFrame([_row("source", 0.9, border="black"), _row("adabn", 0.8, 2, 22, border="black"),
                           _row("tent", 0.7, 2, 40, 1, 21, border="black"),
                           _row("source", 0.9, border="white"), _row("adabn", 0.8, 2, 22, border="white"),
                           _row("tent", 0.85, 10, 20, 21, 1, border="white")])
    black, white = tent_verdicts(border)
    assert black.result == "NO" and "black border" in black.claim
    assert white.result == "YES" and "white border" in white.claim
    with pytest.raises(ValueError, match="no tent arm"):
        tent_verdict(border[border.arm != "tent"])
    with pytest.raises(ValueError, match="AdaBN arm"):
        tent_verdict(border.drop(columns=["vs_adabn"]))


def test_tent_table_reports_mean_error_at_a_severity():
    from probelib.adabn import TENT_REFERENCE, tent_table
    table = tent_table(_grid(12, 2), severity=2)
    assert list(table.index) == ["source", "adabn", "tent"]
    assert table.loc["source", "error"] == pytest.approx(50.0) and table.loc["tent", "error"] == pytest.approx(35.0)
    assert table.loc["tent", "reference_error"] == TENT_REFERENCE["tent"] == 18.6
    assert (table["corruptions"] == 2).all()
    with pytest.raises(ValueError, match="severity 5"):
        tent_table(_grid(1, 1), severity=5)


def test_shuffled_stream_returns_logits_in_the_original_order(x, one_thread):
    """The studies feed TENT's arms a seeded random order (a class-sorted set would otherwise make
    every batch a label shift) and put each image's logits back in its row."""
    model = _bn_model()
    s = TentSettings(batch_size=16, lr=1e-2)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(7))
    fed = tent_logits(model, x[perm], s.replace(shuffle=False))
    got = tent_arm_logits(model, x, "tent", s, seed=7)
    assert torch.allclose(got[perm], fed, atol=1e-6)
    assert not torch.allclose(got, tent_logits(model, x, s), atol=1e-4)  # the order matters ...
    assert torch.equal(tent_arm_logits(model, x, "tent", s.replace(shuffle=False)), tent_logits(model, x, s))
    assert torch.allclose(tent_arm_logits(model, x, "norm", s, seed=7)[perm], norm_logits(model, x[perm], s), atol=1e-6)
