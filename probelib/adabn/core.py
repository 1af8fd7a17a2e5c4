"""AdaBN's core: re-estimate a model's BatchNorm statistics on target data (after Burns & Steinhardt).

``adapt_bn`` returns an adapted copy; ``adapted`` adapts in place and restores the source
statistics on exit (the fast path the studies use); :class:`AdaBNSettings` holds every option, one
frozen object passed by keyword through the studies (:mod:`probelib.adabn.studies`).

Two ways to estimate the statistics:

- ``momentum=None`` (default): the statistics are reset and replaced by the *exact* population
  mean and unbiased variance over all N·H·W values per channel of each BN layer's input,
  pooled in float64 across batches (not an average of per-batch variances; within a batch,
  corrected two-pass float32 sums, ~1e-7 relative). With ``layerwise=True``
  (default) this is done layer by layer: the pass for layer ℓ runs the network with the layers
  before ℓ already adapted and in eval mode and stops at ℓ, so every layer's statistics are
  exactly those of its input in the adapted network, whatever the batch size (when all the
  images fit in one batch, one pass gives the same statistics: each layer takes them from its
  input just before it normalises). With
  ``layerwise=False`` one pass collects every layer's input while the BN layers normalise with
  batch statistics (train mode), as the PyTorch AdaBN pass sees them (cheaper, one pass).
- ``momentum=<float>``: PyTorch's exponential average starting from the source statistics,
  batch by batch, as the authors' scripts ran it (they used 0.1) — in a seeded random order, as
  their ``DataLoader(shuffle=True)`` fed it (``shuffle=True``, the default; ``shuffle=False`` keeps
  the stored order). The last batches dominate the average, so on class-sorted data (the mnist5k
  test split, every ImageFolder "-C" set) the stored order would be a hidden label shift.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from probelib._util import _to_float_images, check_images_or_features, compute_device, iter_batches
from probelib.adabn.augment import _augmenter, _Augmenter, _first_channels

__all__ = ["AdaBNSettings", "momentum_label", "bn_layers", "exclude_last", "exclude_first", "resolve_layers",
           "adapt_bn", "adapt_bn_", "adapted", "preserved_bn_statistics"]

LayerSelector = Callable[[int], Sequence[bool]]


def momentum_label(momentum: float | None) -> str:
    """How a table names the statistics estimate: ``"None (exact average)"`` or
    ``"0.1 (EMA from source, shuffled)"`` (the studies feed the EMA in a seeded shuffled order)."""
    return "None (exact average)" if momentum is None else f"{momentum:g} (EMA from source, shuffled)"


def _check_batch(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise ValueError(f"{name} must be a positive integer or None (automatic), got {value!r}")


@dataclass(frozen=True)
class AdaBNSettings:
    """How AdaBN estimates the statistics (defaults: every study's; TENT's arms have
    :class:`probelib.tent.TentSettings`).

    ``momentum``: None = the exact population average over the target data; a float in (0, 1] =
    PyTorch's exponential average from the source statistics (the authors used 0.1), fed in the
    order ``shuffle`` says (seeded random order, or stored order). ``layers``: which BN layers to
    adapt — a bool per layer of :func:`bn_layers`, a selector :func:`exclude_last` /
    :func:`exclude_first`, or None (all); the others keep the source statistics. ``augment``: the
    statistics pass's augmentation — ``None`` (none), ``"crop"``, ``"crop+flip"``, ``"auto"`` /
    ``True`` (crop for one channel, crop+flip otherwise) or a callable batch → batch; the studies'
    ``adabn+aug`` arm uses it with None meaning ``"auto"`` (``False``: none), their ``adabn`` arm
    never augments. ``batch_size``: images per statistics pass (None: 128 for the EMA — it
    depends on it — else the whole set in one batch up to 2^20 pixels per channel, at least 128);
    ``eval_batch_size``: scoring batch (None: 64 on CPU, 1024 on accelerators). ``layerwise``
    (exact statistics only): one truncated pass per layer in the adapted network (True) or one pass
    with batch-normalised inputs. ``seed``: the augmentation's crops and flips and the shuffled
    order. ``device``: where to compute (None: where the model is; the studies: cuda when present).
    """

    momentum: float | None = None
    layers: Sequence[bool] | LayerSelector | None = None
    augment: str | bool | Callable | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    layerwise: bool = True
    shuffle: bool = True
    seed: int = 0
    device: str | torch.device | None = None

    def __post_init__(self):
        m = self.momentum
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1):
            raise ValueError(f"momentum must be None (exact cumulative average) or a float in (0, 1], got {m!r}")
        _check_batch("batch_size", self.batch_size)
        _check_batch("eval_batch_size", self.eval_batch_size)
        if isinstance(self.augment, str) and self.augment not in ("auto", "crop", "crop+flip"):
            raise ValueError(f"augment must be None, 'auto', 'crop', 'crop+flip' or a callable, got {self.augment!r}")

    def label(self) -> str:
        """How a table names the statistics estimate (:func:`momentum_label`)."""
        return momentum_label(self.momentum)

    def replace(self, **changes) -> "AdaBNSettings":
        """A copy with ``changes`` applied (validated)."""
        return replace(self, **changes)

    def stats_batch(self, data) -> int:
        """The statistics pass's batch size for ``data`` (see the class docstring)."""
        if self.batch_size is not None:
            return int(self.batch_size)
        if self.momentum is not None:
            return 128
        x = data if isinstance(data, torch.Tensor) else None
        if x is None:
            return 256
        hw = int(x.shape[-2] * x.shape[-1]) if x.ndim >= 3 else 1
        return max(1, min(len(x), max(128, (1 << 20) // hw)))

    def eval_batch(self, device: torch.device) -> int:
        """The scoring batch size on ``device``."""
        if self.eval_batch_size is not None:
            return int(self.eval_batch_size)
        return 64 if torch.device(device).type == "cpu" else 1024
# ----------------------------------------------------------------------------- layers

def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The model's BatchNorm layers that keep running statistics, in registration order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def _require_bn(model: nn.Module, what: str = "AdaBN") -> None:
    """Refuse a model without BatchNorm layers: re-estimating statistics it does not have
    would silently return the source model, and a table where adabn = source."""
    if not bn_layers(model):
        kinds = sorted({type(m).__name__ for m in model.modules()
                        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d))})
        raise ValueError(f"{what} needs a model with BatchNorm layers that keep running statistics, but "
                         f"{type(model).__name__} has none (no BatchNorm layer"
                         f"{f'; it normalises with {kinds}' if kinds else ''}: adapting it would change nothing "
                         "and report adabn = source); use a BatchNorm model (e.g. build_model('WRN-16-1', C) or "
                         "norm='batch'), or score it with arms=('source',) only")



class _Exclude:
    def __init__(self, m: int, last: bool):
        if int(m) != m or m < 0:
            raise ValueError(f"m must be an integer >= 0 (number of BN layers to leave unadapted), got {m!r}")
        self.m, self.last = int(m), last

    def __call__(self, n: int) -> list[bool]:
        m = min(self.m, n)
        keep = [True] * (n - m)
        return keep + [False] * m if self.last else [False] * m + keep

    def __repr__(self) -> str:
        return f"exclude_{'last' if self.last else 'first'}({self.m})"


def exclude_last(m: int) -> LayerSelector:
    """Selector: adapt every BN layer except the last ``m`` (capped by the number of layers)."""
    return _Exclude(m, last=True)


def exclude_first(m: int) -> LayerSelector:
    """Selector: adapt every BN layer except the first ``m`` (capped by the number of layers)."""
    return _Exclude(m, last=False)


def resolve_layers(model: nn.Module, layers: Sequence[bool] | LayerSelector | None = None) -> list[bool]:
    """The boolean mask (one entry per :func:`bn_layers` layer, True = adapt) that ``layers`` means."""
    n = len(bn_layers(model))
    if layers is None:
        return [True] * n
    mask = layers(n) if callable(layers) else layers
    mask = [bool(v) for v in (mask.tolist() if isinstance(mask, (torch.Tensor, np.ndarray)) else mask)]
    if len(mask) != n:
        raise ValueError(f"layers mask has {len(mask)} entries but the model has {n} BatchNorm layers; "
                         "pass one bool per layer of bn_layers(model), or exclude_last(m)/exclude_first(m)")
    return mask


# ----------------------------------------------------------------------------- statistics state

def _bn_state(model: nn.Module) -> list[dict]:
    return [{"mean": m.running_mean.clone(), "var": m.running_var.clone(),
             "n": None if m.num_batches_tracked is None else m.num_batches_tracked.clone(),
             "momentum": m.momentum} for _, m in bn_layers(model)]


def _load_bn_state(model: nn.Module, state: list[dict]) -> None:
    for (_, m), s in zip(bn_layers(model), state):
        m.running_mean.copy_(s["mean"])
        m.running_var.copy_(s["var"])
        if s["n"] is not None:
            m.num_batches_tracked.copy_(s["n"])
        m.momentum = s["momentum"]


@contextlib.contextmanager
def preserved_bn_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: on exit, restore the BN running statistics, momenta and every module's
    train/eval flag to what they were on entry (no deep copy)."""
    state = _bn_state(model)
    flags = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        with torch.no_grad():
            _load_bn_state(model, state)
        for m, flag in flags.items():
            m.training = flag


# ----------------------------------------------------------------------------- adaptation

class _StopForward(Exception):
    pass


class _Accumulator:
    """Per-channel mean and centred sum of squares in float64, combined batch by batch (Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        # corrected two-pass moments of the batch (centred, so no cancellation; float32 cascade
        # sums are accurate to ~1e-7 relative and 4x faster on CPU than float64 or var_mean),
        # then combined with the earlier batches in float64
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        dims = [0] + list(range(2, x.ndim))
        k = x.numel() // x.shape[1]
        shift = x.mean(dims)
        d = x - shift.view([1, -1] + [1] * (x.ndim - 2))
        s1 = d.sum(dims).double()
        m2 = (d * d).sum(dims).double() - s1 ** 2 / k
        mean = shift.double() + s1 / k
        if self.n == 0:
            self.n, self.mean, self.m2 = k, mean, m2
            return
        total = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * k / total)
        self.n = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ValueError("the statistics pass saw fewer than 2 values per channel; pass more images")
        return self.mean, self.m2 / (self.n - 1)


def _set_stats(m: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, batches: int) -> None:
    m.running_mean.copy_(mean.to(m.running_mean.dtype))
    m.running_var.copy_(var.to(m.running_var.dtype))
    if m.num_batches_tracked is not None:
        m.num_batches_tracked.fill_(batches)


def _single_batch(data, batch_size: int) -> bool:
    """True when ``data`` (a tensor, a Dataset holding an ``x`` tensor, or a DataLoader) comes
    in a single batch of ``batch_size``: the exact layer-wise statistics then take one pass."""
    if isinstance(data, DataLoader):
        try:
            return len(data) == 1
        except TypeError:
            return False
    x = data if isinstance(data, torch.Tensor) else getattr(data, "x", None)
    return isinstance(x, torch.Tensor) and len(x) <= batch_size


def _batches(data, batch_size, device, aug, shuffle_seed: int | None = None):
    """Float image batches of ``data`` on ``device`` (augmented if ``aug``): in stored order, or
    with ``shuffle_seed`` in the order of ``torch.randperm(N, generator=manual_seed(shuffle_seed))``
    — the order of ``DataLoader(shuffle=True)`` with that generator. Tensors keep each image's
    augmentation tied to its dataset index; a DataLoader keeps its own order."""
    if shuffle_seed is not None and not isinstance(data, DataLoader):
        generator = torch.Generator().manual_seed(int(shuffle_seed))
        x_all = data if isinstance(data, torch.Tensor) else getattr(data, "x", None)
        if isinstance(x_all, torch.Tensor):
            order = torch.randperm(len(x_all), generator=generator)
            for s in range(0, len(order), batch_size):
                index = order[s:s + batch_size]
                x = _to_float_images(x_all[index].to(device, non_blocking=True))
                yield (aug.at(x, index) if isinstance(aug, _Augmenter) else aug(x)) if aug is not None else x
            return
        if isinstance(data, Dataset):
            data = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    for x in iter_batches(data, batch_size, device):
        yield aug(x) if aug is not None else x


def _exact_one_pass(model: nn.Module, data, chosen: Sequence[_BatchNorm], batch_size: int, device,
                    aug=None) -> torch.Tensor:
    """All images in one batch: one eval-mode pass in which each chosen layer, just before it
    normalises, takes the exact statistics of its input (the earlier layers already adapted) —
    the same statistics as the per-layer truncated passes, at the cost of one pass. Returns the
    pass's output: the adapted model's output on these (possibly augmented) images."""
    done: set = set()

    def set_exact(module, inputs):
        if module in done:  # a layer called twice keeps its first input's statistics
            return
        acc = _Accumulator()
        acc.add(inputs[0])
        _set_stats(module, *acc.result(), 1)
        done.add(module)

    handles = [m.register_forward_pre_hook(set_exact) for m in chosen]
    outputs = []
    try:
        for x in _batches(data, batch_size, device, aug):
            outputs.append(model(x))
    finally:
        for h in handles:
            h.remove()
    if not outputs:
        raise ValueError("data holds no images; pass at least one")
    return torch.cat(outputs)


def _forward_all(model: nn.Module, data, batch_size: int, device, aug, shuffle_seed: int | None = None) -> int:
    """Forward every (augmented) batch of ``data`` without keeping outputs (a pre-hook may stop a
    pass early with :class:`_StopForward`), in a seeded random order if ``shuffle_seed`` is given;
    the number of batches, at least one."""
    batches = 0
    for x in _batches(data, batch_size, device, aug, shuffle_seed):
        batches += 1
        try:
            model(x)
        except _StopForward:
            pass
    if batches == 0:
        raise ValueError("data holds no images; pass at least one")
    return batches


@torch.no_grad()
def adapt_bn_(model: nn.Module, data, settings: AdaBNSettings | None = None) -> nn.Module:
    """Adapt ``model``'s BN statistics to ``data`` **in place**; return the model in eval mode.

    See :func:`adapt_bn` for the arguments. Prefer :func:`adapted` (restores the source
    statistics on exit) or :func:`adapt_bn` (works on a copy).
    """
    s = settings or AdaBNSettings()
    momentum, augment, layerwise, seed = s.momentum, s.augment, s.layerwise, s.seed
    batch_size = s.stats_batch(data)
    _require_bn(model, "adapt_bn")
    if isinstance(data, torch.Tensor):  # Datasets and DataLoaders are checked batch by batch
        check_images_or_features(data, "data", allow_uint8=True)
    device = compute_device(model, s.device)
    mask = resolve_layers(model, s.layers)
    aug = _augmenter(augment, _first_channels(data), seed) if augment is not None else None
    model.to(device).eval()
    chosen = [m for (_, m), keep in zip(bn_layers(model), mask) if keep]
    if not chosen:
        return model
    if momentum is not None:
        momenta = [m.momentum for m in chosen]
        for m in chosen:
            m.momentum = float(momentum)
            m.train()
        try:
            _forward_all(model, data, batch_size, device, aug, seed if s.shuffle else None)
        finally:
            model.eval()
            for m, old in zip(chosen, momenta):
                m.momentum = old
        return model
    if layerwise and _single_batch(data, batch_size):
        _exact_one_pass(model, data, chosen, batch_size, device, aug)
        return model
    if layerwise:
        for m in chosen:  # one truncated pass per layer; earlier layers already adapted, eval mode
            acc = _Accumulator()
            aug = _augmenter(augment, _first_channels(data), seed) if augment is not None else None

            def hook(module, inputs, acc=acc):
                acc.add(inputs[0])
                raise _StopForward

            handle = m.register_forward_pre_hook(hook)
            try:
                batches = _forward_all(model, data, batch_size, device, aug)
            finally:
                handle.remove()
            _set_stats(m, *acc.result(), batches)
        return model
    accs = {m: _Accumulator() for m in chosen}
    handles = [m.register_forward_pre_hook(lambda mod, inp: accs[mod].add(inp[0])) for m in chosen]
    for m in chosen:
        m.train()  # normalise with batch statistics; the running statistics are overwritten below
    try:
        batches = _forward_all(model, data, batch_size, device, aug)
    finally:
        for h in handles:
            h.remove()
        model.eval()
    for m in chosen:
        _set_stats(m, *accs[m].result(), batches)
    return model


def adapt_bn(model: nn.Module, data, settings: AdaBNSettings | None = None) -> nn.Module:
    """Return a copy of ``model`` whose BatchNorm statistics are re-estimated on ``data``.

    Only BatchNorm layers take part (dropout and everything else stays in eval mode); no
    gradients, no parameter changes. The copy comes back in eval mode; ``model`` is untouched.

    ``data``: target images — a float tensor N×C×H×W in [0, 1] (or uint8 0..255), a Dataset
    (items ``(x, y)`` or ``x``) or a DataLoader (its batching and order are used). ``settings``
    (:class:`AdaBNSettings`, None = the defaults: exact statistics of every BN layer, no
    augmentation): the estimate, the layers, the augmentation of the statistics pass (never of
    scoring), batch size, device, seed. With a float ``momentum`` the batches come in the seeded
    random order ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``, as the
    authors' shuffling loader fed them (``shuffle=False``: stored order; a DataLoader always keeps
    its own order); the exact statistics do not depend on the order.
    """
    return adapt_bn_(copy.deepcopy(model), data, settings)


@contextlib.contextmanager
def adapted(model: nn.Module, data, settings: AdaBNSettings | None = None) -> Iterator[nn.Module]:
    """Context manager: adapt ``model`` in place (as :func:`adapt_bn`), yield it, and restore the
    source statistics and train/eval flags on exit — no deep copy, the fast path for grids."""
    with preserved_bn_statistics(model):
        yield adapt_bn_(model, data, settings)
