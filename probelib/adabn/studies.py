"""The studies of Burns & Steinhardt (and NCG under AdaBN), each returning a tidy DataFrame that notebooks
30–33 render: the shift grid, label shift, the black border, BN statistics source vs adapted, NCG under
AdaBN, and TENT's CIFAR-10-C table. Every study takes its AdaBN options as one
:class:`~probelib.adabn.core.AdaBNSettings` (``adabn=``) and TENT's as one
:class:`~probelib.tent.TentSettings` (``tent=``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from probelib._util import check_images_or_features
from probelib.adabn.arms import (_TENT_ARMS, ARMS, DEFAULT_CORRUPTIONS, _as_pair, _check_arms, _check_xy,
                                 _corrupted_source, _label_table, _subsampled, _working_copy, arm_logits,
                                 evaluate_arms)
from probelib.adabn.core import AdaBNSettings, _require_bn, adapt_bn, bn_layers, exclude_first, exclude_last
from probelib.data.core import subsample
from probelib.stats import mcnemar, mcnemar_counts

if TYPE_CHECKING:  # probelib.tent imports probelib.adabn.core
    from probelib.tent import TentSettings

__all__ = ["shift_grid", "adabn_gains", "paired_gains", "PAPER_MS", "PAPER_BN_LAYERS", "paper_ms", "label_shift",
           "BORDER_FILLS", "add_border", "black_border_study", "bn_statistics", "bn_statistics_shift",
           "bn_statistics_comparison", "ncg_under_adabn", "TENT_REFERENCE", "tent_table"]


def shift_grid(model: nn.Module, corrupted, corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
               severities: Sequence[int] = (1, 2, 3, 4, 5), *, arms: Sequence[str] = ARMS,
               adabn: AdaBNSettings | None = None, tent: TentSettings | None = None,
               clean: tuple[torch.Tensor, torch.Tensor] | None = None, extra: dict | None = None,
               n_images: int | None = None, calibration: str = "complete",
               tent_severities: Sequence[int] | None = None) -> pd.DataFrame:
    """The AdaBN shift grid: corruptions × severities × arms (+ ``clean`` and ``extra`` sets).

    Args:
        model: the source model (never modified; a working copy is adapted in place and
            restored after every setting).
        corrupted: a corrupted-set name (``"mnist5k-c"``) or the path of a folder in a "-C" layout
            (both read with ``probelib.corruptions.load_corrupted``), or a callable
            (corruption, severity) -> (x, y).
        clean: optional clean test set ``(x, y)``, reported as corruption ``"clean"``, severity 0.
        extra: optional ``{name: (x, y)}`` of other shifted sets (ImageNet-v2, Stylized-ImageNet).
        adabn: the AdaBN arms' :class:`~probelib.adabn.core.AdaBNSettings` (None: the defaults —
            exact statistics, ``adabn+aug`` with the training augmentation, the whole set in one
            statistics batch when it is small, device cuda when present); its ``seed`` also draws
            the ``n_images`` subsets.
        n_images: score (and adapt on) about this many images of every set, the same stratified
            seeded subset each time (:func:`probelib.data.subsample`); None = all.
        calibration: RMS calibration variant, ``"complete"`` (every bin) or ``"burns"`` (the
            authors' ``calib_err``); named in the ``calibration`` column.
        arms: any of :data:`ALL_ARMS`; default Burns & Steinhardt's three. ``norm`` and ``tent``
            (TENT's arms, :mod:`probelib.tent`) adapt batch by batch in the set's order from the
            source weights in every setting (episodic reset per corruption × severity);
            ``tent``: their :class:`probelib.tent.TentSettings` (None = one Adam step, lr 1e-3,
            per batch of 128).
        tent_severities: score TENT's arms only at these severities (e.g. ``[5]``, TENT's own table;
            the clean and extra sets then without them); None = every setting.

    Returns one row per (corruption, severity, arm): accuracy, confidence, rms_calibration,
    ece, n, ``momentum`` naming the statistics estimate, ``calibration`` naming the variant and,
    for the adapted arms when ``source`` is among ``arms``, ``gained`` / ``lost`` / ``p_value`` (McNemar against source, see
    :func:`evaluate_arms`); TENT's arms also ``vs_adabn`` / ``gained_vs_adabn`` /
    ``lost_vs_adabn`` / ``p_value_vs_adabn`` (McNemar against the AdaBN arm) when one is among ``arms``.
    """
    from tqdm.auto import tqdm
    arms = _check_arms(arms, model)
    for name, xy in (({"clean": clean} if clean is not None else {}) | dict(extra or {})).items():
        if isinstance(xy, (tuple, list)) and len(xy) == 2:  # in-memory sets: checked before any work
            _check_xy(*_as_pair(xy), name)
    seed = (adabn or AdaBNSettings()).seed
    load = _subsampled(_corrupted_source(corrupted), n_images, seed)
    for s in [*severities, *(tent_severities or [])]:
        if int(s) != s or not 1 <= s <= 5:
            raise ValueError(f"severities and tent_severities must be integers in 1..5, got {s!r}")
    work, adabn = _working_copy(model, adabn)
    settings = [("clean", 0)] if clean is not None else []
    settings += [(name, 0) for name in (extra or {})]
    settings += [(c, int(s)) for c in corruptions for s in severities]
    rows = []
    for name, sev in tqdm(settings, desc="AdaBN shift grid"):
        if name == "clean" and sev == 0 and clean is not None:
            x, y = subsample(_as_pair(clean), n_images, seed=seed)
        elif sev == 0:
            x, y = subsample(_as_pair(extra[name]), n_images, seed=seed)
        else:
            x, y = load(name, sev)
        _check_xy(x, y, f"the {name} severity {sev} set")  # a callable or Dataset may hold 0–255 pixels
        x = x.to(adabn.device)  # decoded once, used by every arm
        here = arms if tent_severities is None or sev in tent_severities else [a for a in arms if a not in _TENT_ARMS]
        if not here:
            continue
        for r in evaluate_arms(work, x, torch.as_tensor(y), here, adabn=adabn, tent=tent, calibration=calibration):
            rows.append({"corruption": name, "severity": sev, **r})
    return _label_table(pd.DataFrame(rows), adabn, calibration)


def adabn_gains(grid: pd.DataFrame, metric: str = "accuracy", by: str = "corruption") -> pd.DataFrame:
    """Per ``by`` (default corruption, averaged over severities): each adapted arm's ``metric``
    minus the source arm's, as columns ``adabn`` / ``adabn+aug`` (the bar chart's data)."""
    table = grid.pivot_table(index=[by, "severity"] if by != "severity" else ["corruption", by],
                             columns="arm", values=metric)
    if "source" not in table:
        raise ValueError("the grid has no 'source' arm to compare with")
    table = table.dropna(axis=1)  # an arm scored on some settings only (tent_severities): its mean is not comparable
    gains = table.drop(columns="source").sub(table["source"], axis=0)
    return gains.groupby(level=by).mean()


def paired_gains(grid: pd.DataFrame, arm: str = "adabn", by: str = "corruption") -> pd.DataFrame:
    """Per ``by`` (default corruption, its severities pooled): mean accuracy gain of ``arm`` over
    ``source`` and McNemar's test on the pooled per-image counts — ``gained`` (right only when
    adapted), ``lost`` (right only with the source statistics), ``p_value``. Pooling treats the same
    image at different severities as separate pairs, as :func:`ncg_under_adabn` does."""
    sub = grid[grid["arm"] == arm]
    if sub.empty:
        raise ValueError(f"the grid has no {arm!r} arm; it has {sorted(set(grid['arm']))}")
    grid = grid.merge(sub[["corruption", "severity"]].drop_duplicates())  # the settings ``arm`` was scored on
    if not {"gained", "lost"} <= set(sub.columns) or sub[["gained", "lost"]].isna().any().any():
        raise ValueError("the grid has no per-image counts against the source arm (columns gained/lost): "
                         "compute it with shift_grid with 'source' among the arms")
    counts = sub.groupby(by)[["gained", "lost"]].sum().astype(int)
    out = adabn_gains(grid, by=by)[[arm]].rename(columns={arm: "gain"}).join(counts)
    out["p_value"] = [mcnemar_counts(r.lost, r.gained)["p"] for r in out.itertuples()]
    return out


#: Burns & Steinhardt's label-shift m values and the depth they were chosen for: WideResNet-40-2
#: has 37 BN layers, so m = 16 still adapts 21 of them.
PAPER_MS = (0, 1, 4, 16)
PAPER_BN_LAYERS = 37


def _paper_ms_pairs(n_bn_layers: int, ms: Sequence[int], reference: int) -> list[tuple[int, int]]:
    if int(n_bn_layers) != n_bn_layers or n_bn_layers < 1:
        raise ValueError(f"n_bn_layers must be an integer >= 1, got {n_bn_layers!r}")
    pairs: list[tuple[int, int]] = []
    for m in ms:
        scaled = round(m * n_bn_layers / reference)
        if m > 0 and pairs:
            scaled = max(scaled, pairs[-1][1] + 1)
        pairs.append((int(m), min(scaled, n_bn_layers - 1)))
    return pairs


def paper_ms(n_bn_layers: int, ms: Sequence[int] = PAPER_MS, reference: int = PAPER_BN_LAYERS) -> list[int]:
    """The paper's m values (BN layers left unadapted) rescaled to a model with ``n_bn_layers``:
    round(m · n / 37), each non-zero m at least one more than the previous, and at most n − 1 so
    that every m leaves at least one layer adapted; duplicates dropped. ``paper_ms(37)`` gives
    (0, 1, 4, 16); the embedded WRN-16-1 (13 BN layers) gets (0, 1, 2, 6)."""
    return list(dict.fromkeys(m for _, m in _paper_ms_pairs(n_bn_layers, ms, reference)))


def label_shift(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, ks: Sequence[int] = (1, 3, 6, 10),
                ms: Sequence[int] | None = None, exclude: Sequence[str] = ("last",), arm: str = "adabn+aug",
                arms: Sequence[str] | None = None, adabn: AdaBNSettings | None = None,
                tent: TentSettings | None = None, calibration: str = "complete") -> pd.DataFrame:
    """Label shift (Burns & Steinhardt's label_shift_experiment): keep classes {0..k−1} of
    ``(x, y)``, adapt on them (arm ``adabn+aug`` by default) while leaving the last (or first)
    ``m`` BN layers unadapted. ``adabn``: the AdaBN settings (as :func:`shift_grid`; its ``layers``
    is set per row by ``ms`` and ``exclude``).

    ``arms``: several adapted arms at once (None = ``[arm]``), e.g. ``["adabn+aug", "norm",
    "tent"]``: TENT's arms then adapt only the selected layers too (the others keep the source
    statistics and affine parameters), each (m, k) a fresh episode from the source weights, with
    ``tent`` their :class:`probelib.tent.TentSettings`; their rows carry McNemar against the AdaBN
    arm (``vs_adabn``, ``gained_vs_adabn``, ``lost_vs_adabn``, ``p_value_vs_adabn``) as well.

    ``ms=None`` (default): the paper's m ∈ {0, 1, 4, 16} of WRN-40-2's 37 BN layers, rescaled to
    this model's depth (:func:`paper_ms`), so every row adapts at least one layer, as every row of
    the paper does. Explicit ``ms`` are numbers of layers; one that leaves no layer adapted is an
    error (such a row is the source model and would make "freezing limits the damage" true by
    construction).

    Returns one row per (exclude, m, k, arm): ``accuracy`` (adapted), ``source_accuracy``, ``gain``,
    confidence and calibration of the adapted model, ``gained`` / ``lost`` / ``p_value`` (McNemar
    against the source model on the same images, as :func:`evaluate_arms`), ``n``,
    ``n_bn_layers``, ``adapted_layers``, ``m_paper`` (the paper's m this row stands for; None
    for explicit ``ms``), ``momentum`` and ``calibration`` (the RMS calibration variant).
    """
    from probelib.metrics import accuracy, predict
    arms = _check_arms([arm] if arms is None else arms, model)
    if "source" in arms:
        raise ValueError("label_shift compares every arm with the source model itself (source_accuracy, gain); "
                         f"arms must name adapted arms only, got {list(arms)}")
    y = _check_xy(x, y, "label_shift")
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"ks must hold integers >= 1 (number of classes kept), got {k!r}")
        if not (y < k).any():
            raise ValueError(f"keeping classes 0..{k - 1} (k={k}) leaves no images: the labels present are "
                             f"{sorted(set(y.tolist()))[:20]}; choose k so that some labels are below it")
    for e in exclude:
        if e not in ("last", "first"):
            raise ValueError(f"exclude must hold 'last' and/or 'first', got {e!r}")
    n_bn = len(bn_layers(model))
    if ms is None:
        stands_for: dict[int, int | None] = {}
        for m_p, m in _paper_ms_pairs(n_bn, PAPER_MS, PAPER_BN_LAYERS):
            stands_for.setdefault(m, m_p)  # the smallest paper m a rescaled m stands for
        chosen = list(stands_for)
    else:
        for m in ms:
            if int(m) != m or m < 0:
                raise ValueError(f"ms must hold integers >= 0 (BN layers left unadapted), got {m!r}")
            if m >= n_bn:
                raise ValueError(f"m={m} adapts no BN layer: the model has {n_bn}, so that row would be the "
                                 f"source model; pass m < {n_bn}, or ms=None for the paper's (0, 1, 4, 16) "
                                 f"of {PAPER_BN_LAYERS} layers rescaled to this depth: {paper_ms(n_bn)}")
        chosen = sorted({int(m) for m in ms})
        stands_for = {m: None for m in chosen}
    work, adabn = _working_copy(model, adabn)
    device = adabn.device
    source_logits = predict(work, x, batch_size=adabn.eval_batch(device), device=device, desc=None)
    rows = []
    every_layer: dict[int, list[dict]] = {}  # m = 0 adapts every layer whichever end is excluded: scored once
    from tqdm.auto import tqdm
    for e in exclude:
        selector = exclude_last if e == "last" else exclude_first
        for m in tqdm(chosen, desc=f"label shift (exclude {e})", leave=False):
            for k in ks:
                keep = y < k
                xk, yk = x[keep].to(device), y[keep]
                src_correct = source_logits[keep].argmax(1) == yk
                src = accuracy(source_logits[keep], yk)
                if m == 0 and k in every_layer:
                    scored = every_layer[k]
                else:
                    scored = list(evaluate_arms(work, xk, yk, arms, adabn=adabn.replace(layers=selector(m)),
                                                tent=tent, source_correct=src_correct, calibration=calibration))
                    if m == 0:
                        every_layer[k] = scored
                for r in scored:
                    rows.append({"exclude": e, "m": m, "k": int(k), "arm": r["arm"], "accuracy": r["accuracy"],
                                 "source_accuracy": src, "gain": r["accuracy"] - src,
                                 "confidence": r["confidence"], "rms_calibration": r["rms_calibration"],
                                 "ece": r["ece"], "gained": r["gained"], "lost": r["lost"],
                                 "p_value": r["p_value"], "n": r["n"], "n_bn_layers": n_bn,
                                 "adapted_layers": n_bn - m, "m_paper": stands_for[m],
                                 **{c: r[c] for c in ("tent_settings", "vs_adabn", "gained_vs_adabn",
                                                      "lost_vs_adabn", "p_value_vs_adabn") if c in r}})
    return _label_table(pd.DataFrame(rows), adabn, calibration)


#: The fill of each border of the black-border study (``None``: no border).
BORDER_FILLS = {"none": None, "black": 0.0, "white": 1.0}


def add_border(x: torch.Tensor, fill: float = 0.0, s: int | None = None) -> torch.Tensor:
    """Burns & Steinhardt's border: centre-crop to size − 2s and pad ``s`` pixels of ``fill`` on
    each side (``s = size // 4`` by default: at 32 px only the central 16×16 survives)."""
    if x.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    s = min(h, w) // 4 if s is None else int(s)
    if not 0 <= 2 * s < min(h, w):
        raise ValueError(f"border s={s} must satisfy 0 <= 2s < image size {min(h, w)}")
    out = torch.full_like(x, float(fill))
    out[..., s:h - s, s:w - s] = x[..., s:h - s, s:w - s]
    return out


def black_border_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       borders: Sequence[str] = ("none", "black", "white"), *, arms: Sequence[str] = ARMS,
                       adabn: AdaBNSettings | None = None, tent: TentSettings | None = None,
                       calibration: str = "complete") -> pd.DataFrame:
    """The black-border shift (zero fill) and, for dark-background data such as MNIST, a white
    border (fill 1), each under ``arms`` (default the three AdaBN arms; ``norm`` and ``tent``
    opt-in, with ``tent`` their :class:`probelib.tent.TentSettings`, each border a fresh episode
    from the source weights; ``adabn`` the AdaBN settings, as :func:`shift_grid`); ``none`` is the
    unbordered set for reference.
    In ``adabn+aug`` the statistics pass applies crop(+flip) after the border. Rows as
    :func:`evaluate_arms` (with ``gained`` / ``lost`` / ``p_value`` against source and, for TENT's
    arms, ``*_vs_adabn`` against AdaBN) plus ``border``, ``momentum`` and ``calibration`` (the RMS
    calibration variant, ``"complete"`` or ``"burns"``)."""
    arms = _check_arms(arms, model)
    fills = BORDER_FILLS
    for b in borders:
        if b not in fills:
            from probelib._util import unknown_name
            raise unknown_name("border", b, fills)
    y = _check_xy(x, y, "black_border_study")
    work, adabn = _working_copy(model, adabn)
    rows = []
    for b in borders:
        xb = x if fills[b] is None else add_border(x, fills[b])
        for r in evaluate_arms(work, xb.to(adabn.device), y, arms, adabn=adabn, tent=tent, calibration=calibration):
            rows.append({"border": b, **r})
    return _label_table(pd.DataFrame(rows), adabn, calibration)


