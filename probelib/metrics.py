"""Classification metrics: accuracy, confidence, calibration error, and batched prediction.

The RMS calibration error uses Burns & Steinhardt's equal-mass bins (after Hendrycks et al.):
sort the examples by confidence, cut them into bins of ``bin_size`` examples (the last bin takes
the remainder), and take the root of the bin-size-weighted mean squared gap between each bin's
mean confidence and its accuracy. Two variants (:data:`CALIBRATION_VARIANTS`): ``"complete"``
(default) sums over every bin; ``"burns"`` is the authors' ``calib_err`` as written, whose loop
``for i in range(len(bins) - 1)`` skips the last (most confident) bin but still divides by N.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from probelib._util import (INFERENCE_BATCH_SIZE, check_finite_outputs, check_images_or_features, check_name,
                            compute_device, default_device, eval_mode, iter_batches)
from probelib.store import Store, default_store, fingerprint

__all__ = ["accuracy", "mean_confidence", "confidences", "rms_calibration_error", "CALIBRATION_VARIANTS",
           "calibration_label",
           "expected_calibration_error", "classification_metrics", "predict", "predict_labels"]


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _predictions(logits_or_pred) -> np.ndarray:
    a = _as_numpy(logits_or_pred)
    return a.argmax(axis=1) if a.ndim == 2 else a


def _check_lengths(a: np.ndarray, labels: np.ndarray, what: str) -> None:
    if len(a) != len(labels):
        raise ValueError(f"{what} and labels differ in length: {len(a)} vs {len(labels)}")
    if len(labels) == 0:
        raise ValueError(f"{what} and labels are empty; pass at least one example")


def accuracy(logits_or_pred, labels) -> float:
    """Fraction of examples whose prediction (argmax of N×C logits, or N labels) equals ``labels``."""
    pred, labels = _predictions(logits_or_pred), _as_numpy(labels)
    _check_lengths(pred, labels, "predictions")
    return float((pred == labels).mean())


def confidences(logits) -> np.ndarray:
    """Max-softmax confidence of each row of N×C ``logits`` (float64, computed stably)."""
    logits = torch.as_tensor(_as_numpy(logits), dtype=torch.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be N×C, got shape {tuple(logits.shape)}")
    return torch.softmax(logits, dim=1).max(dim=1).values.numpy()


def mean_confidence(logits) -> float:
    """Mean max-softmax confidence over the rows of N×C ``logits``."""
    conf = confidences(logits)
    if len(conf) == 0:
        raise ValueError("logits are empty; pass at least one example")
    return float(conf.mean())


def _conf_correct(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    conf, labels = confidences(logits), _as_numpy(labels)
    _check_lengths(conf, labels, "logits")
    correct = (_as_numpy(logits).argmax(axis=1) == labels).astype(np.float64)
    return conf, correct


#: RMS calibration variants: ``"complete"`` sums every bin (the quantity the definition names);
#: ``"burns"`` skips the last bin but divides by N, as Burns' and Hendrycks' ``calib_err`` do.
CALIBRATION_VARIANTS = ("complete", "burns")


def _check_variant(variant: str) -> str:
    if variant not in CALIBRATION_VARIANTS:
        raise ValueError(f"calibration variant must be one of {CALIBRATION_VARIANTS} ('complete': every bin; "
                         f"'burns': the authors' calib_err, last bin skipped), got {variant!r}")
    return variant


def calibration_label(variant: str = "complete") -> str:
    """How a table names the RMS calibration variant (the value of its ``calibration`` column)."""
    return {"complete": "complete (all bins)",
            "burns": "burns (calib_err: last bin skipped, / N)"}[_check_variant(variant)]


def rms_calibration_error(logits, labels, bin_size: int = 100, variant: str = "complete") -> float:
    """RMS calibration error with equal-mass bins of ``bin_size`` examples.

    Examples are sorted by max-softmax confidence (stable sort) and cut into consecutive bins of
    ``bin_size`` examples; the last bin takes the remainder (so it holds ``bin_size`` to
    ``2·bin_size − 1`` examples; fewer than ``bin_size`` examples make one bin).

    ``variant="complete"`` (default): ``sqrt(Σ_b |b|/N · (mean conf_b − acc_b)²)`` over *all* bins.
    ``variant="burns"``: the same sum without the last bin, still divided by N — exactly what
    Burns & Steinhardt's (and Hendrycks et al.'s) ``calib_err`` computes (its loop runs over
    ``range(len(bins) - 1)``); use it to compare with their numbers. It is never larger than the
    complete sum and is 0 with fewer than ``2·bin_size`` examples (a single bin, skipped).
    """
    if int(bin_size) != bin_size or bin_size < 1:
        raise ValueError(f"bin_size must be a positive integer, got {bin_size!r}")
    _check_variant(variant)
    conf, correct = _conf_correct(logits, labels)
    order = np.argsort(conf, kind="stable")
    conf, correct = conf[order], correct[order]
    n = len(conf)
    starts = list(range(0, max(n // bin_size, 1) * bin_size, bin_size))
    ends = starts[1:] + [n]
    if variant == "burns":
        starts, ends = starts[:-1], ends[:-1]
    total = 0.0
    for s, e in zip(starts, ends):
        gap = conf[s:e].mean() - correct[s:e].mean()
        total += (e - s) / n * gap ** 2
    return float(np.sqrt(total))


def expected_calibration_error(logits, labels, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (lower edge exclusive, upper inclusive)."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf, correct = _conf_correct(logits, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(conf[in_bin].mean() - correct[in_bin].mean())
    return float(ece)


def classification_metrics(logits, labels, bin_size: int = 100, n_bins: int = 15,
                           calibration: str = "complete") -> dict[str, float]:
    """All four metrics at once: ``accuracy``, ``confidence``, ``rms_calibration`` (``calibration``
    names the variant, see :func:`rms_calibration_error`), ``ece``."""
    return {"accuracy": accuracy(logits, labels), "confidence": mean_confidence(logits),
            "rms_calibration": rms_calibration_error(logits, labels, bin_size, calibration),
            "ece": expected_calibration_error(logits, labels, n_bins)}


@torch.no_grad()
def predict(model: nn.Module, data, *, batch_size: int = INFERENCE_BATCH_SIZE, device: str | torch.device | None = None,
            desc: str | None = "predict") -> torch.Tensor:
    """Logits (float32, CPU, N×C) of ``model`` in eval mode on ``data`` (tensor, Dataset or DataLoader).

    ``device`` defaults to where the model's parameters are (:func:`probelib._util.compute_device`);
    the model is moved there if needed. The model's train/eval flags are restored afterwards.
    """
    device = compute_device(model, device)
    model.to(device)
    with eval_mode(model):
        out = [model(x).float().cpu() for x in iter_batches(data, batch_size, device, desc)]
    if not out:
        raise ValueError("data holds no images; pass at least one")
    return check_finite_outputs(torch.cat(out), model)


def predict_labels(model: nn.Module, x: torch.Tensor, *, store: Store | None | bool = None,
                   name: str = "predictions", batch_size: int = INFERENCE_BATCH_SIZE,
                   device: str | torch.device | None = None) -> np.ndarray:
    """Arg-max labels (int64 numpy, N) of ``model`` in eval mode on ``x``: :func:`predict`'s logits' argmax.

    ``x``: images N×C×H×W float in [0, 1] (or uint8, divided by 255) or feature vectors N×D;
    checked, with ``name`` and ``device``, before any work or cache lookup. ``store``: a
    :class:`~probelib.store.Store`, ``None`` for the default store, ``False`` for no caching; the
    cache key is the model's weights and the inputs, ``name`` the readable part of the file name.
    """
    check_images_or_features(x, "x", allow_uint8=True)
    check_name(name, "name")
    if device is not None:
        default_device(device)

    def compute():
        return {"pred": predict(model, x, batch_size=batch_size, device=device, desc=None).argmax(1).numpy()}

    if store is False:
        return compute()["pred"]
    st = default_store() if store is None or store is True else store
    key = fingerprint("predictions-v1", model, x)
    return st.cached_arrays("predictions", name, key, compute)["pred"].astype(np.int64)
