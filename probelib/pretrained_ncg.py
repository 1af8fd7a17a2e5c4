"""NCG of models people already have (the NCG paper's App. D.4, its ``ncg_on_pretrained`` notebook).

Models come from checkpoints on disk through :func:`probelib.models.load_pretrained`; a model is
described by a *spec*, a dict of ``load_pretrained`` arguments plus a ``label``::

    {"label": "Standard", "source": "robustbench", "checkpoint": "Standard", "model_dir": "models",
     "threat_model": "Linf"}
    {"label": "resnet50", "source": "torchvision", "checkpoint": "/data/resnet50-0676ba61.pth",
     "arch": "resnet50"}

NCG is measured as in notebook 01 (:func:`probelib.ncg.ncg_table`: NCG with bootstrap
intervals, χ² against chance, in-distribution NCG, McNemar against a reference model on the same
points). Pixel space: 1-NN of the raw images. Feature space: 1-NN in the representation
(``features``) of one *reference* model (spec §9: one declared representation for every model),
compared with each model's own prediction, so every model is scored against the same
neighbours and McNemar's test applies.

On the embedded default, :func:`export_embedded` trains (or loads from the store) probelib's own
natural, TRADES and AT models and writes them in three external formats, which are then loaded
back through ``load_pretrained``, so the whole path runs offline.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from probelib._util import check_choice, default_device
from probelib.data import as_tensors
from probelib.metrics import predict
from probelib.models import load_pretrained
from probelib.models.pretrained import save_external, zoo_path
from probelib.ncg import (IMAGENET_LIKE, NCGInputs, _store, feature_splits, load_splits, method_label, ncg_inputs,
                          train_ncg_model)
from probelib.neighbours import nearest_neighbours

__all__ = ["export_embedded", "load_models", "pretrained_ncg_inputs", "reload_check", "pretrained_verdicts",
           "corrupted_verdicts", "EMBEDDED_FORMATS"]

#: How :func:`export_embedded` writes each method's model, and how it is loaded back.
EMBEDDED_FORMATS = {
    "natural": "bare state dict (.pth), the file format torchvision publishes its weights in",
    "trades": "RobustBench zoo layout <dir>/<dataset>/Linf/<name>.pt holding {'state_dict': {'module.…': …}}",
    "at": "a training script's checkpoint {'model': {'model.…': …}, 'epoch': …}",
}
_SPEC_KEYS = {"source", "checkpoint", "arch", "num_classes", "model_dir", "dataset", "threat_model"}


def export_embedded(dataset: str, folder: str | os.PathLike, methods: Sequence[str] = ("natural", "trades", "at"),
                    eps: float = 2.0, smoke: bool = False, device=None) -> tuple[list[dict], dict[str, nn.Module]]:
    """Train (or load from the store) probelib's NCG models for ``dataset`` and write each in an
    external format (:data:`EMBEDDED_FORMATS`) under ``folder``. Returns the specs that load them
    back (for :func:`load_models`) and the trained models (label → model, to check the reload)."""
    folder = Path(folder)
    specs, trained = [], {}
    for m in methods:
        if m not in EMBEDDED_FORMATS:
            raise ValueError(f"export_embedded writes {sorted(EMBEDDED_FORMATS)}, not {m!r}")
        model = train_ncg_model(dataset, m, eps, smoke=smoke, device=device)
        config = dict(model.arch_config)
        arch, classes = config.pop("arch"), config.pop("num_classes")
        label = method_label(m, eps)
        trained[label] = model
        if m == "natural":
            path = save_external(model, "torchvision", folder / f"{dataset}-natural.pth")
            spec = {"source": "state_dict", "checkpoint": str(path)}
        elif m == "trades":
            name = f"probelib_{dataset}_trades"
            save_external(model, "robustbench", zoo_path(name, folder / "models", dataset, "Linf"))
            spec = {"source": "robustbench", "checkpoint": name, "model_dir": str(folder / "models"),
                    "dataset": dataset, "threat_model": "Linf"}
        else:
            path = save_external(model, "wrapped", folder / f"{dataset}-at.pt", epoch=-1)
            spec = {"source": "state_dict", "checkpoint": str(path)}
        specs.append({"label": label, **spec, "arch": arch, "num_classes": classes, **config,
                      "format": EMBEDDED_FORMATS[m]})
    return specs, trained


def load_models(specs: Sequence[Mapping[str, Any]], device=None) -> dict[str, nn.Module]:
    """label → model for each spec (``load_pretrained`` arguments plus ``label``; ``format`` is a note),
    each on ``device`` (None: :func:`probelib._util.default_device`, CUDA when present), where the
    later predictions and features then run (they use the model's own device)."""

    if not specs:
        raise ValueError("no models: pass a list of specs such as {'label': 'Standard', 'source': 'robustbench', "
                         "'checkpoint': 'Standard', 'model_dir': 'models'}")
    models = {}
    for spec in specs:
        spec = dict(spec)
        label = str(spec.pop("label", None) or Path(str(spec.get("checkpoint", "model"))).stem)
        spec.pop("format", None)
        if label in models:
            raise ValueError(f"two models are labelled {label!r}; give each spec its own 'label'")
        if "source" not in spec or "checkpoint" not in spec:
            raise ValueError(f"spec {label!r} needs 'source' ({'torchvision', 'robustbench', 'state_dict'}) "
                             "and 'checkpoint' (a path, or the zoo name for robustbench)")
        source, checkpoint = spec.pop("source"), spec.pop("checkpoint")
        models[label] = load_pretrained(source, checkpoint, device=default_device(device), **spec)
    return models


def reload_check(trained: Mapping[str, nn.Module], loaded: Mapping[str, nn.Module], x: torch.Tensor,
                 atol: float = 1e-5) -> pd.DataFrame:
    """Per label: the largest |logit difference| between the trained model and its reloaded
    checkpoint on ``x``, and whether it is within ``atol``."""

    rows = []
    for label, model in trained.items():
        a = predict(model, x, desc=None)
        b = predict(loaded[label], x, desc=None)
        diff = float((a - b).abs().max())
        rows.append({"model": label, "max_abs_logit_diff": diff, "identical": diff <= atol,
                     "same_predictions": bool((a.argmax(1) == b.argmax(1)).all())})
    return pd.DataFrame(rows).set_index("model")


def _check_classes(models: Mapping[str, nn.Module], splits) -> None:
    for label, model in models.items():
        head = getattr(model, "classifier", None)
        out = getattr(head, "out_features", None)
        if out is not None and out != splits.num_classes:
            raise ValueError(f"model {label!r} has {out} outputs but {splits.name!r} has {splits.num_classes} seen "
                             "classes; unseen-class NCG needs models trained without the held-out class (a …wo<K> "
                             "dataset). For models trained on all classes measure corrupted-data NCG instead "
                             "(probelib.corruptions.corrupted_ncg_table, the 'nowo' variant)")


def pretrained_ncg_inputs(models: Mapping[str, nn.Module], dataset: str, space: str = "pixel",
                          reference: str | None = None, *, store=None, device=None
                          ) -> dict[str, NCGInputs]:
    """``{label: ncg_inputs(...)}`` for loaded models on the unseen class of ``dataset`` (a …wo<K> name).

    ``space="pixel"``: neighbours of the raw images (ImageNet-normalised for ImageNet-like sets,
    spec §1.2). ``space="feature"``: neighbours in ``models[reference].features`` (default: the
    first model), every model's own predictions compared with those neighbours' labels.
    """

    check_choice("space", space, ("pixel", "feature"))
    if not models:
        raise ValueError("models is empty")
    reference = reference if reference is not None else next(iter(models))
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {list(models)}")
    splits = load_splits(dataset)
    _check_classes(models, splits)
    st = _store(store)
    st_arg = st if st is not None else False
    normalise = "imagenet" if splits.base in IMAGENET_LIKE else None
    out = {label: ncg_inputs(model, splits, store=st_arg, device=device, normalise=normalise,
                             name=f"{dataset}-pretrained-{label}") for label, model in models.items()}
    if space == "pixel":
        return out
    # the reference model's features of every split (cached in the store by weights and images),
    # then the same exact L2 search as in pixel space
    feats = feature_splits(splits, models[reference], store=st_arg, device=device)
    (ftr, fy), (fte, _), (foo, _) = as_tensors(feats.train), as_tensors(feats.test), as_tensors(feats.ood)
    ood_nn = nearest_neighbours(ftr, fy, foo, store=st_arg, name=f"{dataset}-ood-features-{reference}", progress=False)
    test_nn = nearest_neighbours(ftr, fy, fte, store=st_arg, name=f"{dataset}-test-features-{reference}",
                                 progress=False)
    return {label: dataclasses.replace(a, ood_nn_label=ood_nn.label, ood_nn_distance=ood_nn.distance,
                                       ood_nn_index=ood_nn.index, test_nn_label=test_nn.label,
                                       test_nn_distance=test_nn.distance) for label, a in out.items()}


def pretrained_verdicts(tables: Mapping[str, pd.DataFrame], reference: str, dataset: str) -> list[str]:
    """Notebook 06's lines for ``{space: ncg_table}``: per model, is its NCG above chance (χ² p < 0.05),
    and (for the others) does it beat ``reference``'s NCG (with McNemar's p on the same points)?"""
    out = []
    for space, table in tables.items():
        ref_ncg = table.loc[reference, "ncg"]
        for label, row in table.iterrows():
            ok = row["ncg"] > row["chance"] and row["chi2_p"] < 0.05
            out.append(f"NCG above chance (pretrained, {space}, {label}, {dataset}): {'YES' if ok else 'NO'} "
                       f"({row['ncg']:.3f} [{row['ncg_lo']:.3f}, {row['ncg_hi']:.3f}] vs {row['chance']:.3f}; "
                       f"χ² p={row['chi2_p']:.3g})")
            if label != reference:
                out.append(f"{label} > {reference} NCG (pretrained, {space}, {dataset}): "
                           f"{'YES' if row['ncg'] > ref_ncg else 'NO'} ({row['ncg']:.3f} vs {ref_ncg:.3f}; "
                           f"McNemar p={row['mcnemar_p']:.3g})")
    return out


def corrupted_verdicts(table: pd.DataFrame, labels: Sequence[str], reference: str, tag: str) -> list[str]:
    """Notebook 06's corrupted-data lines: per model of ``labels`` other than ``reference``, is its NCG,
    averaged over the settings of ``table`` (:func:`probelib.corruptions.corrupted_ncg_table`), above
    the reference's?"""
    by_model = table.groupby("method", sort=False)["ncg"].mean()
    return [f"{label} > {reference} corrupted-data NCG (pretrained, {tag}): "
            f"{'YES' if by_model[label] > by_model[reference] else 'NO'} (mean over settings "
            f"{by_model[label]:.3f} vs {by_model[reference]:.3f})" for label in labels if label != reference]
