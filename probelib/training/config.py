"""The training configuration: one frozen, validated dataclass that :func:`~probelib.training.train`
reads and :func:`~probelib.training.train_or_load` keys its checkpoint by."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from probelib._util import check_choice, check_positive, unknown_name
from probelib.data import parse_name
from probelib.models import _WRN as wrn_pattern
from probelib.models import build_model, model_names
from probelib.store import fingerprint
from probelib.data.core import labels_of, subsample
from probelib.training.batches import AUGMENTS
from probelib.training.losses import METHODS

__all__ = ["TrainConfig", "LOOP_FIELDS", "OPTIMIZERS", "SCHEDULES", "PAPERS", "SPACES", "scale_milestones"]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("multistep", "cosine", "constant")
PAPERS = ("ncg", "adabn")
SPACES = ("pixel", "feature")
#: The fields the training loop reads (the rest say what to train on: data, architecture, names).
LOOP_FIELDS = ("method", "eps", "beta", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov",
               "weight_decay", "schedule", "milestones", "gamma", "min_lr", "augment", "mixup_alpha", "steps",
               "seed", "amp", "channels_last")

_YANG_MILESTONES = (40, 50, 60)
_YANG_EPOCHS = 70


def scale_milestones(epochs: int, milestones: Sequence[int] = _YANG_MILESTONES, base: int = _YANG_EPOCHS
                     ) -> tuple[int, ...]:
    """Yang's MultiStep milestones [40, 50, 60] (of 70 epochs) scaled to ``epochs``: round(m·epochs/70),
    at least 1 (the schedule steps once per epoch, so milestones stay whole epochs)."""
    return tuple(max(1, int(math.floor(m * epochs / base + 0.5))) for m in milestones)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model; ``key`` hashes it, ``name`` is readable.

    The loss: ``method`` natural | trades | at | mixup with ``eps`` (L2 budget of TRADES/AT),
    ``beta``, ``mixup_alpha``, ``steps`` (inner attack steps). ``optimizer`` sgd | adam
    (``momentum``, ``nesterov``, ``weight_decay``); ``schedule`` multistep (``milestones`` in
    epochs, × ``gamma``) | cosine (per step to ``min_lr``) | constant; ``augment`` none | crop
    (zero-pad 4, random crop back) | crop+flip (plus a horizontal flip, p = ½). ``amp``: bf16
    autocast (CUDA only). ``channels_last``: NHWC layout for image models (None = on for conv
    nets on images). ``dataset``/``arch`` (with ``model_kwargs``) say what :meth:`build` makes
    and :func:`~probelib.training.train_or_load` trains on; :func:`~probelib.training.train`
    needs only the loop's fields (:data:`LOOP_FIELDS`). Every field is checked once, here.

    ``milestones`` are MultiStep epochs for ``epochs`` epochs (``default_config`` scales Yang's
    [40, 50, 60]-of-70 proportionally; :meth:`replace` rescales them when only ``epochs`` changes
    from a config whose milestones are the scaled defaults). ``max_train``/``max_test`` subsample
    the splits (stratified, seeded) for smoke runs. ``notes`` documents the choice (not hashed).
    """

    dataset: str | None = None
    arch: str | None = None
    method: str = "natural"
    eps: float | None = None
    beta: float = 6.0
    epochs: int = 70
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: tuple[int, ...] = _YANG_MILESTONES
    gamma: float = 0.1
    min_lr: float = 1e-6
    augment: str = "none"
    mixup_alpha: float = 1.0
    steps: int = 10
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    max_train: int | None = None
    max_test: int | None = None
    paper: str = "ncg"
    space: str = "pixel"
    amp: bool = False
    channels_last: bool | None = None
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.dataset is not None:
            parse_name(self.dataset)
        if self.arch is not None and self.arch not in model_names() and not wrn_pattern.match(self.arch):
            raise unknown_name("architecture", self.arch, model_names())
        check_choice("paper", self.paper, PAPERS)
        check_choice("space", self.space, SPACES)
        if self.method in ("natural", "mixup") and self.eps is not None:
            object.__setattr__(self, "eps", None)  # unused by these losses: keep keys canonical
        elif self.eps is not None:
            object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        object.__setattr__(self, "model_kwargs", tuple((str(k), v) for k, v in self.model_kwargs))
        self._check_loop()
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")

    def _check_loop(self) -> None:
        if self.method not in METHODS:
            raise unknown_name("training method", self.method, METHODS)
        if self.method in ("trades", "at"):
            if self.eps is None:
                raise ValueError(f"method={self.method!r} needs eps (the L2 perturbation budget), "
                                 "e.g. eps=2.0 on MNIST")
            check_positive("eps", self.eps, f"method={self.method!r} needs a positive L2 budget, e.g. eps=2.0")
        for name, what in (("epochs", "epochs"), ("batch_size", "batch_size"), ("steps", "steps (inner attack steps)")):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be an int >= 1, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        if self.augment not in AUGMENTS:
            raise unknown_name("augmentation", self.augment, AUGMENTS)
        check_positive("lr", self.lr, "e.g. lr=0.01")
        check_positive("gamma", self.gamma)
        check_positive("mixup_alpha", self.mixup_alpha, "the papers use 1.0")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r} (TRADES uses 6)")
        if not 0 <= self.min_lr < self.lr:
            raise ValueError(f"min_lr must be in [0, lr), got min_lr={self.min_lr} with lr={self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {self.momentum}, {self.weight_decay}")
        if any(m <= 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {tuple(self.milestones)}")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``; changing ``epochs`` alone rescales default-scaled milestones."""
        if ("epochs" in changes and "milestones" not in changes and self.schedule == "multistep"
                and self.milestones == scale_milestones(self.epochs)):
            changes["milestones"] = scale_milestones(changes["epochs"])
        return dataclasses.replace(self, **changes)

    @property
    def method_tag(self) -> str:
        return f"trades{self.beta:g}" if self.method == "trades" else self.method

    @property
    def name(self) -> str:
        """Readable name, e.g. ``mnist5kwo9-cnn002-trades6-eps2-seed0``."""
        parts = [self.dataset] + (["feat"] if self.space == "feature" else []) + [self.arch.lower(), self.method_tag]
        if self.eps is not None:
            parts.append(f"eps{self.eps:g}")
        if self.max_train is not None or self.max_test is not None:
            parts.append(f"n{self.max_train or 'all'}-{self.max_test or 'all'}")
        if self.paper != "ncg":
            parts.append(self.paper)
        parts.append(f"seed{self.seed}")
        return "-".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The hashed fields as plain values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        d["milestones"] = list(self.milestones)
        d["model_kwargs"] = {k: v for k, v in self.model_kwargs}
        return d

    @property
    def key(self) -> str:
        """SHA-256 of the full configuration (``notes`` excluded)."""
        return fingerprint("TrainConfig", self.as_dict())

    def prepare(self, splits: Any) -> Any:
        """``splits`` with train/test subsampled to ``max_train``/``max_test`` (stratified, seeded)."""
        if self.max_train is None and self.max_test is None:
            return splits
        train_set = subsample(splits.train, self.max_train, seed=self.seed)
        test_set = subsample(splits.test, self.max_test, seed=self.seed)
        if dataclasses.is_dataclass(splits):
            return dataclasses.replace(splits, train=train_set, test=test_set)
        return argparse.Namespace(**{**vars(splits), "train": train_set, "test": test_set})

    def build(self, splits: Any) -> nn.Module:
        """The untrained model for ``splits`` (input shape and class count read from the data)."""
        if self.arch is None:
            raise ValueError("this TrainConfig names no arch; pass arch=... (see probelib.models.model_names())")
        x0 = splits.train[0][0]
        kwargs = dict(self.model_kwargs)
        if x0.ndim == 3:
            kwargs.update(in_channels=int(x0.shape[0]), image_size=int(x0.shape[-1]))
        else:
            kwargs["in_features"] = int(x0.numel())
        num_classes = getattr(splits, "num_classes", None) or int(labels_of(splits.train).max()) + 1
        return build_model(self.arch, int(num_classes), **kwargs)

