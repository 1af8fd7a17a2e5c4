"""AdaBN shift grid: probelib's fast path vs the authors' loop (evaluate_all.py), end to end.

Both read the same corrupted sets from disk, written (untimed) in the CIFAR-10-C layout
(``<corruption>.npy``: all 5 severities, severity-major; ``labels.npy``) for a class-stratified
subset of the mnist5k test images.

The reference loop does, per setting and arm, what ``evaluate_all.py`` (collin-burns/feature-alignment)
does: a ``CorruptionDataset`` per loader that ``np.load``s the whole corruption file and slices the
severity (the ``adabn+aug`` arm opens two: the augmented statistics loader and the scoring
loader), converts one image at a time (``ToTensor``; the training augmentation per image in the
statistics loader), deep-copies the model for the adapted arms (``update_bn_stats``), runs the
statistics pass under ``torch.no_grad()`` and the scoring pass as ``get_acc_conf_ce`` does —
*without* ``torch.no_grad()`` — through DataLoaders of batch 128, with the model in PyTorch's
default (contiguous) layout, as a model built or loaded from a checkpoint has it. The statistics
loader shuffles, as the authors' does, with a seeded generator (``DataLoader(shuffle=True,
generator=torch.Generator().manual_seed(seed))``), which is the order probelib's statistics pass
uses, so the numbers must agree. The same loop with ``torch.no_grad()`` scoring is timed too and
printed for comparison.

probelib's ``shift_grid`` reads each setting once (memory-mapped, only its severity's rows),
adapts one working copy in place and restores the source statistics, and scores in cache-sized
batches with channels-last convs. Both use momentum 0.1 (the authors' exponential average, batch
128 in the same seeded shuffled order) and the same per-image augmentation, so the numbers must agree; the script
checks them and prints the times.

It also times TENT's arms (``norm``, ``tent``: :mod:`probelib.tent`, one Adam step lr 1e-3 per batch
of 128, episodic per setting) beside the ``adabn`` arm on the same settings, each arm alone
through ``shift_grid``, and prints the ``tent`` arm's cost per setting relative to ``adabn``'s
(``--no-tent`` skips this).

    .venv/bin/python bench/adabn.py                 # representative subset (CPU-sized)
    .venv/bin/python bench/adabn.py --full          # all 15 corruptions × 5 severities × 3 arms
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as trn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probelib._util import default_device, seed_everything  # noqa: E402
from probelib.adabn import (ARMS, AdaBNSettings, bn_layers, momentum_label, shift_grid,  # noqa: E402
                            train_augmentation)
from probelib.corruptions import corruption_names, to_uint8_images, write_corrupted  # noqa: E402
from probelib.data import load_dataset, subsample  # noqa: E402
from probelib.metrics import classification_metrics  # noqa: E402
from probelib.tent import TentSettings  # noqa: E402
from probelib.training import EMBEDDED_ADABN_ARCH  # noqa: E402

SUBSET = ["gaussian_noise", "shot_noise", "defocus_blur", "motion_blur", "fog", "contrast", "jpeg_compression"]
SEVERITIES = (1, 2, 3, 4, 5)


class CorruptionDataset(Dataset):
    """As the authors' ``utils.CorruptionDataset``: load the whole ``<corruption>.npy``, keep one
    severity's block; items converted one at a time (``ToTensor``), optionally augmented."""

    def __init__(self, folder: Path, corruption: str, severity: int, augment_seed: int | None = None,
                 flip: bool = False):
        labels = np.load(folder / "labels.npy")
        data = np.load(folder / f"{corruption}.npy")
        n = len(data) // len(SEVERITIES)
        self.data = data[n * (severity - 1):n * severity]
        self.labels = labels[n * (severity - 1):n * severity] if len(labels) == len(data) else labels
        self.augment_seed, self.flip, self.to_tensor = augment_seed, flip, trn.ToTensor()

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int):
        x = self.to_tensor(self.data[i].astype(np.uint8))
        if self.augment_seed is not None:
            x = train_augmentation(x[None], self.augment_seed, start=i, flip=self.flip)[0]
        return x, int(self.labels[i])


