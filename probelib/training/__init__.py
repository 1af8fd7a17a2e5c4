"""Training: natural, TRADES, PGD adversarial training (AT) and mixup, as the NCG code runs them.

* :mod:`~probelib.training.losses`: one loss per method, on one batch (NCG spec §4);
* :mod:`~probelib.training.batches`: batches, augmentation (crop / crop+flip), stratified subsets;
* :mod:`~probelib.training.config`: :class:`TrainConfig`, every setting of a run, validated once;
* :mod:`~probelib.training.loop`: :func:`train` (one loop, also under torchrun DDP), evaluation, resume;
* :mod:`~probelib.training.recipes`: the papers' settings (:func:`default_config`) and
  :func:`train_or_load`, which trains once and keeps the model in the artifact store.
"""

from __future__ import annotations

from probelib.training.batches import AUGMENTS, augment_batch
from probelib.training.config import LOOP_FIELDS, TrainConfig, scale_milestones
from probelib.training.loop import TrainingDivergedError, evaluate_accuracy, train
from probelib.training.losses import METHODS, at_loss, mixup_loss, natural_loss, trades_adversary, trades_loss
from probelib.training.recipes import (EMBEDDED_ADABN_ARCH, EMBEDDED_ADABN_EPOCHS, EMBEDDED_FEATURE_EPOCHS,
                                       EMBEDDED_NCG_EPOCHS, add_cli, checkpoint_key, config_names, default_config,
                                       get_config, train_or_load)

__all__ = ["METHODS", "AUGMENTS", "LOOP_FIELDS", "TrainConfig", "default_config", "config_names", "get_config",
           "train", "train_or_load", "checkpoint_key", "natural_loss", "trades_loss", "trades_adversary", "at_loss",
           "mixup_loss", "augment_batch", "evaluate_accuracy", "scale_milestones",
           "TrainingDivergedError", "add_cli", "EMBEDDED_NCG_EPOCHS", "EMBEDDED_ADABN_ARCH", "EMBEDDED_ADABN_EPOCHS",
           "EMBEDDED_FEATURE_EPOCHS"]
