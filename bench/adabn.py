"""AdaBN shift grid: probelib's fast path vs a straightforward reference loop.

The reference loop is what the authors' evaluate_all.py does per setting and arm: deep-copy the
source model, wrap the stored uint8 images in a Dataset that converts (and, for ``adabn+aug``,
augments) one image at a time, run the statistics pass and the scoring pass through DataLoaders
of batch 128, with the model in PyTorch's default (contiguous) layout, as a model built or loaded
from a checkpoint has it. probelib's ``shift_grid`` decodes each set once, adapts one working copy
in place and restores the source statistics, and scores in cache-sized batches with channels-last
convs.
Both use momentum 0.1 (the authors' exponential average, batch 128 in data order) and the same
per-image augmentation, so the numbers must agree; the script checks them and prints both times.

    .venv/bin/python bench/adabn.py                 # representative subset (CPU-sized)
    .venv/bin/python bench/adabn.py --full          # all 15 corruptions × 5 severities × 3 arms
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probelib._util import default_device, seed_everything  # noqa: E402
from probelib.adabn import (ARMS, bn_layers, corrupt_on_the_fly, momentum_label, shift_grid,  # noqa: E402
                            stratified_subset, train_augmentation)
from probelib.corruptions import corruption_names  # noqa: E402
from probelib.data import load_dataset  # noqa: E402
from probelib.metrics import classification_metrics  # noqa: E402

SUBSET = ["gaussian_noise", "shot_noise", "defocus_blur", "motion_blur", "fog", "contrast", "jpeg_compression"]


class StoredImages(Dataset):
    """uint8 N×H×W×C images converted one at a time (ToTensor), optionally augmented."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment_seed: int | None = None,
                 flip: bool = False):
        self.images, self.labels, self.augment_seed, self.flip = images, labels, augment_seed, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float().div(255)
        if self.augment_seed is not None:
            x = train_augmentation(x[None], self.augment_seed, start=i, flip=self.flip)[0]
        return x, int(self.labels[i])


def reference_grid(source, sets, arms, momentum, batch_size, device, seed, flip):
    rows = []
    for (c, s), (images, labels) in sets.items():
        for arm in arms:
            # the layout a model has when built or loaded from a checkpoint (the original scripts
            # never change it); a freshly trained probelib model is left channels-last in memory
            model = copy.deepcopy(source).to(device, memory_format=torch.contiguous_format)
            model.eval()
            if arm != "source":
                for _, bn in bn_layers(model):
                    bn.momentum = momentum
                    bn.train()
                stats_set = StoredImages(images, labels, seed if arm == "adabn+aug" else None, flip)
                with torch.no_grad():
                    for x, _ in DataLoader(stats_set, batch_size=batch_size, shuffle=False):
                        model(x.to(device))
                model.eval()
            logits = []
            with torch.no_grad():
                for x, _ in DataLoader(StoredImages(images, labels), batch_size=batch_size, shuffle=False):
                    logits.append(model(x.to(device)).cpu())
            rows.append({"corruption": c, "severity": s, "arm": arm,
                         **classification_metrics(torch.cat(logits), labels), "n": len(labels)})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="all 15 corruptions × 5 severities")
    p.add_argument("--n", type=int, default=300, help="test images per setting (mnist5k test has 1000)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the cached source model")
    p.add_argument("--untrained", action="store_true", help="skip training: random WRN-16-2 (timing only)")
    p.add_argument("--momentum", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    seed_everything(0)

    if args.untrained:
        from probelib.models import build_model
        model = build_model("WRN-16-2", num_classes=10, in_channels=1, image_size=28, norm="batch")
        label = "WRN-16-2 (untrained)"
    else:
        from probelib.training import default_config, train_or_load
        cfg = default_config("mnist5k", method="natural", paper="adabn").replace(epochs=args.epochs)
        model, _ = train_or_load(cfg)
        label = f"{getattr(cfg, 'arch', 'BN WRN')} trained {args.epochs} epochs on mnist5k"
    model = model.cpu().eval()

    test = load_dataset("mnist5k").test
    x, y = stratified_subset(test.x, test.y, args.n)  # the test split is sorted by class: x[:n] would be a label shift
    corruptions = corruption_names() if args.full else SUBSET
    severities = [1, 2, 3, 4, 5] if args.full else [1, 3, 5]
    load = corrupt_on_the_fly(x, y)
    print(f"preparing {len(corruptions)}×{len(severities)} corrupted sets of {len(y)} images (not timed) ...")
    sets = {}
    for c in corruptions:
        for s in severities:
            xc, _ = load(c, s)
            sets[(c, s)] = ((xc * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), y.numpy())
    decoded = {k: (torch.from_numpy(v[0]).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(v[1]))
               for k, v in sets.items()}
    flip = x.shape[1] != 1  # grey digits: crop only

    t = time.perf_counter()
    ref = reference_grid(model, sets, ARMS, args.momentum, args.batch_size, device, 0, flip)
    t_ref = time.perf_counter() - t

    t = time.perf_counter()
    fast = shift_grid(model, lambda c, s: decoded[(c, s)], corruptions, severities, ARMS,
                      momentum=args.momentum, augment="crop+flip" if flip else "crop",
                      batch_size=args.batch_size, device=device, seed=0)
    t_fast = time.perf_counter() - t

    keys = ["corruption", "severity", "arm"]
    both = ref.merge(fast, on=keys, suffixes=("_ref", "_fast"))
    assert len(both) == len(ref) == len(fast), "the two grids hold different settings"
    diffs = {m: float((both[f"{m}_ref"] - both[f"{m}_fast"]).abs().max())
             for m in ("accuracy", "confidence", "rms_calibration", "ece")}
    identical_acc = bool((both["accuracy_ref"] == both["accuracy_fast"]).all())

    settings = len(ref)
    print(f"\nmodel: {label}; device {device}; {len(corruptions)} corruptions × {len(severities)} severities × "
          f"{len(ARMS)} arms = {settings} settings of {len(y)} images; statistics {momentum_label(args.momentum)}, "
          f"statistics batch {args.batch_size}")
    print(fast.pivot_table(index="arm", values=["accuracy", "confidence", "rms_calibration"]).round(4))
    print(f"\nmax |reference − probelib| per metric: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    print(f"accuracy identical in every setting: {identical_acc}")
    print(f"\n{'path':<28}{'seconds':>10}{'s/setting':>12}")
    print(f"{'reference loop':<28}{t_ref:>10.2f}{t_ref / settings:>12.3f}")
    print(f"{'probelib shift_grid':<28}{t_fast:>10.2f}{t_fast / settings:>12.3f}")
    if not identical_acc or max(diffs.values()) > 1e-5:
        raise SystemExit("the two paths disagree beyond float rounding: see the differences above")
    print(f"speed-up vs reference loop: {t_ref / t_fast:.2f}")


if __name__ == "__main__":
    main()
