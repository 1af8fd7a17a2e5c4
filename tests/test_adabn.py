"""Tests for probelib.adabn: exact statistics, layer masks, the source model left alone."""

import copy

import pandas as pd
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from probelib.adabn import (AdaBNSettings, adapt_bn, adapted, bn_layers, bn_statistics, bn_statistics_shift,
                            exclude_first, exclude_last, resolve_layers, train_augmentation)


def tiny_bn_cnn(seed=0, channels=1):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 8 * 8, 5), nn.BatchNorm1d(5))
    # give the source statistics distinct values so "untouched" is checkable
    with torch.no_grad():
        for _, m in bn_layers(model):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def data(n=37, seed=1, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g) ** 2


def pop_stats(h):
    h = h.detach().double().transpose(0, 1).reshape(h.shape[1], -1)
    return h.mean(1), h.var(1, unbiased=True)


def stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for _, m in bn_layers(model)]


def test_exact_layerwise_statistics_equal_direct_computation():
    model, x = tiny_bn_cnn(), data()
    out = adapt_bn(model, x, AdaBNSettings(momentum=None, batch_size=5))
    (m1, v1), (m2, v2), (m3, v3) = stats(out)
    # direct, layer by layer, in the adapted network
    h = model[0](x)
    dm, dv = pop_stats(h)
    assert torch.allclose(m1.double(), dm, atol=1e-6) and torch.allclose(v1.double(), dv, rtol=1e-5)
    h = F.batch_norm(h, dm.float(), dv.float(), model[1].weight, model[1].bias, False, 0.0, model[1].eps)
    h = model[4](F.relu(h))
    dm, dv = pop_stats(h)
    assert torch.allclose(m2.double(), dm, atol=1e-6) and torch.allclose(v2.double(), dv, rtol=1e-5)
    h = F.batch_norm(h, dm.float(), dv.float(), model[5].weight, model[5].bias, False, 0.0, model[5].eps)
    h = model[8](F.relu(h).flatten(1))
    dm, dv = pop_stats(h)
    assert torch.allclose(m3.double(), dm, atol=1e-6) and torch.allclose(v3.double(), dv, rtol=1e-5)
    # independent of the batch size
    other = adapt_bn(model, x, AdaBNSettings(momentum=None, batch_size=37))
    for (a, b), (c, d) in zip(stats(out), stats(other)):
        assert torch.allclose(a, c, atol=1e-6) and torch.allclose(b, d, rtol=1e-5)


def test_single_pass_pools_all_values_not_per_batch_variances():
    model, x = tiny_bn_cnn(), data()
    out = adapt_bn(model, x, AdaBNSettings(momentum=None, batch_size=5, layerwise=False))
    # direct: the inputs each BN layer sees while earlier layers use batch statistics
    inputs = {0: [], 1: []}
    for s in range(0, len(x), 5):
        h = model[0](x[s:s + 5])
        inputs[0].append(h)
        h = F.batch_norm(h, None, None, model[1].weight, model[1].bias, True, 0.0, model[1].eps)
        inputs[1].append(model[4](F.relu(h)))
    for i in (0, 1):
        dm, dv = pop_stats(torch.cat(inputs[i]))
        m, v = stats(out)[i]
        assert torch.allclose(m.double(), dm, atol=1e-6) and torch.allclose(v.double(), dv, rtol=1e-5)
    # PyTorch's momentum=None cumulative average (mean of per-batch variances) differs
    torch_cma = copy.deepcopy(model)
    for _, m in bn_layers(torch_cma):
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for s in range(0, len(x), 5):
            torch_cma(x[s:s + 5])
    assert not torch.allclose(stats(torch_cma)[0][1], stats(out)[0][1], rtol=1e-3)


def _torch_ema(model, batches, momentum=0.1):
    ref = copy.deepcopy(model)
    for _, m in bn_layers(ref):
        m.momentum = momentum
        m.train()
    with torch.no_grad():
        for b in batches:
            ref(b)
    return ref


