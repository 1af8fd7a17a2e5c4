"""The NCG notebooks' figures: NCG per distance bin (Fig. 5), OOD images beside their nearest
training images (App. D.6.2), and NCG against the mean 1-NN distance across held-out classes."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from probelib.ncg import pearson

__all__ = ["plot_distance_bins", "plot_neighbour_pairs", "plot_distance_vs_ncg"]


def plot_distance_bins(bins: Mapping[str, pd.DataFrame], ax=None, title: str = ""):
    """Grouped bars of NCG per distance bin (one colour per method) with SEM error bars (Fig. 5)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    methods = list(bins)
    width = 0.8 / max(1, len(methods))
    first = bins[methods[0]]
    x = np.arange(len(first))
    for j, m in enumerate(methods):
        b = bins[m]
        ax.bar(x + (j - (len(methods) - 1) / 2) * width, b["ncg"], width, yerr=b["sem"], capsize=2, label=m)
    ax.set_xticks(x, [f"{v:.2f}" for v in first["mean_distance"]])
    ax.set_xlabel("mean 1-NN distance of the bin")
    ax.set_ylabel("NCG")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax.figure


def plot_neighbour_pairs(ood_x, train_x, nn_index, nn_label, pred, n: int = 8, class_names=None,
                         distances=None):
    """OOD images (top row) above their nearest training images (bottom row), titled with the
    neighbour's label and the model's prediction."""
    n = min(n, len(ood_x))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.2), squeeze=False)
    name = (lambda c: class_names[int(c)]) if class_names else (lambda c: str(int(c)))
    for j in range(n):
        for row, img in ((0, ood_x[j]), (1, train_x[int(nn_index[j])])):
            img = torch.as_tensor(img).float()
            axes[row, j].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, j].axis("off")
        ok = "✓" if int(pred[j]) == int(nn_label[j]) else "✗"
        axes[0, j].set_title(f"pred {name(pred[j])} {ok}", fontsize=8)
        dist = f"\nd={distances[j]:.2f}" if distances is not None else ""
        axes[1, j].set_title(f"NN {name(nn_label[j])}{dist}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_distance_vs_ncg(table: pd.DataFrame, x: str = "mean_nn_distance", y: str = "ncg",
                         label: str = "held_out", ax=None, title: str = ""):
    """Scatter of NCG against the mean 1-NN distance, one point per held-out class, with Pearson r."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.5))
    ax.scatter(table[x], table[y])
    for _, row in table.iterrows():
        ax.annotate(str(row[label]), (row[x], row[y]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    r = pearson(table[x], table[y])
    ax.set_xlabel("mean 1-NN distance")
    ax.set_ylabel("NCG")
    ax.set_title(f"{title} r={r['r']:.3f} (p={r['p']:.3g})".strip())
    return ax.figure
