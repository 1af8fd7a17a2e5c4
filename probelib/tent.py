"""TENT (Wang, Shelhamer, Liu, Olshausen, Darrell; ICLR 2021) and its ``norm`` baseline, written from
the paper's definitions, as arms beside AdaBN's whole-set statistics (:mod:`probelib.adabn`;
:class:`TentSettings` sits beside :class:`probelib.adabn.AdaBNSettings`).

* ``norm`` — test-time normalisation: every BatchNorm layer normalises each test batch with that
  batch's own mean and (biased) variance instead of the source running statistics; no parameter
  changes. Predictions depend on the batch size (default 128, TENT's CIFAR setting).
* ``tent`` — test entropy minimisation: the same batch statistics, and the BN affine parameters
  (γ, β: the only parameters that change) are updated online, batch after batch in the given
  order, to minimise the mean Shannon entropy H(ŷ) = −Σ_c p(ŷ_c) log p(ŷ_c) of the batch's
  predictions. Per batch: forward (these are the batch's predictions), then ``steps`` optimiser
  steps (default one Adam step, lr 1e-3, betas (0.9, 0.999), no weight decay: TENT's CIFAR
  configuration). With ``steps > 1`` the predictions come from the last step's forward.

Both run on a deep copy, so the model passed in is never changed; each call is one *setting*
(a corruption × severity, say) and starts from the source weights with a fresh optimiser: the
episodic reset per setting. ``TentSettings(reset_each_batch=True)`` resets after every batch too
(TENT's fully episodic variant). Other modules (dropout, ...) stay in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from probelib._util import check_choice
from probelib.adabn.core import LayerSelector, bn_layers, resolve_layers
from probelib._util import compute_device, iter_batches, model_device

__all__ = ["TentSettings", "TENT_ARMS", "entropy", "norm_logits", "tent_logits", "tent_arm_logits",
           "prepare_batch_norm"]

TENT_ARMS = ("norm", "tent")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TentSettings:
    """Hyper-parameters of the ``norm`` and ``tent`` arms (defaults: TENT's CIFAR-10-C setting).

    ``batch_size``: test batch (both arms; the statistics are per batch). ``lr``, ``steps``,
    ``optimizer`` (``adam`` with ``betas``, or ``sgd`` with ``momentum``), ``weight_decay``: the
    ``tent`` update. ``reset_each_batch``: restore the source weights after every batch.
    ``shuffle`` (:func:`tent_arm_logits`, hence the studies): feed the images in a seeded random
    order and return the logits in the original order. Both arms depend on which images share a
    batch, and a class-sorted set (the mnist5k test split, every ImageFolder "-C" set) would make
    each batch a hidden label shift; CIFAR-10-C's stored order is already class-mixed, so TENT ran
    it as stored (``shuffle=False`` reproduces that exactly).
    """

    batch_size: int = 128
    lr: float = 1e-3
    steps: int = 1
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.0
    reset_each_batch: bool = False
    shuffle: bool = True

    def __post_init__(self):
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer (gradient steps per batch), got {self.steps!r}")
        if not self.lr >= 0:
            raise ValueError(f"lr must be >= 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)

    def label(self) -> str:
        """How a table names these settings, e.g. ``"adam lr 0.001, 1 step per batch of 128, episodic per setting"``."""
        opt = f"{self.optimizer} lr {self.lr:g}" + (f" wd {self.weight_decay:g}" if self.weight_decay else "")
        reset = "reset every batch" if self.reset_each_batch else "episodic per setting"
        order = "shuffled" if self.shuffle else "stored order"
        return f"{opt}, {self.steps} step{'s' * (self.steps != 1)} per batch of {self.batch_size}, {order}, {reset}"

    def replace(self, **changes) -> "TentSettings":
        """A copy with ``changes`` applied (validated)."""
        return replace(self, **changes)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits), one value per row."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def prepare_batch_norm(model: nn.Module, *, device: torch.device | None = None,
                       layers: Sequence[bool] | LayerSelector | None = None) -> tuple[nn.Module, list[_BatchNorm]]:
    """A deep copy of ``model`` in eval mode whose BatchNorm layers normalise with each batch's
    own statistics (no running statistics kept), with every parameter frozen except the BN
    affine ones; and those BN layers. ``layers`` (as :func:`probelib.adabn.resolve_layers`: a
    bool per BN layer or ``exclude_last(m)`` / ``exclude_first(m)``) limits this to some layers;
    the others keep the source statistics and frozen affine parameters (the label-shift study's
    "do not adapt the last m layers"). ``ValueError`` when the model has no BatchNorm layer, or
    when ``layers`` selects none."""
    if not bn_layers(model):
        kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm,
                                                                                     nn.InstanceNorm2d))})
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer with running statistics, so the norm and "
                         f"tent arms have nothing to adapt{f' (it normalises with {kinds})' if kinds else ''}; "
                         "use a batch-norm model (e.g. build_model(..., norm='batch')) or only the source arm")
    device = compute_device(model, device)
    mask = resolve_layers(model, layers)
    if not any(mask):
        raise ValueError(f"layers selects none of the model's {len(mask)} BatchNorm layers, so the norm and tent "
                         "arms would be the source model; leave at least one layer adapted")
    work = copy.deepcopy(model).to(device).eval()
    work.requires_grad_(False)
    chosen = [m for (_, m), keep in zip(bn_layers(work), mask) if keep]
    for m in chosen:
        m.train()  # batch statistics in the forward pass ...
        m.track_running_stats = False  # ... and no running statistics kept or used
        m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
        if m.affine:
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
    return work, chosen


def _optimizer(params: Sequence[nn.Parameter], s: TentSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _forward(work: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        return work(x)
    except ValueError as err:
        if "Expected more than 1 value per channel" in str(err):
            raise ValueError(f"a test batch of {len(x)} image(s) gives BatchNorm a single value per channel, so "
                             "batch statistics are undefined; use a batch_size that leaves no final batch of 1 "
                             "(or drop the last image)") from None
        raise


def norm_logits(model: nn.Module, x, settings: TentSettings | None = None, *, device=None,
                desc: str | None = None, layers: Sequence[bool] | LayerSelector | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of ``model`` on ``x`` with each test batch's own BN statistics (the
    ``norm`` arm); batches of ``settings.batch_size`` in order. ``model`` is not changed.
    ``layers``: which BN layers take batch statistics (default all; see :func:`prepare_batch_norm`)."""
    s = settings or TentSettings()
    work, _ = prepare_batch_norm(model, device=device, layers=layers)
    dev = model_device(work)
    with torch.no_grad():
        out = [_forward(work, xb).float().cpu() for xb in _batches(x, s.batch_size, dev, desc)]
    return _cat(out)


def tent_logits(model: nn.Module, x, settings: TentSettings | None = None, *, device=None,
                desc: str | None = None, layers: Sequence[bool] | LayerSelector | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of ``model`` on ``x`` under TENT (the ``tent`` arm): batch
    statistics plus online entropy minimisation over the BN affine parameters, batches of
    ``settings.batch_size`` in order, each batch predicted before its own update. One call is
    one setting: it starts from ``model``'s weights (which it never changes). ``layers``: which BN
    layers adapt (batch statistics and updated γ, β; default all; see :func:`prepare_batch_norm`)."""
    s = settings or TentSettings()
    work, chosen = prepare_batch_norm(model, device=device, layers=layers)
    params = [p for m in chosen if m.affine for p in (m.weight, m.bias)]
    if not params:
        raise ValueError("the model's BatchNorm layers have no affine parameters (affine=False), so tent has "
                         "nothing to update; use the norm arm")
    source = [p.detach().clone() for p in params]
    opt = _optimizer(params, s)
    dev = model_device(work)
    out = []
    batches = iter(_batches(x, s.batch_size, dev, desc))
    xb = next(batches, None)
    while xb is not None:
        following = next(batches, None)
        # the update after a batch's last forward only serves the batches after it: skip it (same logits)
        # after the last batch, and after every batch when each batch starts again from the source weights
        wasted = following is None or s.reset_each_batch
        for step in range(int(s.steps)):
            logits = _forward(work, xb)
            if wasted and step == int(s.steps) - 1:
                break
            loss = entropy(logits).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append(logits.detach().float().cpu())
        xb = following
        if s.reset_each_batch:
            with torch.no_grad():
                for p, p0 in zip(params, source):
                    p.copy_(p0)
            opt = _optimizer(params, s)
    return _cat(out)


def tent_arm_logits(model: nn.Module, x: torch.Tensor, arm: str = "tent", settings: TentSettings | None = None,
                    *, device=None, desc: str | None = None, layers: Sequence[bool] | LayerSelector | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Logits of one arm, ``"norm"`` or ``"tent"`` (see the module docstring), one row per image
    of ``x`` in its order. With ``settings.shuffle`` (default) the images are fed in the order
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``; else as stored."""
    check_choice("arm", arm, TENT_ARMS)
    s = settings or TentSettings()
    fn = tent_logits if arm == "tent" else norm_logits
    if not s.shuffle:
        return fn(model, x, s, device=device, desc=desc, layers=layers)
    x = torch.as_tensor(x)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    fed = fn(model, x[order.to(x.device)], s, device=device, desc=desc, layers=layers)
    out = torch.empty_like(fed)
    out[order] = fed
    return out


def _batches(x, batch_size: int, device: torch.device, desc: str | None):
    """Batches in order on ``device`` (a tqdm.auto progress bar named ``desc`` when given)."""
    return iter_batches(x, batch_size, device, desc)


def _cat(out: list[torch.Tensor]) -> torch.Tensor:
    if not out:
        raise ValueError("no images to evaluate (empty set)")
    logits = torch.cat(out)
    if not torch.isfinite(logits).all():
        raise FloatingPointError("the adapted model produced non-finite logits; lower lr (tent) or check the "
                                 "inputs are images in [0, 1]")
    return logits
