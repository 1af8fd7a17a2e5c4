"""AdaBN's and TENT's arms scored on one set (:func:`evaluate_arms`, :func:`arm_logits`), and where the
studies' sets come from (a "-C" set, a callable, a stratified subset, corruption on the fly)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from probelib import tent as T  # tent imports adabn.core: bound here, its names read at call time
from probelib._util import check_choice, check_images_or_features, check_labels, compute_device, default_device
from probelib.adabn.core import (AdaBNSettings, _exact_one_pass, _require_bn, _single_batch, adapted, bn_layers,
                                 preserved_bn_statistics, resolve_layers)
from probelib.data.core import subsample
from probelib.stats import paired_test

__all__ = ["ARMS", "ALL_ARMS", "STUDY_ARMS", "DEFAULT_CORRUPTIONS", "evaluate_arms", "arm_logits",
           "load_shifted", "corrupt_on_the_fly", "study_config", "study_model", "ShiftStudyInputs",
           "shift_study_inputs"]

#: Burns & Steinhardt's arms: every study's default.
ARMS = ("source", "adabn", "adabn+aug")
#: Every arm a study takes: ``norm`` (each test batch's own BN statistics) and ``tent`` (plus online
#: entropy minimisation over the BN affine parameters) are TENT's (:mod:`probelib.tent`), opt-in via
#: ``arms=``; both come with McNemar against ``source`` and against the AdaBN arm.
ALL_ARMS = ARMS + ("norm", "tent")
_TENT_ARMS = ALL_ARMS[3:]
#: The arms notebooks 30–32 run: AdaBN's beside TENT's.
STUDY_ARMS = ALL_ARMS
DEFAULT_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                       "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                       "elastic_transform", "pixelate", "jpeg_compression")


def _check_xy(x, y, what: str) -> torch.Tensor:
    """Check a study's images (float [0, 1] or uint8) and labels (integers, one per image); return y."""
    check_images_or_features(x, "x", allow_uint8=True)
    return torch.from_numpy(check_labels(y, None, "y", n=len(x), where=what))


def _label_table(df: pd.DataFrame, adabn: AdaBNSettings, calibration: str | None = None) -> pd.DataFrame:
    """Name the statistics estimate (``momentum`` column) and, for tables with an RMS calibration
    error, its variant (``calibration`` column) in every row."""
    from probelib.metrics import calibration_label
    df["momentum"] = adabn.label()
    if calibration is not None:
        df["calibration"] = calibration_label(calibration)
    return df


def _check_arms(arms: Sequence[str], model: nn.Module | None = None) -> tuple[str, ...]:
    """``arms`` as a tuple, each one of :data:`ALL_ARMS`; with ``model``, refuse adapted arms on a
    model without BatchNorm layers (they would silently be the source model)."""
    arms = (arms,) if isinstance(arms, str) else tuple(arms)
    if not arms:
        raise ValueError(f"arms must name at least one of {ALL_ARMS}")
    for a in arms:
        check_choice("arm", a, ALL_ARMS)
    adapted_arms = [a for a in arms if a != "source"]
    if model is not None and adapted_arms:
        _require_bn(model, f"the arms {adapted_arms}")
    return arms


def _working_copy(model: nn.Module, adabn: AdaBNSettings | None) -> tuple[nn.Module, AdaBNSettings]:
    """One deep copy per study, on the settings' device (cuda when present if None), in eval mode;
    4-D conv weights in channels-last layout (faster convolutions on CPU and GPU; the same numbers up
    to float rounding); and the settings with that device."""
    s = adabn or AdaBNSettings()
    device = default_device(s.device)
    work = copy.deepcopy(model).to(device).eval()
    if any(isinstance(m, nn.Conv2d) for m in work.modules()):
        work = work.to(memory_format=torch.channels_last)
    return work, s.replace(device=device)