def reference_grid(source, folder, corruptions, severities, arms, momentum, batch_size, device, seed, flip,
                   grad_scoring=True):
    def loader(dataset, shuffle=False):
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          pin_memory=device.type == "cuda")

    source = copy.deepcopy(source).to(device, memory_format=torch.contiguous_format).eval()
    rows = []
    for c in corruptions:
        for s in severities:
            for arm in arms:
                val_loader = loader(CorruptionDataset(folder, c, s))
                if arm == "source":
                    model = source
                else:  # update_bn_stats: deep copy, BN layers in train mode, one pass without gradients
                    bn_loader = loader(CorruptionDataset(folder, c, s, seed if arm == "adabn+aug" else None, flip),
                                       shuffle=True)
                    model = copy.deepcopy(source)
                    for _, bn in bn_layers(model):
                        bn.momentum = momentum
                        bn.train()
                    with torch.no_grad():
                        for x, _ in bn_loader:
                            model(x.to(device))
                    model.eval()
                logits, labels = [], []
                with contextlib.nullcontext() if grad_scoring else torch.no_grad():
                    for x, y in val_loader:  # get_acc_conf_ce
                        logits.append(model(x.to(device)).detach().cpu())
                        labels.append(y)
                rows.append({"corruption": c, "severity": s, "arm": arm,
                             **classification_metrics(torch.cat(logits), torch.cat(labels)),
                             "n": len(val_loader.dataset)})
    return pd.DataFrame(rows)


def time_arms(model, folder, corruptions, severities, momentum, batch_size, device, augment) -> dict[str, float]:
    """Seconds per setting of each arm alone through ``shift_grid``: ``adabn`` with the bench's
    statistics (``momentum``, batch ``batch_size``), ``adabn`` with the exact statistics (the
    notebooks' default, ``momentum=None``), ``norm`` and ``tent`` (TENT's defaults)."""
    settings = len(corruptions) * len(severities)
    runs = {f"adabn (momentum {momentum:g})": (["adabn"], momentum, batch_size),
            "adabn (exact, notebooks' default)": (["adabn"], None, None),
            "norm": (["norm"], None, None), "tent": (["tent"], None, None)}
    out = {}
    for name, (arms, mom, bs) in runs.items():
        t = time.perf_counter()
        shift_grid(model, folder, corruptions, severities, arms=arms, tent=TentSettings(),
                   adabn=AdaBNSettings(momentum=mom, augment=augment, batch_size=bs, device=device, seed=0))
        out[name] = (time.perf_counter() - t) / settings
    return out


