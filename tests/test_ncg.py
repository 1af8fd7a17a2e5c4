"""probelib.ncg: NCG, χ², McNemar, distance bins and the table against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from probelib import ncg as N
from probelib.store import Store


def test_ncg_counts_every_point():
    assert N.ncg([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert N.ncg(torch.tensor([3, 3]), np.array([1, 2])) == 0.0
    with pytest.raises(ValueError, match="length"):
        N.ncg([0, 1], [0])
    with pytest.raises(ValueError, match="argmax"):
        N.ncg(np.zeros((3, 4)), [0, 1, 2])


def test_chi_square_hand_computed():
    # N=10, C=5: expected [8, 2]; observed 4 disagree, 6 agree -> (4-8)^2/8 + (6-2)^2/2 = 10
    match = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    res = N.chi_square_vs_chance(match, 5)
    assert res["chi2"] == pytest.approx(10.0)
    assert res["p"] == pytest.approx(math.erfc(math.sqrt(10 / 2)))  # χ²(1) survival function
    assert (res["agree"], res["n"], res["expected_agree"]) == (6, 10, 2.0)
    # exactly at chance: statistic 0, p 1
    at_chance = N.chi_square_vs_chance(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0]), 9)
    assert at_chance["chi2"] == pytest.approx(0.0) and at_chance["p"] == pytest.approx(1.0)
    # all agree: bincount still has two cells
    assert N.chi_square_vs_chance(np.ones(4, bool), 2)["chi2"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="num_classes"):
        N.chi_square_vs_chance(match, 1)


def test_chi_square_recovers_spec_implied_ncg():
    # spec §7C: p = 1/C + sqrt(chi2 (C-1)/C^2/N); MNIST-wo9 χ²=21478.3 with N=6958, C=9 -> .663
    n, c, p = 6958, 9, 0.6633
    match = np.zeros(n, bool)
    match[: round(p * n)] = True
    chi2 = N.chi_square_vs_chance(match, c)["chi2"]
    assert 1 / c + math.sqrt(chi2 * (c - 1) / c ** 2 / n) == pytest.approx(round(p * n) / n, abs=1e-9)
    assert chi2 == pytest.approx(21478.3, rel=2e-3)


def test_mcnemar_exact_and_chi2():
    a = np.array([1] * 8 + [0] * 1 + [1] * 5 + [0] * 3, bool)  # b=8 (a right, b wrong), c=1
    b = np.array([0] * 8 + [1] * 1 + [1] * 5 + [0] * 3, bool)
    res = N.mcnemar(a, b)
    assert (res["b"], res["c"], res["method"]) == (8, 1, "exact binomial")
    assert res["p"] == pytest.approx(2 * (1 + 9) / 2 ** 9)  # 2·P(X<=1), X~Bin(9, 1/2)
    a2 = np.array([1] * 30 + [0] * 10 + [1] * 7, bool)
    b2 = np.array([0] * 30 + [1] * 10 + [1] * 7, bool)
    res2 = N.mcnemar(a2, b2)
    assert res2["statistic"] == pytest.approx((20 - 1) ** 2 / 40)
    assert res2["p"] == pytest.approx(math.erfc(math.sqrt(res2["statistic"] / 2)))
    assert N.mcnemar(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        N.mcnemar(a, b[:-1])
    assert N.mcnemar_counts(8, 1) == res and N.mcnemar_counts(30, 10) == res2
    with pytest.raises(ValueError, match="non-negative"):
        N.mcnemar_counts(-1, 3)


def test_distance_bins_hand_computed():
    d = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 6.0])
    m = np.array([1, 1, 0, 0, 1, 1], bool)
    bins = N.distance_bins(d, m, n_bins=3)
    assert bins["n"].tolist() == [2, 2, 2]
    assert bins["mean_distance"].tolist() == [1.5, 3.5, 5.5]
    assert bins["ncg"].tolist() == [0.5, 0.5, 1.0]
    np.testing.assert_allclose(bins["sem"], [0.5, 0.5, 0.0])  # std(ddof=1)/sqrt(n)
    unequal = N.distance_bins(np.arange(7.0), np.ones(7), n_bins=5)
    assert unequal["n"].tolist() == [2, 2, 1, 1, 1]
    with pytest.raises(ValueError, match="n_bins"):
        N.distance_bins(d, m, n_bins=7)


def test_bootstrap_ci_binary_matches_index_resampling():
    rng = np.random.default_rng(0)
    match = rng.random(400) < 0.3
    lo, hi = N.bootstrap_ci(match, n_boot=4000, seed=1)
    assert lo < match.mean() < hi
    assert N.bootstrap_ci(match, n_boot=4000, seed=1) == (lo, hi)  # seeded
    # the same interval by explicit index resampling (the generic path, on values 0/1 ± 0)
    lo2, hi2 = N.bootstrap_ci(match.astype(float) + 1e-12, n_boot=4000, seed=2)
    assert lo == pytest.approx(lo2, abs=0.01) and hi == pytest.approx(hi2, abs=0.01)
    # normal approximation: half-width ≈ 1.96·sqrt(p(1-p)/n)
    half = 1.96 * math.sqrt(match.mean() * (1 - match.mean()) / len(match))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_pearson_and_report():
    r = N.pearson([1, 2, 3, 4], [2, 4, 6, 8.5])
    assert r["r"] > 0.99 and r["n"] == 4
    assert math.isnan(N.pearson([1, 2], [3, 4])["r"])
    row = N.ncg_report([0, 1, 2, 0], [0, 1, 0, 1], num_classes=3, test_predictions=[1, 1], test_nn_labels=[1, 0])
    assert row["ncg"] == 0.5 and row["in_dist_ncg"] == 0.5
    assert row["ncg_lo"] <= 0.5 <= row["ncg_hi"]


def _inputs(ood_pred, nn_label, test_pred, seed=0):
    n = len(ood_pred)
    return N.NCGInputs(train_pred=np.array([0, 1, 1, 2]), train_y=np.array([0, 1, 2, 2]),
                       test_pred=np.asarray(test_pred), test_y=np.array([0, 1, 2]),
                       ood_pred=np.asarray(ood_pred), ood_nn_label=np.asarray(nn_label),
                       ood_nn_distance=np.arange(n, dtype=float), ood_nn_index=np.arange(n),
                       test_nn_label=np.array([0, 1, 2]), test_nn_distance=np.ones(3), num_classes=3)


def test_ncg_table_and_counts():
    nn = [0, 1, 2, 0, 1, 2]
    inputs = {"natural": _inputs([0, 0, 0, 0, 0, 0], nn, [0, 1, 2]),  # NCG 2/6
              "trades": _inputs([0, 1, 2, 0, 0, 0], nn, [0, 1, 0])}   # NCG 4/6, 2 discordant
    table = N.ncg_table(inputs, n_boot=200)
    assert table.loc["natural", "ncg"] == pytest.approx(2 / 6)
    assert table.loc["trades", "ncg"] == pytest.approx(4 / 6)
    assert table.loc["natural", "train_acc"] == 0.75
    assert table.loc["trades", "test_acc"] == pytest.approx(2 / 3)
    assert table.loc["trades", "in_dist_ncg"] == pytest.approx(2 / 3)
    assert bool(table.loc["trades", "robust_gt_natural"])
    assert (table.loc["trades", "mcnemar_b"], table.loc["trades", "mcnemar_c"]) == (2, 0)
    assert table.loc["trades", "mcnemar_p"] == pytest.approx(0.5)
    counts = N.robust_better_counts({"a": table, "b": table})
    assert counts.loc["trades", "better"] == 2 and counts.loc["trades", "better_significant"] == 0
    chi = N.chi_square_table({"natural": inputs["natural"]})
    assert chi.loc["natural", "agree"] == 2
    bad = dict(inputs, at=_inputs([0] * 6, [1, 1, 1, 1, 1, 1], [0, 1, 2]))
    with pytest.raises(ValueError, match="different neighbours"):
        N.ncg_table(bad)


class _Tiny(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def test_ncg_inputs_pixel_and_feature_on_digits(tmp_path):
    from probelib.data import load_dataset
    from probelib.neighbours import brute_force_knn

    torch.manual_seed(0)
    splits = load_dataset("digitswo9")
    model = _Tiny(splits.num_classes)
    store = Store(tmp_path)
    a = N.ncg_inputs(model, splits, store=store)
    _, bi = brute_force_knn(splits.train.x, splits.ood.x)
    np.testing.assert_array_equal(a.ood_nn_label, splits.train.y.numpy()[bi[:, 0]])
    with torch.no_grad():  # batched predict vs one forward: at most one tie may break differently
        assert (a.ood_pred != model(splits.ood.x).argmax(1).numpy()).sum() <= 1
    assert len(a.ood_pred) == len(splits.ood) and a.num_classes == 9
    n_files = len(list(tmp_path.rglob("*.npz")))
    b = N.ncg_inputs(model, splits, store=store)  # all from the cache
    assert len(list(tmp_path.rglob("*.npz"))) == n_files
    np.testing.assert_array_equal(a.test_nn_label, b.test_nn_label)

    fs = N.feature_splits(splits, model, store=store)
    assert fs.train.x.shape == (len(splits.train), 16)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, splits.num_classes))
    f = N.ncg_inputs(mlp, fs, store=store)
    with torch.no_grad():
        _, fi = brute_force_knn(model.features(splits.train.x), model.features(splits.ood.x))
    np.testing.assert_array_equal(f.ood_nn_index, fi[:, 0])
    table = N.ncg_table({"natural": a})
    assert 0 <= table.loc["natural", "ncg"] <= 1


def test_verdicts_and_dataset_names():
    assert N.held_out_datasets("mnist5kwo9") == ["mnist5kwo9"]
    assert N.held_out_datasets("mnist5kwo9", [0, 4]) == ["mnist5kwo0", "mnist5kwo4"]
    with pytest.raises(ValueError, match="out of range"):
        N.held_out_datasets("mnist5kwo9", [10])
    with pytest.raises(ValueError, match="holds no class out"):
        N.held_out_datasets("mnist5k")
    assert (N.method_label("trades", 2.0), N.method_label("at", 0.5), N.method_label("mixup", 2.0)) == \
        ("TRADES(2)", "AT(0.5)", "mixup")
    nn = [0, 1, 2, 0, 1, 2]
    table = N.ncg_table({"natural": _inputs([0] * 6, nn, [0, 1, 2]), "TRADES(2)": _inputs([0, 1, 2, 0, 0, 0], nn, [0, 1, 2]),
                         "mixup": _inputs([1] * 6, nn, [0, 1, 2])}, n_boot=50)
    assert N.compare_verdict(table, "TRADES(2)", "pixel", "d").startswith("robust > natural NCG (pixel, TRADES(2), d): YES")
    assert N.compare_verdict(table, "mixup", "feature", "d").startswith("mixup > natural NCG (feature, mixup, d): NO")
    assert ": YES" in N.chance_verdict(np.zeros(90), np.zeros(90), 9, "x")
    assert ": NO" in N.chance_verdict(np.zeros(90), np.r_[np.zeros(10), np.ones(80)], 9, "x")


def test_decisions_of_the_verdict_functions():
    """The YES/NO decisions the NCG notebooks print, checked on the Verdict's fields."""
    row = pd.Series({"ncg": 0.5, "chance": 0.1, "chi2_p": 0.01})
    v = N.table_chance_verdict(row, "pixel, natural, d")
    assert (v.result, v.paper, v.claim, v.p) == ("YES", "YES", "NCG above chance (pixel, natural, d)", 0.01)
    assert str(v) == "NCG above chance (pixel, natural, d): YES (0.500 vs 0.100; χ² p=0.01)"
    assert N.table_chance_verdict(row.replace(0.01, 0.2), "x").result == "NO"  # not significant
    assert N.chance_verdict(np.zeros(90), np.zeros(90), 9, "x").result == "YES"

    nat = _inputs([0] * 6, [0, 1, 2, 0, 1, 2], [0, 1, 2])
    rob = _inputs([0, 1, 2, 0, 1, 0], [0, 1, 2, 0, 1, 2], [0, 1, 2])
    inputs = {("d", "pixel", "natural"): nat, ("d", "pixel", "TRADES(2)"): rob}
    bins, table = N.distance_bin_table(inputs, n_bins=3)
    assert list(table.index.names) == ["dataset", "space", "method", "bin"] and len(table) == 6
    (v,) = N.distance_bin_verdicts(bins)
    assert v.result == "YES" and v.claim == "TRADES(2) > natural NCG in most distance bins (pixel, d)"
    (v,) = N.distance_bin_verdicts({("d", "pixel", "natural"): bins["d", "pixel", "TRADES(2)"],
                                    ("d", "pixel", "AT(2)"): bins["d", "pixel", "natural"]})
    assert v.result == "NO"
    assert nat.ncg == pytest.approx(2 / 6) and nat.match.sum() == 2