def evaluate_arms(work: nn.Module, x: torch.Tensor, y: torch.Tensor, arms: Sequence[str] = ARMS, *,
                  adabn: AdaBNSettings | None = None, tent: T.TentSettings | None = None,
                  source_correct: torch.Tensor | None = None, calibration: str = "complete") -> list[dict]:
    """Score ``work`` on ``(x, y)`` under each arm, adapting in place and restoring the source
    statistics after each (``work`` ends as it started). One dict of metrics per arm.

    ``adabn``: the AdaBN arms' :class:`~probelib.adabn.core.AdaBNSettings` (None: the defaults);
    ``tent``: TENT's arms' :class:`probelib.tent.TentSettings` (None: TENT's CIFAR setting).
    Each adapted arm's dict also compares it, image by image, with the source arm on the same
    images (:func:`probelib.stats.paired_test`): ``gained`` (right only when adapted), ``lost``
    (right only with the source statistics) and McNemar's two-sided ``p_value``. The source
    predictions come from the ``source`` arm when it is among ``arms``, else from
    ``source_correct`` (a bool per image) if given; without either there is no comparison.
    ``calibration``: the RMS calibration variant (``"complete"`` or the authors' ``"burns"``,
    :func:`probelib.metrics.rms_calibration_error`).

    TENT's arms (``norm``, ``tent``) start from the source weights in every call (episodic reset per
    setting) and honour ``adabn.layers`` (layers left out keep the source statistics and affine
    parameters). When an AdaBN arm is among ``arms`` (``adabn``, else ``adabn+aug``), their dicts
    also compare them with it on the same images: ``vs_adabn`` (that arm's name),
    ``gained_vs_adabn`` (right only under the TENT arm), ``lost_vs_adabn`` (right only under
    AdaBN) and McNemar's ``p_value_vs_adabn``.
    """
    from probelib.metrics import classification_metrics
    if len(x) == 0:
        raise ValueError("no images to evaluate (empty set)")
    y = _check_xy(x, y, "evaluate_arms")
    rows, correct = [], {}
    for arm in _check_arms(arms, work):
        logits = _arm_logits(work, x, arm, adabn or AdaBNSettings(), tent)
        correct[arm] = (logits.argmax(1) == y).numpy()
        rows.append({"arm": arm, **classification_metrics(logits, y, calibration=calibration), "n": len(y)})
    reference = correct.get("source")
    if reference is None and source_correct is not None:
        reference = torch.as_tensor(source_correct).cpu().numpy()
    if reference is not None:
        for row in rows:
            if row["arm"] != "source":
                row.update(paired_test(reference, correct[row["arm"]]))
    tent_settings = tent or T.TentSettings()
    adabn_arm = next((a for a in ("adabn", "adabn+aug") if a in correct), None)
    for row in rows:
        if row["arm"] in _TENT_ARMS:
            row["tent_settings"] = tent_settings.label() if row["arm"] == "tent" else \
                f"batch statistics, batch of {tent_settings.batch_size}"
            if adabn_arm is not None:
                vs = paired_test(correct[adabn_arm], correct[row["arm"]])
                row.update(vs_adabn=adabn_arm, **{f"{k}_vs_adabn": v for k, v in vs.items()})
    return rows


def arm_logits(work: nn.Module, x: torch.Tensor, arm: str = "adabn", *, adabn: AdaBNSettings | None = None,
               tent: T.TentSettings | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of ``work`` on ``x`` under one arm (``source``, ``adabn``: statistics
    from ``x``; ``adabn+aug``: statistics from ``x`` augmented with ``adabn.augment``, None meaning
    ``"auto"``), transductively; ``work`` is adapted in place and restored. For ``adabn`` with the
    exact statistics of a set that fits in one batch, the single statistics pass already is the
    adapted model's forward on ``x``. ``norm`` / ``tent``: TENT's arms on a copy, starting from
    ``work``'s weights (:func:`probelib.tent.tent_arm_logits` with ``tent``, None = TENT's CIFAR
    defaults, images fed in the order ``adabn.seed`` shuffles them to unless ``tent.shuffle`` is
    False; of ``adabn`` only ``layers``, ``seed`` and ``device`` apply)."""
    (arm,) = _check_arms([arm], work)
    check_images_or_features(x, "x", allow_uint8=True)
    return _arm_logits(work, x, arm, adabn or AdaBNSettings(), tent)


def _arm_logits(work: nn.Module, x: torch.Tensor, arm: str, s: AdaBNSettings,
                tent: T.TentSettings | None) -> torch.Tensor:
    """:func:`arm_logits` on an arm and images already checked (:func:`evaluate_arms` checks them once
    per set, not once per arm)."""
    from probelib.metrics import check_finite_outputs, predict
    device = compute_device(work, s.device)
    if arm in _TENT_ARMS:
        return T.tent_arm_logits(work, x, arm, tent, device=device, layers=s.layers, seed=s.seed)
    eval_batch_size = s.eval_batch(device)
    augment = ("auto" if s.augment is None else s.augment) if arm == "adabn+aug" else None
    s = s.replace(device=device, batch_size=s.stats_batch(x), augment=augment)
    if arm == "source":
        return predict(work, x, batch_size=eval_batch_size, device=device, desc=None)
    if arm == "adabn" and s.momentum is None and s.layerwise and _single_batch(x, s.batch_size):
        chosen = [m for (_, m), keep in zip(bn_layers(work), resolve_layers(work, s.layers)) if keep]
        with preserved_bn_statistics(work), torch.no_grad():
            work.to(device).eval()
            out = _exact_one_pass(work, x, chosen, s.batch_size, device)
        return check_finite_outputs(out.float().cpu(), work)
    with adapted(work, x, s) as m:
        return predict(m, x, batch_size=eval_batch_size, device=device, desc=None)


def _as_pair(data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return torch.as_tensor(data[0]), torch.as_tensor(data[1])
    from probelib.data import as_tensors
    return as_tensors(data)


def _corrupted_source(corrupted) -> Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(corrupted, (str, os.PathLike)):
        from probelib.corruptions import load_corrupted
        return lambda c, s: _as_pair(load_corrupted(corrupted, c, s))
    if callable(corrupted):
        return lambda c, s: _as_pair(corrupted(c, s))
    raise TypeError("corrupted must be a corrupted-set name such as 'mnist5k-c', the path of a folder in a "
                    f"'-C' layout, or a callable (corruption, severity) -> (x, y), got {type(corrupted).__name__}")


def load_shifted(corrupted, corruption: str, severity: int, *, n_images: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One setting ``(x, y)`` of ``corrupted`` (a "-C" set name or a callable, as the studies take
    it), on about ``n_images`` images: the same stratified subset the studies score."""
    return _subsampled(_corrupted_source(corrupted), n_images, seed)(corruption, int(severity))