def compare(ref: pd.DataFrame, fast: pd.DataFrame) -> tuple[dict, int]:
    """Per metric the largest difference, and the number of settings whose accuracy differs."""
    keys = ["corruption", "severity", "arm"]
    both = ref.merge(fast, on=keys, suffixes=("_ref", "_fast"))
    assert len(both) == len(ref) == len(fast), "the two grids hold different settings"
    diffs = {m: float((both[f"{m}_ref"] - both[f"{m}_fast"]).abs().max())
             for m in ("accuracy", "confidence", "rms_calibration", "ece")}
    return diffs, int((both["accuracy_ref"] != both["accuracy_fast"]).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="all 15 corruptions × 5 severities")
    p.add_argument("--n", type=int, default=300, help="test images per setting (mnist5k test has 1000)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the cached source model")
    p.add_argument("--untrained", action="store_true", help="skip training: random WRN-16-1 (timing only)")
    p.add_argument("--momentum", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-tent", action="store_true", help="skip timing TENT's arms against the adabn arm")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    seed_everything(0)

    if args.untrained:
        from probelib.models import build_model
        model = build_model(EMBEDDED_ADABN_ARCH, num_classes=10, in_channels=1, image_size=28, norm="batch")
        label = f"{EMBEDDED_ADABN_ARCH} (untrained)"
    else:
        from probelib.training import default_config, train_or_load
        cfg = default_config("mnist5k", method="natural", paper="adabn").replace(epochs=args.epochs)
        model, _ = train_or_load(cfg)
        label = f"{getattr(cfg, 'arch', 'BN WRN')} trained {args.epochs} epochs on mnist5k"
    model = model.cpu().eval()

    test = load_dataset("mnist5k").test
    x, y = subsample((test.x, test.y), args.n)  # the test split is class-sorted: x[:n] = label shift
    corruptions = corruption_names() if args.full else SUBSET
    severities = list(SEVERITIES) if args.full else [1, 3, 5]
    flip = x.shape[1] != 1  # grey digits: crop only
    with tempfile.TemporaryDirectory(prefix="bench-adabn-") as tmp:
        folder = Path(tmp) / "mnist5k-subset-c"
        print(f"writing {len(corruptions)} corruptions × 5 severities of {len(y)} images in the CIFAR-10-C "
              f"layout (not timed) ...")
        write_corrupted(to_uint8_images(x), y.numpy(), folder, corruptions, progress=False)

        times, grids = {}, {}
        for name, grad in (("reference loop", True), ("reference, no_grad scoring", False)):
            t = time.perf_counter()
            grids[name] = reference_grid(model, folder, corruptions, severities, ARMS, args.momentum,
                                         args.batch_size, device, 0, flip, grad_scoring=grad)
            times[name] = time.perf_counter() - t
        t = time.perf_counter()
        fast = shift_grid(model, folder, corruptions, severities, arms=ARMS,
                          adabn=AdaBNSettings(momentum=args.momentum, augment="crop+flip" if flip else "crop",
                                              batch_size=args.batch_size, device=device, seed=0))
        times["probelib shift_grid"] = time.perf_counter() - t
        arm_times = None if args.no_tent else time_arms(model, folder, corruptions, severities, args.momentum,
                                                         args.batch_size, device, "crop+flip" if flip else "crop")

    checks = {name: compare(g, fast) for name, g in grids.items()}
    settings = len(fast)
    print(f"\nmodel: {label}; device {device}; {len(corruptions)} corruptions × {len(severities)} severities × "
          f"{len(ARMS)} arms = {settings} settings of {len(y)} images; statistics {momentum_label(args.momentum)}, "
          f"statistics batch {args.batch_size}")
    print(fast.pivot_table(index="arm", values=["accuracy", "confidence", "rms_calibration"]).round(4))
    # Tolerance: float rounding may flip an image whose top two logits tie to ~1e-6 (common on an
    # untrained network): every metric within one image's weight (1/n) plus 1e-5, in at most 2 % of settings.
    tolerance = 1 / len(y) + 1e-5
    for name, (diffs, flipped) in checks.items():
        print(f"\nmax |{name} − probelib| per metric: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
              + f"; settings whose accuracy differs: {flipped}/{settings} (tolerance: each metric ≤ 1/n + 1e-5 "
                f"= {tolerance:.2e}, in ≤ 2 % of settings)")
    print(f"\n{'path':<30}{'seconds':>10}{'s/setting':>12}{'ratio':>8}")
    for name, t in times.items():
        print(f"{name:<30}{t:>10.2f}{t / settings:>12.3f}{t / times['probelib shift_grid']:>8.2f}")
    if args.untrained:  # near-uniform logits: argmax (accuracy, ECE) is decided by rounding; compare confidence
        if any(diffs["confidence"] > 1e-3 for diffs, _ in checks.values()):
            raise SystemExit("the paths' mean confidence differs by more than 1e-3: see the differences above")
        print("untrained network: its top logits tie to within rounding, so accuracy and calibration may differ "
              "between the paths; the mean confidence agrees within 1e-3")
    elif any(max(diffs.values()) > tolerance or flipped > 0.02 * settings for diffs, flipped in checks.values()):
        raise SystemExit("the paths disagree beyond the tolerance: see the differences above")
    if arm_times is not None:
        print(f"\nTENT's arms vs adabn, seconds per setting ({len(y)} images, each arm alone through shift_grid; "
              f"tent: {TentSettings().label()}):")
        for name, t in arm_times.items():
            print(f"  {name:<36}{t:>8.3f}")
        ema, exact = (arm_times[k] for k in list(arm_times)[:2])
        print(f"tent arm cost per setting relative to the adabn arm: {arm_times['tent'] / ema:.2f}x "
              f"(momentum {args.momentum:g}, batch {args.batch_size}), {arm_times['tent'] / exact:.2f}x (exact "
              f"statistics); norm {arm_times['norm'] / ema:.2f}x / {arm_times['norm'] / exact:.2f}x")
    print(f"speed-up vs reference loop: {times['reference loop'] / times['probelib shift_grid']:.2f}")


if __name__ == "__main__":
    main()
