"""Statistics shared by the NCG and AdaBN studies: bootstrap intervals, the χ² test against chance,
McNemar's paired test and Pearson's correlation.

Tables name their statistics one way: a p-value column is ``p_value`` (``p_value_vs_<arm>`` for a
second comparison), and the two discordant counts of a paired comparison of ``before`` and ``after``
on the same points are ``gained`` (right only after) and ``lost`` (right only before) — the columns
:func:`paired_test` returns.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["bootstrap_ci", "chi_square_vs_chance", "mcnemar", "mcnemar_counts", "paired_test", "pearson"]


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded).

    For 0/1 values a resample's number of ones is Binomial(n, mean) exactly, so it is drawn as
    such (same distribution as resampling indices, far cheaper); otherwise indices are resampled.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) == 0:
        raise ValueError("values are empty; a bootstrap interval needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    if np.isin(v, (0.0, 1.0)).all():
        means = rng.binomial(len(v), v.mean(), size=int(n_boot)) / len(v)
    else:
        means = np.empty(int(n_boot))
        for a in range(0, int(n_boot), 256):
            idx = rng.integers(0, len(v), size=(min(256, int(n_boot) - a), len(v)))
            means[a:a + len(idx)] = v[idx].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def chi_square_vs_chance(match, num_classes: int) -> dict:
    """χ² goodness-of-fit of [#disagree, #agree] against chance agreement 1/C (spec §1.3).

    Exactly ``scipy.stats.chisquare(f_obs=np.bincount(match, minlength=2), f_exp=[N(C-1)/C, N/C])``
    (1 degree of freedom).
    """
    m = np.asarray(match).astype(bool).reshape(-1)
    if len(m) == 0:
        raise ValueError("match is empty; the χ² test needs at least one point")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the seen classes C), got {num_classes!r}")
    n, c = len(m), int(num_classes)
    f_obs = np.bincount(m.astype(np.int64), minlength=2)
    res = stats.chisquare(f_obs=f_obs, f_exp=[n * (c - 1) / c, n / c])
    return {"chi2": float(res.statistic), "p": float(res.pvalue), "n": n, "agree": int(f_obs[1]),
            "expected_agree": n / c, "ncg": float(f_obs[1] / n), "chance": 1 / c}


def mcnemar(correct_a, correct_b, exact: bool | None = None) -> dict:
    """McNemar's paired test of two 0/1 outcome vectors on the same points.

    b = #(a right, b wrong), c = #(a wrong, b right). ``exact=None`` picks the exact binomial
    test when b + c < 25 and the continuity-corrected χ² (1 d.f.) otherwise. Two-sided p.
    """
    a = np.asarray(correct_a).astype(bool).reshape(-1)
    b_ = np.asarray(correct_b).astype(bool).reshape(-1)
    if len(a) != len(b_):
        raise ValueError(f"correct_a and correct_b must be paired (same points): lengths {len(a)} vs {len(b_)}")
    return mcnemar_counts(int((a & ~b_).sum()), int((~a & b_).sum()), exact)


def mcnemar_counts(b: int, c: int, exact: bool | None = None) -> dict:
    """McNemar's test from the two discordant counts (as :func:`mcnemar`): ``b`` points only the
    first outcome got right, ``c`` only the second."""
    if int(b) != b or int(c) != c or b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative integers, got b={b!r}, c={c!r}")
    b, c = int(b), int(c)
    n = b + c
    if exact is None:
        exact = n < 25
    if n == 0:
        stat, p = 0.0, 1.0
    elif exact:
        stat, p = float(min(b, c)), float(stats.binomtest(b, n, 0.5).pvalue)
    else:
        stat = (abs(b - c) - 1) ** 2 / n
        p = float(stats.chi2.sf(stat, 1))
    return {"b": b, "c": c, "statistic": float(stat), "p": min(1.0, p),
            "method": "exact binomial" if exact else "chi2 (continuity-corrected)"}


def paired_test(before, after) -> dict:
    """McNemar's paired test of two 0/1 outcome vectors on the same points, in table columns:
    ``gained`` (right only ``after``), ``lost`` (right only ``before``) and the two-sided ``p_value``
    (:func:`mcnemar`)."""
    test = mcnemar(before, after)
    return {"gained": test["c"], "lost": test["b"], "p_value": test["p"]}


def pearson(x, y) -> dict:
    """Pearson correlation ``scipy.stats.pearsonr(x, y)`` as {"r", "p", "n"} (NaN for fewer than 3 points)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 3:
        return {"r": float("nan"), "p": float("nan"), "n": len(x)}
    res = stats.pearsonr(x, y)
    return {"r": float(res.statistic), "p": float(res.pvalue), "n": len(x)}