def _subsampled(load, n_images: int | None, seed: int):
    if n_images is None:
        return load
    return lambda c, s: subsample(load(c, s), n_images, seed=seed)


def corrupt_on_the_fly(x: torch.Tensor, y: torch.Tensor, seed: int = 0
                       ) -> Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """A ``corrupted`` source for the studies that corrupts ``(x, y)`` on demand with
    :func:`probelib.corruptions.corrupt` (same bytes as the generated "-C" sets for the same
    images and seed) — for subsets and quick runs without writing a whole "-C" set."""
    from probelib.corruptions import corrupt
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    y = torch.as_tensor(y)
    cache: dict = {}

    def load(corruption: str, severity: int):
        key = (corruption, int(severity))
        if key not in cache:
            out = corrupt(u8, corruption, int(severity), seed)
            out = out.reshape(u8.shape)
            cache.clear()  # keep one setting: the studies ask for each setting once or twice in a row
            cache[key] = torch.from_numpy(out.copy()).permute(0, 3, 1, 2).float().div_(255)
        return cache[key], y
    return load


def study_config(dataset: str, *, smoke: bool = False):
    """The training config of the AdaBN notebooks' own model: Burns & Steinhardt's BN WideResNet recipe
    (``default_config(dataset, paper="adabn")``), or with ``smoke`` the shared 1-epoch model on 300 images."""
    from probelib.training import default_config
    cfg = default_config(dataset, paper="adabn")
    return cfg.replace(epochs=1, max_train=300, max_test=100) if smoke else cfg


def study_model(dataset: str, *, smoke: bool = False, device=None, model_source: str | None = None,
                checkpoint: str | os.PathLike | None = None, model_dir: str | os.PathLike = "models",
                threat_model: str = "corruptions", **pretrained_kwargs) -> tuple[nn.Module, str]:
    """The source model of notebooks 30–33 and its name.

    ``model_source=None``: the BN WideResNet probelib trains (or loads from the store) for
    ``dataset`` with Burns & Steinhardt's recipe (``default_config(dataset, paper="adabn")``; with
    ``smoke`` the shared 1-epoch model on 300 images). Otherwise a checkpoint the user already has,
    through :func:`probelib.models.load_pretrained` (``model_source`` one of ``torchvision``,
    ``robustbench``, ``state_dict``; ``checkpoint`` its file or zoo name), e.g. RobustBench's
    ``Standard`` WRN-28-10 from ``<model_dir>/cifar10/corruptions/Standard.pt`` for TENT's table.
    """
    if model_source is None:
        from probelib.training import train_or_load
        cfg = study_config(dataset, smoke=smoke)
        model, _ = train_or_load(cfg, device=device)
        return model, cfg.name
    if checkpoint is None:
        raise ValueError(f"model_source={model_source!r} needs checkpoint= (a file, or a RobustBench zoo name such "
                         "as 'Standard')")
    from probelib.models import load_pretrained
    if model_source == "robustbench":
        pretrained_kwargs = {"model_dir": model_dir, "threat_model": threat_model, **pretrained_kwargs}
    model = load_pretrained(model_source, checkpoint, device=device, **pretrained_kwargs)
    info = getattr(model, "pretrained_source", {})
    return model, f"{model_source}:{info.get('name', Path(str(checkpoint)).stem)} ({info.get('arch', '?')})"


class ShiftStudyInputs(NamedTuple):
    """What notebooks 31 and 32 study: the source model, its name, the (sub-sampled) clean test
    split, the number of classes, and the AdaBN and TENT settings."""

    model: nn.Module
    model_name: str
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    adabn: AdaBNSettings
    tent: "T.TentSettings"


def shift_study_inputs(dataset: str, n_images: int | None = None, *, smoke: bool = False, device=None,
                       momentum: float | None = None, tent_batch_size: int = 128,
                       tent_lr: float = 1e-3) -> ShiftStudyInputs:
    """The inputs of the label-shift and black-border studies (notebooks 31, 32): :func:`study_model`
    for ``dataset``, its test split stratified-subsampled to ``n_images`` (``None``: all; 100 with
    ``smoke``), ``AdaBNSettings(momentum, device)`` and ``TentSettings(tent_batch_size, tent_lr)``."""
    from probelib.data import as_tensors, load_dataset

    splits = load_dataset(dataset)
    model, model_name = study_model(dataset, smoke=smoke, device=device)
    test_x, test_y = subsample(as_tensors(splits.test), 100 if smoke else n_images)
    return ShiftStudyInputs(model, model_name, test_x, test_y, splits.num_classes,
                          AdaBNSettings(momentum=momentum, device=device),
                          T.TentSettings(batch_size=tent_batch_size, lr=tent_lr))