def test_float_momentum_is_the_authors_exponential_average_from_source_in_shuffled_order():
    model, x = tiny_bn_cnn(), data()
    out = adapt_bn(model, x, AdaBNSettings(momentum=0.1, batch_size=8, seed=3))
    # the authors' DataLoader(shuffle=True): a seeded permutation, then PyTorch's running average
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    ref = _torch_ema(model, [x[perm[s:s + 8]] for s in range(0, len(x), 8)])
    for (a, b), (c, d) in zip(stats(out), stats(ref)):
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6) and torch.allclose(b, d, rtol=1e-5, atol=1e-6)
    assert all(m.momentum == 0.1 for _, m in bn_layers(model))  # source momentum attribute kept
    stored = adapt_bn(model, x, AdaBNSettings(momentum=0.1, batch_size=8, shuffle=False))  # stored order on request
    ref = _torch_ema(model, [x[s:s + 8] for s in range(0, len(x), 8)])
    for (a, b), (c, d) in zip(stats(stored), stats(ref)):
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6) and torch.allclose(b, d, rtol=1e-5, atol=1e-6)


def test_ema_statistics_do_not_depend_on_class_sorted_order():
    # 5 classes of 80 images, class c brighter by 0.15·c, stored sorted by class (as the mnist5k test
    # split and every ImageFolder -C set are): in stored order the running average would be
    # dominated by the last classes, a hidden label shift
    model = tiny_bn_cnn()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat_interleave(80)
    x = (0.2 * torch.rand(400, 1, 8, 8, generator=g) + 0.15 * y.view(-1, 1, 1, 1).float()).clamp(0, 1)
    mixed = torch.randperm(400, generator=torch.Generator().manual_seed(11))
    exact = stats(adapt_bn(model, x, AdaBNSettings(momentum=None)))[0][0]
    spread = (0.15 * 4) * model[0].weight.detach().sum((1, 2, 3)).abs()      # class-mean range per channel
    sorted_mean = stats(adapt_bn(model, x, AdaBNSettings(momentum=0.1, batch_size=8)))[0][0]
    mixed_mean = stats(adapt_bn(model, x[mixed], AdaBNSettings(momentum=0.1, batch_size=8)))[0][0]
    # sampling noise only: 50 batches of 8 (0.9^50 of the source statistics left), ~19 batches weigh in
    assert ((sorted_mean - mixed_mean).abs() < 0.12 * spread).all(), (sorted_mean - mixed_mean, spread)
    assert ((sorted_mean - exact).abs() < 0.12 * spread).all(), (sorted_mean - exact, spread)
    in_stored_order = stats(adapt_bn(model, x, AdaBNSettings(momentum=0.1, batch_size=8, shuffle=False)))[0][0]
    assert ((in_stored_order - exact).abs() > 0.2 * spread).all()   # what the shuffle removes


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_layer_mask_leaves_masked_layers_untouched(momentum):
    model, x = tiny_bn_cnn(), data()
    src = stats(model)
    for layers, kept in [(exclude_last(1), [2]), (exclude_first(2), [0, 1]), ([False, True, False], [0, 2]),
                         (exclude_last(99), [0, 1, 2])]:
        out = stats(adapt_bn(model, x, AdaBNSettings(momentum=momentum, layers=layers)))
        for i in range(3):
            same = torch.equal(out[i][0], src[i][0]) and torch.equal(out[i][1], src[i][1])
            assert same == (i in kept), (layers, i)
    assert resolve_layers(model, exclude_first(1)) == [False, True, True]
    with pytest.raises(ValueError, match="3 BatchNorm layers"):
        adapt_bn(model, x, AdaBNSettings(layers=[True, False]))
    with pytest.raises(ValueError, match="m must be"):
        exclude_last(-1)


