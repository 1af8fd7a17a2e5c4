"""Batch-norm statistics adaptation (AdaBN) and BN-statistics read-out, after Burns & Steinhardt.

``adapt_bn`` re-estimates the running statistics of a model's BatchNorm layers on target data
and returns an adapted copy; ``adapted`` does the same in place and restores the source
statistics on exit (the fast path the shift grid uses). The studies that render the paper's
experiments (shift grid, label shift, black border, NCG under AdaBN) are the functions at the
bottom of this module.

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
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from probelib._util import check_images_or_features, check_labels, default_device
from probelib._util import _to_float_images, iter_batches, model_device
from probelib.report import Verdict

if TYPE_CHECKING:  # probelib.tent imports this module
    from probelib.tent import TentSettings

__all__ = ["bn_layers", "exclude_last", "exclude_first", "resolve_layers", "train_augmentation",
           "adapt_bn", "adapt_bn_", "adapted", "preserved_bn_statistics", "bn_statistics",
           "bn_statistics_shift", "ARMS", "ALL_ARMS", "STUDY_ARMS", "DEFAULT_CORRUPTIONS", "momentum_label",
           "evaluate_arms",
           "arm_logits", "stratified_subset", "load_shifted", "corrupt_on_the_fly", "shift_grid",
           "adabn_gains", "paired_gains", "grid_verdicts", "PAPER_MS", "PAPER_BN_LAYERS", "paper_ms", "label_shift",
           "label_shift_verdicts", "add_border", "black_border_study", "border_verdicts",
           "bn_statistics_comparison", "ncg_under_adabn", "ncg_verdicts", "TENT_REFERENCE", "tent_table",
           "TentVerdict", "tent_verdict", "tent_verdicts", "study_model"]

LayerSelector = Callable[[int], Sequence[bool]]


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
                         "and report adabn = source); use a BatchNorm model (e.g. build_model('WRN-16-2', C) or "
                         "norm='batch'), or score it with arms=('source',) only")


def _check_xy(x, y, what: str) -> torch.Tensor:
    """Check a study's images (float [0, 1] or uint8) and labels (integers, one per image); return y."""
    check_images_or_features(x, "x", allow_uint8=True)
    return torch.from_numpy(check_labels(y, None, "y", n=len(x), where=what))


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


# ----------------------------------------------------------------------------- augmentation

