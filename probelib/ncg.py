"""Nearest category generalization (NCG; Yang et al., TMLR) and its statistics (spec §1.3, §2, §9).

NCG = the fraction of out-of-distribution points x (all of them, no filtering) whose predicted
label equals the label of x's nearest training neighbour. Around it: a bootstrap 95 % interval,
the in-distribution NCG (seen-class test images), the χ² goodness-of-fit against the 1/C chance
rate exactly as the paper computes it, McNemar's paired test robust vs natural on the same
points, NCG in equal-count nearest-neighbour-distance bins with SEM, and the pipeline pieces the
NCG notebooks call (cached predictions and neighbours, feature splits, the NCG table, figures).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from probelib._util import INFERENCE_BATCH_SIZE, check_labels
from probelib.metrics import predict_labels
from probelib.report import Verdict
from probelib.stats import bootstrap_ci, chi_square_vs_chance, mcnemar, mcnemar_counts, pearson  # noqa: F401 (re-exported)
from probelib.store import Store, default_store, fingerprint

__all__ = ["agreement", "ncg", "bootstrap_ci", "chi_square_vs_chance", "mcnemar", "mcnemar_counts", "distance_bins",
           "pearson", "ncg_report", "feature_splits", "NCGInputs", "ncg_inputs", "ncg_table",
           "robust_better_counts", "chi_square_table", "load_splits", "suite_inputs", "train_ncg_model",
           "held_out_datasets", "method_label", "compare_verdict", "chance_verdict", "table_chance_verdict",
           "SpaceReport", "space_report", "distance_bin_table", "distance_bin_verdicts", "stack_tables"]


# ----------------------------------------------------------------------------- core statistics
def _labels(a, name: str, num_classes: int | None = None) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim == 2:  # logits N×C, or k-NN labels N×k (the first is the nearest)
        raise ValueError(f"{name} must be a 1-D vector of labels, got shape {a.shape}; pass "
                         "logits.argmax(1) for predictions or labels[:, 0] for the 1-NN labels")
    return check_labels(a.reshape(-1), num_classes, name)


def agreement(predictions, nn_labels) -> np.ndarray:
    """Boolean vector: prediction == label of the nearest training neighbour, per point."""
    p, l = _labels(predictions, "predictions"), _labels(nn_labels, "nn_labels")
    if len(p) != len(l):
        raise ValueError(f"predictions and nn_labels differ in length: {len(p)} vs {len(l)}")
    if len(p) == 0:
        raise ValueError("predictions and nn_labels are empty; NCG needs at least one point")
    return p == l


def ncg(predictions, nn_labels) -> float:
    """NCG: fraction of points whose prediction equals their 1-NN training label (all points count)."""
    return float(agreement(predictions, nn_labels).mean())


def distance_bins(distances, match, n_bins: int = 5) -> pd.DataFrame:
    """NCG in ``n_bins`` equal-count bins of the 1-NN distance (Fig. 5).

    Points are sorted by distance (stable), split with ``np.array_split`` (sizes differ by at most
    one); per bin: mean distance, NCG, ``scipy.stats.sem`` of the agreement indicator, n.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    m = np.asarray(match).astype(np.float64).reshape(-1)
    if len(d) != len(m):
        raise ValueError(f"distances and match differ in length: {len(d)} vs {len(m)}")
    if int(n_bins) != n_bins or not 1 <= n_bins <= len(d):
        raise ValueError(f"n_bins must be an integer in 1..{len(d)} (the number of points), got {n_bins!r}")
    order = np.argsort(d, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, int(n_bins))):
        rows.append({"bin": i, "mean_distance": float(d[idx].mean()), "min_distance": float(d[idx].min()),
                     "max_distance": float(d[idx].max()), "ncg": float(m[idx].mean()),
                     "sem": float(stats.sem(m[idx])) if len(idx) > 1 else float("nan"), "n": len(idx)})
    return pd.DataFrame(rows)


