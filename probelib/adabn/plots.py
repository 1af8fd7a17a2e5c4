"""The AdaBN notebooks' figures: label shift's gain heat-maps (notebook 31), the bordered images
(notebook 32) and NCG under AdaBN (notebook 33). Each returns its matplotlib figure; the notebook saves and shows it."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["plot_label_shift_gain", "plot_ncg_under_adabn", "plot_border_examples"]


def plot_label_shift_gain(table: pd.DataFrame, exclude: Sequence[str], arm: str, title: str = ""):
    """One heat-map per ``exclude`` side ("last", "first") of ``arm``'s accuracy gain over source,
    m BN layers not adapted (rows) by k classes kept (columns), from :func:`~probelib.adabn.label_shift`'s
    table."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(exclude), figsize=(4.2 * len(exclude), 3.2), squeeze=False)
    for ax, e in zip(axes[0], exclude):
        heat = table[(table.exclude == e) & (table.arm == arm)].pivot_table(index="m", columns="k", values="gain")
        sns.heatmap(heat, annot=True, fmt="+.2f", cmap="RdBu", center=0, vmin=-1, vmax=1, ax=ax,
                    cbar=ax is axes[0][-1])
        ax.set_title(f"gain, {e} m BN layers not adapted", fontsize=9)
        ax.set_xlabel("classes kept (k)")
        ax.set_ylabel("m")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_ncg_under_adabn(table: pd.DataFrame, arm: str, alpha: float = 0.05, title: str = ""):
    """From :func:`~probelib.adabn.ncg_under_adabn`'s table: NCG of the source and the adapted model
    per corruption (``*`` where McNemar's p < ``alpha``), and the NCG change against the accuracy
    change (the corruptions that moved by more than 0.02 labelled)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.3 * len(table) + 1.6), gridspec_kw={"width_ratios": [3, 2]})
    pos = np.arange(len(table))
    ax.barh(pos - 0.2, table.ncg_source, 0.4, label="source")
    ax.barh(pos + 0.2, table.ncg_adapted, 0.4, label=f"adapted ({arm})")
    for i, (p, top) in enumerate(zip(table.p_value, table[["ncg_source", "ncg_adapted"]].max(axis=1))):
        if p < alpha:
            ax.text(top + 0.01, i, "*", va="center")
    ax.set_yticks(pos, table.corruption)
    ax.invert_yaxis()
    ax.set_xlabel("NCG")
    ax.set_xlim(0, 1.08)
    ax.legend(fontsize=8, ncol=2, loc="lower left", bbox_to_anchor=(0, 1))
    ax2.scatter(table.acc_adapted - table.acc_source, table.ncg_gain)
    for _, r in table.iterrows():
        if max(abs(r.acc_adapted - r.acc_source), abs(r.ncg_gain)) > 0.02:  # label the ones that moved
            ax2.annotate(r.corruption, (r.acc_adapted - r.acc_source, r.ncg_gain), fontsize=7)
    ax2.axhline(0, color="k", lw=0.5), ax2.axvline(0, color="k", lw=0.5)
    ax2.set_xlabel("accuracy change (adapted - source)")
    ax2.set_ylabel("NCG change")
    fig.suptitle(f"{title} (* McNemar p < {alpha})" if title else f"* McNemar p < {alpha}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_border_examples(x, borders: Sequence[str], n_show: int = 8):
    """``n_show`` images of ``x`` (evenly spaced), one row per border of ``borders`` (keys of
    :data:`~probelib.adabn.BORDER_FILLS`), as :func:`~probelib.adabn.add_border` draws it."""
    import matplotlib.pyplot as plt

    from probelib.adabn.studies import BORDER_FILLS, add_border

    shown = x[:: max(1, len(x) // n_show)][:n_show]
    fig, axes = plt.subplots(len(borders), n_show, figsize=(1.1 * n_show, 1.2 * len(borders)), squeeze=False)
    for row, b in zip(axes, borders):
        images = shown if BORDER_FILLS[b] is None else add_border(shown, BORDER_FILLS[b])
        for ax, img in zip(row, images):
            ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(b)
    return fig
