"""TRADES and AT epoch time against the floor of 11 forward+backward passes of the same batches.

A TRADES or AT step costs about 11 forward+backward passes (10 attack steps + the update), so
an epoch can't be cheaper than 11 plain training passes over the same batches. This bench
measures, in one run on the embedded default (mnist5kwo9, CNN002, batch 128), the floor
(11 × forward + cross-entropy + backward with parameter gradients, train mode, per batch),
one epoch of probelib's ``train`` with method="trades" and with method="at" (the training
pass only, as the history's ``seconds``), and one natural epoch for reference. The four are
interleaved over ``--rounds`` rounds and each keeps its minimum (the least disturbed by other
jobs on a shared machine); the table also lists every round's time.

    .venv/bin/python bench/training.py [--max-train 1024] [--threads N] [--device cpu]

Last line: ``worst epoch over floor: <x>`` (goal ≤ 1.3).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import pandas as pd
import torch
import torch.nn.functional as F

from probelib._util import default_device
from probelib.data import load_dataset
from probelib.models import build_model
from probelib.data import subsample
from probelib.training import EMBEDDED_NCG_EPOCHS, TrainConfig, train


def floor_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                device: torch.device, channels_last: bool) -> tuple[float, float]:  # (wall, CPU) seconds
    """Wall and CPU seconds of 11 forward+backward passes per batch, batches as train() draws them."""
    model = copy.deepcopy(model).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))  # train()'s first draw
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(y), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        for _ in range(11):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5kwo9")
    parser.add_argument("--max-train", type=int, default=1024, help="training images (stratified subset)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (minimum kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device(args.device)
    splits = load_dataset(args.dataset)
    train_set = subsample(splits.train, args.max_train, seed=0)
    test_set = subsample(splits.test, 64, seed=0)
    splits = dataclasses.replace(splits, train=train_set, test=test_set)
    torch.manual_seed(0)
    model = build_model("CNN002", splits.num_classes)
    base = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, momentum=0.9, seed=0)
    channels_last = True  # train()'s automatic choice for conv nets on images
    print(f"{args.dataset}: {len(train_set)} training images, batch {args.batch_size}, CNN002, device {device}, "
          f"{torch.get_num_threads()} threads")

    # Interleave the measurements and keep each one's minimum over the rounds: on a shared
    # machine other jobs slow any single measurement down by up to ~8x (seen while writing this),
    # and the minimum is the run least disturbed. Every round measures everything on the same batches.
    best: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        wall, cpu = floor_epoch(model, train_set.x, train_set.y, args.batch_size, 0, device, channels_last)
        best.setdefault("floor", []).append(wall)
        for method in ("natural", "trades", "at"):
            cfg = base.replace(method=method, eps=2.0)
            _, hist = train(copy.deepcopy(model), splits, cfg, device=device, progress=False)
            best.setdefault(method, []).append(float(hist["seconds"].iloc[0]))
    floor = min(best["floor"])
    rows = [{"what": "floor: 11 fwd+bwd per batch", "min_s": floor, "all_s": best["floor"]}]
    rows += [{"what": f"probelib {m} epoch (training pass)", "min_s": min(best[m]), "all_s": best[m]}
             for m in ("natural", "trades", "at")]
    table = pd.DataFrame(rows)
    table["over_floor"] = table["min_s"] / floor
    table["all_s"] = table["all_s"].map(lambda v: " ".join(f"{t:.2f}" for t in v))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    full = len(load_dataset(args.dataset).train)
    per_epoch = sum(min(best[m]) for m in ("natural", "trades", "at")) * full / len(train_set)
    print(f"projected, least-disturbed: one epoch of natural + TRADES + AT on all {full} {args.dataset} training "
          f"images ≈ {per_epoch:.0f} s, so {int(240 // per_epoch)} epochs fit in 4 minutes "
          f"(probelib.training.EMBEDDED_NCG_EPOCHS = {EMBEDDED_NCG_EPOCHS})")
    worst = max(min(best["trades"]), min(best["at"])) / floor
    print(f"worst epoch over floor: {worst:.2f}")


if __name__ == "__main__":
    main()
