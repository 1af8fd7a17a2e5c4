"""Analysis for the corrupted-data NCG study (NCG spec §1.4, Table 4 / Fig. 6) and the
severity-gallery helpers of notebooks 20 and 21."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probelib._util import unknown_name
from probelib.corruptions.generator import (CORRUPTIONS, SEVERITIES, _check_corruption, _check_severity,
                                            corrupt)
from probelib.corruptions.sets import _to_uint8_nhwc, available_corruptions, load_corrupted

# --------------------------------------------------------------------------- NCG analysis helpers
def setting_stats(pred, labels, nn_labels) -> dict:
    """Statistics of one (corruption, severity) setting (NCG spec §1.4).

    ``pred``: model predictions, ``labels``: true labels, ``nn_labels``: labels of each image's
    nearest clean training image. Returns accuracy, NCG (mean of pred == nn label over all images),
    accuracy on NCG-correct / NCG-incorrect images and the Welch t-test (one-sided, greater) of the
    accuracy indicator between the two groups.
    """
    from scipy.stats import ttest_ind

    pred, labels, nn_labels = (np.asarray(a).ravel() for a in (pred, labels, nn_labels))
    if not len(pred) == len(labels) == len(nn_labels):
        raise ValueError(f"pred, labels and nn_labels must have one length, got "
                         f"{len(pred)}, {len(labels)}, {len(nn_labels)}")
    correct = (pred == labels).astype(float)
    ncg = pred == nn_labels
    a, b = correct[ncg], correct[~ncg]
    if len(a) > 1 and len(b) > 1 and (a.std() > 0 or b.std() > 0):
        import warnings
        with warnings.catch_warnings():   # near-constant groups: scipy warns about precision
            warnings.simplefilter("ignore", RuntimeWarning)
            t, p = ttest_ind(a, b, equal_var=False, alternative="greater")
    else:
        t, p = float("nan"), float("nan")
    return {"accuracy": correct.mean(), "ncg": ncg.mean(),
            "acc_ncg_correct": a.mean() if len(a) else float("nan"),
            "acc_ncg_incorrect": b.mean() if len(b) else float("nan"),
            "t": float(t), "p": float(p), "n": len(pred)}


def robust_vs_natural(table, robust: str, natural: str = "natural", metric: str = "ncg") -> dict:
    """Robust − natural difference and robust / natural ratio of ``metric`` over all settings,
    mean ± SEM (the NCG paper's aggregate). ``table``: long DataFrame with columns method,
    corruption, severity and ``metric``."""
    from scipy.stats import sem

    wide = table.pivot_table(index=["corruption", "severity"], columns="method", values=metric)
    for m in (robust, natural):
        if m not in wide.columns:
            raise unknown_name("method", m, list(wide.columns))
    diff = wide[robust] - wide[natural]
    ratio = wide[robust] / wide[natural]
    return {"metric": metric, "robust": robust, "settings": len(wide),
            "diff_mean": diff.mean(), "diff_sem": sem(diff) if len(diff) > 1 else float("nan"),
            "ratio_mean": ratio.mean(), "ratio_sem": sem(ratio) if len(ratio) > 1 else float("nan"),
            "robust_higher": int((diff > 0).sum())}


def severity_slopes(table, metric: str = "ncg"):
    """Per method and corruption: the slope of ``metric`` against level = (severity − 1)/4
    (``linregress``) and its se = stderr·√n as the NCG notebooks compute it. Returns a DataFrame."""
    import pandas as pd
    from scipy.stats import linregress

    rows = []
    for (method, corr), g in table.groupby(["method", "corruption"], sort=False):
        g = g.sort_values("severity")
        level = (g["severity"].to_numpy(float) - 1) / 4
        if len(g) < 3:
            continue
        fit = linregress(level, g[metric].to_numpy(float))
        rows.append({"method": method, "corruption": corr, "slope": fit.slope,
                     "se": fit.stderr * math.sqrt(len(g)), "intercept": fit.intercept, "n": len(g)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- gallery helpers
def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float [0, 1] N×C×H×W tensor → uint8 N×H×W×C array (rounded), the generator's input."""
    return _to_uint8_nhwc(x)


def severity_gallery(image: np.ndarray, corruptions: Sequence[str] | None = None, seed: int = 0,
                     index: int = 0) -> np.ndarray:
    """One uint8 H×W×C image under every corruption × severity: array (corruptions, 5, H, W, C).
    ``index`` is the image's index for seeding (its row in its dataset)."""
    names = list(CORRUPTIONS if corruptions is None else corruptions)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    return np.stack([np.stack([corrupt(image[None], c, s, seed, first_index=index)[0] for s in SEVERITIES])
                     for c in names])


def plot_gallery(gallery: np.ndarray, corruptions: Sequence[str] | None = None, original: np.ndarray | None = None):
    """A matplotlib figure: one row per corruption, severities 1..5 as columns (and the original)."""
    import matplotlib.pyplot as plt

    names = list(CORRUPTIONS if corruptions is None else corruptions)[:len(gallery)]
    cols = 5 + (original is not None)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.3 * cols, 1.3 * len(names)), squeeze=False)
    grey = gallery.shape[-1] == 1
    for r, name in enumerate(names):
        panels = ([original] if original is not None else []) + list(gallery[r])
        for c, im in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(im[..., 0] if grey else im, cmap="gray" if grey else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if original is not None and c == 0 else
                             f"severity {c + (original is None)}", fontsize=8)
        axes[r, 0].set_ylabel(name.replace("_", " "), fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def severity_change_table(images: np.ndarray, corruptions: Sequence[str] | None = None, seed: int = 0):
    """Mean |x_c − x| (grey levels) per corruption (rows) and severity (columns), a DataFrame."""
    import pandas as pd

    names = list(CORRUPTIONS if corruptions is None else corruptions)
    rows = {c: [float(np.abs(corrupt(images, c, s, seed).astype(np.float64) - images).mean())
                for s in SEVERITIES] for c in tqdm(names, desc="corruptions")}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"s{s}" for s in SEVERITIES])


