"""The studies' decisions: each verdict function returns :class:`probelib.report.Verdict` lines — the
text a notebook prints, with its claim, the paper's direction, the result (YES / NO / NOT SIGNIFICANT)
and the p-value — so tests check the decision, not a phrase."""

from __future__ import annotations

import pandas as pd

from probelib.adabn.arms import STUDY_ARMS
from probelib.adabn.studies import paired_gains
from probelib.report import Verdict
from probelib.stats import mcnemar_counts

__all__ = ["grid_verdicts", "label_shift_verdicts", "border_verdicts", "ncg_verdicts", "tent_verdict",
           "tent_verdicts"]

#: How :func:`tent_verdict`'s decision (tent against the AdaBN arm) reads as a report result.
TENT_RESULTS = {"BETTER": "YES", "WORSE": "NO", "NOT SIGNIFICANT": "NOT SIGNIFICANT"}


def _is_group(name: str, group: str) -> bool:
    from probelib.corruptions import CORRUPTIONS, corruption_group
    return corruption_group(name) == group if name in CORRUPTIONS else name.endswith("_" + group)


def _significant(table: pd.DataFrame, alpha: float) -> tuple[list[str], list[str]]:
    sig = table[table["p_value"] < alpha]
    return (list(sig.index[sig["gained"] > sig["lost"]]), list(sig.index[sig["gained"] < sig["lost"]]))


def _named(names: list[str]) -> str:
    return ": " + ", ".join(names) if names else ""


def grid_verdicts(grid: pd.DataFrame, alpha: float = 0.05) -> list[Verdict | str]:
    """Verdict lines on the shift grid: does AdaBN help on noise and blur (a :class:`Verdict` per
    group), and where does it hurt (a plain line listing the corruptions: no single decision).

    Per corruption (severities pooled) McNemar's test of the ``adabn`` arm against ``source``
    (:func:`paired_gains`). A group's verdict is YES when its mean gain is positive and more of its
    corruptions gain significantly than lose, NOT SIGNIFICANT when none changes significantly at
    ``alpha``, NO otherwise."""
    lines = []
    label = grid["momentum"].iloc[0] if "momentum" in grid else "?"
    shifted = grid[grid["corruption"] != "clean"]
    arm = "adabn" if "adabn" in set(shifted["arm"]) else "adabn+aug"
    table = paired_gains(shifted, arm)
    for group in ("noise", "blur"):
        sel = table[[_is_group(c, group) for c in table.index]]
        if not len(sel):
            continue
        g = sel["gain"].mean()
        up, down = _significant(sel, alpha)
        verdict = ("NOT SIGNIFICANT" if not up and not down
                   else "YES" if g > 0 and len(up) > len(down) else "NO")
        lines.append(Verdict(
            f"AdaBN helps on {group} ({arm} vs source, momentum {label}): {verdict} (mean accuracy "
            f"gain {g:+.3f} over {len(sel)} corruption{'s' * (len(sel) != 1)}; significant gain on {len(up)}/{len(sel)}"
            f"{_named(up)}; significant loss on {len(down)}{_named(down)}; McNemar p < {alpha}, severities pooled)",
            claim=f"AdaBN helps on {group} corruptions ({arm} vs source, momentum {label})", paper="YES",
            result=verdict, p=None))  # several corruptions' tests: no single p
    _, down = _significant(table, alpha)
    names = ", ".join(f"{c} ({table.loc[c, 'gain']:+.3f}, p={table.loc[c, 'p_value']:.2g})"
                      for c in table.loc[down].sort_values("gain").index) or "none"
    others = int(((table["gain"] < 0) & ~table.index.isin(down)).sum())
    lines.append(f"corruptions where {arm} significantly hurts accuracy (McNemar p < {alpha}, severities pooled; "
                 f"momentum {label}): {names}" + (f"; {others} more with a negative, not significant mean gain"
                                                  if others else ""))
    return lines


