"""Adversarial attacks on images in [0, 1]: PGD (L2, Linf).

The model is put in eval mode for the attack and the caller's mode is restored afterwards;
no gradient accumulates in the model's parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from probelib._util import check_choice, check_positive

NORMS = ("l2", "linf")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode with frozen parameters; restore both after."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for p, g in grads.items():
            p.requires_grad_(g)


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta)
    return delta * torch.clamp(eps / (n + 1e-12), max=1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2",
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent maximising cross-entropy at label ``y`` (NCG spec §5).

    L2: uniform(−eps, eps) start rescaled into the ball, steps along the L2-normalised gradient;
    Linf: sign steps. Every iterate is projected onto the eps-ball and clipped to [0, 1].
    ``step_size`` defaults to 2·eps/steps. With ``restarts`` > 1 each sample keeps the restart
    of highest loss. Returns the adversarial images (detached).
    """
    check_choice("norm", norm, NORMS)
    check_positive("eps", eps, "use the perturbation budget, e.g. eps=2.0 for L2 on MNIST")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    step_size = 2 * eps / steps if step_size is None else step_size
    with eval_mode(model), torch.enable_grad():
        best_x = x.detach().clone()
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        for _ in range(restarts):
            if random_start:
                u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
                delta = project((2 * u - 1) * eps, eps, norm)
            else:
                delta = torch.zeros_like(x)
            x_adv = (x + delta).clamp(0, 1).detach()
            for _ in range(steps):
                x_adv.requires_grad_(True)
                loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
                if norm == "l2":
                    step = grad / (_per_sample_norm(grad) + 1e-12)
                else:
                    step = grad.sign()
                x_adv = (x_adv.detach() + step_size * step).clamp(0, 1)
                x_adv = (x + project(x_adv - x, eps, norm)).clamp(0, 1).detach()
            with torch.no_grad():
                loss = F.cross_entropy(model(x_adv), y, reduction="none")
                better = loss > best_loss
                best_x[better] = x_adv[better]
                best_loss = torch.where(better, loss, best_loss)
    return best_x
