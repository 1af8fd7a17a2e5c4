"""Minimum-norm L2 attacks vs foolbox 3.3 CW-L2 (NCG's settings) on natural, TRADES and AT models.

Trains three small CNNs on the embedded mnist5k (CPU, seeded; ``--arch CNN002`` for NCG's
network, ~10× slower): natural, TRADES(eps) and AT(eps) with probelib's losses. On each, picks
correctly classified test points and runs, on the same points:

- foolbox ``L2CarliniWagnerAttack(binary_search_steps=9, steps=10000, stepsize=1e-2,
  initial_const=1e-3, abort_early=True)`` — the paper's attack (NCG spec §5), the reference;
- probelib ``cw_l2`` (defaults: 9 × 1000 steps, finished by projections onto the linearised
  boundary), ``fmn_l2``, ``ddn_l2`` and ``best_of_l2`` ("fmn+ddn": per point the smaller of FMN
  and DDN, NCG's minimum-over-attacks rule); ``--paper-cw`` adds probelib ``cw_l2`` at the
  paper's 9 × 10 000 steps with foolbox's exact mechanics.

Prints one row per model × attack, then the per-model gap table (median radius / foolbox CW's
median radius on the same points; 1.000 = same), and ends with ``speed-up vs foolbox CW: <x>``
for the attack the robustness study uses (``--study-attack``, default "fmn+ddn", as notebook 10):
foolbox's total time / its total time over the three models.

    .venv/bin/python bench/attacks.py [--fb-points 8] [--epochs 2] [--max-train 2000] [--arch small]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from probelib._util import seed_everything  # noqa: E402
from probelib.attacks import best_of_l2, cw_l2, ddn_l2, fmn_l2  # noqa: E402
from probelib.metrics import predict_labels  # noqa: E402
from probelib.data import load_dataset  # noqa: E402
from probelib.models import build_model  # noqa: E402
from probelib.data import subsample  # noqa: E402
from probelib.training import TrainConfig, train  # noqa: E402

PAPER_CW = dict(binary_search_steps=9, steps=10000, stepsize=1e-2, initial_const=1e-3, abort_early=True)
METHODS = ("natural", "trades", "at")


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


def train_model(arch: str, method: str, eps: float, epochs: int, max_train: int, splits, seed: int = 0):
    """A ``method`` model (natural / TRADES(eps) / AT(eps), probelib's losses) on ``max_train`` images."""
    seed_everything(seed)
    model = SmallCNN(splits.num_classes) if arch == "small" else build_model(arch, splits.num_classes)
    data = SimpleNamespace(train=subsample(splits.train, max_train, seed=seed), test=subsample(splits.test, 200, seed=seed),
                           num_classes=splits.num_classes)
    cfg = TrainConfig(method=method, eps=None if method == "natural" else eps, epochs=epochs, optimizer="adam",
                      lr=1e-3, schedule="constant", seed=seed)
    model, _ = train(model, data, cfg, device="cpu", progress=False)
    return model.eval()


def foolbox_cw(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import foolbox as fb
    attack = fb.attacks.L2CarliniWagnerAttack(**PAPER_CW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    success = torch.from_numpy(predict_labels(model, raw, store=False)) != y  # foolbox marks failures only by returning zeros
    norms = (raw - x).flatten(1).norm(dim=1)
    return success, torch.where(success, norms, torch.full_like(norms, float("inf")))


def measure(counting: Counting, fn, x, y):
    """Run ``fn(counting, x, y)``; return its output, wall time and model evaluations per point."""
    counting.rows = 0
    start = time.perf_counter()
    out = fn(counting, x, y)
    return out, time.perf_counter() - start, counting.rows / len(x)


def attacks(paper_cw: bool) -> dict:
    runs = {
        "cw_l2 (default)": lambda m, a, b: cw_l2(m, a, b, progress=False),
        "fmn": lambda m, a, b: fmn_l2(m, a, b, progress=False),
        "ddn": lambda m, a, b: ddn_l2(m, a, b, progress=False),
        "fmn+ddn": lambda m, a, b: best_of_l2(m, a, b, progress=False),
    }
    if paper_cw:
        runs["cw_l2 (exact_foolbox, paper settings)"] = lambda m, a, b: cw_l2(
            m, a, b, binary_search_steps=9, steps=10000, lr=1e-2, initial_const=1e-3, abort_early=True,
            exact_foolbox=True, progress=False)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small", help="'small' (default) or a probelib arch, e.g. CNN002")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: natural,trades,at")
    parser.add_argument("--eps", type=float, default=2.0, help="L2 budget of TRADES and AT (the paper's 2)")
    parser.add_argument("--fb-points", type=int, default=8, help="points per model (foolbox is the slow part)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=2000, help="training images per model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--paper-cw", action="store_true",
                        help="also run probelib cw_l2 at the paper's 9 × 10 000 steps (as slow as foolbox)")
    parser.add_argument("--study-attack", default="fmn+ddn",
                        help="attack whose speed-up is the last line (the robustness notebook's attack)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    splits = load_dataset("mnist5k")
    runs = attacks(args.paper_cw)
    if args.study_attack not in runs:
        raise SystemExit(f"--study-attack must be one of {sorted(runs)}, got {args.study_attack!r}")
    rows = []
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        model = train_model(args.arch, method, args.eps, args.epochs, args.max_train, splits)
        correct = predict_labels(model, splits.test.x, store=False) == splits.test.y.numpy()
        label = method if method == "natural" else f"{method}({args.eps:g})"
        print(f"{label}: {args.arch} CNN, {args.epochs} epochs on {args.max_train} mnist5k images in "
              f"{time.perf_counter() - t0:.0f} s, test accuracy {correct.mean():.3f}", flush=True)
        rng = np.random.default_rng(0)
        pick = torch.as_tensor(rng.choice(np.flatnonzero(correct), size=args.fb_points, replace=False))
        x, y = splits.test.x[pick], splits.test.y[pick]
        counting = Counting(model).eval()
        (fb_success, fb_norms), t_fb, fb_evals = measure(counting, foolbox_cw, x, y)
        fb_median = fb_norms[fb_success].median().item()
        rows.append({"model": label, "attack": "foolbox CW (paper settings)", "success": int(fb_success.sum()),
                     "same success": True, "median L2": fb_median, "median / CW": 1.0,
                     "per-point ratio range": "1–1", "evals/pt": fb_evals, "time s": t_fb, "speed-up": 1.0})
        print(f"  foolbox CW on {args.fb_points} points: {t_fb:.0f} s", flush=True)
        for name, run in runs.items():
            res, t, evals = measure(counting, run, x, y)
            both = res.success & fb_success
            ratio = (res.norms[both] / fb_norms[both]).numpy()
            rows.append({"model": label, "attack": name, "success": int(res.success.sum()),
                         "same success": bool((res.success == fb_success).all()),
                         "median L2": res.norms[res.success].median().item(),
                         "median / CW": res.norms[both].median().item() / fb_norms[both].median().item(),
                         "per-point ratio range": f"{ratio.min():.3f}–{ratio.max():.3f}" if len(ratio) else "-",
                         "evals/pt": evals, "time s": t, "speed-up": t_fb / t})
    table = pd.DataFrame(rows).set_index(["model", "attack"])
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table)
        gaps = table["median / CW"].unstack("model").drop(index="foolbox CW (paper settings)")
        print("\nper-model gap: median radius / foolbox CW's median radius on the same points "
              "(1 = same; within 1 %: 0.99–1.01)")
        print(gaps.round(3))
    worst = (gaps.loc[args.study_attack] - 1).abs().max()
    print(f"{args.study_attack}: largest |median / CW − 1| over the models: {worst:.3f}. Total bench time "
          f"{time.perf_counter() - start:.0f} s; speed-up = foolbox's time / the attack's on the same points; "
          f"evals/pt = model evaluations per point, a load-independent measure of work.")
    fb_time = table.xs("foolbox CW (paper settings)", level="attack")["time s"].sum()
    study_time = table.xs(args.study_attack, level="attack")["time s"].sum()
    print(f"speed-up vs foolbox CW: {fb_time / study_time:.1f}")


if __name__ == "__main__":
    main()
