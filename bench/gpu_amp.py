"""One training epoch of WRN-40-2 on 32x32 inputs: bf16 autocast + channels-last vs fp32, on CUDA.

Measures probelib's ``train`` (natural, SGD, batch 128, Burns' WRN-40-2 with batch norm) on
``--n`` random 32x32 RGB images (10 classes; the numbers are about speed, not accuracy): one
warm-up epoch per setting, then ``--rounds`` interleaved timed epochs per setting, keeping each
setting's fastest (the history's training ``seconds``). Also reports the peak GPU memory.
Needs a CUDA GPU; on a CPU-only machine it says so and exits with status 2.

    .venv/bin/python bench/gpu_amp.py [--n 10000] [--rounds 3] [--device cuda:0]

Last line: ``amp+channels_last vs fp32 epoch time: <ratio>`` (below 1 means AMP is faster).
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_amp.py needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
              "run it on a GPU node. Nothing was measured.", file=sys.stderr)
        raise SystemExit(2)
    from probelib.models import build_model
    from probelib.training import TrainConfig, train

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)
    splits = _splits(x, y)
    settings = {"fp32": dict(amp=False, channels_last=False), "amp+channels_last": dict(amp=True, channels_last=True)}
    best: dict[str, float] = {}
    peak: dict[str, float] = {}
    for rnd in range(args.rounds + 1):  # round 0 warms up (cuDNN autotuning, allocator)
        for name, kw in settings.items():
            torch.manual_seed(0)
            model = build_model("WRN-40-2", 10, in_channels=3, image_size=32, norm="batch", dropout=0.0)
            torch.cuda.reset_peak_memory_stats(device)
            cfg = TrainConfig(epochs=1, batch_size=128, lr=0.1, schedule="constant", **kw)
            _, hist = train(model, splits, cfg, device=device, progress=False)
            torch.cuda.synchronize(device)
            if rnd:
                best[name] = min(best.get(name, float("inf")), float(hist["seconds"].iloc[0]))
                peak[name] = torch.cuda.max_memory_allocated(device) / 2**30
                print(f"round {rnd} {name:18s} {hist['seconds'].iloc[0]:7.2f} s", flush=True)
    print(f"GPU: {torch.cuda.get_device_name(device)}; {args.n} images of 3x32x32, batch 128")
    for name in settings:
        print(f"{name:18s} best epoch {best[name]:7.2f} s ({args.n / best[name]:8.0f} images/s), "
              f"peak memory {peak[name]:.2f} GiB")
    print(f"amp+channels_last vs fp32 epoch time: {best['amp+channels_last'] / best['fp32']:.2f}")


def _splits(x: torch.Tensor, y: torch.Tensor):
    """Train on all of ``x``; a 256-image test split (train scores it after the epoch)."""
    from probelib.data.core import Splits, TensorSet

    return Splits(name="random32", base="random32", train=TensorSet(x, y), test=TensorSet(x[:256], y[:256]),
                  num_classes=10, class_names=[str(c) for c in range(10)], image_shape=(3, 32, 32))


if __name__ == "__main__":
    main()