def label_shift_verdicts(table: pd.DataFrame, arm: str | None = None) -> list[Verdict]:
    """Verdicts: does AdaBN hurt more the fewer classes, and do frozen late layers limit the damage?

    Only rows that adapt at least one BN layer (``m < n_bn_layers``) count: a row that adapts
    nothing is the source model (gain exactly 0) and would make the second verdict true whenever
    AdaBN hurts at all. A table with several arms is judged on ``arm`` (None: its AdaBN arm,
    ``adabn+aug`` before ``adabn``; :func:`tent_verdict` judges TENT's)."""
    if "arm" in table and table["arm"].nunique() > 1:
        present = set(table["arm"])
        arm = arm or next((a for a in ("adabn+aug", "adabn") if a in present), None)
        if arm not in present:
            raise ValueError(f"the table has no {arm!r} arm; it has {sorted(present)}")
        table = table[table["arm"] == arm]
    lines, label = [], table["momentum"].iloc[0]
    if "n_bn_layers" in table:
        table = table[table["m"] < table["n_bn_layers"]]
    full = table[(table["m"] == 0) & (table["exclude"] == table["exclude"].iloc[0])].sort_values("k")
    if len(full) >= 2:
        fewest, most = full.iloc[0], full.iloc[-1]
        ok = fewest["gain"] < most["gain"]
        p = f", McNemar p={fewest['p_value']:.2g}" if "p_value" in fewest else ""
        lines.append(Verdict(
            f"AdaBN hurts more the fewer classes (all layers adapted, momentum {label}): "
            f"{'YES' if ok else 'NO'} (gain {fewest['gain']:+.3f} at k={fewest['k']}{p} vs "
            f"{most['gain']:+.3f} at k={most['k']})",
            claim=f"AdaBN hurts more the fewer classes (label shift, momentum {label})", paper="YES",
            result="YES" if ok else "NO", p=fewest["p_value"] if "p_value" in fewest else None))
    last = table[table["exclude"] == "last"]
    if last["m"].nunique() >= 2:
        k_min = last["k"].min()
        sub = last[last["k"] == k_min].sort_values("m")
        lo, hi = sub.iloc[0], sub.iloc[-1]
        ok = hi["gain"] > lo["gain"]
        depth = f" of {int(hi['n_bn_layers'])}" if "n_bn_layers" in sub else ""
        lines.append(Verdict(
            f"leaving the last BN layers unadapted limits the damage at k={k_min}: "
            f"{'YES' if ok else 'NO'} (gain {lo['gain']:+.3f} at m={lo['m']} vs "
            f"{hi['gain']:+.3f} at m={hi['m']}{depth} BN layers unadapted; rows that adapt no layer excluded)",
            claim=f"leaving the last BN layers unadapted limits AdaBN's damage under label shift (k={k_min})",
            paper="YES", result="YES" if ok else "NO", p=None))
    return lines


def border_verdicts(table: pd.DataFrame, arm: str = "adabn", alpha: float = 0.05) -> list[Verdict]:
    """Verdicts for the border study: does ``arm`` lose accuracy against ``source`` on each border
    (McNemar's paired test at ``alpha``)? Says plainly where the paper's direction (AdaBN degrades
    accuracy) is not found: a significant gain, or no significant change."""
    lines, label = [], table["momentum"].iloc[0]
    rows = table.set_index(["border", "arm"])
    for b in ("black", "white"):
        if (b, arm) not in rows.index or (b, "source") not in rows.index:
            continue
        src, ada = rows.loc[(b, "source")], rows.loc[(b, arm)]
        d, p = ada["accuracy"] - src["accuracy"], ada["p_value"]
        verdict = "NOT SIGNIFICANT" if not p < alpha else "YES" if d < 0 else "NO"
        text = (f"AdaBN hurts on the {b} border ({arm} vs source, momentum {label}): {verdict} (accuracy "
                f"{src['accuracy']:.3f} -> {ada['accuracy']:.3f}, {d:+.3f}; {int(ada['lost'])} images lost, "
                f"{int(ada['gained'])} gained, McNemar p={p:.2g})")
        if verdict == "NO":
            text += " — this direction differs from the paper's (AdaBN degrades accuracy there)"
        elif verdict == "NOT SIGNIFICANT":
            text += f" — the paper's degradation is not found here (p >= {alpha})"
        lines.append(Verdict(text, claim=f"AdaBN hurts on the {b} border ({arm} vs source, momentum {label})",
                             paper="YES" if b == "black" else "not in the paper (MNIST's background is black)",
                             result=verdict, p=p))
    return lines