def bn_statistics(model: nn.Module, per_channel: bool = False) -> pd.DataFrame:
    """Per-layer BN running statistics.

    ``per_channel=False``: one row per layer with ``layer`` (index), ``name``, ``channels``,
    ``mean`` (average running mean), ``var`` (average running variance), ``mean_abs`` and
    ``log_var`` (average log running variance). ``per_channel=True``: one row per channel with
    ``layer``, ``name``, ``channel``, ``running_mean``, ``running_var``.
    """
    rows = []
    for i, (name, m) in enumerate(bn_layers(model)):
        mean = m.running_mean.detach().double().cpu().numpy()
        var = m.running_var.detach().double().cpu().numpy()
        if per_channel:
            rows += [{"layer": i, "name": name, "channel": c, "running_mean": mean[c],
                      "running_var": var[c]} for c in range(len(mean))]
        else:
            rows.append({"layer": i, "name": name, "channels": len(mean), "mean": mean.mean(),
                         "var": var.mean(), "mean_abs": np.abs(mean).mean(),
                         "log_var": np.log(np.maximum(var, 1e-12)).mean()})
    return pd.DataFrame(rows)


def bn_statistics_shift(source: nn.Module, adapted_model: nn.Module) -> pd.DataFrame:
    """Per layer, how far the adapted statistics moved from the source ones: ``mean_shift``
    (RMS over channels of the mean difference divided by the source std) and ``log_var_ratio``
    (average over channels of log(adapted var / source var))."""
    rows = []
    a_layers = bn_layers(adapted_model)
    s_layers = bn_layers(source)
    if len(a_layers) != len(s_layers):
        raise ValueError("source and adapted models have different numbers of BN layers")
    for i, ((name, s), (_, a)) in enumerate(zip(s_layers, a_layers)):
        sm, sv = s.running_mean.double().cpu(), s.running_var.double().cpu().clamp_min(1e-12)
        am, av = a.running_mean.double().cpu(), a.running_var.double().cpu().clamp_min(1e-12)
        rows.append({"layer": i, "name": name,
                     "mean_shift": float((((am - sm) / sv.sqrt()) ** 2).mean().sqrt()),
                     "log_var_ratio": float((av / sv).log().mean())})
    return pd.DataFrame(rows)


