"""The training loop: one fit loop for one process and for torchrun's DistributedDataParallel
(``probelib.distributed`` only says how to shard, wrap and reduce), its evaluation, and resumption.

Schedules: ``multistep`` (Yang: ×``gamma`` at ``milestones``, in epochs), ``cosine`` (Burns:
per step from ``lr`` down to ``min_lr``), ``constant``. Losses: :mod:`probelib.training.losses`;
batches and augmentation: :mod:`probelib.training.batches`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from probelib import distributed
from probelib._util import INFERENCE_BATCH_SIZE, default_device, eval_mode, seed_everything
from probelib.models.checkpoint import (CheckpointMismatchError, arch_config, check_state_fits, plain,
                                        read_checkpoint, save_checkpoint)
from probelib.data.core import labels_of
from probelib.training.batches import augment_batch, batches, data_signature
from probelib.training.config import LOOP_FIELDS, TrainConfig
from probelib.training.losses import at_loss, mixup_loss, natural_loss, trades_loss

__all__ = ["train", "evaluate_accuracy", "TrainingDivergedError", "STATE_FORMAT"]

STATE_FORMAT = "probelib.train-state/1"


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: Dataset, *, batch_size: int = INFERENCE_BATCH_SIZE,
                      device: str | torch.device | None = None, amp: bool = False,
                      channels_last: bool = False) -> float:
    """Clean accuracy of ``model`` on ``data`` (eval mode; the model's modes are restored)."""
    device = default_device(device)
    correct = total = 0
    with eval_mode(model):
        for x, y in batches(data, batch_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(x).argmax(1)
            correct += int((pred == y).sum())
            total += len(y)
    return correct / total if total else float("nan")


def _test_accuracy(model: nn.Module, data: Dataset, ddp: distributed.DistContext | None, device: torch.device,
                   **kwargs: Any) -> float:
    """Clean accuracy on all of ``data``; under DDP each rank scores every ``world``-th item and the
    counts are summed, so every rank holds the same value."""
    if ddp is None:
        return evaluate_accuracy(model, data, device=device, **kwargs)
    index = list(range(ddp.rank, len(data), ddp.world_size))
    shard = data.subset(torch.tensor(index, dtype=torch.long)) if hasattr(data, "subset") and hasattr(data, "x") \
        else Subset(data, index)
    n = len(index)
    acc = evaluate_accuracy(model, shard, device=ddp.device, **kwargs) if n else 0.0
    correct, total = distributed.all_reduce_sums([round(acc * n), n], ddp)
    return correct / total if total else float("nan")


def _lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        # A milestone m (in epochs) takes effect from step m·S on: at integer milestones this is
        # exactly MultiStepLR stepped once per epoch.
        return cfg.lr * cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * step / total))


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _check_inputs(model: nn.Module, splits: Any, cfg: TrainConfig, device: torch.device) -> bool:
    """Refuse what ``cfg`` cannot train on ``splits``; return whether to use channels-last."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig (see probelib.training.default_config), got {type(cfg).__name__}")
    for part in ("train", "test"):
        if not hasattr(splits, part):
            raise TypeError("splits must have .train and .test datasets (probelib.data.Splits), "
                            f"got {type(splits).__name__}")
    if len(splits.train) == 0:
        raise ValueError("splits.train is empty: nothing to train on")
    if cfg.method == "mixup" and (cfg.batch_size < 2 or len(splits.train) < 2):
        raise ValueError(f"method='mixup' mixes pairs within a batch and needs batch_size >= 2 and at least 2 "
                         f"training images, got batch_size={cfg.batch_size} and {len(splits.train)} images: every "
                         "batch would be skipped and no optimiser step taken; pass batch_size >= 2")
    if cfg.amp and device.type != "cuda":
        raise ValueError(f"amp=True (bf16 autocast) is for CUDA; the device is {device}: pass amp=False")
    x0 = splits.train[0][0]
    if cfg.augment != "none" and x0.ndim != 3:
        raise ValueError(f"augment={cfg.augment!r} needs images (C×H×W), but the inputs have shape "
                         f"{tuple(x0.shape)}; use augment='none' for feature vectors")
    if cfg.channels_last is None:
        return x0.ndim == 3 and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return cfg.channels_last


def _resume(path: Path, signature: dict, model: nn.Module, opt: torch.optim.Optimizer,
            generator: torch.Generator, ddp: distributed.DistContext | None) -> tuple[list[dict], int]:
    """Load the training state at ``path`` into model, optimizer and RNGs; return (history, epochs done)."""
    state = read_checkpoint(path)
    if state.get("train_format") != STATE_FORMAT:
        raise ValueError(f"{str(path)!r} is a model checkpoint, not a training state; "
                         "pass a fresh checkpoint_path to train (or delete the file)")
    stored = state["signature"]
    diffs = [f"{k}: checkpoint {stored.get(k)!r}, now {signature.get(k)!r}"
             for k in sorted(set(stored) | set(signature)) if stored.get(k) != signature.get(k)]
    if diffs:
        raise CheckpointMismatchError(
            f"cannot resume from {str(path)!r}: it was written by a different run ("
            + "; ".join(diffs) + "). Use another checkpoint_path, or delete the file to start over")
    check_state_fits(model, state["state_dict"], f"training state {str(path)!r}", state.get("arch"))
    model.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng_ranks"][ddp.rank] if ddp is not None else state["rng"], generator)
    return list(state["history"]), int(state["epoch"])


def train(model: nn.Module, splits: Any, cfg: TrainConfig, *, device: str | torch.device | None = None,
          checkpoint_path: str | Path | None = None, metadata: dict | None = None,
          callback: Callable[[int, pd.DataFrame], None] | None = None, num_workers: int = 0,
          progress: bool = True) -> tuple[nn.Module, pd.DataFrame]:
    """Train ``model`` on ``splits.train`` as ``cfg`` says (scored on ``splits.test`` after every epoch).

    Only ``cfg``'s loop fields (:data:`~probelib.training.config.LOOP_FIELDS`) are read: e.g.
    ``train(model, splits, TrainConfig(method="trades", eps=2.0, epochs=5))``. Launched by
    torchrun, it trains with DistributedDataParallel (``probelib.distributed``): the config's
    batch size is the global batch, rank 0 alone writes.

    With ``checkpoint_path`` the model, optimizer, schedule position, RNG states and history
    are written atomically after every epoch, and a call with the same arguments resumes from
    the last completed epoch (bit-identical to an uninterrupted run on CPU); different
    arguments raise an error that says what differs. A NaN/inf loss raises
    :class:`TrainingDivergedError` naming epoch and batch; the checkpoint of the last completed
    epoch is kept. ``callback(epochs_done, history)`` runs after each epoch's checkpoint.

    Returns ``(model, history)`` with history columns epoch, lr, loss, train_acc (on the inputs
    each step trained on: clean for natural/TRADES, PGD examples for AT, mixed for mixup),
    test_acc, seconds (training pass), eval_seconds. The model comes back in eval mode.
    """
    ddp = distributed.init_distributed(device)  # None unless launched by torchrun
    device = ddp.device if ddp is not None else default_device(device)
    channels_last = _check_inputs(model, splits, cfg, device)
    method, epochs, batch_size = cfg.method, cfg.epochs, cfg.batch_size
    num_classes = getattr(splits, "num_classes", None) or int(labels_of(splits.train).max()) + 1

    signature = plain({**{k: getattr(cfg, k) for k in LOOP_FIELDS}, "milestones": [float(m) for m in cfg.milestones],
                       "channels_last": bool(channels_last),
                       "arch": arch_config(model), "train_data": data_signature(splits.train),
                       "n_test": len(splits.test)})
    if ddp is not None:  # a DDP run resumes with the same world size only
        signature["world_size"] = ddp.world_size

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _make_optimizer(model, cfg)
    generator = torch.Generator()
    history: list[dict] = []
    start = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        history, start = _resume(checkpoint_path, signature, model, opt, generator, ddp)
    else:
        seed_everything(cfg.seed)
        generator.manual_seed(cfg.seed + (ddp.rank if ddp is not None else 0))  # per-rank augmentation/attack noise
    net = distributed.wrap_model(model, ddp) if ddp is not None else model

    n_train = len(splits.train)
    local_batch = distributed.local_batch_size(batch_size, ddp)
    steps_per_epoch = ((n_train + batch_size - 1) // batch_size if ddp is None
                       else distributed.steps_per_epoch(n_train, local_batch, ddp))

    def step_loss(x: torch.Tensor, y: torch.Tensor):
        if method == "natural":
            return natural_loss(net, x, y)
        if method == "trades":
            return trades_loss(net, x, y, cfg.eps, beta=cfg.beta, steps=cfg.steps, generator=generator)
        if method == "at":
            return at_loss(net, x, y, cfg.eps, steps=cfg.steps, generator=generator)
        return mixup_loss(net, x, y, num_classes, alpha=cfg.mixup_alpha, generator=generator)

    progress = progress and distributed.is_main_process()
    epoch_bar = tqdm(range(start, epochs), desc=f"train {method}", initial=start, total=epochs,
                     disable=not progress, leave=False)
    for epoch in epoch_bar:
        model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen, lr_now = 0.0, 0, 0, cfg.lr
        order = None if ddp is None else distributed.shard_order(n_train, ddp, epoch, cfg.seed)
        epoch_batches = batches(splits.train, local_batch, generator, shuffle=True, order=order,
                                num_workers=num_workers)
        for b, (x, y) in enumerate(tqdm(epoch_batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                                        leave=False, disable=not progress)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = augment_batch(x, cfg.augment, generator)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr_now = _lr_at(epoch * steps_per_epoch + b, steps_per_epoch, cfg)
            for group in opt.param_groups:
                group["lr"] = lr_now
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                out = step_loss(x, y)
            if out is None:
                continue
            loss, logits, labels = out
            value = float(loss.detach())
            if not math.isfinite(value):
                kept = (f"the checkpoint of epoch {start if not history else history[-1]['epoch']} is kept at "
                        f"{str(checkpoint_path)!r}" if checkpoint_path is not None and checkpoint_path.exists()
                        else "no checkpoint was written")
                raise TrainingDivergedError(
                    f"training loss became {value} at epoch {epoch + 1}, batch {b + 1} of {steps_per_epoch} "
                    f"(method={method}, lr={lr_now:g}); {kept}. Lower the learning rate or check the inputs.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += value * len(labels)
            correct += int((logits.detach().argmax(1) == labels).sum())
            seen += len(labels)
        if seen == 0:  # no optimiser step this epoch: never store it as a trained model
            raise ValueError(f"epoch {epoch + 1} of method={method!r} took no optimiser step ({n_train} "
                             f"training images, batch_size={batch_size}); nothing was trained or saved. Use more "
                             "training images or a batch size that yields at least one full step")
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        if ddp is not None:  # summed over ranks: every rank holds the same history
            loss_sum, correct, seen = distributed.all_reduce_sums([loss_sum, correct, seen], ddp)
        test_acc = _test_accuracy(model, splits.test, ddp, device, amp=cfg.amp, channels_last=channels_last)
        row = {"epoch": epoch + 1, "lr": lr_now, "loss": loss_sum / max(seen, 1),
               "train_acc": correct / max(seen, 1), "test_acc": test_acc, "seconds": seconds,
               "eval_seconds": time.perf_counter() - t1}
        history.append(row)
        epoch_bar.set_postfix(loss=f"{row['loss']:.3f}", test_acc=f"{test_acc:.3f}")
        if checkpoint_path is not None:
            meta = dict(metadata or {}, epoch=epoch + 1, **{k: v for k, v in signature.items() if k != "arch"})
            rngs = distributed.gather_objects(_rng_state(generator), ddp)  # every rank's, for the resume
            if distributed.is_main_process():  # rank 0 alone writes
                save_checkpoint(model, checkpoint_path, extra={
                    "train_format": STATE_FORMAT, "epoch": epoch + 1, "signature": signature,
                    "optimizer": opt.state_dict(), "rng": rngs[0], "history": history,
                    **({"rng_ranks": rngs} if ddp is not None else {})}, **meta)
            distributed.barrier()
        if callback is not None:
            callback(epoch + 1, pd.DataFrame(history))
    model.eval()
    return model, pd.DataFrame(history)