def ncg_verdicts(table: pd.DataFrame, alpha: float = 0.05) -> list[Verdict]:
    """Verdict: does alignment move predictions toward the nearest category (mean NCG change > 0)?
    In neither paper; the counts of corruptions with a significant change are in the text."""
    label = table["momentum"].iloc[0]
    up = table[(table["ncg_gain"] > 0) & (table["p_value"] < alpha)]["corruption"].tolist()
    down = table[(table["ncg_gain"] < 0) & (table["p_value"] < alpha)]["corruption"].tolist()
    mean = table["ncg_gain"].mean()
    result = "YES" if mean > 0 else "NO"
    claim = f"AdaBN moves predictions toward the nearest category (momentum {label})"
    return [Verdict(f"{claim}: {result} (mean NCG change {mean:+.3f}; significant increase on "
                    f"{len(up)}/{len(table)} corruptions{_named(up)}; significant decrease on "
                    f"{len(down)}{_named(down)}; McNemar p < {alpha})",
                    claim=claim, paper="not in either paper", result=result, p=None)]


def _pooled(rows: pd.DataFrame, gained: str, lost: str) -> tuple[int, int, float]:
    if rows[[gained, lost]].isna().any().any():
        raise ValueError(f"the table's tent rows lack {gained}/{lost}: compute it with the source and an AdaBN "
                         "arm among the arms")
    g, l_ = int(rows[gained].sum()), int(rows[lost].sum())
    return g, l_, mcnemar_counts(l_, g)["p"]


def _mean_accuracy(rows: pd.DataFrame) -> float:
    return float((rows["accuracy"] * rows["n"]).sum() / rows["n"].sum())