def bn_statistics_comparison(model: nn.Module, x: torch.Tensor, *, adabn: AdaBNSettings | None = None
                             ) -> pd.DataFrame:
    """Per BN layer, source vs adapted (on ``x``, with ``adabn``: :func:`adapt_bn`'s settings) running
    statistics: ``source_mean_abs``, ``adapted_mean_abs``, ``source_log_var``, ``adapted_log_var``
    plus :func:`bn_statistics_shift`."""
    _require_bn(model, "bn_statistics_comparison")
    check_images_or_features(x, "x", allow_uint8=True)
    work, adabn = _working_copy(model, adabn)
    adapted_model = adapt_bn(work, x.to(adabn.device), adabn)
    src, ada = bn_statistics(work), bn_statistics(adapted_model)
    out = src[["layer", "name", "channels"]].copy()
    out["source_mean_abs"], out["adapted_mean_abs"] = src["mean_abs"], ada["mean_abs"]
    out["source_log_var"], out["adapted_log_var"] = src["log_var"], ada["log_var"]
    shift = bn_statistics_shift(work, adapted_model)
    out["mean_shift"], out["log_var_ratio"] = shift["mean_shift"], shift["log_var_ratio"]
    out["momentum"] = adabn.label()
    return out


def ncg_under_adabn(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, corrupted,
                    corruptions: Sequence[str] = DEFAULT_CORRUPTIONS, severities: Sequence[int] = (1, 2, 3, 4, 5),
                    *, arm: str = "adabn", adabn: AdaBNSettings | None = None,
                    n_images: int | None = None) -> pd.DataFrame:
    """NCG of the source vs the AdaBN-adapted model on corrupted images (not in either paper).

    For each corruption the chosen severities are adapted to separately (as the grid does) and
    pooled; NCG is the fraction of corrupted images labelled with the label of their nearest
    training image (pixel L2, ``train_x``/``train_y``). A paired McNemar test compares the
    per-image "prediction = nearest category" indicators of the two models. ``adabn``: the AdaBN
    settings (as :func:`shift_grid`). ``n_images``: about this many images per setting
    (stratified, seeded with ``adabn.seed``; None = all). Rows: corruption, ``ncg_source``,
    ``ncg_adapted``, ``ncg_gain``, ``acc_source``, ``acc_adapted``, ``lost`` / ``gained`` (images
    at their nearest category only with the source statistics / only when adapted),
    ``mcnemar_stat``, ``p_value``, ``test``, ``n``, ``arm``, ``momentum``.
    """
    from tqdm.auto import tqdm

    from probelib.ncg import ncg
    from probelib.neighbours import knn
    if arm not in ("adabn", "adabn+aug"):
        raise ValueError(f"arm must be 'adabn' or 'adabn+aug', got {arm!r}")
    _require_bn(model, "ncg_under_adabn")
    train_y = _check_xy(train_x, train_y, "ncg_under_adabn's training set").numpy()
    work, adabn = _working_copy(model, adabn)
    load = _subsampled(_corrupted_source(corrupted), n_images, adabn.seed)
    rows = []
    for c in tqdm(list(corruptions), desc="NCG under AdaBN"):
        src_pred, ada_pred, nn_lab, labels = [], [], [], []
        for s in severities:
            x, y = load(c, int(s))
            _check_xy(x, y, f"the {c} severity {s} set")
            _, idx = knn(train_x, x, k=1, progress=False)
            nn_lab.append(train_y[np.asarray(idx).reshape(len(x), -1)[:, 0]])
            labels.append(torch.as_tensor(y).numpy())
            xd = x.to(adabn.device)
            for out, a in ((src_pred, "source"), (ada_pred, arm)):
                out.append(arm_logits(work, xd, a, adabn=adabn).argmax(1).numpy())
        sp, ap, nl, lab = map(np.concatenate, (src_pred, ada_pred, nn_lab, labels))
        test = mcnemar(sp == nl, ap == nl)
        rows.append({"corruption": c, "ncg_source": ncg(sp, nl), "ncg_adapted": ncg(ap, nl),
                     "ncg_gain": ncg(ap, nl) - ncg(sp, nl), "acc_source": float((sp == lab).mean()),
                     "acc_adapted": float((ap == lab).mean()), "lost": test["b"], "gained": test["c"],
                     "mcnemar_stat": test["statistic"], "p_value": test["p"], "test": test["method"],
                     "n": len(lab)})
    df = pd.DataFrame(rows)
    df["arm"], df["momentum"] = arm, adabn.label()
    return df


