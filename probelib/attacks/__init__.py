"""Adversarial attacks on images in [0, 1]: PGD (L2, Linf) and minimum-norm L2 attacks.

- :func:`pgd` — projected gradient descent (NCG spec §5), the one used by adversarial training.
- :func:`cw_l2` — Carlini–Wagner L2 with foolbox's mechanics (tanh-space Adam, per-sample
  binary search on the constant, early abort), but with an explicit success mask: a failure
  is reported as a failure (``norms = inf``, ``x_adv`` = the clean image), never as zeros.
- :func:`fmn_l2` — fast minimum-norm L2 (Pintor et al., NeurIPS 2021), and :func:`ddn_l2` —
  decoupled direction and norm (Rony et al., CVPR 2019): far fewer steps than CW (see
  ``bench/attacks.py``). Both end with a bisection along the segment from the clean image to the
  adversarial one and projections onto the linearised boundary, which can only shorten it.
- :func:`best_of_l2` — the per-point smallest of several of them (default FMN and DDN,
  ``"fmn+ddn"``): the robustness study's attack (:data:`STUDY_ATTACK`), the minimum over two
  attacks per point as NCG's notebooks take it; bench/attacks.py measures its gap to foolbox CW
  on natural, TRADES and AT models.
- :func:`closest_adversarial` — NCG's ``get_rob``: sample correctly classified training points
  that are the nearest neighbour of some OOD image, and find their closest adversarial examples.

Every attack returns an :class:`AttackResult` (adversarial images, success mask, norms).
Modules: ``_common`` (checks, projection, :class:`AttackResult`), ``pgd``, ``minimum_norm`` (CW,
FMN, DDN, best-of), ``robustness`` (``get_rob``, Fig. 3 pairs, :class:`RobustnessSummary`).

The model is put in eval mode for every attack and the caller's mode is restored afterwards;
no gradient accumulates in the model's parameters.
"""

from probelib.attacks._common import NORMS, AttackResult, eval_mode, input_bounds, perturbation_norms, project
from probelib.attacks.minimum_norm import (CW_BOUNDARY_STEPS, CW_DEFAULT_STEPS, MIN_NORM_ATTACKS, STUDY_ATTACK,
                                           best_of_l2, cw_l2, ddn_l2, fmn_l2, min_norm_attack)
from probelib.attacks.pgd import pgd
from probelib.attacks.robustness import (ClosestAdversarial, RobustnessSummary, closest_adversarial,
                                         plot_radius_histograms, radius_far_below, radius_vs_ood_distance,
                                         robustness_summary, robustness_table)

__all__ = ["NORMS", "AttackResult", "eval_mode", "input_bounds", "perturbation_norms", "project", "pgd",
           "CW_BOUNDARY_STEPS", "CW_DEFAULT_STEPS", "MIN_NORM_ATTACKS", "STUDY_ATTACK", "best_of_l2", "cw_l2",
           "ddn_l2", "fmn_l2", "min_norm_attack", "ClosestAdversarial", "RobustnessSummary", "closest_adversarial",
           "plot_radius_histograms", "radius_far_below", "radius_vs_ood_distance", "robustness_summary",
           "robustness_table"]
