"""Projected gradient descent (NCG spec §5), the attack adversarial training uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probelib._util import check_choice, check_positive
from probelib.attacks._common import (NORMS, AttackResult, _check_count, _check_labels, _per_sample_norm, eval_mode,
                                      input_bounds, perturbation_norms, project)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2",
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        restarts: int = 1, generator: torch.Generator | None = None,
        bounds: tuple[float, float] | None | str = "auto") -> AttackResult:
    """Projected gradient descent maximising cross-entropy at label ``y`` (NCG spec §5).

    L2: uniform(−eps, eps) start rescaled into the ball, steps along the L2-normalised gradient;
    Linf: sign steps. Every iterate is projected onto the eps-ball and clipped to ``bounds``.
    ``step_size`` defaults to 2·eps/steps. With ``restarts`` > 1 each sample keeps the restart
    of highest loss (so restarts never lower the loss). Returns an :class:`AttackResult`: the
    adversarial inputs (detached; ``.x_adv``), whether the model misclassifies them, and their
    ``norm`` distance to ``x``.

    ``bounds``: the input box; ``"auto"`` = [0, 1] for images (N×C×H×W) and no box for
    feature vectors (N×D, the feature-space classifiers; the NCG code's (−1e10, 1e10)).
    """
    check_choice("norm", norm, NORMS)
    check_positive("eps", eps, "use the perturbation budget, e.g. eps=2.0 for L2 on MNIST")
    _check_count("steps", steps)
    _check_count("restarts", restarts)
    if step_size is not None:
        check_positive("step_size", step_size, "or leave step_size=None for 2·eps/steps")
    lo, hi = input_bounds(x, bounds)
    _check_labels(x, y)
    step_size = 2 * eps / steps if step_size is None else step_size
    x = x.detach()
    with eval_mode(model), torch.enable_grad():
        best_x = x.clone()
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(restarts):
            if random_start:
                u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
                delta = project((2 * u - 1) * eps, eps, norm)
            else:
                delta = torch.zeros_like(x)
            x_adv = (x + delta).clamp(lo, hi)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
                if norm == "l2":
                    step = grad / (_per_sample_norm(grad) + 1e-12)
                else:
                    step = grad.sign()
                x_adv = (x_adv.detach() + step_size * step).clamp(lo, hi)
                x_adv = (x + project(x_adv - x, eps, norm)).clamp(lo, hi)
            with torch.no_grad():
                logits = model(x_adv)
                loss = F.cross_entropy(logits, y, reduction="none")
                better = loss > best_loss
                best_x[better] = x_adv[better]
                best_loss = torch.where(better, loss, best_loss)
                success = torch.where(better, logits.argmax(1) != y, success)
    return AttackResult(x_adv=best_x, success=success, norms=perturbation_norms(best_x - x, norm))