# --------------------------------------------------------------------------- corrupted-data NCG study
def corrupted_ncg_table(models: dict, train_x: torch.Tensor, train_y: torch.Tensor, corrupted: str | os.PathLike,
                        corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES,
                        root=None, max_images: int | None = None, device=None, store=None,
                        label_map: dict[int, int] | None = None):
    """NCG paper §1.4 on a "-C" set: for every model, corruption and severity,
    :func:`setting_stats` of the model's predictions against the true labels and the labels of
    each corrupted image's nearest clean training image (L2, pixel space, ``train_x``).

    ``models``: method name → model. ``corruptions``: default every corruption the set holds.
    ``label_map``: None for the "nowo" variant (models trained on all classes); for the "wo"
    variant (class K held out) the set's label → the models' label, e.g.
    ``probelib.data.held_out_label_map(base, C, K)``: images of labels not in it (class K) are
    removed, the others relabelled. ``max_images``: use only the first images of each setting
    (smoke runs). Predictions and neighbours are cached in the artifact store. Returns a long
    DataFrame (one row per method × corruption × severity).
    """
    import pandas as pd

    from probelib.data import apply_label_map, as_tensors
    from probelib.metrics import predict_labels
    from probelib.neighbours import nearest_neighbours

    names = list(corruptions) if corruptions is not None else available_corruptions(corrupted, root)
    for c in names:
        _check_corruption(c)
    severities = [_check_severity(s, "severities") for s in severities]
    tag = Path(str(corrupted)).name
    rows = []
    for c in tqdm(names, desc="corruptions"):
        for s in severities:
            x, y = as_tensors(load_corrupted(corrupted, c, s, root))
            if label_map is not None:
                x, y = apply_label_map(x, y, label_map)
            if max_images is not None:
                x, y = x[:max_images], y[:max_images]
            nn_label = nearest_neighbours(train_x, train_y, x, store=store, name=f"{tag}-{c}-{s}",
                                          progress=False).label
            for method, model in models.items():
                pred = predict_labels(model, x, store=store, name=f"{tag}-{c}-{s}-{method}", device=device)
                rows.append({"method": method, "corruption": c, "severity": s,
                             **setting_stats(pred, y.numpy(), nn_label)})
    return pd.DataFrame(rows)


def ttest_counts(table, alpha: float = 0.05):
    """Per method: settings where accuracy on NCG-correct images is significantly higher (Welch,
    one-sided) than on NCG-incorrect ones, out of all settings."""
    import pandas as pd

    g = table.assign(significant=(table["t"] > 0) & (table["p"] < alpha)).groupby("method", sort=False)
    return pd.DataFrame({"significant": g["significant"].sum(), "settings": g.size()})


def compare_slopes(slopes, robust: str, natural: str = "natural"):
    """Per corruption: slope of the robust vs the natural model (``severity_slopes`` output) and
    Welch's t-test from the statistics (n = 5 levels, std = se), as the NCG notebooks do."""
    import pandas as pd
    from scipy.stats import ttest_ind_from_stats

    s = slopes.set_index(["method", "corruption"])
    rows = []
    for corr in s.loc[natural].index:
        if (robust, corr) not in s.index:
            continue
        a, b = s.loc[(robust, corr)], s.loc[(natural, corr)]
        t, p = ttest_ind_from_stats(a["slope"], a["se"], int(a["n"]), b["slope"], b["se"], int(b["n"]),
                                    equal_var=False)
        rows.append({"corruption": corr, f"slope_{robust}": a["slope"], f"slope_{natural}": b["slope"],
                     "t": t, "p": p})
    return pd.DataFrame(rows).set_index("corruption")


def plot_severity_trends(table, metric: str = "ncg", methods: Sequence[str] | None = None,
                         corruptions: Sequence[str] | None = None, cols: int = 5):
    """NCG paper Fig. 6: ``metric`` against level (severity−1)/4 per corruption, one colour per
    method, points and least-squares lines."""
    import matplotlib.pyplot as plt

    methods = list(methods or table["method"].unique())
    corruptions = list(corruptions or table["corruption"].unique())
    rows_n = math.ceil(len(corruptions) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.6 * cols, 2.2 * rows_n), squeeze=False, sharey=True)
    for ax, corr in zip(axes.flat, corruptions):
        for i, m in enumerate(methods):
            g = table[(table["corruption"] == corr) & (table["method"] == m)].sort_values("severity")
            level = (g["severity"].to_numpy(float) - 1) / 4
            ax.scatter(level, g[metric], s=12, color=f"C{i}", label=m)
            if len(g) >= 2:
                slope, icpt = np.polyfit(level, g[metric].to_numpy(float), 1)
                ax.plot([0, 1], [icpt, icpt + slope], color=f"C{i}", lw=1)
        ax.set_title(corr.replace("_", " "), fontsize=8)
        ax.set_xlabel("level", fontsize=7)
    for ax in list(axes.flat)[len(corruptions):]:
        ax.axis("off")
    axes[0, 0].set_ylabel(metric)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig
