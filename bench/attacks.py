"""Minimum-norm L2 attacks: probelib vs foolbox 3.3 CW-L2 with NCG's settings, same points, one run.

Trains a small CNN (default; ``--arch CNN002`` for NCG's network, ~10× slower per step) on the
embedded mnist5k for a few epochs (CPU, seeded), picks correctly classified test points and runs:

- foolbox ``L2CarliniWagnerAttack(binary_search_steps=9, steps=10000, stepsize=1e-2,
  initial_const=1e-3, abort_early=True)`` — the paper's attack (NCG spec §5);
- probelib ``cw_l2`` with its defaults (and with the paper's settings under ``--paper-cw``),
  ``fmn_l2``, ``ddn_l2`` and ``best_of_l2`` (per point the smaller of FMN and DDN, "fmn+ddn").

Foolbox at 9 × 10 000 steps takes minutes per handful of points on CPU, so it runs on the first
``--fb-points`` points only; every probelib attack runs on exactly those points too, as one
batch (the headline comparison), and the fast ones also on all ``--points`` points. Prints a
table and ends with ``speed-up vs foolbox CW: <x>`` for the attack the robustness study uses
(``--study-attack``, default ddn, as notebook 10): foolbox's time / its time on the same points.

    .venv/bin/python bench/attacks.py [--points 32] [--fb-points 8] [--epochs 3] [--arch small]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from probelib._util import seed_everything  # noqa: E402
from probelib.attacks import best_of_l2, cw_l2, ddn_l2, fmn_l2, predict  # noqa: E402
from probelib.data import load_dataset  # noqa: E402
from probelib.models import build_model  # noqa: E402

PAPER_CW = dict(binary_search_steps=9, steps=10000, stepsize=1e-2, initial_const=1e-3, abort_early=True)


class SmallCNN(torch.nn.Module):
    """conv 16 (5×5, stride 2), conv 32 (5×5, stride 2), fc 100, fc C: ~10× cheaper than CNN002."""

    def __init__(self, num_classes: int):
        super().__init__()
        nn = torch.nn
        self.net = nn.Sequential(nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Counting(torch.nn.Module):
    """Wraps a model and counts the images it has been run on (forward passes × batch rows)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def train_cnn(arch: str, epochs: int, seed: int = 0):
    gen = seed_everything(seed)
    splits = load_dataset("mnist5k")
    model = SmallCNN(splits.num_classes) if arch == "small" else build_model(arch, splits.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = splits.train.x, splits.train.y
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, splits


def foolbox_cw(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import foolbox as fb
    attack = fb.attacks.L2CarliniWagnerAttack(**PAPER_CW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    success = predict(model, raw) != y  # foolbox marks failures only by returning zeros
    norms = (raw - x).flatten(1).norm(dim=1)
    return success, torch.where(success, norms, torch.full_like(norms, float("inf")))


def measure(counting: Counting, fn, model, x, y):
    """Run ``fn(model, x, y)``; return its output, wall time and model evaluations per point."""
    counting.rows = 0
    start = time.perf_counter()
    out = fn(model, x, y)
    return out, time.perf_counter() - start, counting.rows / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small", help="'small' (default) or a probelib arch, e.g. CNN002")
    parser.add_argument("--points", type=int, default=32, help="points for the fast attacks")
    parser.add_argument("--fb-points", type=int, default=8, help="points for foolbox (the first ones)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--paper-cw", action="store_true",
                        help="also run probelib cw_l2 at the paper's 9 × 10 000 steps (as slow as foolbox)")
    parser.add_argument("--study-attack", default="ddn", help="row whose speed-up is the last line (the robustness notebook's attack)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model, splits = train_cnn(args.arch, args.epochs)
    correct = (predict(model, splits.test.x) == splits.test.y).numpy()
    print(f"{args.arch} CNN on mnist5k, {args.epochs} epochs in {time.perf_counter() - start:.0f} s: "
          f"test accuracy {correct.mean():.3f}")
    rng = np.random.default_rng(0)
    pick = torch.as_tensor(rng.choice(np.flatnonzero(correct), size=args.points, replace=False))
    x, y = splits.test.x[pick], splits.test.y[pick]
    k = min(args.fb_points, args.points)
    xs, ys = x[:k], y[:k]
    counting = Counting(model).eval()

    (fb_success, fb_norms), t_fb, fb_evals = measure(counting, foolbox_cw, counting, xs, ys)
    fb_median = fb_norms[fb_success].median().item()
    rows = [{"attack": "foolbox CW (paper settings)", "points": k, "success": int(fb_success.sum()),
             "same success": True, "median L2": fb_median, "vs foolbox": 1.0, "evals/pt": fb_evals,
             "time s": t_fb, "s/pt": t_fb / k, "speed-up": 1.0}]
    print(f"foolbox CW on {k} points: {t_fb:.0f} s", flush=True)

    attacks = {
        "cw_l2 (default, 1000 steps)": lambda m, a, b: cw_l2(m, a, b, progress=False),
        "fmn_l2 (default, 200 steps)": lambda m, a, b: fmn_l2(m, a, b, progress=False),
        "fmn_l2 (100 steps)": lambda m, a, b: fmn_l2(m, a, b, steps=100, progress=False),
        "ddn_l2 (default, 200 steps)": lambda m, a, b: ddn_l2(m, a, b, progress=False),
        "fmn+ddn (best_of_l2, 200 steps each)": lambda m, a, b: best_of_l2(m, a, b, progress=False),
    }
    if args.paper_cw:
        attacks = {"cw_l2 (paper settings)": lambda m, a, b: cw_l2(
            m, a, b, binary_search_steps=9, steps=10000, lr=1e-2, initial_const=1e-3,
            abort_early=True, progress=False), **attacks}
    for name, run in attacks.items():
        res, t, evals = measure(counting, run, counting, xs, ys)
        med = res.norms[res.success].median().item()
        rows.append({"attack": name, "points": k, "success": int(res.success.sum()),
                     "same success": bool((res.success == fb_success).all()), "median L2": med,
                     "vs foolbox": med / fb_median, "evals/pt": evals, "time s": t, "s/pt": t / k,
                     "speed-up": t_fb / t})
        if args.points > k and not name.startswith("cw_l2"):
            res_all, t_all, evals = measure(counting, run, counting, x, y)
            rows.append({"attack": f"  same, all {args.points} points", "points": args.points,
                         "success": int(res_all.success.sum()), "same success": None,
                         "median L2": res_all.norms[res_all.success].median().item(), "vs foolbox": None,
                         "evals/pt": evals, "time s": t_all, "s/pt": t_all / args.points,
                         "speed-up": (t_fb / k) / (t_all / args.points)})
    table = pd.DataFrame(rows).set_index("attack")
    with pd.option_context("display.width", 250, "display.max_columns", 20,
                           "display.float_format", "{:.4g}".format):
        print(table)
    print(f"speed-up = foolbox's time on the same {k} points (one batch) / the attack's; 'all points' rows "
          f"compare time per point (a larger batch favours them); evals/pt = model evaluations per point, "
          f"a load-independent measure of work. Total bench time {time.perf_counter() - start:.0f} s.")
    study = table.loc[[i for i in table.index if i.startswith(args.study_attack)][0]]
    print(f"speed-up vs foolbox CW: {study['speed-up']:.1f}")


if __name__ == "__main__":
    main()
