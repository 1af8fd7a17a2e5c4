"""Benchmark: images/second of probelib.corruptions.corrupt vs imagecorruptions(-imaug).corrupt.

All 15 benchmark corruptions × 5 severities on 1 000 natural 32-px RGB images (random crops of
scikit-image's sample photos, area-downscaled to 32 px: CIFAR-like content, available offline).
probelib corrupts all 1 000 images per setting in one batched call; the peer (one image per
call, as its API works) is timed on the first ``--peer-images`` images of each setting and
compared per image. Caveat: the peer applies the ImageNet parameters at every size (and refuses
images < 32 px), so its work per image differs from probelib's CIFAR parameters at 32 px; both
do the same kind of work per corruption. One run, one process; threads limited to 1; times are
CPU seconds of this process (time.process_time), because the machine is shared and wall-clock
times swing with other jobs' load.

    .venv/bin/python bench/corruptions.py [--images 1000] [--peer-images 40]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from probelib.corruptions import BENCHMARK, corrupt  # noqa: E402

cv2.setNumThreads(1)


def natural_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        crop = int(rng.integers(64, 160))
        top, left = rng.integers(0, p.shape[0] - crop), rng.integers(0, p.shape[1] - crop)
        out.append(cv2.resize(p[top:top + crop, left:left + crop], (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--peer-images", type=int, default=40)
    args = ap.parse_args()
    import imagecorruptions

    x = natural_images(args.images)
    peer_x = x[:args.peer_images]
    # warm-up (numba JIT in the peer's glass blur, frost texture loading in both)
    for c in BENCHMARK:
        corrupt(x[:2], c, 1)
        imagecorruptions.corrupt(x[0], corruption_name=c, severity=1)

    print(f"{'corruption':18s} {'probelib img/s':>15s} {'peer img/s':>11s} {'speed-up':>9s}")
    ours_total = peer_total = 0.0
    for c in BENCHMARK:
        t = time.process_time()
        for s in range(1, 6):
            corrupt(x, c, s)
        ours = time.process_time() - t
        np.random.seed(0)
        t = time.process_time()
        for s in range(1, 6):
            for im in peer_x:
                imagecorruptions.corrupt(im, corruption_name=c, severity=s)
        peer = time.process_time() - t
        ours_rate = 5 * len(x) / ours
        peer_rate = 5 * len(peer_x) / peer
        ours_total += ours / (5 * len(x))
        peer_total += peer / (5 * len(peer_x))
        print(f"{c:18s} {ours_rate:15.0f} {peer_rate:11.0f} {ours_rate / peer_rate:9.1f}")
    ours_ips = len(BENCHMARK) / ours_total   # mean over corruptions of per-image time → images/s
    peer_ips = len(BENCHMARK) / peer_total
    print(f"{'all 15 x 5':18s} {ours_ips:15.0f} {peer_ips:11.0f}")
    print(f"(images per CPU-second over all 75 settings: probelib on {len(x)} images per setting, "
          f"imagecorruptions on {len(peer_x)} per setting; 32 px; the peer uses ImageNet parameters)")
    print(f"speed-up vs imagecorruptions: {ours_ips / peer_ips:.1f}")


if __name__ == "__main__":
    main()