def test_source_model_never_modified_and_context_restores():
    model, x = tiny_bn_cnn(), data()
    model.train()
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    adapt_bn(model, x, AdaBNSettings(momentum=None))
    adapt_bn(model, x, AdaBNSettings(momentum=0.1, augment="crop"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with adapted(model, x, AdaBNSettings(momentum=None)) as m:
        assert m is model and not m.training
        assert not torch.equal(m[1].running_mean, before["1.running_mean"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize("kwargs", [dict(momentum=None), dict(momentum=None, layerwise=False),
                                    dict(momentum=0.1)])
def test_only_bn_in_train_mode_dropout_stays_off(kwargs):
    model, x = tiny_bn_cnn(), data()
    seen = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(("dropout", m.training)))
    model[1].register_forward_hook(lambda m, i, o: seen.append(("bn", m.training)))
    out = adapt_bn(model, x, AdaBNSettings(batch_size=10, **kwargs))
    assert seen and not any(t for kind, t in seen if kind == "dropout")
    if kwargs.get("layerwise", True) is False or kwargs["momentum"] is not None:
        assert all(t for kind, t in seen if kind == "bn")
    assert not any(m.training for m in out.modules())


def test_augmentation_only_in_statistics_pass_and_seeded():
    x = data(n=16, channels=3)
    a = train_augmentation(x, seed=0)
    assert a.shape == x.shape and torch.equal(a, train_augmentation(x, seed=0))
    assert not torch.equal(a, train_augmentation(x, seed=1))
    # independent of batching: image i depends on (seed, global index) only
    assert torch.equal(a, torch.cat([train_augmentation(x[:5], 0, 0), train_augmentation(x[5:], 0, 5)]))
    assert torch.equal(train_augmentation(x, pad=0, flip=False), x)
    flipped = train_augmentation(x[:1].expand(64, -1, -1, -1), pad=0)
    assert any(torch.equal(f, x[0].flip(-1)) for f in flipped) and any(torch.equal(f, x[0]) for f in flipped)
    # crop only: each output is a shifted copy of the zero-padded input
    crop = train_augmentation(x, seed=3, pad=2, flip=False)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        assert any(torch.equal(crop[i], padded[i, :, r:r + 8, c:c + 8]) for r in range(5) for c in range(5))
    model = tiny_bn_cnn(channels=3)
    plain = stats(adapt_bn(model, x, AdaBNSettings(momentum=None)))
    aug1 = stats(adapt_bn(model, x, AdaBNSettings(momentum=None, augment="crop+flip", seed=5)))
    aug2 = stats(adapt_bn(model, x, AdaBNSettings(momentum=None, augment="crop+flip", seed=5, batch_size=3)))
    assert not torch.allclose(plain[0][1], aug1[0][1])
    assert all(torch.allclose(p[1], q[1], rtol=1e-5) for p, q in zip(aug1, aug2))
    with pytest.raises(ValueError, match="augment"):
        adapt_bn(model, x, AdaBNSettings(augment="rotate"))


def test_inputs_uint8_dataset_loader_and_readout():
    from torch.utils.data import DataLoader, TensorDataset
    model, x = tiny_bn_cnn(), data()
    x = (x * 255).round() / 255
    u8 = (x * 255).round().to(torch.uint8)
    ref = stats(adapt_bn(model, x, AdaBNSettings(momentum=None, batch_size=10)))
    ds = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    for d in (u8, ds, DataLoader(ds, batch_size=10)):
        got = stats(adapt_bn(model, d, AdaBNSettings(momentum=None, batch_size=10)))
        assert all(torch.allclose(a[1], b[1], rtol=1e-5) for a, b in zip(ref, got))
    table = bn_statistics(model)
    assert list(table["channels"]) == [4, 3, 5]
    assert len(bn_statistics(model, per_channel=True)) == 12
    shift = bn_statistics_shift(model, adapt_bn(model, x))
    assert (shift["mean_shift"] > 0).all()
    with pytest.raises(ValueError, match="momentum"):
        adapt_bn(model, x, AdaBNSettings(momentum=1.5))


# ----------------------------------------------------------------------------- studies
from probelib.adabn import (adabn_gains, add_border, black_border_study, border_verdicts,  # noqa: E402
                            bn_statistics_comparison, grid_verdicts, label_shift, label_shift_verdicts,
                            corrupt_on_the_fly, ncg_under_adabn, paired_gains, shift_grid)
from probelib.metrics import classification_metrics, predict  # noqa: E402


def synthetic_corrupted(x, y):
    def load(corruption, severity):
        g = torch.Generator().manual_seed(severity)
        if corruption == "gaussian_noise":
            xc = x + 0.1 * severity * torch.randn(x.shape, generator=g)
        else:  # "box_blur"
            xc = F.avg_pool2d(x, 3, 1, 1) * (1 - 0.1 * severity)
        return xc.clamp(0, 1), y
    return load


def test_shift_grid_matches_direct_adaptation_and_keeps_source():
    model, x = tiny_bn_cnn(), data(n=40)
    y = torch.arange(40) % 5
    before = copy.deepcopy(model.state_dict())
    load = synthetic_corrupted(x, y)
    grid = shift_grid(model, load, ["gaussian_noise", "box_blur"], [1, 3], clean=(x, y),
                      adabn=AdaBNSettings(momentum=None, batch_size=16, device="cpu"))
    assert len(grid) == 5 * 3 and set(grid["arm"]) == {"source", "adabn", "adabn+aug"}
    assert (grid["momentum"] == "None (exact average)").all()
    assert (grid["calibration"] == "complete (all bins)").all()
    xc, yc = load("box_blur", 3)
    row = grid[(grid.corruption == "box_blur") & (grid.severity == 3)].set_index("arm")
    direct_src = classification_metrics(predict(model, xc, desc=None), yc)
    direct_ada = classification_metrics(predict(adapt_bn(model, xc, AdaBNSettings(momentum=None)), xc, desc=None), yc)
    direct_aug = classification_metrics(predict(adapt_bn(model, xc, AdaBNSettings(augment="crop")), xc, desc=None), yc)
    # two code paths (a channels-last working copy, one exact pass vs adapt_bn): the same numbers
    # up to float rounding, so at most one image of n may be classified differently on another CPU
    one_flip = 1 / len(yc) + 1e-6
    for key in direct_src:
        assert row.loc["source", key] == pytest.approx(direct_src[key], abs=one_flip)
        assert row.loc["adabn", key] == pytest.approx(direct_ada[key], abs=one_flip)
        assert row.loc["adabn+aug", key] == pytest.approx(direct_aug[key], abs=one_flip)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    src_ok = predict(model, xc, desc=None).argmax(1) == yc
    ada_ok = predict(adapt_bn(model, xc, AdaBNSettings(momentum=None)), xc, desc=None).argmax(1) == yc
    assert abs(row.loc["adabn", "gained"] - int((ada_ok & ~src_ok).sum())) <= 1  # one flip, as above
    assert abs(row.loc["adabn", "lost"] - int((src_ok & ~ada_ok).sum())) <= 1
    assert 0 < row.loc["adabn", "p_value"] <= 1 and pd.isna(row.loc["source", "p_value"])
    gains = adabn_gains(grid[grid.corruption != "clean"])
    assert list(gains.index) == ["box_blur", "gaussian_noise"]
    lines = grid_verdicts(grid)
    assert any("noise" in s for s in lines) and any("hurts" in s for s in lines)
    with pytest.raises(ValueError, match="arm"):
        shift_grid(model, load, ["box_blur"], [1], arms=["sauce"])
    with pytest.raises(ValueError, match="severities"):
        shift_grid(model, load, ["box_blur"], [7])


def test_study_tables_name_the_calibration_variant():
    from probelib.adabn import evaluate_arms
    from probelib.metrics import rms_calibration_error
    model, x = tiny_bn_cnn(), data(n=250)
    y = torch.arange(250) % 5
    rows = evaluate_arms(model, x, y, ["source", "adabn"], calibration="burns",
                               adabn=AdaBNSettings(device="cpu"))
    logits = predict(model, x, desc=None)
    assert rows[0]["rms_calibration"] == pytest.approx(rms_calibration_error(logits, y, variant="burns"), rel=1e-9)
    assert rows[0]["rms_calibration"] < rms_calibration_error(logits, y)
    table = black_border_study(model, x[:40], y[:40], borders=("black",), arms=("source",), calibration="burns",
                               adabn=AdaBNSettings(device="cpu"))
    assert (table["calibration"] == "burns (calib_err: last bin skipped, / N)").all()
    with pytest.raises(ValueError, match="calibration variant"):
        black_border_study(model, x[:40], y[:40], borders=("black",), arms=("source",), calibration="ece")


def _grid_row(corruption, severity, arm, accuracy, gained=None, lost=None, n=200):
    row = {"corruption": corruption, "severity": severity, "arm": arm, "accuracy": accuracy, "n": n,
           "momentum": "None (exact average)"}
    if arm != "source":
        from probelib.ncg import mcnemar_counts
        row.update(gained=gained, lost=lost, p_value=mcnemar_counts(lost, gained)["p"])
    return row


def test_verdicts_need_significance():
    # per corruption (two severities pooled): gaussian_noise gains 40 vs 4 lost (significant),
    # shot_noise 6 vs 5 (not), defocus_blur 5 vs 6 (not), fog loses 30 vs 3 (significant)
    counts = {"gaussian_noise": (20, 2), "shot_noise": (3, 2), "defocus_blur": (2, 3), "fog": (3, 15)}
    rows = []
    for c, (g, l) in counts.items():
        for s in (1, 2):
            rows += [_grid_row(c, s, "source", 0.5), _grid_row(c, s, "adabn", 0.5 + (g - l) / 200, g, l)]
    grid = pd.DataFrame(rows)
    table = paired_gains(grid)
    assert (table.loc["fog", "gained"], table.loc["fog", "lost"]) == (6, 30)
    assert table.loc["fog", "gain"] == pytest.approx(-12 / 200)
    noise, blur, hurt = grid_verdicts(grid)
    assert ": YES (" in noise and "significant gain on 1/2: gaussian_noise" in noise
    assert ": NOT SIGNIFICANT (" in blur
    assert "fog (-0.060" in hurt and "defocus_blur" not in hurt.split(";")[0] and "1 more" in hurt
    with pytest.raises(ValueError, match="gained/lost"):
        paired_gains(grid.drop(columns=["gained", "lost"]))

    border = pd.DataFrame([_grid_row("x", 0, "source", 0.9), _grid_row("x", 0, "adabn", 0.8, 2, 22),
                           _grid_row("x", 0, "source", 0.9), _grid_row("x", 0, "adabn", 0.98, 18, 2),
                           _grid_row("x", 0, "source", 0.9), _grid_row("x", 0, "adabn", 0.9, 3, 3)])
    border["border"] = ["black"] * 2 + ["white"] * 2 + ["none"] * 2
    black, white = border_verdicts(border)
    assert ": YES (" in black and "20 images lost" not in black and "22 images lost, 2 gained" in black
    assert ": NO (" in white and "differs from the paper" in white
    border.loc[3, ["gained", "lost", "p_value"]] = [4, 2, 0.69]
    assert ": NOT SIGNIFICANT (" in border_verdicts(border)[1]


def test_label_shift_m_relative_to_depth_and_rejects_empty_class_subset():
    model, x = tiny_bn_cnn(), data(n=40)
    y = torch.arange(40) % 5
    # default ms: the paper's m in {0, 1, 4, 16} of WRN-40-2's 37 BN layers, scaled to this depth
    table = label_shift(model, x, y, ks=(1, 3, 5), exclude=("last", "first"), adabn=AdaBNSettings(device="cpu"))
    assert sorted(table["m"].unique()) == [0, 1, 2]          # 3 BN layers: every row adapts >= 1 layer
    assert (table["adapted_layers"] == 3 - table["m"]).all() and (table["adapted_layers"] >= 1).all()
    assert set(table["m_paper"]) == {0, 1, 4} and (table["n_bn_layers"] == 3).all()  # 4 and 16 -> 2
    assert (table["calibration"] == "complete (all bins)").all()
    assert len(table) == 2 * 3 * 3
    r = table[(table.exclude == "last") & (table.m == 0) & (table.k == 3)].iloc[0]
    keep = y < 3
    direct = predict(adapt_bn(model, x[keep], AdaBNSettings(augment="auto")), x[keep], desc=None).argmax(1)
    # another code path than the study's: at most one image of n may flip (float rounding across CPUs)
    assert r["accuracy"] == pytest.approx((direct == y[keep]).float().mean().item(), abs=1 / int(keep.sum()) + 1e-9)
    src = predict(model, x[keep], desc=None).argmax(1) == y[keep]
    assert abs(r["gained"] - int(((direct == y[keep]) & ~src).sum())) <= 1  # one flip, as above
    assert abs(r["lost"] - int((src & (direct != y[keep])).sum())) <= 1
    assert len(label_shift_verdicts(table)) == 2
    # explicit m values that would adapt nothing are refused, not silently capped
    with pytest.raises(ValueError, match="adapts no BN layer"):
        label_shift(model, x, y, ks=(1, 5), ms=(0, 16), adabn=AdaBNSettings(device="cpu"))
    with pytest.raises(ValueError, match="leaves no images"):
        label_shift(model, x, y + 2, ks=(1, 2))


def test_paper_ms_scale_with_depth():
    from probelib.adabn import paper_ms
    assert paper_ms(37) == [0, 1, 4, 16]                     # WRN-40-2: the paper's values
    assert paper_ms(13) == [0, 1, 2, 6]                      # the embedded WRN-16-1
    assert paper_ms(3) == [0, 1, 2] and paper_ms(1) == [0]
    for n in range(1, 60):
        ms = paper_ms(n)
        assert ms[0] == 0 and max(ms) <= n - 1 and ms == sorted(set(ms))


def _label_shift_row(m, k, gain, n_bn=3, exclude="last"):
    return {"exclude": exclude, "m": m, "k": k, "gain": gain, "p_value": 0.01, "n_bn_layers": n_bn,
            "momentum": "None (exact average)"}


def test_label_shift_scores_m0_once_and_gives_both_ends_the_same_rows():
    """m = 0 adapts every BN layer whichever end is excluded: the study scores it once and reports it
    under both; those rows equal a study asked for one end only (the same numbers, computed directly)."""
    model, x = tiny_bn_cnn(), data(n=40)
    y = torch.arange(40) % 5
    settings = dict(ks=(2, 5), ms=(0, 1), arms=("adabn", "adabn+aug"), adabn=AdaBNSettings(device="cpu"))
    both = label_shift(model, x, y, exclude=("last", "first"), **settings)
    alone = label_shift(model, x, y, exclude=("first",), **settings)
    cols = ["k", "arm", "accuracy", "gained", "lost", "confidence", "ece"]
    m0 = {e: both[(both.exclude == e) & (both.m == 0)][cols].reset_index(drop=True) for e in ("last", "first")}
    pd.testing.assert_frame_equal(m0["last"], m0["first"])
    pd.testing.assert_frame_equal(m0["first"], alone[alone.m == 0][cols].reset_index(drop=True))
    assert len(both) == 2 * 2 * 2 * 2


def test_label_shift_verdict_can_be_no_on_a_shallow_model():
    # AdaBN hurts at k=1; leaving the last layer unadapted hurts *more*; a row with m equal to the
    # depth adapts nothing (gain exactly 0) and must not count as "limits the damage"
    rows = [_label_shift_row(0, 1, -0.20), _label_shift_row(0, 10, -0.01),
            _label_shift_row(1, 1, -0.30), _label_shift_row(1, 10, -0.02),
            _label_shift_row(3, 1, 0.0), _label_shift_row(3, 10, 0.0)]
    fewer, damage = label_shift_verdicts(pd.DataFrame(rows))
    assert ": YES (" in fewer
    assert ": NO (" in damage and "m=1" in damage and "m=3" not in damage


def test_label_shift_verdict_on_a_real_shallow_model_compares_adapted_rows_only():
    model, x = tiny_bn_cnn(seed=3), data(n=60, seed=4)
    y = torch.arange(60) % 5
    table = label_shift(model, x, y, ks=(1, 5), exclude=("last",), adabn=AdaBNSettings(device="cpu"))
    assert (table["adapted_layers"] >= 1).all()
    damage = label_shift_verdicts(table)[1]
    sub = table[table.k == 1].sort_values("m")
    deepest = sub.iloc[-1]
    assert f"m={deepest['m']}" in damage and deepest["m"] < 3
    assert (": YES (" in damage) == bool(deepest["gain"] > sub.iloc[0]["gain"])


def test_borders_and_study():
    x = torch.rand(3, 1, 8, 8)
    b = add_border(x)
    assert torch.equal(b[..., 2:6, 2:6], x[..., 2:6, 2:6])
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False
    assert (b[..., mask] == 0).all() and (add_border(x, 1.0)[..., mask] == 1).all()
    model, x = tiny_bn_cnn(), data(n=30)
    y = torch.arange(30) % 5
    table = black_border_study(model, x, y, adabn=AdaBNSettings(device="cpu"))
    assert len(table) == 9 and set(table["border"]) == {"none", "black", "white"}
    assert len(border_verdicts(table)) == 2
    comp = bn_statistics_comparison(model, add_border(x), adabn=AdaBNSettings(device="cpu"))
    assert len(comp) == 3 and (comp["mean_shift"] > 0).all()


def test_ncg_under_adabn_against_direct_computation():
    from probelib.neighbours import knn
    model, x = tiny_bn_cnn(), data(n=30)
    y = torch.arange(30) % 5
    train_x, train_y = data(n=50, seed=7), torch.arange(50) % 5
    load = synthetic_corrupted(x, y)
    table = ncg_under_adabn(model, train_x, train_y, load, ["gaussian_noise"], [2], adabn=AdaBNSettings(device="cpu"))
    xc, _ = load("gaussian_noise", 2)
    _, idx = knn(train_x, xc, k=1, progress=False)
    nn_lab = train_y.numpy()[idx[:, 0]]
    src = predict(model, xc, desc=None).argmax(1).numpy()
    ada = predict(adapt_bn(model, xc), xc, desc=None).argmax(1).numpy()
    r = table.iloc[0]
    one_flip = 1 / len(nn_lab) + 1e-9  # another code path: at most one image may flip across CPUs
    assert r["ncg_source"] == pytest.approx((src == nn_lab).mean(), abs=one_flip)
    assert r["ncg_adapted"] == pytest.approx((ada == nn_lab).mean(), abs=one_flip)
    assert 0 <= r["p_value"] <= 1 and r["n"] == 30


def test_corrupt_on_the_fly_matches_corruptions_module():
    from probelib.corruptions import corrupt
    x = data(n=6, channels=1)
    x = (x * 255).round() / 255
    y = torch.arange(6)
    load = corrupt_on_the_fly(x, y, seed=0)
    xc, yc = load("gaussian_noise", 3)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    direct = torch.from_numpy(corrupt(u8, "gaussian_noise", 3, 0).reshape(u8.shape)).permute(0, 3, 1, 2)
    assert torch.equal((xc * 255).round().to(torch.uint8), direct) and torch.equal(yc, y)
    assert xc.shape == x.shape and xc.dtype == torch.float32


def test_shift_grid_reads_a_folder_in_the_cifar10c_layout(tmp_path):
    from probelib.corruptions import to_uint8_images, write_corrupted
    model, x = tiny_bn_cnn(), data(n=24)
    x = (x * 255).round() / 255
    y = torch.arange(24) % 5
    folder = write_corrupted(to_uint8_images(x), y.numpy(), tmp_path / "tiny-c", ["gaussian_noise"], progress=False)
    kwargs = dict(corruptions=["gaussian_noise"], severities=[2, 4],
                  adabn=AdaBNSettings(momentum=0.1, batch_size=8, device="cpu"))
    from_disk = shift_grid(model, folder, **kwargs)
    on_the_fly = shift_grid(model, corrupt_on_the_fly(x, y), **kwargs)
    pd.testing.assert_frame_equal(from_disk, on_the_fly)
    assert shift_grid(model, str(folder), **kwargs).equals(from_disk)


def test_one_pass_exact_statistics_equal_truncated_passes_and_arm_logits():
    from probelib.adabn import arm_logits
    model, x = tiny_bn_cnn(channels=3), data(n=37, channels=3)
    before = copy.deepcopy(model.state_dict())
    for kw in (dict(), dict(layers=exclude_last(1)), dict(layers=exclude_first(1)),
               dict(augment="crop+flip", seed=2)):
        one = stats(adapt_bn(model, x, AdaBNSettings(batch_size=64, **kw)))  # all 37 in one batch: one pass
        many = stats(adapt_bn(model, x, AdaBNSettings(batch_size=5, **kw)))  # one truncated pass per layer
        for (a, b), (c, d) in zip(one, many):
            assert torch.allclose(a, c, atol=1e-6) and torch.allclose(b, d, rtol=1e-5), kw
    # the adabn arm reuses the single statistics pass as its forward: same logits as adapt + predict
    direct = predict(adapt_bn(model, x, AdaBNSettings(batch_size=5)), x, desc=None)
    assert torch.allclose(arm_logits(model, x, "adabn", adabn=AdaBNSettings(device="cpu")), direct, atol=1e-5)
    aug = predict(adapt_bn(model, x, AdaBNSettings(augment="crop+flip", batch_size=5)), x, desc=None)
    got = arm_logits(model, x, "adabn+aug", adabn=AdaBNSettings(augment="crop+flip", device="cpu"))
    assert torch.allclose(got, aug, atol=1e-5)
    masked = predict(adapt_bn(model, x, AdaBNSettings(layers=exclude_last(2), batch_size=5)), x, desc=None)
    got = arm_logits(model, x, "adabn", adabn=AdaBNSettings(layers=exclude_last(2), device="cpu"))
    assert torch.allclose(got, masked, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_studies_score_a_stratified_subset_of_n_images():
    from probelib.data import subsample
    x, y = data(n=60), torch.arange(60) // 12  # sorted by class, as test splits often are
    xs, ys = subsample((x, y), 20)
    assert len(ys) == 20 and torch.bincount(ys).tolist() == [4] * 5
    rows = [int(torch.nonzero((x == xi).flatten(1).all(1))[0]) for xi in xs]  # images of x, kept in order
    assert rows == sorted(rows) and torch.equal(y[rows], ys)
    load = synthetic_corrupted(x, y)
    grid = shift_grid(tiny_bn_cnn(), load, ["gaussian_noise"], [1], clean=(x, y), n_images=20,
                      adabn=AdaBNSettings(device="cpu"))
    assert (grid["n"] == 20).all() and len(grid) == 6
    from probelib.adabn import load_shifted
    xl, yl = load_shifted(load, "gaussian_noise", 1, n_images=20)  # the subset the grid scored
    assert torch.equal(xl, subsample(load("gaussian_noise", 1), 20)[0]) and len(yl) == 20
    train_x, train_y = data(n=30, seed=3), torch.arange(30) % 5
    table = ncg_under_adabn(tiny_bn_cnn(), train_x, train_y, load, ["gaussian_noise"], [1, 2], n_images=20,
                            adabn=AdaBNSettings(device="cpu"))
    assert table["n"].iloc[0] == 40


def test_study_figures_draw_their_tables():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from probelib.adabn import plot_border_examples, plot_label_shift_gain, plot_ncg_under_adabn

    rows = [{**_label_shift_row(m, k, 0.1 * m - 0.01 * k, exclude=e), "arm": arm}
            for e in ("last", "first") for m in (0, 1) for k in (1, 5) for arm in ("adabn", "tent")]
    fig = plot_label_shift_gain(pd.DataFrame(rows), ["last", "first"], "adabn", title="t")
    heat = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heat] == ["gain, last m BN layers not adapted",
                                               "gain, first m BN layers not adapted"]
    assert {t.get_text() for t in heat[0].texts} == {"-0.01", "-0.05", "+0.09", "+0.05"}  # adabn's gains only
    assert fig._suptitle.get_text() == "t"
    plt.close(fig)

    table = pd.DataFrame({"corruption": ["fog", "snow", "blur"], "ncg_source": [0.5, 0.6, 0.7],
                          "ncg_adapted": [0.6, 0.6, 0.5], "p_value": [0.01, 0.5, 0.04],
                          "acc_source": [0.8, 0.8, 0.8], "acc_adapted": [0.9, 0.8, 0.7], "ncg_gain": [0.1, 0.0, -0.2]})
    fig = plot_ncg_under_adabn(table, "adabn", alpha=0.05, title="m")
    bars, scatter = fig.axes
    assert sum(t.get_text() == "*" for t in bars.texts) == 2  # p < alpha for fog and blur
    assert {t.get_text() for t in scatter.texts} == {"fog", "blur"}  # snow did not move
    assert fig._suptitle.get_text() == "m (* McNemar p < 0.05)"
    plt.close(fig)

    x = data(n=16)
    fig = plot_border_examples(x, ["none", "black"], n_show=4)
    assert len(fig.axes) == 8 and [fig.axes[0].get_ylabel(), fig.axes[4].get_ylabel()] == ["none", "black"]
    assert torch.equal(torch.as_tensor(fig.axes[4].images[0].get_array()), add_border(x[:1])[0, 0])
    plt.close(fig)


def test_shift_study_inputs_are_the_study_model_and_a_stratified_test_subset(monkeypatch):
    import probelib.adabn.arms as arms_module
    from probelib.adabn import shift_study_inputs
    from probelib.data import as_tensors, load_dataset, subsample

    asked = []
    def fake_study_model(dataset, smoke, device):  # the model itself is study_model's (tested with training)
        asked.append((dataset, smoke, device))
        return tiny_bn_cnn(), "tiny"

    monkeypatch.setattr(arms_module, "study_model", fake_study_model)
    inputs = shift_study_inputs("mnist5k", 60, device="cpu", momentum=0.1, tent_batch_size=32, tent_lr=1e-2)
    smoke = shift_study_inputs("mnist5k", 60, smoke=True, device="cpu")
    test = as_tensors(load_dataset("mnist5k").test)
    for got, n in ((inputs, 60), (smoke, 100)):  # smoke: 100 images whatever n_images says
        x, y = subsample(test, n)
        assert torch.equal(got.test_x, x) and torch.equal(got.test_y, y)
    assert asked == [("mnist5k", False, "cpu"), ("mnist5k", True, "cpu")]
    assert inputs.model_name == "tiny" and inputs.num_classes == 10
    assert inputs.adabn == AdaBNSettings(momentum=0.1, device="cpu")
    assert (inputs.tent.batch_size, inputs.tent.lr) == (32, 1e-2)
