"""The training losses, one function per method (NCG spec §4); each runs on one batch.

* ``natural``: cross-entropy on clean data.
* ``trades`` (β = 6 by default): the inner maximisation runs **in eval mode** from
  δ₀ = 0.001·N(0, 1): 10 steps of δ ← δ + (2·eps/10)·g/‖g‖₂ where g = ∇_δ Σ KL(p(x) ‖ p(x+δ)) with
  the clean softmax detached (a sample whose gradient is exactly 0 steps along N(0, 1) instead,
  as TRADES' code does), then x+δ is clipped to [0, 1] (images; feature vectors are not
  boxed) and δ rescaled into the eps-ball.
  The outer loss, **in train mode**, is CE(f(x), y) + β·Σ_c KL(p_clean ‖ p_adv), summed over
  classes, averaged over the batch, with the clean softmax **not** detached (original TRADES);
  one clean forward serves both terms.
* ``at``: CE on 10-step L2 PGD examples only (``probelib.attacks.pgd``: eval mode, random
  start, step 2·eps/10, clip to [0, 1] for images), loss in train mode.
* ``mixup`` (α = 1): one λ ~ Beta(α, α) per batch; the first half of the batch is mixed with
  the second (an odd last sample is dropped); KL(batchmean) against the mixed one-hot targets.

Each returns ``(loss, logits, labels)``: the logits and labels score the train accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probelib.attacks import eval_mode, input_bounds, pgd

__all__ = ["METHODS", "natural_loss", "trades_adversary", "trades_loss", "at_loss", "mixup_loss"]

METHODS = ("natural", "trades", "at", "mixup")


def natural_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on clean data. Returns ``(loss, logits, labels)`` (logits/labels score train accuracy)."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits, y


def _randn(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(like.device, like.dtype)


def trades_adversary(model: nn.Module, x: torch.Tensor, eps: float, *, steps: int = 10,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES' L2 inner maximisation (eval mode; see the module docstring). Returns x_adv (detached).

    Images are kept in [0, 1]; feature vectors (N×D, feature-space MLPs) are not boxed."""
    lo, hi = input_bounds(x)
    step_size = 2 * eps / steps
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1).detach()
        delta = 0.001 * _randn(x.shape, generator, x)
        for _ in range(steps):
            delta.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x + delta), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, delta)
            norms = grad.flatten(1).norm(dim=1)
            grad = grad / norms.view(-1, *([1] * (x.ndim - 1)))
            zero = norms == 0
            if zero.any():  # TRADES: a zero gradient (e.g. CNN002's zero-initialised last layer) steps randomly
                grad[zero] = _randn(grad[zero].shape, generator, grad)
            delta = delta.detach() + step_size * grad
            delta = (x + delta).clamp(lo, hi) - x
            delta = delta.renorm(p=2, dim=0, maxnorm=eps)
    return (x + delta).clamp(lo, hi).detach()


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, beta: float = 6.0,
                steps: int = 10, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRADES: CE(f(x), y) + β·KL(p_clean ‖ p_adv) (sum over classes, batch mean), in train mode."""
    x_adv = trades_adversary(model, x, eps, steps=steps, generator=generator)
    logits = model(x)
    logits_adv = model(x_adv)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="sum") / len(x)
    return F.cross_entropy(logits, y) + beta * kl, logits, y


def at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adversarial training: CE on 10-step L2 PGD examples (made in eval mode), in train mode.

    The returned logits are those of the adversarial batch (train accuracy = robust accuracy).
    """
    x_adv = pgd(model, x, y, eps, norm="l2", steps=steps, random_start=True, generator=generator).x_adv
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits, y


def mixup_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, alpha: float = 1.0,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Mixup as NCG's ``mixupce``: first half mixed with the second, KL(batchmean) to mixed one-hots.

    λ ~ Beta(α, α); for α = 1 (the papers') that is U(0, 1) drawn from ``generator``. The labels
    returned (for train accuracy) are the dominant component's. None for a batch of one.
    """
    half = len(x) // 2
    if half == 0:
        return None
    if alpha == 1.0:
        lam = float(torch.rand((), generator=generator))
    else:
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
    x1, x2, y1, y2 = x[:half], x[half:2 * half], y[:half], y[half:2 * half]
    target = lam * F.one_hot(y1, num_classes).float() + (1 - lam) * F.one_hot(y2, num_classes).float()
    logits = model(lam * x1 + (1 - lam) * x2)
    loss = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
    return loss, logits, (y1 if lam >= 0.5 else y2)

