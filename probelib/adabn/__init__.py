"""AdaBN (Burns & Steinhardt, CVPR 2021): batch-norm statistics re-estimated on target data, its studies
and their verdicts; TENT's arms beside it (:mod:`probelib.tent`).

- :mod:`~probelib.adabn.core` — the estimation (:func:`adapt_bn`, :func:`adapted`) and its one settings
  object, :class:`AdaBNSettings`;
- :mod:`~probelib.adabn.augment` — the training augmentation of the ``adabn+aug`` arm;
- :mod:`~probelib.adabn.arms` — one set scored under each arm (``source``, ``adabn``, ``adabn+aug``,
  ``norm``, ``tent``) and where the studies' sets come from;
- :mod:`~probelib.adabn.studies` — the shift grid, label shift, black border, BN statistics, NCG
  under AdaBN, TENT's table;
- :mod:`~probelib.adabn.verdicts` — their decisions, as :class:`probelib.report.Verdict`;
- :mod:`~probelib.adabn.plots` — the label-shift, border-example and NCG-under-AdaBN figures.

``from probelib import adabn as A`` reaches all of it (``A.shift_grid``, ``A.AdaBNSettings``, ...).
"""

from probelib.adabn.core import (AdaBNSettings, LayerSelector, adapt_bn, adapt_bn_, adapted, bn_layers,
                                 exclude_first, exclude_last, momentum_label, preserved_bn_statistics,
                                 resolve_layers)
from probelib.adabn.augment import train_augmentation
from probelib.adabn.arms import (ALL_ARMS, ARMS, DEFAULT_CORRUPTIONS, STUDY_ARMS, arm_logits, corrupt_on_the_fly,
                                 evaluate_arms, load_shifted, study_config, study_model,
                                 ShiftStudyInputs, shift_study_inputs)
from probelib.adabn.plots import plot_border_examples, plot_label_shift_gain, plot_ncg_under_adabn
from probelib.adabn.studies import (BORDER_FILLS, PAPER_BN_LAYERS, PAPER_MS, TENT_REFERENCE, adabn_gains, add_border,
                                    black_border_study, bn_statistics, bn_statistics_comparison,
                                    bn_statistics_shift, label_shift, ncg_under_adabn, paired_gains, paper_ms,
                                    shift_grid, tent_table)
from probelib.adabn.verdicts import (TENT_RESULTS, border_verdicts, grid_verdicts, label_shift_verdicts,
                                     ncg_verdicts, tent_verdict, tent_verdicts)

__all__ = ["AdaBNSettings", "LayerSelector", "bn_layers", "exclude_last", "exclude_first", "resolve_layers",
           "train_augmentation", "adapt_bn", "adapt_bn_", "adapted", "preserved_bn_statistics", "momentum_label",
           "ARMS", "ALL_ARMS", "STUDY_ARMS", "DEFAULT_CORRUPTIONS", "evaluate_arms", "arm_logits",
           "load_shifted", "corrupt_on_the_fly",
           "shift_grid", "adabn_gains", "paired_gains", "PAPER_MS", "PAPER_BN_LAYERS", "paper_ms", "label_shift",
           "add_border", "black_border_study", "bn_statistics", "bn_statistics_shift", "bn_statistics_comparison",
           "ncg_under_adabn", "TENT_REFERENCE", "tent_table", "study_config", "study_model",
           "ShiftStudyInputs", "shift_study_inputs",
           "grid_verdicts", "label_shift_verdicts", "border_verdicts", "ncg_verdicts", "TENT_RESULTS",
           "tent_verdict", "tent_verdicts", "plot_label_shift_gain", "plot_ncg_under_adabn",
           "plot_border_examples", "BORDER_FILLS"]
