"""The papers' training recipes: named configurations per dataset family (:func:`default_config`,
``python -m probelib train --list``), and :func:`train_or_load`, which trains a configuration once
and keeps the model in the artifact store, keyed by the configuration and the data it trains on.

The epoch budgets of the embedded set were measured with ``bench/training.py``; the figures are
in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import pandas as pd
import torch
from torch import nn

from probelib import distributed
from probelib._util import check_choice, default_device, seed_everything, unknown_name
from probelib.data import DataChangedError, data_fingerprint, load_dataset, parse_name
from probelib.models.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, read_checkpoint, \
    save_checkpoint
from probelib.store import default_store, fingerprint
from probelib.training.batches import data_signature
from probelib.training.config import LOOP_FIELDS, PAPERS, SPACES, TrainConfig, scale_milestones
from probelib.training.loop import train
from probelib.training.losses import METHODS

__all__ = ["default_config", "config_names", "get_config", "checkpoint_key", "train_or_load", "add_cli",
           "EMBEDDED_NCG_EPOCHS", "EMBEDDED_ADABN_ARCH", "EMBEDDED_ADABN_EPOCHS", "EMBEDDED_FEATURE_EPOCHS"]

#: Epochs of the NCG settings on the embedded ``mnist5k``/``mnist5kwoK`` (paper: 70 on full MNIST):
#: natural + TRADES + AT on mnist5kwo9 together train in ≤ 4 minutes on 2 CPU cores (bench/README.md).
#: Short of converged (AT ≈ 0.72 test accuracy): ``cfg.replace(epochs=10)`` or more when time allows.
EMBEDDED_NCG_EPOCHS = 5
#: The small BN WideResNet for the AdaBN studies on ``mnist5k``: WRN-16-1 (13 BN layers, 0.18 M
#: parameters, 64-d features). Depth, not width, gives the 13 BN layers the label-shift study needs
#: (it freezes the last m ∈ {0, 1, 4, 16} BN layers; WRN-10-k has 7); WRN-16-1 scores a shift-grid
#: setting ≈ 3.5× faster than WRN-16-2 (the earlier default) with the same verdicts (bench/README.md).
EMBEDDED_ADABN_ARCH = "WRN-16-1"
EMBEDDED_ADABN_EPOCHS = 5
#: Feature-space MLPs on the embedded set (paper: 70 epochs; the set is 17× smaller than MNIST):
#: ≈ 20 s per robust model with one thread (bench/README.md).
EMBEDDED_FEATURE_EPOCHS = 20


def _family(dataset: str) -> str:
    base, _ = parse_name(dataset)
    return base


_NCG_PIXEL = {  # base -> (arch, optimizer, lr, batch, epochs, notes)
    "mnist5k": ("CNN002", "sgd", 0.01, 128, EMBEDDED_NCG_EPOCHS,
                "NCG's MNIST settings (CNN002, SGD lr 0.01 momentum 0.9, batch 128, MultiStep ×0.1 at "
                "[40,50,60]/70 of the epochs) on the embedded 5 000-image MNIST. Epochs: 5 (EMBEDDED_NCG_EPOCHS), chosen so that "
                "natural+TRADES+AT together train in ≤ 4 min on 2 idle CPU cores (measured ≈ 32–40 s per epoch of "
                "the three); short of converged (AT ≈ 0.72 test accuracy): cfg.replace(epochs=10) or more "
                "when time allows."),
    "mnist": ("CNN002", "sgd", 0.01, 128, 70, "NCG's MNIST settings (spec §4): CNN002, SGD lr 0.01 "
              "momentum 0.9, batch 128, 70 epochs, MultiStep [40,50,60] ×0.1, no augmentation."),
    "cifar10": ("WRN-40-10", "adam", 0.01, 64, 70, "NCG's CIFAR settings: WRN-40-10, Adam lr 0.01, batch 64, "
                "70 epochs, MultiStep [40,50,60] ×0.1, no augmentation."),
    "imgnet100": ("ResNet50Norm01", "adam", 0.01, 128, 70, "NCG's ImageNet-100 settings: ResNet50Norm01 "
                  "(112 px), Adam lr 0.01, batch 128, 70 epochs, MultiStep [40,50,60] ×0.1."),
    "digits": ("LargeMLP", "sgd", 0.01, 128, 10, "Fast test setting: LargeMLP on the flattened 8×8 digits "
               "(CNN002 needs ≥ 16 px), SGD lr 0.01 momentum 0.9, batch 128, 10 epochs."),
}
_NCG_PIXEL["cifar100"] = _NCG_PIXEL["cifar100coarse"] = _NCG_PIXEL["cifar10"]
_FEATURE_AT_EPS = {"mnist5k": 2.0, "mnist": 2.0, "digits": 2.0, "cifar10": 1.0, "cifar100": 1.0,
                   "cifar100coarse": 1.0, "imgnet100": 1.0}


def default_config(dataset: str, method: str = "natural", eps: float | None = None, *, paper: str = "ncg",
                   space: str = "pixel", beta: float = 6.0, seed: int = 0, **overrides: Any) -> TrainConfig:
    """The paper's training settings for ``dataset``'s family (``…woK`` names share their base's).

    ``paper="ncg"`` (Yang et al., spec §4): ``space="pixel"`` trains CNN002 (MNIST, mnist5k),
    WRN-40-10 (CIFAR) or ResNet50Norm01 (ImageNet-100); ``space="feature"`` the second-stage
    MLP (LargeMLP; LargeMLPv4 for ImageNet-100: SGD momentum 0.9, lr 0.01, batch 256 for MNIST
    else 128) on features that :func:`train_or_load` receives as ``splits``. ``eps`` defaults to
    2 (TRADES and pixel AT; feature AT: 2 MNIST, 1 CIFAR/ImageNet-100).
    ``paper="adabn"`` (Burns & Steinhardt): BN WideResNet, SGD Nesterov lr 0.1 momentum 0.9,
    weight decay 5e-4, batch 128, cosine per step to 1e-6, crop (pad 4) + flip; WRN-40-2
    (dropout 0.3), 100 epochs on CIFAR/TinyImageNet; on mnist5k a small BN WRN with crop only.
    ``overrides`` set any other :class:`TrainConfig` field.
    """
    check_choice("paper", paper, PAPERS)
    check_choice("space", space, SPACES)
    if method not in METHODS:
        raise unknown_name("training method", method, METHODS)
    base = _family(dataset)
    if paper == "adabn":
        if space != "pixel":
            raise ValueError("paper='adabn' trains image models: use space='pixel'")
        if base == "mnist5k":
            settings = dict(arch=EMBEDDED_ADABN_ARCH, epochs=EMBEDDED_ADABN_EPOCHS, augment="crop",
                            model_kwargs=(("norm", "batch"), ("dropout", 0.0)),
                            notes="Burns' recipe on the embedded mnist5k: a small BN WideResNet "
                                  f"({EMBEDDED_ADABN_ARCH}, see EMBEDDED_ADABN_ARCH for the timing), SGD Nesterov "
                                  "lr 0.1 momentum 0.9 wd 5e-4, batch 128, cosine per step to 1e-6, random crop "
                                  "(pad 4). No horizontal flip: digits are not flip-invariant (a mirrored 2, 3, 4, "
                                  "5, 7 or 9 is not that digit), so flipping would teach label noise and make "
                                  "the 'adabn+aug' statistics pass see images unlike any test digit.")
        elif base in ("cifar10", "cifar100", "cifar100coarse", "tinyimagenet"):
            settings = dict(arch="WRN-40-2", epochs=100, augment="crop+flip",
                            model_kwargs=(("norm", "batch"), ("dropout", 0.3)),
                            notes="Burns & Steinhardt's train.py: WRN-40-2 (dropout 0.3, batch norm), no input "
                                  "normalisation, crop (pad 4) + flip, SGD Nesterov lr 0.1 momentum 0.9 wd 5e-4, "
                                  "batch 128, 100 epochs, cosine per step to 1e-6.")
        else:
            raise ValueError(f"paper='adabn' has training settings for mnist5k, cifar10, cifar100 and tinyimagenet, "
                             f"not {base!r}; for ImageNet the paper uses torchvision's pretrained networks: "
                             "build_model('resnet50', 1000, weights='/path/to/resnet50.pth')")
        cfg = dict(dataset=dataset, method=method, eps=eps if eps is not None else 2.0, beta=beta, seed=seed,
                   batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                   schedule="cosine", min_lr=1e-6, paper="adabn", **settings)
    elif space == "feature":
        if base not in _NCG_PIXEL:
            raise ValueError(f"no NCG settings for dataset family {base!r}; known: {sorted(_NCG_PIXEL)}")
        mnist_like = base in ("mnist", "mnist5k", "digits")
        epochs = EMBEDDED_FEATURE_EPOCHS if base in ("mnist5k", "digits") else 70
        arch = "LargeMLPv4" if base == "imgnet100" else "LargeMLP"
        default_eps = _FEATURE_AT_EPS[base] if method == "at" else 2.0
        cfg = dict(dataset=dataset, arch=arch, method=method, eps=eps if eps is not None else default_eps,
                   beta=beta, seed=seed, epochs=epochs, batch_size=256 if mnist_like else 128, optimizer="sgd",
                   lr=0.01, momentum=0.9, schedule="multistep", milestones=scale_milestones(epochs),
                   space="feature",
                   notes=f"NCG's feature-space classifier: {arch} on a naturally trained backbone's features, "
                         "SGD lr 0.01 momentum 0.9, batch 256 (MNIST) / 128, MultiStep [40,50,60]/70 ×0.1"
                         + (f"; {epochs} epochs on the small embedded set (paper 70)." if epochs != 70 else "."))
    else:
        if base not in _NCG_PIXEL:
            raise ValueError(f"no NCG settings for dataset family {base!r}; known: {sorted(_NCG_PIXEL)}")
        arch, optimizer, lr, batch, epochs, notes = _NCG_PIXEL[base]
        cfg = dict(dataset=dataset, arch=arch, method=method, eps=eps if eps is not None else 2.0, beta=beta,
                   seed=seed, epochs=epochs, batch_size=batch, optimizer=optimizer, lr=lr, momentum=0.9,
                   schedule="multistep", milestones=scale_milestones(epochs), notes=notes
                   + (f" Milestones scaled to {epochs} epochs: {list(scale_milestones(epochs))}." if epochs != 70 else ""))
    cfg.update(overrides)
    if "epochs" in overrides and "milestones" not in overrides and cfg.get("schedule") == "multistep":
        cfg["milestones"] = scale_milestones(cfg["epochs"])
    return TrainConfig(**cfg)


def _named_configs() -> dict[str, TrainConfig]:
    configs = []
    runs = [("natural", None), ("trades", 2.0), ("trades", 4.0), ("trades", 8.0), ("at", 2.0), ("mixup", None)]
    for ds in ("mnist5kwo9", "mnistwo9", "cifar10wo0", "cifar100coarsewo0", "imgnet100wo0"):
        configs += [default_config(ds, m, e) for m, e in runs]
    for ds in ("mnist5kwo9", "mnistwo9", "cifar10wo0", "cifar100coarsewo0", "imgnet100wo0"):
        configs += [default_config(ds, m, e if m != "at" else None, space="feature") for m, e in runs]
    for ds in ("mnist5k", "cifar10", "cifar100", "tinyimagenet"):
        configs.append(default_config(ds, "natural", paper="adabn"))
    return {c.name: c for c in configs}


def config_names() -> list[str]:
    """Names of the predefined configurations (``python -m probelib train --list``)."""
    return list(_named_configs())


def get_config(name: str) -> TrainConfig:
    """The predefined configuration called ``name`` (see :func:`config_names`)."""
    configs = _named_configs()
    if name not in configs:
        raise unknown_name("training config", name, configs)
    return configs[name]


def _splits_fingerprint(splits: Any) -> str:
    parts = [getattr(splits, "num_classes", None)]
    for part in ("train", "test"):
        parts.append(data_signature(getattr(splits, part)))
    return fingerprint(*parts)


def checkpoint_key(cfg: "TrainConfig", splits: Any = None) -> str:
    """The store key of ``cfg``'s checkpoint: its config and the data it trains on (the splits'
    content when given, else the fingerprint of ``cfg.dataset``'s files under the data root)."""
    if splits is not None:
        return fingerprint(cfg.key, _splits_fingerprint(splits))
    return fingerprint(cfg.key, "data-files", data_fingerprint(cfg.dataset))



def train_or_load(cfg: TrainConfig, splits: Any = None, *, device: str | torch.device | None = None,
                  store: Any = None, progress: bool = True) -> tuple[nn.Module, pd.DataFrame]:
    """The model ``cfg`` describes: loaded from the artifact store if trained before, else trained.

    The checkpoint lives at ``store.path("checkpoints", cfg.name, key, ".pt")`` with key =
    ``cfg.key`` plus the data: a fingerprint of ``splits`` when they are passed explicitly (e.g.
    feature datasets), else ``probelib.data.data_fingerprint(cfg.dataset)`` (the dataset files'
    contents), so replacing the data under the data root trains anew instead of reusing old weights. Training writes a resumable state beside it after every epoch, so an
    interrupted call resumes. Returns ``(model in eval mode, history DataFrame)``.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig (see default_config), got {type(cfg).__name__}")
    if cfg.dataset is None or cfg.arch is None:
        raise ValueError("train_or_load needs a TrainConfig that names its dataset and arch (see default_config)")
    store = store if store is not None else default_store()
    if splits is None and cfg.space == "feature":
        raise ValueError(f"{cfg.name} trains on features: pass them as splits=... (a Splits whose train/test "
                         "hold the backbone's feature vectors)")
    key = checkpoint_key(cfg, splits)
    path = store.path("checkpoints", cfg.name, key, ".pt")
    if store.verify(path):
        model, meta = load_checkpoint(path, device=default_device(device))
        return model, pd.DataFrame(meta.get("history", []))
    if splits is None:
        splits = load_dataset(cfg.dataset)
        if splits.fingerprint is not None and fingerprint(cfg.key, "data-files", splits.fingerprint) != key:
            raise DataChangedError(f"the files of dataset {cfg.dataset!r} changed between the store lookup and "
                                   "reading them; wait for the copy to finish and call train_or_load again")
    splits = cfg.prepare(splits)
    seed_everything(cfg.seed)
    model = cfg.build(splits)
    state_path = store.path("checkpoints", cfg.name, key, ".state.pt")
    fresh_token = getattr(store, "fresh_token", None)
    if state_path.exists():  # a damaged resume state is recomputed, not used (a planted pickle still raises)
        try:
            state = read_checkpoint(state_path)
        except CheckpointError as err:
            if isinstance(err, UnsafeCheckpointError):
                raise
            warnings.warn(f"{err}. Training {cfg.name} from epoch 0 instead.", stacklevel=2)
            state_path.unlink(missing_ok=True)  # (every torchrun rank may get here)
        else:  # under --fresh, only a state written by this same fresh run is resumed
            if fresh_token is not None and (state.get("metadata") or {}).get("fresh_token") != fresh_token:
                state_path.unlink(missing_ok=True)
    meta = {"config": cfg.as_dict(), "config_key": key, "name": cfg.name, "dataset": cfg.dataset}
    if fresh_token is not None:
        meta["fresh_token"] = fresh_token
    model, history = train(model, splits, cfg, device=device, checkpoint_path=state_path, metadata=meta,
                           progress=progress)
    if distributed.is_main_process():  # under torchrun, rank 0 alone writes
        save_checkpoint(model, path, **meta, method=cfg.method, eps=cfg.eps, beta=cfg.beta, seed=cfg.seed,
                        epoch=cfg.epochs, hyper_parameters={k: getattr(cfg, k) for k in LOOP_FIELDS}, history=history, notes=cfg.notes,
                        world_size=distributed.context().world_size if distributed.context() else 1)
        store.seal(path, kind="checkpoints", name=cfg.name, key=key)
        state_path.unlink(missing_ok=True)
    distributed.barrier()
    return model, history


# --------------------------------------------------------------------------------------- command line
def _cli_train(args: argparse.Namespace) -> int:
    if args.list:
        rows = [{"config": c.name, "arch": c.arch, "epochs": c.epochs, "optimizer": c.optimizer, "lr": c.lr,
                 "batch": c.batch_size, "notes": c.notes[:60]} for c in _named_configs().values()]
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
            print(pd.DataFrame(rows).to_string(index=False))
        return 0
    if args.config:
        cfg = get_config(args.config)
    elif args.dataset:
        cfg = default_config(args.dataset, args.method, args.eps, paper=args.paper)
    else:
        raise ValueError("name a config (see `python -m probelib train --list`) or pass --dataset")
    changes = {k: v for k, v in (("epochs", args.epochs), ("max_train", args.max_train),
                                 ("max_test", args.max_test), ("seed", args.seed)) if v is not None}
    cfg = cfg.replace(**changes) if changes else cfg
    ddp = distributed.init_distributed(args.device)  # under torchrun: DDP over its processes
    say = print if distributed.is_main_process() else (lambda *a, **k: None)
    say(f"{cfg.name}  (key {checkpoint_key(cfg)[:16]})\n{cfg.notes}"
        + (f"\nDistributedDataParallel: {ddp.world_size} processes ({ddp.backend}), global batch {cfg.batch_size}"
           if ddp is not None else ""))
    try:
        _, history = train_or_load(cfg, device=args.device)
    finally:
        distributed.shutdown()
    say(history.to_string(index=False))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``: ``python -m probelib train CONFIG`` trains or reuses; ``--list`` lists configs."""
    p = subparsers.add_parser("train", help="train a model (or reuse it from precomputed/)",
                              description="Train a named configuration, or reuse the stored model.")
    p.add_argument("config", nargs="?", help="configuration name (see --list)")
    p.add_argument("--list", action="store_true", help="list the named configurations")
    p.add_argument("--dataset", help="instead of CONFIG: the paper's settings for this dataset")
    p.add_argument("--method", default="natural", choices=METHODS)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--paper", default="ncg", choices=PAPERS)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-train", type=int, dest="max_train")
    p.add_argument("--max-test", type=int, dest="max_test")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cli_train)
