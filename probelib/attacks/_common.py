"""What every attack shares: input checks, the eval-mode-and-frozen-weights context, L2/Linf
projection, the adversarial criterion, and :class:`AttackResult` (foolbox's contract)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from probelib._util import check_images
from probelib._util import eval_mode as _module_eval_mode

NORMS = ("l2", "linf")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``probelib._util.eval_mode`` with frozen parameters (no gradient accumulates in the model's
    weights while an attack differentiates its input); both restored after."""
    grads = {p: p.requires_grad for p in model.parameters()}
    with _module_eval_mode(model):
        for p in grads:
            p.requires_grad_(False)
        try:
            yield model
        finally:
            for p, g in grads.items():
                p.requires_grad_(g)


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector so it broadcasts against a batch like ``like``."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta)
    return delta * torch.clamp(eps / (n + 1e-12), max=1.0)


def _check_labels(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(x):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"labels y must be a 1-D tensor with one label per image ({len(x)}), got {shape}")
    if y.dtype != torch.int64:
        raise ValueError(f"labels y must be int64 (torch.long), got {y.dtype}; use y.long()")


def _check_batch(x: torch.Tensor, y: torch.Tensor, full: bool = True) -> None:
    if full:
        check_images(x, "x")
    elif not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape N×C×H×W, got {shape}")
    _check_labels(x, y)


def input_bounds(x: torch.Tensor, bounds: tuple[float, float] | None | str = "auto"
                 ) -> tuple[float, float]:
    """The (low, high) box of ``x`` for ``clamp``: ``"auto"`` = [0, 1] for N×C×H×W images and
    unbounded (−inf, inf) for N×D feature vectors; ``None`` = unbounded; or an explicit pair."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch tensor (N×C×H×W images or N×D features), got {shape}")
    if isinstance(bounds, str):
        if bounds != "auto":
            raise ValueError(f"bounds must be 'auto', None or a (low, high) pair, got {bounds!r}")
        return (0.0, 1.0) if x.ndim == 4 else (-math.inf, math.inf)
    if bounds is None:
        return -math.inf, math.inf
    lo, hi = (float(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    return lo, hi


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# PGD
# ----------------------------------------------------------------------------------------------


def perturbation_norms(delta: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """‖δ‖ per sample in ``norm`` (``"l2"`` or ``"linf"``), float N."""
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


@dataclass
class AttackResult:
    """The outcome of an attack on N images (every attack returns one; foolbox's contract).

    ``x_adv``: the adversarial images; ``success``: bool N, whether the model misclassifies
    ``x_adv``; ``norms``: float N, the perturbation ‖x_adv − x‖ in the attack's norm.
    Minimum-norm attacks (:func:`cw_l2`, :func:`fmn_l2`, :func:`ddn_l2`, :func:`best_of_l2`) return
    the smallest adversarial image found per point, and the clean image with ``norms = inf`` where
    they failed; fixed-budget :func:`pgd` returns its highest-loss iterate for every point (also
    where it did not flip the label) with that iterate's finite norm.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor

    def __len__(self) -> int:
        return len(self.success)


def _is_adversarial(logits: torch.Tensor, y: torch.Tensor, confidence: float = 0.0) -> torch.Tensor:
    """Untargeted criterion as foolbox: argmax of the logits, true logit raised by ``confidence``, ≠ y."""
    if confidence:
        logits = logits + confidence * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return logits.argmax(1) != y


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per sample (negative = misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
    return true - other