def ncg_report(predictions, nn_labels, num_classes: int, *, test_predictions=None,
               test_nn_labels=None, n_boot: int = 2000, seed: int = 0) -> dict:
    """One table row: NCG with its bootstrap 95 % interval, the χ² test against 1/C, and (when the
    test predictions and their 1-NN labels are given) the in-distribution NCG with its interval."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the seen classes), got {num_classes!r}")
    for arg, value in (("predictions", predictions), ("nn_labels", nn_labels),
                       ("test_predictions", test_predictions), ("test_nn_labels", test_nn_labels)):
        if value is not None:
            _labels(value, arg, int(num_classes))
    match = agreement(predictions, nn_labels)
    lo, hi = bootstrap_ci(match, n_boot=n_boot, seed=seed)
    chi = chi_square_vs_chance(match, num_classes)
    row = {"ncg": float(match.mean()), "ncg_lo": lo, "ncg_hi": hi, "n_ood": len(match),
           "chance": chi["chance"], "chi2": chi["chi2"], "chi2_p": chi["p"]}
    if test_predictions is not None and test_nn_labels is not None:
        tm = agreement(test_predictions, test_nn_labels)
        tlo, thi = bootstrap_ci(tm, n_boot=n_boot, seed=seed)
        row.update(in_dist_ncg=float(tm.mean()), in_dist_ncg_lo=tlo, in_dist_ncg_hi=thi)
    return row


# ----------------------------------------------------------------------------- pipeline pieces
def _store(store) -> Store | None:
    if store is False:
        return None
    return default_store() if store is None or store is True else store


def feature_splits(splits, backbone: torch.nn.Module, *, store: Store | None | bool = None,
                   device=None, batch_size: int = INFERENCE_BATCH_SIZE):
    """The same splits with images replaced by ``backbone.features`` (the frozen representation
    of a naturally trained model, spec §1.3); cached in the store by (weights, images, labels)."""
    from probelib.data import Splits, TensorSet, as_tensors
    from probelib.models import extract_features

    parts = {"train": as_tensors(splits.train), "test": as_tensors(splits.test)}
    if splits.ood is not None:
        parts["ood"] = as_tensors(splits.ood)

    def compute():
        out = {}
        for part, (x, y) in parts.items():
            out[f"{part}_x"] = extract_features(backbone, x, batch_size=batch_size, device=device, desc=None).numpy()
            out[f"{part}_y"] = y.numpy()
        return out

    st = _store(store)
    if st is None:
        arrays = compute()
    else:
        key = fingerprint("features-v2", backbone, parts)  # images and labels: the labels are stored too
        arrays = st.cached_arrays("features", f"{splits.name}-{type(backbone).__name__}", key, compute)
    sets = {p: TensorSet(torch.from_numpy(arrays[f"{p}_x"]), torch.from_numpy(arrays[f"{p}_y"]))
            for p in parts}
    return Splits(f"{splits.name}-features", splits.base, sets["train"], sets["test"], splits.num_classes,
                  list(splits.class_names), held_out=splits.held_out, held_out_name=splits.held_out_name,
                  ood=sets.get("ood"), image_shape=tuple(sets["train"].x.shape[1:]))


@dataclass(frozen=True, eq=False)
class NCGInputs:
    """Everything NCG needs for one model on one dataset (:func:`ncg_inputs`): the model's
    predictions and the true labels of each split, and the 1-NN (label, distance, training index)
    of every OOD and every test point in the training split. Arrays are numpy, one entry per point."""

    train_pred: np.ndarray
    train_y: np.ndarray
    test_pred: np.ndarray
    test_y: np.ndarray
    ood_pred: np.ndarray
    ood_nn_label: np.ndarray
    ood_nn_distance: np.ndarray
    ood_nn_index: np.ndarray
    test_nn_label: np.ndarray
    test_nn_distance: np.ndarray
    num_classes: int

    @property
    def match(self) -> np.ndarray:
        """Per OOD point: prediction == label of its nearest training neighbour."""
        return self.ood_pred == self.ood_nn_label

    @property
    def ncg(self) -> float:
        """NCG of these inputs (:func:`ncg`)."""
        return ncg(self.ood_pred, self.ood_nn_label)


def ncg_inputs(model: torch.nn.Module, splits, *, store: Store | None | bool = None, device=None,
               normalise=None, name: str | None = None) -> NCGInputs:
    """Everything NCG needs for one model on one dataset (:class:`NCGInputs`), computed once and
    cached in the store.

    ``splits`` holds images (pixel-space NCG) or features from :func:`feature_splits`
    (feature-space NCG with a second-stage MLP): the neighbours are taken in whatever
    ``splits`` holds, against its training split (seen classes only, spec §1.2).
    """
    from probelib.data import as_tensors
    from probelib.neighbours import nearest_neighbours

    if splits.ood is None:
        raise ValueError(f"dataset {splits.name!r} has no held-out class; NCG needs a …wo<K> dataset "
                         "such as 'mnist5kwo9'")
    name = name or splits.name
    (trx, try_), (tex, tey), (oox, _) = as_tensors(splits.train), as_tensors(splits.test), as_tensors(splits.ood)
    ood_nn = nearest_neighbours(trx, try_, oox, normalise=normalise, store=store, name=f"{name}-ood", progress=False)
    test_nn = nearest_neighbours(trx, try_, tex, normalise=normalise, store=store, name=f"{name}-test", progress=False)
    pred = {part: predict_labels(model, x, store=store, name=f"{name}-{part}", device=device)
            for part, x in (("train", trx), ("test", tex), ("ood", oox))}
    return NCGInputs(train_pred=pred["train"], train_y=try_.numpy(), test_pred=pred["test"], test_y=tey.numpy(),
                     ood_pred=pred["ood"], ood_nn_label=ood_nn.label, ood_nn_distance=ood_nn.distance,
                     ood_nn_index=ood_nn.index, test_nn_label=test_nn.label, test_nn_distance=test_nn.distance,
                     num_classes=int(splits.num_classes))


def ncg_table(inputs: Mapping[str, NCGInputs], natural: str = "natural",
              n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The NCG table (Tables 1–2) for models on one dataset: ``inputs`` maps a method name to its
    :class:`NCGInputs`. Per method: train/test accuracy with 95 % intervals, NCG with its
    interval, in-distribution NCG, χ² vs chance; for the others, whether NCG beats ``natural``'s
    and McNemar's paired test against it on the same OOD points."""
    if not inputs:
        raise ValueError("inputs is empty; pass {method: ncg_inputs(...)} for at least one model")
    rows = []
    base = inputs.get(natural)
    for method, a in inputs.items():
        train_ok, test_ok = a.train_pred == a.train_y, a.test_pred == a.test_y
        row = {"method": method, "train_acc": float(train_ok.mean()), "test_acc": float(test_ok.mean())}
        row["train_acc_lo"], row["train_acc_hi"] = bootstrap_ci(train_ok, n_boot=n_boot, seed=seed)
        row["test_acc_lo"], row["test_acc_hi"] = bootstrap_ci(test_ok, n_boot=n_boot, seed=seed)
        row.update(ncg_report(a.ood_pred, a.ood_nn_label, a.num_classes, test_predictions=a.test_pred,
                              test_nn_labels=a.test_nn_label, n_boot=n_boot, seed=seed))
        row["mean_nn_distance"] = float(np.mean(a.ood_nn_distance))
        if base is not None and method != natural:
            if len(base.ood_nn_label) != len(a.ood_nn_label) or not np.array_equal(base.ood_nn_label, a.ood_nn_label):
                raise ValueError(f"{method!r} and {natural!r} were scored against different neighbours; "
                                 "McNemar's test needs the same OOD points and 1-NN labels")
            test = mcnemar(a.match, base.match)
            row.update(gain_vs_natural=row["ncg"] - float(np.mean(base.match)),
                       robust_gt_natural=bool(row["ncg"] > np.mean(base.match)),
                       mcnemar_b=test["b"], mcnemar_c=test["c"], mcnemar_p=test["p"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def robust_better_counts(tables: Mapping[str, pd.DataFrame], natural: str = "natural") -> pd.DataFrame:
    """Over datasets (``{dataset: ncg_table}``), how many have each method's NCG above natural's
    (spec §7D), and how many of those are significant by McNemar (p < 0.05)."""
    counts: dict[str, dict] = {}
    for table in tables.values():
        for method, row in table.iterrows():
            if method == natural or "robust_gt_natural" not in row or pd.isna(row["robust_gt_natural"]):
                continue
            c = counts.setdefault(method, {"better": 0, "better_significant": 0, "datasets": 0})
            c["datasets"] += 1
            c["better"] += int(bool(row["robust_gt_natural"]))
            c["better_significant"] += int(bool(row["robust_gt_natural"]) and row["mcnemar_p"] < 0.05)
    return pd.DataFrame.from_dict(counts, orient="index")


def chi_square_table(inputs: Mapping[str, NCGInputs]) -> pd.DataFrame:
    """Table 1's χ² test for several (dataset, model) entries: ``{label: ncg_inputs(...)}``."""
    rows = []
    for label, a in inputs.items():
        res = chi_square_vs_chance(a.match, a.num_classes)
        rows.append({"setting": label, **res})
    return pd.DataFrame(rows).set_index("setting")


# ----------------------------------------------------------------------------- notebook pipeline
ROBUST_METHODS = ("trades", "at")
IMAGENET_LIKE = ("imgnet100", "imagenet", "imagenet-v2", "stylized-imagenet", "tinyimagenet")
#: Smoke-run training: one epoch on a stratified 128-point subsample (every other setting as the paper's).
SMOKE_TRAINING = {"epochs": 1, "max_train": 128}


def load_splits(dataset: str):
    """``load_dataset`` memoised within a process (notebooks ask for the same set many times), by
    name and by the content fingerprint of the dataset's files: files replaced meanwhile are read anew."""
    from probelib.data import data_fingerprint

    return _load_splits(dataset, data_fingerprint(dataset))


@functools.lru_cache(maxsize=4)
def _load_splits(dataset: str, fingerprint: str):
    from probelib.data import load_dataset

    splits = load_dataset(dataset)
    if splits.fingerprint not in (None, fingerprint):
        from probelib.data import DataChangedError
        raise DataChangedError(f"the files of dataset {dataset!r} changed while they were read; load it again")
    return splits


def method_label(method: str, eps: float | None = None) -> str:
    """Table label of a training method: ``natural``, ``TRADES(2)``, ``AT(2)``, ``mixup``."""
    if method in ROBUST_METHODS:
        return f"{method.upper() if method == 'at' else 'TRADES'}({eps:g})"
    return method


def held_out_datasets(dataset: str, held_out: Sequence[int] | int | None = None) -> list[str]:
    """Dataset names for held-out classes ``held_out`` of ``dataset``'s base (``None``: ``[dataset]``).

    ``held_out_datasets("mnist5kwo9", [0, 4])`` -> ``["mnist5kwo0", "mnist5kwo4"]``.
    """
    from probelib.data import parse_name

    base, k = parse_name(dataset)
    if held_out is None:
        if k is None:
            raise ValueError(f"dataset {dataset!r} holds no class out; NCG needs e.g. {base + 'wo9'!r} "
                             "or held_out=[K, ...]")
        return [dataset]
    ks = [held_out] if isinstance(held_out, int) else list(held_out)
    if not ks:
        raise ValueError("held_out is empty; pass a list of held-out classes such as [9] or None")
    names = [f"{base}wo{int(k)}" for k in ks]
    for n in names:
        parse_name(n)  # range check with a helpful message
    return names


def train_ncg_model(dataset: str, method: str, eps: float = 2.0, *, splits=None, space: str = "pixel",
                    smoke: bool = False, device=None, store=None):
    """Train (or load from the store) the NCG model for ``dataset``/``method``: CNN002 on the images
    (``space="pixel"``), or a LargeMLP on ``splits`` = :func:`feature_splits` (``"feature"``), with
    the paper's settings (``probelib.training.default_config``). ``smoke``: :data:`SMOKE_TRAINING`."""
    from probelib.training import default_config, train_or_load

    kwargs: dict = {"method": method}
    if method in ROBUST_METHODS:
        kwargs["eps"] = float(eps)
    if space == "feature":
        if splits is None:
            raise ValueError("space='feature' needs splits=feature_splits(images, natural_backbone)")
        kwargs["space"] = "feature"
    cfg = default_config(dataset, **kwargs)
    if smoke:
        cfg = cfg.replace(**SMOKE_TRAINING)
    model, _history = train_or_load(cfg, splits=splits, device=device, store=store)
    model.eval()
    return model


def suite_inputs(dataset: str, methods: Sequence[str], eps: float = 2.0, *, space: str = "pixel",
                 smoke: bool = False, device=None, store=None) -> dict[str, NCGInputs]:
    """``{method label: ncg_inputs(...)}`` for one dataset: trains or loads each model and
    computes (or loads) its predictions and neighbours. Feature space: second-stage MLPs on the
    frozen representation of the natural pixel model (spec §1.3)."""
    from probelib._util import check_choice

    check_choice("space", space, ("pixel", "feature"))
    for m in methods:
        check_choice("method", m, ("natural", "trades", "at", "mixup"))
    st = _store(store)
    splits = load_splits(dataset)
    if space == "feature":
        backbone = train_ncg_model(dataset, "natural", smoke=smoke, device=device, store=st)
        splits = feature_splits(splits, backbone, store=st if st is not None else False, device=device)
    # spec §1.2: ImageNet-like sets are searched after ImageNet mean/std normalisation
    normalise = "imagenet" if space == "pixel" and splits.base in IMAGENET_LIKE else None
    out = {}
    for m in methods:
        model = train_ncg_model(dataset, m, eps, splits=splits if space == "feature" else None, space=space,
                                smoke=smoke, device=device, store=st)
        out[method_label(m, eps)] = ncg_inputs(model, splits, store=st if st is not None else False,
                                               device=device, normalise=normalise, name=f"{dataset}-{space}-{m}")
    return out


def compare_verdict(table: pd.DataFrame, method: str, space: str, dataset: str, natural: str = "natural") -> str:
    """Verdict text: does ``method``'s NCG beat natural's (with McNemar's p on the same points)?

    For a robust method (TRADES, AT) it is a :class:`~probelib.report.Verdict` for the report's claim
    table (the paper's direction: YES); for any other method a plain line."""
    r, n = table.loc[method], table.loc[natural]
    yes = "YES" if r["ncg"] > n["ncg"] else "NO"
    robust = method.split("(")[0].lower() in ROBUST_METHODS
    claim = f"{'robust' if robust else method} > natural NCG ({space}, {method}, {dataset})"
    text = f"{claim}: {yes} ({r['ncg']:.3f} vs {n['ncg']:.3f}; McNemar p={r['mcnemar_p']:.3g})"
    if not robust:
        return text
    return Verdict(text, claim=f"{method} > natural NCG ({space}, {dataset})", paper="YES", result=yes,
                   p=r["mcnemar_p"])


def chance_verdict(ood_pred, nn_label, num_classes: int, what: str) -> Verdict:
    """Verdict: is NCG above the 1/C chance rate (χ² goodness-of-fit, p < 0.05)? The paper's
    direction is YES."""
    res = chi_square_vs_chance(np.asarray(ood_pred) == np.asarray(nn_label), num_classes)
    yes = "YES" if res["ncg"] > res["chance"] and res["p"] < 0.05 else "NO"
    text = (f"NCG above chance ({what}): {yes} ({res['ncg']:.3f} vs 1/{num_classes}={res['chance']:.3f}; "
            f"χ²={res['chi2']:.1f}, p={res['p']:.3g})")
    return Verdict(text, claim=f"NCG above chance ({what})", paper="YES", result=yes, p=res["p"])


def table_chance_verdict(row: pd.Series, what: str) -> Verdict:
    """Verdict from one :func:`ncg_table` row: is its NCG above chance (χ² p < 0.05)? Paper: YES."""
    above = "YES" if row["ncg"] > row["chance"] and row["chi2_p"] < 0.05 else "NO"
    return Verdict(f"NCG above chance ({what}): {above} ({row['ncg']:.3f} vs {row['chance']:.3f}; "
                   f"χ² p={row['chi2_p']:.3g})", claim=f"NCG above chance ({what})", paper="YES",
                   result=above, p=row["chi2_p"])


@dataclass(frozen=True, eq=False)
class SpaceReport:
    """Notebook 01 (``01_ncg_tables``) for one space: ``tables`` (``{dataset: ncg_table}``), ``table`` (stacked,
    saved as ``<space>_ncg``), ``counts`` (:func:`robust_better_counts`, ``<space>_robust_better_counts``)
    and ``verdicts`` (per dataset: each method against natural, then natural's NCG against chance)."""

    space: str
    tables: dict[str, pd.DataFrame]
    table: pd.DataFrame
    counts: pd.DataFrame
    verdicts: list[str]

    def publish(self, results_dir) -> None:
        """Save ``<space>_ncg`` and ``<space>_robust_better_counts`` under ``results_dir`` and report
        every verdict (into the run's report)."""
        from probelib.report import save_table, verdict
        save_table(self.table, f"{self.space}_ncg", results_dir)
        save_table(self.counts, f"{self.space}_robust_better_counts", results_dir)
        for v in self.verdicts:
            verdict(v)


def space_report(datasets: Sequence[str], space: str, methods: Sequence[str], eps: float = 2.0, *,
                 smoke: bool = False, device=None, store=None) -> SpaceReport:
    """Tables 1–2 in ``space`` (``"pixel"``: CNN002 on the images; ``"feature"``: LargeMLPs on the
    natural model's frozen features) for each dataset, with their verdicts (:class:`SpaceReport`)."""
    tables = {name: ncg_table(suite_inputs(name, methods, eps, space=space, smoke=smoke, device=device, store=store))
              for name in datasets}
    verdicts: list[str] = []
    for name, table in tables.items():
        verdicts += [compare_verdict(table, m, space, name) for m in table.index.drop("natural", errors="ignore")]
        verdicts.append(table_chance_verdict(table.loc["natural"], f"{space}, natural, {name}"))
    return SpaceReport(space, tables, stack_tables(tables), robust_better_counts(tables), verdicts)


def distance_bin_table(inputs: Mapping[tuple[str, str, str], NCGInputs], n_bins: int = 5
                       ) -> tuple[dict[tuple[str, str, str], pd.DataFrame], pd.DataFrame]:
    """Fig. 5's bins (:func:`distance_bins`) for ``{(dataset, space, method): NCGInputs}``: the bins
    per key and one table indexed by (dataset, space, method, bin)."""
    bins = {key: distance_bins(a.ood_nn_distance, a.match, n_bins=n_bins) for key, a in inputs.items()}
    table = pd.concat([b.assign(dataset=d, space=s, method=m) for (d, s, m), b in bins.items()])
    return bins, table.set_index(["dataset", "space", "method", "bin"])


def distance_bin_verdicts(bins: Mapping[tuple[str, str, str], pd.DataFrame], natural: str = "natural"
                          ) -> list[Verdict]:
    """Per (dataset, space, method) other than ``natural``: does its NCG beat natural's in most
    distance bins? The paper's direction is YES."""
    out = []
    for (name, space, method), b in bins.items():
        if method == natural:
            continue
        wins = int((b["ncg"].values > bins[name, space, natural]["ncg"].values).sum())
        most = "YES" if wins > len(b) / 2 else "NO"
        out.append(Verdict(f"robust > natural NCG in most distance bins ({space}, {method}, {name}): {most} "
                           f"({wins}/{len(b)} bins)", claim=f"{method} > natural NCG in most distance bins "
                           f"({space}, {name})", paper="YES", result=most))
    return out


def stack_tables(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-dataset tables into one with a (dataset, method) index."""
    return pd.concat(tables, names=["dataset"])