def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _image_draws(seed: int, start: int, n: int, k: int, index: np.ndarray | None = None) -> np.ndarray:
    """n×k pseudo-random uint64 draws, a pure function of (seed, global image index, j); the
    indices are start..start+n−1, or ``index`` when given."""
    index = np.arange(start, start + n, dtype=np.uint64) if index is None else np.asarray(index, dtype=np.uint64)
    idx = index[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(_splitmix64(np.uint64(seed % 2**63)) + idx)


def train_augmentation(x: torch.Tensor, seed: int = 0, start: int = 0, pad: int = 4,
                       flip: bool = True, index: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """The training augmentation, batched: random crop of the original size after zero-padding
    ``pad`` pixels per side, then (if ``flip``) a horizontal flip with probability ½.

    The crop offsets and flips of image ``i`` of the batch are a pure function of ``seed`` and
    its global index ``start + i`` (or ``index[i]``: the dataset indices of a shuffled batch), so
    the result does not depend on how the data is batched or ordered.
    """
    n, _, h, w = x.shape
    if index is not None:
        index = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if index.shape != (n,):
            raise ValueError(f"index must hold one dataset index per image ({n}), got shape {index.shape}")
    draws = _image_draws(seed, start, n, 3, index)
    oy = torch.from_numpy((draws[:, 0] % np.uint64(2 * pad + 1)).astype(np.int64)).to(x.device)
    ox = torch.from_numpy((draws[:, 1] % np.uint64(2 * pad + 1)).astype(np.int64)).to(x.device)
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    rows = oy[:, None] + torch.arange(h, device=x.device)                  # n×h
    cols = ox[:, None] + torch.arange(w, device=x.device)                  # n×w
    if flip:
        flips = torch.from_numpy((draws[:, 2] >> np.uint64(63)).astype(bool)).to(x.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]               # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


class _Augmenter:
    """Applies :func:`train_augmentation` to consecutive batches, tracking the global image index."""

    def __init__(self, seed: int, flip: bool):
        self.seed, self.flip, self.seen = seed, flip, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = train_augmentation(x, self.seed, self.seen, flip=self.flip)
        self.seen += len(x)
        return out

    def at(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Augment a batch whose images are the dataset's images ``index`` (a shuffled pass): each
        image gets the crop and flip it gets in stored order."""
        return train_augmentation(x, self.seed, flip=self.flip, index=index)


def _augmenter(augment, channels: int, seed: int):
    """A function batch -> augmented batch, or None. A fresh one gives the same images again."""
    if augment is None or augment is False:
        return None
    if callable(augment):
        return augment
    if augment is True or augment == "auto":
        augment = "crop" if channels == 1 else "crop+flip"
    if augment not in ("crop", "crop+flip"):
        raise ValueError(f"augment must be None, 'auto', 'crop', 'crop+flip' or a callable, got {augment!r}")
    return _Augmenter(seed, flip=augment == "crop+flip")


def _first_channels(data) -> int:
    if isinstance(data, torch.Tensor):
        return int(data.shape[1])
    x = getattr(data, "x", None)
    if isinstance(x, torch.Tensor):
        return int(x.shape[1])
    item = data.dataset[0] if hasattr(data, "dataset") else data[0]
    item = item[0] if isinstance(item, (list, tuple)) else item
    return int(item.shape[0])


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
    from torch.utils.data import DataLoader
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
    from torch.utils.data import DataLoader, Dataset
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
def adapt_bn_(model: nn.Module, data, momentum: float | None = None,
              layers: Sequence[bool] | LayerSelector | None = None, augment=None,
              batch_size: int = 256, device: str | torch.device | None = None,
              layerwise: bool = True, seed: int = 0, shuffle: bool = True) -> nn.Module:
    """Adapt ``model``'s BN statistics to ``data`` **in place**; return the model in eval mode.

    See :func:`adapt_bn` for the arguments. Prefer :func:`adapted` (restores the source
    statistics on exit) or :func:`adapt_bn` (works on a copy).
    """
    if momentum is not None and not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
        raise ValueError(f"momentum must be None (exact cumulative average) or a float in (0, 1], got {momentum!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _require_bn(model, "adapt_bn")
    if isinstance(data, torch.Tensor):  # Datasets and DataLoaders are checked batch by batch
        check_images_or_features(data, "data", allow_uint8=True)
    device = model_device(model) if device is None else default_device(device)
    mask = resolve_layers(model, layers)
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
            _forward_all(model, data, batch_size, device, aug, seed if shuffle else None)
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


def adapt_bn(model: nn.Module, data, momentum: float | None = None,
             layers: Sequence[bool] | LayerSelector | None = None, augment=None,
             batch_size: int = 256, device: str | torch.device | None = None,
             layerwise: bool = True, seed: int = 0, shuffle: bool = True) -> nn.Module:
    """Return a copy of ``model`` whose BatchNorm statistics are re-estimated on ``data``.

    Only BatchNorm layers take part (dropout and everything else stays in eval mode); no
    gradients, no parameter changes. The copy comes back in eval mode; ``model`` is untouched.

    Args:
        model: a network with BatchNorm layers.
        data: target images: a float tensor N×C×H×W in [0, 1] (or uint8 0..255), a Dataset
            (items ``(x, y)`` or ``x``) or a DataLoader (its batching and order are used).
        momentum: ``None`` = reset and take the exact population mean and unbiased variance of
            each layer's input over all the data (float64); a float = PyTorch's exponential
            average starting from the source statistics (the authors used 0.1), fed in the
            order ``shuffle`` says.
        layers: which BN layers to adapt: a bool per layer of :func:`bn_layers` or a selector
            :func:`exclude_last` / :func:`exclude_first`. Unselected layers keep the source
            statistics and normalise with them during the pass.
        augment: ``None``; ``"crop+flip"`` (random crop, zero pad 4, + horizontal flip),
            ``"crop"`` (grey digits), ``"auto"``/``True`` (crop for 1 channel, crop+flip
            otherwise) or a callable batch → batch; applied in the statistics pass only.
        batch_size: images per forward pass (for tensors and Datasets).
        device: where to compute; ``None`` = where the model's parameters are.
        layerwise: momentum=None only: exact layer-by-layer statistics in the adapted network
            (one truncated pass per layer) if True, else one pass with batch-normalised inputs.
        seed: seeds the augmentation's random crops and flips and the shuffled order.
        shuffle: float ``momentum`` only (the exact statistics do not depend on the order): feed
            the batches in the seeded random order ``torch.randperm(N, generator=
            torch.Generator().manual_seed(seed))``, as the authors' shuffling loader did (True,
            default), or in stored order (False). A DataLoader always keeps its own order.
    """
    return adapt_bn_(copy.deepcopy(model), data, momentum, layers, augment, batch_size, device,
                     layerwise, seed, shuffle)


@contextlib.contextmanager
def adapted(model: nn.Module, data, momentum: float | None = None,
            layers: Sequence[bool] | LayerSelector | None = None, augment=None,
            batch_size: int = 256, device: str | torch.device | None = None,
            layerwise: bool = True, seed: int = 0, shuffle: bool = True) -> Iterator[nn.Module]:
    """Context manager: adapt ``model`` in place (as :func:`adapt_bn`), yield it, and restore the
    source statistics and train/eval flags on exit — no deep copy, the fast path for grids."""
    with preserved_bn_statistics(model):
        yield adapt_bn_(model, data, momentum, layers, augment, batch_size, device, layerwise, seed, shuffle)


# ----------------------------------------------------------------------------- read-out

def bn_statistics(model: nn.Module, per_channel: bool = False) -> pd.DataFrame:
    """Per-layer BN running statistics.

    ``per_channel=False``: one row per layer with ``layer`` (index), ``name``, ``channels``,
    ``mean`` (average running mean), ``var`` (average running variance), ``mean_abs`` and
    ``log_var`` (average log running variance). ``per_channel=True``: one row per channel with
    ``layer``, ``name``, ``channel``, ``running_mean``, ``running_var``.
    """
    rows = []
    for i, (name, m) in enumerate(bn_layers(model)):
        mean = m.running_mean.detach().double().cpu().numpy()
        var = m.running_var.detach().double().cpu().numpy()
        if per_channel:
            rows += [{"layer": i, "name": name, "channel": c, "running_mean": mean[c],
                      "running_var": var[c]} for c in range(len(mean))]
        else:
            rows.append({"layer": i, "name": name, "channels": len(mean), "mean": mean.mean(),
                         "var": var.mean(), "mean_abs": np.abs(mean).mean(),
                         "log_var": np.log(np.maximum(var, 1e-12)).mean()})
    return pd.DataFrame(rows)


def bn_statistics_shift(source: nn.Module, adapted_model: nn.Module) -> pd.DataFrame:
    """Per layer, how far the adapted statistics moved from the source ones: ``mean_shift``
    (RMS over channels of the mean difference divided by the source std) and ``log_var_ratio``
    (average over channels of log(adapted var / source var))."""
    rows = []
    a_layers = bn_layers(adapted_model)
    s_layers = bn_layers(source)
    if len(a_layers) != len(s_layers):
        raise ValueError("source and adapted models have different numbers of BN layers")
    for i, ((name, s), (_, a)) in enumerate(zip(s_layers, a_layers)):
        sm, sv = s.running_mean.double().cpu(), s.running_var.double().cpu().clamp_min(1e-12)
        am, av = a.running_mean.double().cpu(), a.running_var.double().cpu().clamp_min(1e-12)
        rows.append({"layer": i, "name": name,
                     "mean_shift": float((((am - sm) / sv.sqrt()) ** 2).mean().sqrt()),
                     "log_var_ratio": float((av / sv).log().mean())})
    return pd.DataFrame(rows)


# ============================================================================= studies
# Each study returns a tidy DataFrame; the notebooks 30–33 render them.

#: Burns & Steinhardt's arms: every study's default.
ARMS = ("source", "adabn", "adabn+aug")
#: Every arm a study takes: ``norm`` (each test batch's own BN statistics) and ``tent`` (plus online
#: entropy minimisation over the BN affine parameters) are TENT's (:mod:`probelib.tent`), opt-in via
#: ``arms=``; both come with McNemar against ``source`` and against the AdaBN arm.
ALL_ARMS = ARMS + ("norm", "tent")
#: The arms notebooks 30–32 run: AdaBN's beside TENT's.
STUDY_ARMS = ALL_ARMS
DEFAULT_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                       "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                       "elastic_transform", "pixelate", "jpeg_compression")


def momentum_label(momentum: float | None) -> str:
    """How a table names the statistics estimate: ``"None (exact average)"`` or
    ``"0.1 (EMA from source, shuffled)"`` (the studies feed the EMA in a seeded shuffled order)."""
    return "None (exact average)" if momentum is None else f"{momentum:g} (EMA from source, shuffled)"


def _label_table(df: pd.DataFrame, momentum: float | None, calibration: str | None = None) -> pd.DataFrame:
    """Name the statistics estimate (``momentum`` column) and, for tables with an RMS calibration
    error, its variant (``calibration`` column) in every row."""
    from probelib.metrics import calibration_label
    df["momentum"] = momentum_label(momentum)
    if calibration is not None:
        df["calibration"] = calibration_label(calibration)
    return df


def _check_arms(arms: Sequence[str], model: nn.Module | None = None) -> tuple[str, ...]:
    """``arms`` as a tuple, each one of :data:`ALL_ARMS`; with ``model``, refuse adapted arms on a
    model without BatchNorm layers (they would silently be the source model)."""
    from probelib._util import check_choice
    arms = (arms,) if isinstance(arms, str) else tuple(arms)
    if not arms:
        raise ValueError(f"arms must name at least one of {ALL_ARMS}")
    for a in arms:
        check_choice("arm", a, ALL_ARMS)
    adapted_arms = [a for a in arms if a != "source"]
    if model is not None and adapted_arms:
        _require_bn(model, f"the arms {adapted_arms}")
    return arms


def _working_copy(model: nn.Module, device) -> tuple[nn.Module, torch.device]:
    """One deep copy per study, on ``device``, in eval mode; 4-D conv weights in channels-last
    layout (faster convolutions on CPU and GPU; the same numbers up to float rounding)."""
    from probelib._util import default_device
    device = default_device(device)
    work = copy.deepcopy(model).to(device).eval()
    if any(isinstance(m, nn.Conv2d) for m in work.modules()):
        work = work.to(memory_format=torch.channels_last)
    return work, device


def _stats_batch(batch_size: int | None, momentum: float | None, x: torch.Tensor) -> int:
    """The statistics pass's batch size: ``batch_size`` if given; else 128 for the EMA (the
    authors' loader batch: the exponential average depends on it) and, for the exact statistics
    (which do not), all images in one batch up to 2^20 pixels per channel (1 337 MNIST, 1 024
    CIFAR images; at least 128): then the exact layer-wise statistics take a single pass."""
    if batch_size is not None:
        return batch_size
    if momentum is not None:
        return 128
    hw = int(x.shape[-2] * x.shape[-1]) if x.ndim >= 3 else 1
    return max(1, min(len(x), max(128, (1 << 20) // hw)))


def _eval_batch(eval_batch_size: int | None, device: torch.device) -> int:
    """Scoring batch size: cache-friendly 64 on CPU, 1024 on accelerators, unless given."""
    if eval_batch_size is not None:
        return eval_batch_size
    return 64 if device.type == "cpu" else 1024


def evaluate_arms(work: nn.Module, x: torch.Tensor, y: torch.Tensor, arms: Sequence[str] = ARMS,
                  momentum: float | None = None, layers=None, augment="auto", batch_size: int | None = None,
                  eval_batch_size: int | None = None, layerwise: bool = True, seed: int = 0,
                  device=None, source_correct: torch.Tensor | None = None,
                  calibration: str = "complete", tent: TentSettings | None = None) -> list[dict]:
    """Score ``work`` on ``(x, y)`` under each arm, adapting in place and restoring the source
    statistics after each (``work`` ends as it started). One dict of metrics per arm.

    Each adapted arm's dict also compares it, image by image, with the source arm on the same
    images: ``gained`` (right only when adapted), ``lost`` (right only with the source statistics)
    and McNemar's two-sided ``p_value`` (:func:`probelib.ncg.mcnemar_counts`). The source
    predictions come from the ``source`` arm when it is among ``arms``, else from
    ``source_correct`` (a bool per image) if given; without either there is no comparison.
    ``calibration``: the RMS calibration variant (``"complete"`` or the authors' ``"burns"``,
    :func:`probelib.metrics.rms_calibration_error`).

    TENT's arms (``norm``, ``tent``: :mod:`probelib.tent`, hyper-parameters ``tent``, a
    :class:`probelib.tent.TentSettings`, default TENT's CIFAR setting) start from the source
    weights in every call (episodic reset per setting) and honour ``layers`` (layers left out keep
    the source statistics and affine parameters). When an AdaBN arm is among ``arms`` (``adabn``,
    else ``adabn+aug``), their dicts also compare them with it on the same images: ``vs_adabn``
    (that arm's name), ``gained_vs_adabn`` (right only under the TENT arm), ``lost_vs_adabn`` (right
    only under AdaBN) and McNemar's ``p_vs_adabn``.
    """
    from probelib.metrics import classification_metrics
    from probelib.ncg import mcnemar
    if len(x) == 0:
        raise ValueError("no images to evaluate (empty set)")
    y = _check_xy(x, y, "evaluate_arms")
    rows, correct = [], {}
    for arm in _check_arms(arms, work):
        logits = arm_logits(work, x, arm, momentum, layers, augment, batch_size, eval_batch_size, layerwise,
                            seed, device, tent=tent)
        correct[arm] = (logits.argmax(1) == y).numpy()
        rows.append({"arm": arm, **classification_metrics(logits, y, calibration=calibration), "n": len(y)})
    reference = correct.get("source")
    if reference is None and source_correct is not None:
        reference = torch.as_tensor(source_correct).cpu().numpy()
    if reference is not None:
        for row in rows:
            if row["arm"] != "source":
                test = mcnemar(reference, correct[row["arm"]])
                row.update(gained=test["c"], lost=test["b"], p_value=test["p"])
    if any(row["arm"] in _TENT_ARMS for row in rows):
        from probelib.tent import TentSettings
        for row in rows:
            if row["arm"] in _TENT_ARMS:
                row["tent_settings"] = (tent or TentSettings()).label() if row["arm"] == "tent" else \
                    f"batch statistics, batch of {(tent or TentSettings()).batch_size}"
    adabn_arm = next((a for a in ("adabn", "adabn+aug") if a in correct), None)
    if adabn_arm is not None:
        for row in rows:
            if row["arm"] in _TENT_ARMS:
                test = mcnemar(correct[adabn_arm], correct[row["arm"]])
                row.update(vs_adabn=adabn_arm, gained_vs_adabn=test["c"], lost_vs_adabn=test["b"],
                           p_vs_adabn=test["p"])
    return rows


_TENT_ARMS = ("norm", "tent")


def arm_logits(work: nn.Module, x: torch.Tensor, arm: str = "adabn", momentum: float | None = None,
               layers=None, augment="auto", batch_size: int | None = None, eval_batch_size: int | None = None,
               layerwise: bool = True, seed: int = 0, device=None,
               tent: TentSettings | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of ``work`` on ``x`` under one arm (``source``, ``adabn``: statistics
    from ``x``; ``adabn+aug``: statistics from augmented ``x``), transductively; ``work`` is
    adapted in place and restored. For ``adabn`` with the exact statistics of a set that fits in
    one batch, the single statistics pass already is the adapted model's forward on ``x``.
    ``norm`` / ``tent``: TENT's arms on a copy, starting from ``work``'s weights
    (:func:`probelib.tent.tent_arm_logits`; ``tent`` is their :class:`~probelib.tent.TentSettings`,
    None = TENT's CIFAR defaults, images fed in the order ``seed`` shuffles them to unless
    ``tent.shuffle`` is False; ``momentum``, ``augment`` and ``batch_size`` do not apply)."""
    from probelib.metrics import check_finite_outputs, predict
    (arm,) = _check_arms([arm], work)
    check_images_or_features(x, "x", allow_uint8=True)
    device = model_device(work) if device is None else default_device(device)
    if arm in _TENT_ARMS:
        from probelib.tent import tent_arm_logits
        return tent_arm_logits(work, x, arm, tent, device, layers=layers, seed=seed)
    eval_batch_size = _eval_batch(eval_batch_size, device)
    batch_size = _stats_batch(batch_size, momentum, x)
    if arm == "source":
        return predict(work, x, batch_size=eval_batch_size, device=device, desc=None)
    if arm == "adabn" and momentum is None and layerwise and _single_batch(x, batch_size):
        chosen = [m for (_, m), keep in zip(bn_layers(work), resolve_layers(work, layers)) if keep]
        with preserved_bn_statistics(work), torch.no_grad():
            work.to(device).eval()
            out = _exact_one_pass(work, x, chosen, batch_size, device)
        return check_finite_outputs(out.float().cpu(), work)
    with adapted(work, x, momentum, layers, augment if arm == "adabn+aug" else None,
                 batch_size, device, layerwise, seed) as m:
        return predict(m, x, batch_size=eval_batch_size, device=device, desc=None)


def _as_pair(data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return torch.as_tensor(data[0]), torch.as_tensor(data[1])
    from probelib.data import as_tensors
    return as_tensors(data)


def _corrupted_source(corrupted) -> Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(corrupted, (str, os.PathLike)):
        from probelib.corruptions import load_corrupted
        return lambda c, s: _as_pair(load_corrupted(corrupted, c, s))
    if callable(corrupted):
        return lambda c, s: _as_pair(corrupted(c, s))
    raise TypeError("corrupted must be a corrupted-set name such as 'mnist5k-c', the path of a folder in a "
                    f"'-C' layout, or a callable (corruption, severity) -> (x, y), got {type(corrupted).__name__}")


def stratified_subset(x: torch.Tensor, y: torch.Tensor, n_images: int | None, seed: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """About ``n_images`` of ``(x, y)``, stratified by label and seeded (``probelib.training.subsample``;
    kept in their original order); all of them when ``n_images`` is None or ≥ len. Test splits are
    often sorted by class, so a plain ``x[:n]`` would be a label shift."""
    from probelib.data.core import TensorSet
    from probelib.training import subsample
    if n_images is not None and (int(n_images) != n_images or n_images < 1):
        raise ValueError(f"n_images must be a positive integer or None (all images), got {n_images!r}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if n_images is None or n_images >= len(y):
        return x, y
    sub = subsample(TensorSet(x, y), int(n_images), seed)
    return sub.x, sub.y


def load_shifted(corrupted, corruption: str, severity: int, n_images: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One setting ``(x, y)`` of ``corrupted`` (a "-C" set name or a callable, as the studies take
    it), on about ``n_images`` images: the same stratified subset the studies score."""
    return _subsampled(_corrupted_source(corrupted), n_images, seed)(corruption, int(severity))


def _subsampled(load, n_images: int | None, seed: int):
    if n_images is None:
        return load
    return lambda c, s: stratified_subset(*load(c, s), n_images, seed)


def corrupt_on_the_fly(x: torch.Tensor, y: torch.Tensor, seed: int = 0
                       ) -> Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """A ``corrupted`` source for the studies that corrupts ``(x, y)`` on demand with
    :func:`probelib.corruptions.corrupt` (same bytes as the generated "-C" sets for the same
    images and seed) — for subsets and quick runs without writing a whole "-C" set."""
    from probelib.corruptions import corrupt
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    y = torch.as_tensor(y)
    cache: dict = {}

    def load(corruption: str, severity: int):
        key = (corruption, int(severity))
        if key not in cache:
            out = corrupt(u8, corruption, int(severity), seed)
            out = out.reshape(u8.shape)
            cache.clear()  # keep one setting: the studies ask for each setting once or twice in a row
            cache[key] = torch.from_numpy(out.copy()).permute(0, 3, 1, 2).float().div_(255)
        return cache[key], y
    return load


def shift_grid(model: nn.Module, corrupted, corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
               severities: Sequence[int] = (1, 2, 3, 4, 5), arms: Sequence[str] = ARMS,
               momentum: float | None = None, clean: tuple[torch.Tensor, torch.Tensor] | None = None,
               extra: dict | None = None, augment="auto", batch_size: int | None = None,
               eval_batch_size: int | None = None, layerwise: bool = True, seed: int = 0,
               device=None, n_images: int | None = None, calibration: str = "complete",
               tent: TentSettings | None = None) -> pd.DataFrame:
    """The AdaBN shift grid: corruptions × severities × arms (+ ``clean`` and ``extra`` sets).

    Args:
        model: the source model (never modified; a working copy is adapted in place and
            restored after every setting).
        corrupted: a corrupted-set name (``"mnist5k-c"``) or the path of a folder in a "-C" layout
            (both read with ``probelib.corruptions.load_corrupted``), or a callable
            (corruption, severity) -> (x, y).
        clean: optional clean test set ``(x, y)``, reported as corruption ``"clean"``, severity 0.
        extra: optional ``{name: (x, y)}`` of other shifted sets (ImageNet-v2, Stylized-ImageNet).
        momentum, augment, batch_size, layerwise, seed: as :func:`adapt_bn` (``augment`` is the
            ``adabn+aug`` arm's augmentation); ``eval_batch_size`` for scoring. ``batch_size=None``
            (every study's default): 128 for ``momentum=<float>``, else the whole set in one
            batch when it is small (see ``_stats_batch``; the exact statistics do not depend on it).
        n_images: score (and adapt on) about this many images of every set, the same stratified
            seeded subset each time (:func:`stratified_subset`); None = all.
        calibration: RMS calibration variant, ``"complete"`` (every bin) or ``"burns"`` (the
            authors' ``calib_err``); named in the ``calibration`` column.
        arms: any of :data:`ALL_ARMS`; default Burns & Steinhardt's three. ``norm`` and ``tent``
            (TENT's arms, :mod:`probelib.tent`) adapt batch by batch in the set's order from the
            source weights in every setting (episodic reset per corruption × severity);
            ``tent``: their :class:`probelib.tent.TentSettings` (None = one Adam step, lr 1e-3,
            per batch of 128).

    Returns one row per (corruption, severity, arm): accuracy, confidence, rms_calibration,
    ece, n, ``momentum`` naming the statistics estimate, ``calibration`` naming the variant and, for the adapted arms when ``source``
    is among ``arms``, ``gained`` / ``lost`` / ``p_value`` (McNemar against source, see
    :func:`evaluate_arms`); TENT's arms also ``vs_adabn`` / ``gained_vs_adabn`` /
    ``lost_vs_adabn`` / ``p_vs_adabn`` (McNemar against the AdaBN arm) when one is among ``arms``.
    """
    from tqdm.auto import tqdm
    arms = _check_arms(arms, model)
    for name, xy in (({"clean": clean} if clean is not None else {}) | dict(extra or {})).items():
        if isinstance(xy, (tuple, list)) and len(xy) == 2:  # in-memory sets: checked before any work
            _check_xy(*_as_pair(xy), name)
    load = _subsampled(_corrupted_source(corrupted), n_images, seed)
    for s in severities:
        if int(s) != s or not 1 <= s <= 5:
            raise ValueError(f"severities must be integers in 1..5, got {s!r}")
    work, device = _working_copy(model, device)
    settings = [("clean", 0)] if clean is not None else []
    settings += [(name, 0) for name in (extra or {})]
    settings += [(c, int(s)) for c in corruptions for s in severities]
    rows = []
    for name, sev in tqdm(settings, desc="AdaBN shift grid"):
        if name == "clean" and sev == 0 and clean is not None:
            x, y = stratified_subset(*_as_pair(clean), n_images, seed)
        elif sev == 0:
            x, y = stratified_subset(*_as_pair(extra[name]), n_images, seed)
        else:
            x, y = load(name, sev)
        _check_xy(x, y, f"the {name} severity {sev} set")  # a callable or Dataset may hold 0–255 pixels
        x = x.to(device)  # decoded once, used by every arm
        for r in evaluate_arms(work, x, torch.as_tensor(y), arms, momentum, None, augment, batch_size,
                               eval_batch_size, layerwise, seed, device, calibration=calibration, tent=tent):
            rows.append({"corruption": name, "severity": sev, **r})
    return _label_table(pd.DataFrame(rows), momentum, calibration)


def adabn_gains(grid: pd.DataFrame, metric: str = "accuracy", by: str = "corruption") -> pd.DataFrame:
    """Per ``by`` (default corruption, averaged over severities): each adapted arm's ``metric``
    minus the source arm's, as columns ``adabn`` / ``adabn+aug`` (the bar chart's data)."""
    table = grid.pivot_table(index=[by, "severity"] if by != "severity" else ["corruption", by],
                             columns="arm", values=metric)
    if "source" not in table:
        raise ValueError("the grid has no 'source' arm to compare with")
    gains = table.drop(columns="source").sub(table["source"], axis=0)
    return gains.groupby(level=by).mean()


def _is_group(name: str, group: str) -> bool:
    from probelib.corruptions import CORRUPTIONS, corruption_group
    return corruption_group(name) == group if name in CORRUPTIONS else name.endswith("_" + group)


def paired_gains(grid: pd.DataFrame, arm: str = "adabn", by: str = "corruption") -> pd.DataFrame:
    """Per ``by`` (default corruption, its severities pooled): mean accuracy gain of ``arm`` over
    ``source`` and McNemar's test on the pooled per-image counts — ``gained`` (right only when
    adapted), ``lost`` (right only with the source statistics), ``p_value``. Pooling treats the same
    image at different severities as separate pairs, as :func:`ncg_under_adabn` does."""
    from probelib.ncg import mcnemar_counts
    sub = grid[grid["arm"] == arm]
    if sub.empty:
        raise ValueError(f"the grid has no {arm!r} arm; it has {sorted(set(grid['arm']))}")
    if not {"gained", "lost"} <= set(sub.columns) or sub[["gained", "lost"]].isna().any().any():
        raise ValueError("the grid has no per-image counts against the source arm (columns gained/lost): "
                         "compute it with shift_grid with 'source' among the arms")
    counts = sub.groupby(by)[["gained", "lost"]].sum().astype(int)
    out = adabn_gains(grid, by=by)[[arm]].rename(columns={arm: "gain"}).join(counts)
    out["p_value"] = [mcnemar_counts(r.lost, r.gained)["p"] for r in out.itertuples()]
    return out


def _significant(table: pd.DataFrame, alpha: float) -> tuple[list[str], list[str]]:
    sig = table[table["p_value"] < alpha]
    return (list(sig.index[sig["gained"] > sig["lost"]]), list(sig.index[sig["gained"] < sig["lost"]]))


def _named(names: list[str]) -> str:
    return ": " + ", ".join(names) if names else ""


def grid_verdicts(grid: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Verdict lines on the shift grid: does AdaBN help on noise and blur, and where does it hurt.

    Per corruption (severities pooled) McNemar's test of the ``adabn`` arm against ``source``
    (:func:`paired_gains`). A group's verdict is YES when its mean gain is positive and more of its
    corruptions gain significantly than lose, NOT SIGNIFICANT when none changes significantly at
    ``alpha``, NO otherwise."""
    lines = []
    label = grid["momentum"].iloc[0] if "momentum" in grid else "?"
    shifted = grid[grid["corruption"] != "clean"]
    arm = "adabn" if "adabn" in set(shifted["arm"]) else "adabn+aug"
    table = paired_gains(shifted, arm)
    for group in ("noise", "blur"):
        sel = table[[_is_group(c, group) for c in table.index]]
        if not len(sel):
            continue
        g = sel["gain"].mean()
        up, down = _significant(sel, alpha)
        verdict = ("NOT SIGNIFICANT" if not up and not down
                   else "YES" if g > 0 and len(up) > len(down) else "NO")
        lines.append(Verdict(
            f"AdaBN helps on {group} ({arm} vs source, momentum {label}): {verdict} (mean accuracy "
            f"gain {g:+.3f} over {len(sel)} corruption{'s' * (len(sel) != 1)}; significant gain on {len(up)}/{len(sel)}"
            f"{_named(up)}; significant loss on {len(down)}{_named(down)}; McNemar p < {alpha}, severities pooled)",
            claim=f"AdaBN helps on {group} corruptions ({arm} vs source, momentum {label})", paper="YES",
            result=verdict, p=None))  # several corruptions' tests: no single p
    _, down = _significant(table, alpha)
    names = ", ".join(f"{c} ({table.loc[c, 'gain']:+.3f}, p={table.loc[c, 'p_value']:.2g})"
                      for c in table.loc[down].sort_values("gain").index) or "none"
    others = int(((table["gain"] < 0) & ~table.index.isin(down)).sum())
    lines.append(f"corruptions where {arm} significantly hurts accuracy (McNemar p < {alpha}, severities pooled; "
                 f"momentum {label}): {names}" + (f"; {others} more with a negative, not significant mean gain"
                                                  if others else ""))
    return lines


#: Burns & Steinhardt's label-shift m values and the depth they were chosen for: WideResNet-40-2
#: has 37 BN layers, so m = 16 still adapts 21 of them.
PAPER_MS = (0, 1, 4, 16)
PAPER_BN_LAYERS = 37


def _paper_ms_pairs(n_bn_layers: int, ms: Sequence[int], reference: int) -> list[tuple[int, int]]:
    if int(n_bn_layers) != n_bn_layers or n_bn_layers < 1:
        raise ValueError(f"n_bn_layers must be an integer >= 1, got {n_bn_layers!r}")
    pairs: list[tuple[int, int]] = []
    for m in ms:
        scaled = round(m * n_bn_layers / reference)
        if m > 0 and pairs:
            scaled = max(scaled, pairs[-1][1] + 1)
        pairs.append((int(m), min(scaled, n_bn_layers - 1)))
    return pairs


def paper_ms(n_bn_layers: int, ms: Sequence[int] = PAPER_MS, reference: int = PAPER_BN_LAYERS) -> list[int]:
    """The paper's m values (BN layers left unadapted) rescaled to a model with ``n_bn_layers``:
    round(m · n / 37), each non-zero m at least one more than the previous, and at most n − 1 so
    that every m leaves at least one layer adapted; duplicates dropped. ``paper_ms(37)`` gives
    (0, 1, 4, 16); the embedded WRN-16-2 (13 BN layers) gets (0, 1, 2, 6)."""
    return list(dict.fromkeys(m for _, m in _paper_ms_pairs(n_bn_layers, ms, reference)))


def label_shift(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ks: Sequence[int] = (1, 3, 6, 10),
                ms: Sequence[int] | None = None, exclude: Sequence[str] = ("last",),
                momentum: float | None = None, arm: str = "adabn+aug", augment="auto",
                batch_size: int | None = None, eval_batch_size: int | None = None, layerwise: bool = True,
                seed: int = 0, device=None, calibration: str = "complete", arms: Sequence[str] | None = None,
                tent: TentSettings | None = None) -> pd.DataFrame:
    """Label shift (Burns & Steinhardt's label_shift_experiment): keep classes {0..k−1} of
    ``(x, y)``, adapt on them (arm ``adabn+aug`` by default) while leaving the last (or first)
    ``m`` BN layers unadapted.

    ``arms``: several adapted arms at once (None = ``[arm]``), e.g. ``["adabn+aug", "norm",
    "tent"]``: TENT's arms then adapt only the selected layers too (the others keep the source
    statistics and affine parameters), each (m, k) a fresh episode from the source weights, with
    ``tent`` their :class:`probelib.tent.TentSettings`; their rows carry McNemar against the AdaBN
    arm (``vs_adabn``, ``gained_vs_adabn``, ``lost_vs_adabn``, ``p_vs_adabn``) as well.

    ``ms=None`` (default): the paper's m ∈ {0, 1, 4, 16} of WRN-40-2's 37 BN layers, rescaled to
    this model's depth (:func:`paper_ms`), so every row adapts at least one layer, as every row of
    the paper does. Explicit ``ms`` are numbers of layers; one that leaves no layer adapted is an
    error (such a row is the source model and would make "freezing limits the damage" true by
    construction).

    Returns one row per (exclude, m, k, arm): ``accuracy`` (adapted), ``source_accuracy``, ``gain``,
    confidence and calibration of the adapted model, ``gained`` / ``lost`` / ``p_value`` (McNemar
    against the source model on the same images, as :func:`evaluate_arms`), ``n``,
    ``n_bn_layers``, ``adapted_layers``, ``m_paper`` (the paper's m this row stands for; None
    for explicit ``ms``), ``momentum`` and ``calibration`` (the RMS calibration variant).
    """
    from probelib.metrics import accuracy, predict
    arms = _check_arms([arm] if arms is None else arms, model)
    if "source" in arms:
        raise ValueError("label_shift compares every arm with the source model itself (source_accuracy, gain); "
                         f"arms must name adapted arms only, got {list(arms)}")
    y = _check_xy(x, y, "label_shift")
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"ks must hold integers >= 1 (number of classes kept), got {k!r}")
        if not (y < k).any():
            raise ValueError(f"keeping classes 0..{k - 1} (k={k}) leaves no images: the labels present are "
                             f"{sorted(set(y.tolist()))[:20]}; choose k so that some labels are below it")
    for e in exclude:
        if e not in ("last", "first"):
            raise ValueError(f"exclude must hold 'last' and/or 'first', got {e!r}")
    n_bn = len(bn_layers(model))
    if ms is None:
        stands_for: dict[int, int | None] = {}
        for m_p, m in _paper_ms_pairs(n_bn, PAPER_MS, PAPER_BN_LAYERS):
            stands_for.setdefault(m, m_p)  # the smallest paper m a rescaled m stands for
        chosen = list(stands_for)
    else:
        for m in ms:
            if int(m) != m or m < 0:
                raise ValueError(f"ms must hold integers >= 0 (BN layers left unadapted), got {m!r}")
            if m >= n_bn:
                raise ValueError(f"m={m} adapts no BN layer: the model has {n_bn}, so that row would be the "
                                 f"source model; pass m < {n_bn}, or ms=None for the paper's (0, 1, 4, 16) "
                                 f"of {PAPER_BN_LAYERS} layers rescaled to this depth: {paper_ms(n_bn)}")
        chosen = sorted({int(m) for m in ms})
        stands_for = {m: None for m in chosen}
    work, device = _working_copy(model, device)
    source_logits = predict(work, x, batch_size=_eval_batch(eval_batch_size, device), device=device, desc=None)
    rows = []
    from tqdm.auto import tqdm
    for e in exclude:
        selector = exclude_last if e == "last" else exclude_first
        for m in tqdm(chosen, desc=f"label shift (exclude {e})", leave=False):
            for k in ks:
                keep = y < k
                xk, yk = x[keep].to(device), y[keep]
                src_correct = source_logits[keep].argmax(1) == yk
                src = accuracy(source_logits[keep], yk)
                for r in evaluate_arms(work, xk, yk, arms, momentum, selector(m), augment, batch_size,
                                       eval_batch_size, layerwise, seed, device, source_correct=src_correct,
                                       calibration=calibration, tent=tent):
                    rows.append({"exclude": e, "m": m, "k": int(k), "arm": r["arm"], "accuracy": r["accuracy"],
                                 "source_accuracy": src, "gain": r["accuracy"] - src,
                                 "confidence": r["confidence"], "rms_calibration": r["rms_calibration"],
                                 "ece": r["ece"], "gained": r["gained"], "lost": r["lost"],
                                 "p_value": r["p_value"], "n": r["n"], "n_bn_layers": n_bn,
                                 "adapted_layers": n_bn - m, "m_paper": stands_for[m],
                                 **{c: r[c] for c in ("tent_settings", "vs_adabn", "gained_vs_adabn",
                                                      "lost_vs_adabn", "p_vs_adabn") if c in r}})
    return _label_table(pd.DataFrame(rows), momentum, calibration)


def label_shift_verdicts(table: pd.DataFrame, arm: str | None = None) -> list[str]:
    """Verdicts: does AdaBN hurt more the fewer classes, and do frozen late layers limit the damage?

    Only rows that adapt at least one BN layer (``m < n_bn_layers``) count: a row that adapts
    nothing is the source model (gain exactly 0) and would make the second verdict true whenever
    AdaBN hurts at all. A table with several arms is judged on ``arm`` (None: its AdaBN arm,
    ``adabn+aug`` before ``adabn``; :func:`tent_verdict` judges TENT's)."""
    if "arm" in table and table["arm"].nunique() > 1:
        present = set(table["arm"])
        arm = arm or next((a for a in ("adabn+aug", "adabn") if a in present), None)
        if arm not in present:
            raise ValueError(f"the table has no {arm!r} arm; it has {sorted(present)}")
        table = table[table["arm"] == arm]
    lines, label = [], table["momentum"].iloc[0]
    if "n_bn_layers" in table:
        table = table[table["m"] < table["n_bn_layers"]]
    full = table[(table["m"] == 0) & (table["exclude"] == table["exclude"].iloc[0])].sort_values("k")
    if len(full) >= 2:
        fewest, most = full.iloc[0], full.iloc[-1]
        ok = fewest["gain"] < most["gain"]
        p = f", McNemar p={fewest['p_value']:.2g}" if "p_value" in fewest else ""
        lines.append(Verdict(
            f"AdaBN hurts more the fewer classes (all layers adapted, momentum {label}): "
            f"{'YES' if ok else 'NO'} (gain {fewest['gain']:+.3f} at k={fewest['k']}{p} vs "
            f"{most['gain']:+.3f} at k={most['k']})",
            claim=f"AdaBN hurts more the fewer classes (label shift, momentum {label})", paper="YES",
            result="YES" if ok else "NO", p=fewest["p_value"] if "p_value" in fewest else None))
    last = table[table["exclude"] == "last"]
    if last["m"].nunique() >= 2:
        k_min = last["k"].min()
        sub = last[last["k"] == k_min].sort_values("m")
        lo, hi = sub.iloc[0], sub.iloc[-1]
        ok = hi["gain"] > lo["gain"]
        depth = f" of {int(hi['n_bn_layers'])}" if "n_bn_layers" in sub else ""
        lines.append(Verdict(
            f"leaving the last BN layers unadapted limits the damage at k={k_min}: "
            f"{'YES' if ok else 'NO'} (gain {lo['gain']:+.3f} at m={lo['m']} vs "
            f"{hi['gain']:+.3f} at m={hi['m']}{depth} BN layers unadapted; rows that adapt no layer excluded)",
            claim=f"leaving the last BN layers unadapted limits AdaBN's damage under label shift (k={k_min})",
            paper="YES", result="YES" if ok else "NO", p=None))
    return lines


def add_border(x: torch.Tensor, fill: float = 0.0, s: int | None = None) -> torch.Tensor:
    """Burns & Steinhardt's border: centre-crop to size − 2s and pad ``s`` pixels of ``fill`` on
    each side (``s = size // 4`` by default: at 32 px only the central 16×16 survives)."""
    if x.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    s = min(h, w) // 4 if s is None else int(s)
    if not 0 <= 2 * s < min(h, w):
        raise ValueError(f"border s={s} must satisfy 0 <= 2s < image size {min(h, w)}")
    out = torch.full_like(x, float(fill))
    out[..., s:h - s, s:w - s] = x[..., s:h - s, s:w - s]
    return out


def black_border_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       borders: Sequence[str] = ("none", "black", "white"), arms: Sequence[str] = ARMS,
                       momentum: float | None = None, augment="auto", batch_size: int | None = None,
                       eval_batch_size: int | None = None, layerwise: bool = True, seed: int = 0,
                       device=None, calibration: str = "complete",
                       tent: TentSettings | None = None) -> pd.DataFrame:
    """The black-border shift (zero fill) and, for dark-background data such as MNIST, a white
    border (fill 1), each under ``arms`` (default the three AdaBN arms; ``norm`` and ``tent``
    opt-in, with ``tent`` their :class:`probelib.tent.TentSettings`, each border a fresh episode
    from the source weights); ``none`` is the unbordered set for reference.
    In ``adabn+aug`` the statistics pass applies crop(+flip) after the border. Rows as
    :func:`evaluate_arms` (with ``gained`` / ``lost`` / ``p_value`` against source and, for TENT's
    arms, ``*_vs_adabn`` against AdaBN) plus ``border``, ``momentum`` and ``calibration`` (the RMS
    calibration variant, ``"complete"`` or ``"burns"``)."""
    arms = _check_arms(arms, model)
    fills = {"none": None, "black": 0.0, "white": 1.0}
    for b in borders:
        if b not in fills:
            from probelib._util import unknown_name
            raise unknown_name("border", b, fills)
    y = _check_xy(x, y, "black_border_study")
    work, device = _working_copy(model, device)
    rows = []
    for b in borders:
        xb = x if fills[b] is None else add_border(x, fills[b])
        for r in evaluate_arms(work, xb.to(device), y, arms, momentum, None, augment, batch_size,
                               eval_batch_size, layerwise, seed, device, calibration=calibration, tent=tent):
            rows.append({"border": b, **r})
    return _label_table(pd.DataFrame(rows), momentum, calibration)


def border_verdicts(table: pd.DataFrame, arm: str = "adabn", alpha: float = 0.05) -> list[str]:
    """Verdicts for the border study: does ``arm`` lose accuracy against ``source`` on each border
    (McNemar's paired test at ``alpha``)? Says plainly where the paper's direction (AdaBN degrades
    accuracy) is not found: a significant gain, or no significant change."""
    lines, label = [], table["momentum"].iloc[0]
    rows = table.set_index(["border", "arm"])
    for b in ("black", "white"):
        if (b, arm) not in rows.index or (b, "source") not in rows.index:
            continue
        src, ada = rows.loc[(b, "source")], rows.loc[(b, arm)]
        d, p = ada["accuracy"] - src["accuracy"], ada["p_value"]
        verdict = "NOT SIGNIFICANT" if not p < alpha else "YES" if d < 0 else "NO"
        text = (f"AdaBN hurts on the {b} border ({arm} vs source, momentum {label}): {verdict} (accuracy "
                f"{src['accuracy']:.3f} -> {ada['accuracy']:.3f}, {d:+.3f}; {int(ada['lost'])} images lost, "
                f"{int(ada['gained'])} gained, McNemar p={p:.2g})")
        if verdict == "NO":
            text += " — this direction differs from the paper's (AdaBN degrades accuracy there)"
        elif verdict == "NOT SIGNIFICANT":
            text += f" — the paper's degradation is not found here (p >= {alpha})"
        lines.append(Verdict(text, claim=f"AdaBN hurts on the {b} border ({arm} vs source, momentum {label})",
                             paper="YES" if b == "black" else "not in the paper (MNIST's background is black)",
                             result=verdict, p=p))
    return lines


def bn_statistics_comparison(model: nn.Module, x: torch.Tensor, momentum: float | None = None,
                             augment=None, batch_size: int | None = None, layerwise: bool = True,
                             seed: int = 0, device=None) -> pd.DataFrame:
    """Per BN layer, source vs adapted (on ``x``) running statistics: ``source_mean_abs``,
    ``adapted_mean_abs``, ``source_log_var``, ``adapted_log_var`` plus :func:`bn_statistics_shift`."""
    _require_bn(model, "bn_statistics_comparison")
    check_images_or_features(x, "x", allow_uint8=True)
    work, device = _working_copy(model, device)
    adapted_model = adapt_bn(work, x.to(device), momentum, None, augment, _stats_batch(batch_size, momentum, x),
                             device, layerwise, seed)
    src, ada = bn_statistics(work), bn_statistics(adapted_model)
    out = src[["layer", "name", "channels"]].copy()
    out["source_mean_abs"], out["adapted_mean_abs"] = src["mean_abs"], ada["mean_abs"]
    out["source_log_var"], out["adapted_log_var"] = src["log_var"], ada["log_var"]
    shift = bn_statistics_shift(work, adapted_model)
    out["mean_shift"], out["log_var_ratio"] = shift["mean_shift"], shift["log_var_ratio"]
    out["momentum"] = momentum_label(momentum)
    return out


def ncg_under_adabn(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, corrupted,
                    corruptions: Sequence[str] = DEFAULT_CORRUPTIONS, severities: Sequence[int] = (1, 2, 3, 4, 5),
                    arm: str = "adabn", momentum: float | None = None, augment="auto",
                    batch_size: int | None = None, eval_batch_size: int | None = None, layerwise: bool = True,
                    seed: int = 0, device=None, n_images: int | None = None) -> pd.DataFrame:
    """NCG of the source vs the AdaBN-adapted model on corrupted images (not in either paper).

    For each corruption the chosen severities are adapted to separately (as the grid does) and
    pooled; NCG is the fraction of corrupted images labelled with the label of their nearest
    training image (pixel L2, ``train_x``/``train_y``). A paired McNemar test compares the
    per-image "prediction = nearest category" indicators of the two models. ``n_images``: about
    this many images per setting (stratified, seeded; None = all). Rows: corruption,
    ``ncg_source``, ``ncg_adapted``, ``ncg_gain``, ``acc_source``, ``acc_adapted``,
    ``source_only`` / ``adapted_only`` (discordant counts), ``mcnemar_stat``, ``p_value``,
    ``test``, ``n``, ``arm``, ``momentum``.
    """
    from tqdm.auto import tqdm

    from probelib.ncg import mcnemar, ncg
    from probelib.neighbours import knn
    if arm not in ("adabn", "adabn+aug"):
        raise ValueError(f"arm must be 'adabn' or 'adabn+aug', got {arm!r}")
    _require_bn(model, "ncg_under_adabn")
    train_y = _check_xy(train_x, train_y, "ncg_under_adabn's training set").numpy()
    load = _subsampled(_corrupted_source(corrupted), n_images, seed)
    work, device = _working_copy(model, device)
    rows = []
    for c in tqdm(list(corruptions), desc="NCG under AdaBN"):
        src_pred, ada_pred, nn_lab, labels = [], [], [], []
        for s in severities:
            x, y = load(c, int(s))
            _check_xy(x, y, f"the {c} severity {s} set")
            _, idx = knn(train_x, x, k=1, progress=False)
            nn_lab.append(train_y[np.asarray(idx).reshape(len(x), -1)[:, 0]])
            labels.append(torch.as_tensor(y).numpy())
            xd = x.to(device)
            for out, a in ((src_pred, "source"), (ada_pred, arm)):
                out.append(arm_logits(work, xd, a, momentum, None, augment, batch_size, eval_batch_size,
                                      layerwise, seed, device).argmax(1).numpy())
        sp, ap, nl, lab = map(np.concatenate, (src_pred, ada_pred, nn_lab, labels))
        test = mcnemar(sp == nl, ap == nl)
        rows.append({"corruption": c, "ncg_source": ncg(sp, nl), "ncg_adapted": ncg(ap, nl),
                     "ncg_gain": ncg(ap, nl) - ncg(sp, nl), "acc_source": float((sp == lab).mean()),
                     "acc_adapted": float((ap == lab).mean()), "source_only": test["b"],
                     "adapted_only": test["c"], "mcnemar_stat": test["statistic"], "p_value": test["p"],
                     "test": test["method"], "n": len(lab)})
    df = pd.DataFrame(rows)
    df["arm"], df["momentum"] = arm, momentum_label(momentum)
    return df


def ncg_verdicts(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Verdict: does alignment move predictions toward the nearest category?"""
    label = table["momentum"].iloc[0]
    up = table[(table["ncg_gain"] > 0) & (table["p_value"] < alpha)]["corruption"].tolist()
    down = table[(table["ncg_gain"] < 0) & (table["p_value"] < alpha)]["corruption"].tolist()
    mean = table["ncg_gain"].mean()
    return [f"AdaBN moves predictions toward the nearest category (momentum {label}): "
            f"{'YES' if mean > 0 else 'NO'} (mean NCG change {mean:+.3f}; significant increase on "
            f"{len(up)}/{len(table)} corruptions{': ' + ', '.join(up) if up else ''}; significant decrease on "
            f"{len(down)}{': ' + ', '.join(down) if down else ''}; McNemar p < {alpha})"]


# ============================================================================= TENT beside AdaBN

#: TENT's README (Wang et al., ICLR 2021): RobustBench's ``Standard`` WRN-28-10 on CIFAR-10-C,
#: severity 5, error (%) averaged over the 15 corruptions; model reset per corruption × severity.
TENT_REFERENCE = {"source": 43.5, "norm": 20.4, "tent": 18.6}


def tent_table(grid: pd.DataFrame, severity: int = 5, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """TENT's CIFAR-10-C table from a shift grid: per arm, the error (%) averaged over the
    corruptions at ``severity`` (each corruption weighs the same), the number of corruptions and
    images per setting, and :data:`TENT_REFERENCE` beside it (``reference_error``, NaN for arms
    TENT's table lacks). ``arms``: which rows, in order (None: every arm of the grid)."""
    sub = grid[(grid["severity"] == severity) & (grid["corruption"] != "clean")]
    if sub.empty:
        raise ValueError(f"the grid has no corrupted setting at severity {severity}; it has severities "
                         f"{sorted(set(grid['severity']) - {0})}")
    present = list(dict.fromkeys(sub["arm"]))
    arms = present if arms is None else list(arms)
    missing = [a for a in arms if a not in present]
    if missing:
        raise ValueError(f"the grid has no {missing} arm(s) at severity {severity}; it has {present}")
    rows = []
    for a in arms:
        r = sub[sub["arm"] == a]
        rows.append({"arm": a, "error": 100 * float((1 - r["accuracy"]).mean()),
                     "corruptions": r["corruption"].nunique(),
                     "images": int(r["n"].min()) if r["n"].nunique() == 1 else f"{r['n'].min()}-{r['n'].max()}",
                     "reference_error": TENT_REFERENCE.get(a, float("nan"))})
    return pd.DataFrame(rows).set_index("arm")


class TentVerdict(NamedTuple):
    """The decision of :func:`tent_verdict` — ``"BETTER"`` (``tent`` right on significantly more of
    the same images than the AdaBN arm), ``"WORSE"`` (significantly fewer) or ``"NOT SIGNIFICANT"``
    — and the verdict line that states it with its numbers."""

    decision: str
    text: str


def _pooled(rows: pd.DataFrame, gained: str, lost: str) -> tuple[int, int, float]:
    from probelib.ncg import mcnemar_counts
    if rows[[gained, lost]].isna().any().any():
        raise ValueError(f"the table's tent rows lack {gained}/{lost}: compute it with the source and an AdaBN "
                         "arm among the arms")
    g, l_ = int(rows[gained].sum()), int(rows[lost].sum())
    return g, l_, mcnemar_counts(l_, g)["p"]


def _mean_accuracy(rows: pd.DataFrame) -> float:
    return float((rows["accuracy"] * rows["n"]).sum() / rows["n"].sum())


def tent_verdict(table: pd.DataFrame, alpha: float = 0.05, border: str | None = None) -> TentVerdict:
    """Does entropy minimisation make AdaBN's limits better or worse? ``tent`` against the AdaBN
    arm it was paired with (``vs_adabn``) on the same images, McNemar's test on the discordant
    counts pooled over the study's shifted settings, and ``tent`` against ``source`` likewise.

    The table is any study's with ``tent`` and an AdaBN arm among its arms:

    * :func:`shift_grid` — every corrupted setting (``clean`` and severity-0 sets left out); the
      same image at several severities counts as separate pairs, as :func:`paired_gains` does;
    * :func:`label_shift` — AdaBN's limit there: the label-shifted rows (k below the largest k)
      with all BN layers adapted (m = 0, the first ``exclude`` of the table);
    * :func:`black_border_study` — the rows of ``border`` (None: ``"black"``).

    Decision: ``BETTER`` when tent gains significantly more images than it loses against AdaBN
    (p < ``alpha``), ``WORSE`` when it loses significantly more, ``NOT SIGNIFICANT`` otherwise.
    """
    if "arm" not in table or "tent" not in set(table["arm"]):
        raise ValueError("the table has no tent arm: run the study with 'tent' among its arms "
                         f"(arms={list(STUDY_ARMS)})")
    if "vs_adabn" not in table or table.loc[table["arm"] == "tent", "vs_adabn"].isna().all():
        raise ValueError("the table's tent rows were not compared with an AdaBN arm (column vs_adabn): run the "
                         "study with 'adabn' or 'adabn+aug' among its arms beside 'tent'")
    if "k" in table and "m" in table:
        first = table["exclude"].iloc[0]
        sub = table[(table["m"] == 0) & (table["exclude"] == first)]
        shifted = sub[sub["k"] < sub["k"].max()] if sub["k"].nunique() > 1 else sub
        ks = sorted(set(shifted["k"]))
        where = f"under label shift (k in {ks}, all BN layers adapted)"
    elif "border" in table:
        border = border or "black"
        if border not in set(table["border"]):
            raise ValueError(f"the table has no {border!r} border; it has {sorted(set(table['border']))}")
        shifted = table[table["border"] == border]
        where = f"on the {border} border"
    elif "corruption" in table:
        shifted = table[(table["corruption"] != "clean") & (table["severity"] > 0)]
        where = (f"on the shift grid ({shifted['corruption'].nunique()} corruptions x "
                 f"{shifted['severity'].nunique()} severities pooled)")
    else:
        raise ValueError("tent_verdict takes a shift_grid, label_shift or black_border_study table")
    tent_rows = shifted[shifted["arm"] == "tent"]
    if tent_rows.empty:
        raise ValueError(f"the table has no tent row {where}")
    adabn_arm = str(tent_rows["vs_adabn"].iloc[0])
    g, l_, p = _pooled(tent_rows, "gained_vs_adabn", "lost_vs_adabn")
    gs, ls, ps = _pooled(tent_rows, "gained", "lost")
    decision = "NOT SIGNIFICANT" if not p < alpha else "BETTER" if g > l_ else "WORSE"
    label = table["momentum"].iloc[0] if "momentum" in table else "?"
    if "source_accuracy" in tent_rows:  # label shift: no source rows, the source accuracy is a column
        src_acc = _mean_accuracy(tent_rows.assign(accuracy=tent_rows["source_accuracy"]))
    else:
        src_acc = _mean_accuracy(shifted[shifted["arm"] == "source"]) if (shifted["arm"] == "source").any() \
            else float("nan")
    accs = {"source": src_acc}
    for a in (adabn_arm, "norm", "tent"):
        rows = shifted[shifted["arm"] == a]
        if len(rows):
            accs[a] = _mean_accuracy(rows)
    settings = tent_rows["tent_settings"].iloc[0] if "tent_settings" in tent_rows else "?"
    text = (f"entropy minimisation (tent) vs AdaBN {where}: {decision} — tent vs {adabn_arm} on the same images: "
            f"{g} gained, {l_} lost, McNemar p={p:.2g}; tent vs source: {gs} gained, {ls} lost, p={ps:.2g} "
            f"(accuracy " + ", ".join(f"{a} {v:.3f}" for a, v in accs.items())
            + f"; tent: {settings}; AdaBN momentum {label}; p < {alpha})")
    return TentVerdict(decision, text)


def tent_verdicts(table: pd.DataFrame, alpha: float = 0.05) -> list[TentVerdict]:
    """:func:`tent_verdict` for each shifted part of a study: one for a shift grid or label-shift
    table, one per bordered border (``black``, ``white``) of a border study."""
    if "border" in table and "k" not in table:
        return [tent_verdict(table, alpha, b) for b in ("black", "white") if b in set(table["border"])]
    return [tent_verdict(table, alpha)]


def study_model(dataset: str, smoke: bool = False, device=None, model_source: str | None = None,
                checkpoint: str | os.PathLike | None = None, model_dir: str | os.PathLike = "models",
                threat_model: str = "corruptions", **pretrained_kwargs) -> tuple[nn.Module, str]:
    """The source model of notebooks 30–32 and its name.

    ``model_source=None``: the BN WideResNet probelib trains (or loads from the store) for
    ``dataset`` with Burns & Steinhardt's recipe (``default_config(dataset, paper="adabn")``; with
    ``smoke`` the shared 1-epoch model on 300 images). Otherwise a checkpoint the user already has,
    through :func:`probelib.models.load_pretrained` (``model_source`` one of ``torchvision``,
    ``robustbench``, ``state_dict``; ``checkpoint`` its file or zoo name), e.g. RobustBench's
    ``Standard`` WRN-28-10 from ``<model_dir>/cifar10/corruptions/Standard.pt`` for TENT's table.
    """
    if model_source is None:
        from probelib.training import default_config, train_or_load
        cfg = default_config(dataset, paper="adabn")
        if smoke:  # a tiny model (shared with the other smoke notebooks: same config, same store entry)
            cfg = cfg.replace(epochs=1, max_train=300, max_test=100)
        model, _ = train_or_load(cfg, device=device)
        return model, cfg.name
    if checkpoint is None:
        raise ValueError(f"model_source={model_source!r} needs checkpoint= (a file, or a RobustBench zoo name such "
                         "as 'Standard')")
    from probelib.models import load_pretrained
    if model_source == "robustbench":
        pretrained_kwargs = {"model_dir": model_dir, "threat_model": threat_model, **pretrained_kwargs}
    model = load_pretrained(model_source, checkpoint, device=device, **pretrained_kwargs)
    info = getattr(model, "pretrained_source", {})
    return model, f"{model_source}:{info.get('name', Path(str(checkpoint)).stem)} ({info.get('arch', '?')})"