def tent_verdict(table: pd.DataFrame, alpha: float = 0.05, *, border: str | None = None) -> Verdict:
    """Does entropy minimisation make AdaBN's limits better or worse? ``tent`` against the AdaBN
    arm it was paired with (``vs_adabn``) on the same images, McNemar's test on the discordant
    counts pooled over the study's shifted settings, and ``tent`` against ``source`` likewise.

    The table is any study's with ``tent`` and an AdaBN arm among its arms:

    * :func:`shift_grid` — every corrupted setting (``clean`` and severity-0 sets left out); the
      same image at several severities counts as separate pairs, as :func:`paired_gains` does;
    * :func:`label_shift` — AdaBN's limit there: the label-shifted rows (k below the largest k)
      with all BN layers adapted (m = 0, the first ``exclude`` of the table);
    * :func:`black_border_study` — the rows of ``border`` (None: ``"black"``).

    Decision (in the text): ``BETTER`` when tent gains significantly more images than it loses
    against AdaBN (p < ``alpha``), ``WORSE`` when it loses significantly more, ``NOT SIGNIFICANT``
    otherwise; the :class:`~probelib.report.Verdict`'s claim is "tent beats the AdaBN arm", its
    ``result`` YES / NO / NOT SIGNIFICANT (:data:`TENT_RESULTS`) and ``p`` McNemar's p against AdaBN.
    """
    if "arm" not in table or "tent" not in set(table["arm"]):
        raise ValueError("the table has no tent arm: run the study with 'tent' among its arms "
                         f"(arms={list(STUDY_ARMS)})")
    if "vs_adabn" not in table or table.loc[table["arm"] == "tent", "vs_adabn"].isna().all():
        raise ValueError("the table's tent rows were not compared with an AdaBN arm (column vs_adabn): run the "
                         "study with 'adabn' or 'adabn+aug' among its arms beside 'tent'")
    if "k" in table and "m" in table:
        first = table["exclude"].iloc[0]
        sub = table[(table["m"] == 0) & (table["exclude"] == first)]
        shifted = sub[sub["k"] < sub["k"].max()] if sub["k"].nunique() > 1 else sub
        ks = sorted(set(shifted["k"]))
        where = f"under label shift (k in {ks}, all BN layers adapted)"
        paper = "not in either paper"
    elif "border" in table:
        border = border or "black"
        if border not in set(table["border"]):
            raise ValueError(f"the table has no {border!r} border; it has {sorted(set(table['border']))}")
        shifted = table[table["border"] == border]
        where = f"on the {border} border"
        paper = "not in either paper"
    elif "corruption" in table:
        shifted = table[(table["corruption"] != "clean") & (table["severity"] > 0)]
        tent_at = shifted.loc[shifted["arm"] == "tent", ["corruption", "severity"]].drop_duplicates()
        shifted = shifted.merge(tent_at)  # every arm on the settings tent was scored on (tent_severities)
        severities = sorted(set(shifted["severity"]))
        where = (f"on the shift grid ({shifted['corruption'].nunique()} corruptions x "
                 f"{len(severities)} severities pooled)" if len(severities) > 1 else
                 f"on the shift grid ({shifted['corruption'].nunique()} corruptions at severity {severities[0]})")
        paper = "not tested (TENT's table: tent beats norm, 18.6 % vs 20.4 % error on CIFAR-10-C)"
    else:
        raise ValueError("tent_verdict takes a shift_grid, label_shift or black_border_study table")
    tent_rows = shifted[shifted["arm"] == "tent"]
    if tent_rows.empty:
        raise ValueError(f"the table has no tent row {where}")
    adabn_arm = str(tent_rows["vs_adabn"].iloc[0])
    g, l_, p = _pooled(tent_rows, "gained_vs_adabn", "lost_vs_adabn")
    gs, ls, ps = _pooled(tent_rows, "gained", "lost")
    decision = "NOT SIGNIFICANT" if not p < alpha else "BETTER" if g > l_ else "WORSE"
    label = table["momentum"].iloc[0] if "momentum" in table else "?"
    if "source_accuracy" in tent_rows:  # label shift: no source rows, the source accuracy is a column
        src_acc = _mean_accuracy(tent_rows.assign(accuracy=tent_rows["source_accuracy"]))
    else:
        src_acc = _mean_accuracy(shifted[shifted["arm"] == "source"]) if (shifted["arm"] == "source").any() \
            else float("nan")
    accs = {"source": src_acc}
    for a in (adabn_arm, "norm", "tent"):
        rows = shifted[shifted["arm"] == a]
        if len(rows):
            accs[a] = _mean_accuracy(rows)
    settings = tent_rows["tent_settings"].iloc[0] if "tent_settings" in tent_rows else "?"
    text = (f"entropy minimisation (tent) vs AdaBN {where}: {decision} — tent vs {adabn_arm} on the same images: "
            f"{g} gained, {l_} lost, McNemar p={p:.2g}; tent vs source: {gs} gained, {ls} lost, p={ps:.2g} "
            f"(accuracy " + ", ".join(f"{a} {v:.3f}" for a, v in accs.items())
            + f"; tent: {settings}; AdaBN momentum {label}; p < {alpha})")
    return Verdict(text, claim=f"tent beats {adabn_arm} {where} (AdaBN momentum {label})", paper=paper,
                   result=TENT_RESULTS[decision], p=p)


def tent_verdicts(table: pd.DataFrame, alpha: float = 0.05) -> list[Verdict]:
    """:func:`tent_verdict` for each shifted part of a study: one for a shift grid or label-shift
    table, one per bordered border (``black``, ``white``) of a border study."""
    if "border" in table and "k" not in table:
        return [tent_verdict(table, alpha, border=b) for b in ("black", "white") if b in set(table["border"])]
    return [tent_verdict(table, alpha)]


