"""Determinism: with the same seed on the CPU, two runs give identical numbers (and another seed does not).

On the embedded ``mnist5kwo9`` at small sizes: training (TRADES with crop augmentation, the
loss that draws the most random numbers), nearest neighbours, attacks (PGD with a random start,
CW-L2, FMN-L2) and a small AdaBN shift grid (64 images corrupted on the fly, 2 corruptions,
1 severity, every arm).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from probelib.adabn import ARMS, AdaBNSettings, corrupt_on_the_fly, shift_grid
from probelib.attacks import cw_l2, fmn_l2, pgd
from probelib.data import as_tensors
from probelib.models import build_model
from probelib.ncg import load_splits
from probelib.neighbours import knn, nearest_neighbours
from probelib.store import Store
from probelib.training import default_config, train_or_load


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and spinning OpenMP threads crawl on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    return load_splits("mnist5kwo9")


def _cfg(seed: int = 0):
    return default_config("mnist5kwo9", "trades", eps=2.0, epochs=2, max_train=64, max_test=64, batch_size=32,
                          steps=2, augment="crop", seed=seed)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def model(splits, tmp_path_factory):
    """A small TRADES-trained CNN002 (also the first of the two training runs compared below)."""
    net, history = train_or_load(_cfg(), splits=splits, store=Store(tmp_path_factory.mktemp("run1")),
                                 device="cpu", progress=False)
    return net, history


def test_training_twice_gives_identical_weights_and_history(model, splits, tmp_path):
    first, first_history = model
    second, second_history = train_or_load(_cfg(), splits=splits, store=Store(tmp_path / "run2"), device="cpu",
                                           progress=False)
    assert _same_weights(first, second)
    columns = ["epoch", "lr", "loss", "train_acc", "test_acc"]
    pd.testing.assert_frame_equal(first_history[columns], second_history[columns], check_exact=True)
    other, _ = train_or_load(_cfg(seed=1), splits=splits, store=Store(tmp_path / "seed1"), device="cpu",
                             progress=False)
    assert not _same_weights(first, other)


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_neighbours_twice_give_identical_indices_and_distances(splits, metric, tmp_path):
    train_x, train_y = as_tensors(splits.train)
    ood_x, _ = as_tensors(splits.ood)
    runs = [knn(train_x, ood_x[:200], k=3, metric=metric, progress=False) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    cached = [nearest_neighbours(train_x, train_y, ood_x[:200], k=3, metric=metric, store=Store(tmp_path / s),
                                 progress=False) for s in ("a", "b")]
    for field in ("indices", "labels", "distances"):
        assert np.array_equal(getattr(cached[0], field), getattr(cached[1], field))
    assert np.array_equal(cached[0].indices, runs[0][1]) and np.array_equal(cached[0].distances, runs[0][0])


def _batch(splits, n: int = 8):
    x, y = as_tensors(splits.test)
    pick = torch.linspace(0, len(y) - 1, n).round().long()
    return x[pick], y[pick]


def test_pgd_with_the_same_generator_seed_is_identical(model, splits):
    net, _ = model
    x, y = _batch(splits)
    runs = [pgd(net, x, y, 2.0, steps=5, restarts=2, generator=torch.Generator().manual_seed(s)).x_adv
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])  # the random start does depend on the seed


@pytest.mark.parametrize("attack", ["cw_l2", "fmn_l2"])
def test_minimum_norm_attacks_twice_are_identical(model, splits, attack):
    net, _ = model
    x, y = _batch(splits)
    run = {"cw_l2": lambda: cw_l2(net, x, y, binary_search_steps=2, steps=10, progress=False),
           "fmn_l2": lambda: fmn_l2(net, x, y, steps=10, progress=False)}[attack]
    a, b = run(), run()
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.norms, b.norms) and torch.equal(a.success, b.success)


def test_adabn_shift_grid_twice_is_identical(splits):
    x, y = _batch(splits, 64)
    torch.manual_seed(0)
    net = build_model("WRN-10-1", splits.num_classes, in_channels=1, image_size=28, norm="batch")

    def grid(seed: int = 0, corruption_seed: int = 0) -> pd.DataFrame:
        return shift_grid(net, corrupt_on_the_fly(x, y, seed=corruption_seed), corruptions=["gaussian_noise", "fog"],
                          severities=[3], arms=ARMS, clean=(x, y), adabn=AdaBNSettings(seed=seed, device="cpu"))

    first, second = grid(), grid()
    assert len(first) == 3 * len(ARMS)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    # The augmentation seed (adabn+aug) and the corruption seed both change the numbers.
    assert not grid(seed=1).equals(first)
    assert not grid(corruption_seed=1).equals(first)