#: TENT's README (Wang et al., ICLR 2021): RobustBench's ``Standard`` WRN-28-10 on CIFAR-10-C,
#: severity 5, error (%) averaged over the 15 corruptions; model reset per corruption × severity.
TENT_REFERENCE = {"source": 43.5, "norm": 20.4, "tent": 18.6}


def tent_table(grid: pd.DataFrame, severity: int = 5, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """TENT's CIFAR-10-C table from a shift grid: per arm, the error (%) averaged over the
    corruptions at ``severity`` (each corruption weighs the same), the number of corruptions and
    images per setting, and :data:`TENT_REFERENCE` beside it (``reference_error``, NaN for arms
    TENT's table lacks). ``arms``: which rows, in order (None: every arm of the grid)."""
    sub = grid[(grid["severity"] == severity) & (grid["corruption"] != "clean")]
    if sub.empty:
        raise ValueError(f"the grid has no corrupted setting at severity {severity}; it has severities "
                         f"{sorted(set(grid['severity']) - {0})}")
    present = list(dict.fromkeys(sub["arm"]))
    arms = present if arms is None else list(arms)
    missing = [a for a in arms if a not in present]
    if missing:
        raise ValueError(f"the grid has no {missing} arm(s) at severity {severity}; it has {present}")
    rows = []
    for a in arms:
        r = sub[sub["arm"] == a]
        rows.append({"arm": a, "error": 100 * float((1 - r["accuracy"]).mean()),
                     "corruptions": r["corruption"].nunique(),
                     "images": int(r["n"].min()) if r["n"].nunique() == 1 else f"{r['n'].min()}-{r['n'].max()}",
                     "reference_error": TENT_REFERENCE.get(a, float("nan"))})
    return pd.DataFrame(rows).set_index("arm")
