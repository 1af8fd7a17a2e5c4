"""probelib.neighbours: exact k-NN against a float64 brute force, near-ties, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probelib.neighbours import brute_force_knn, knn, nearest_neighbours
from probelib.store import Store


def _numpy_brute(ref: np.ndarray, qry: np.ndarray, k: int, metric: str):
    """An independent float64 brute force in plain numpy (ties -> lower index)."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    qry = qry.reshape(len(qry), -1).astype(np.float64)
    diff = qry[:, None, :] - ref[None, :, :]
    d = {"l2": np.sqrt((diff ** 2).sum(-1)), "l1": np.abs(diff).sum(-1), "linf": np.abs(diff).max(-1)}[metric]
    idx = np.stack([np.lexsort((np.arange(len(ref)), row))[:k] for row in d])
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("metric", ["l2", "l1", "linf"])
@pytest.mark.parametrize("backend", ["auto", "faiss"])
def test_knn_equals_float64_brute_force(metric, backend):
    rng = np.random.default_rng(0)
    ref = rng.random((500, 1, 6, 6), dtype=np.float32)
    qry = rng.random((60, 1, 6, 6), dtype=np.float32)
    d, i = knn(torch.from_numpy(ref), qry, k=4, metric=metric, backend=backend, progress=False)
    bd, bi = _numpy_brute(ref, qry, 4, metric)
    assert d.shape == i.shape == (60, 4)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-12)
    assert (np.diff(d, axis=1) >= 0).all()


def _near_tie_data(n_queries: int = 40, d: int = 784, gap: float = 2e-6, seed: int = 1):
    """Each query has two reference points at squared distances s and s(1+gap), the nearer one
    placed at the HIGHER index, inside a large-norm cloud: float32 BLAS error (~1e-4 of the
    norms) is far above the gap, so a plain float32 search flips some of them."""
    rng = np.random.default_rng(seed)
    qry = 0.3 + 0.4 * rng.random((n_queries, d))
    ref = [0.2 + 0.6 * rng.random((200, d))]  # distractors, far away
    for q in qry:
        u = rng.standard_normal(d)
        u *= 0.5 / np.linalg.norm(u)
        v = rng.standard_normal(d)
        v -= v @ u / (u @ u) * u
        v *= np.linalg.norm(u) / np.linalg.norm(v)  # |v| = |u|
        far = q + u * np.sqrt(1 + gap)
        near = q + v
        ref.append(np.stack([far, near]))
    ref = np.concatenate(ref)
    # store in float32, then the float64 truth is computed from the float32 values themselves
    return ref.astype(np.float32), qry.astype(np.float32)


def test_knn_exact_on_near_ties_where_float32_flips():
    ref, qry = _near_tie_data()
    d, i = knn(ref, qry, k=2, progress=False)
    bd, bi = _numpy_brute(ref, qry, 2, "l2")
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-12)
    # the test data really is hard: a float32 expansion |q|^2+|r|^2-2q.r flips some 1-NNs
    r32, q32 = ref.astype(np.float32), qry.astype(np.float32)
    approx = (q32 ** 2).sum(1)[:, None] + (r32 ** 2).sum(1)[None] - 2 * q32 @ r32.T
    assert (approx.argmin(1) != bi[:, 0]).any()


def test_knn_exact_ties_choose_lower_index_and_l1_linf_near_ties():
    rng = np.random.default_rng(3)
    base = rng.random((50, 20)).astype(np.float32)
    ref = np.concatenate([base, base[::-1]])  # every point twice
    qry = base[:10] + np.float32(1e-3)
    for metric in ("l2", "l1", "linf"):
        d, i = knn(ref, qry, k=3, metric=metric, progress=False)
        bd, bi = _numpy_brute(ref, qry, 3, metric)
        np.testing.assert_array_equal(i, bi)
        assert (i[:, 0] < 50).all() and (i[:, 1] == 99 - i[:, 0]).all()


def test_knn_batches_and_fallback_agree():
    rng = np.random.default_rng(4)
    ref = rng.random((700, 30)).astype(np.float32)
    qry = rng.random((90, 30)).astype(np.float32)
    a = knn(ref, qry, k=5, query_batch=7, reference_batch=64, progress=False)
    b = knn(ref, qry, k=5, extra_candidates=0, progress=False)  # certification forces fallbacks
    c = brute_force_knn(ref, qry, k=5)
    for got in (a, b):
        np.testing.assert_array_equal(got[1], c[1])
        np.testing.assert_allclose(got[0], c[0], rtol=1e-12)


def test_knn_rejects_bad_input():
    ref = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="metric"):
        knn(ref, ref, metric="l3")
    with pytest.raises(ValueError, match="k must be"):
        knn(ref, ref, k=11)
    with pytest.raises(ValueError, match="values per point"):
        knn(ref, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        knn(ref, np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="torch"):
        knn(ref, ref, metric="l1", backend="torch")


class _TinyBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.fc = torch.nn.Linear(2 * 4 * 4, 3)

    def features(self, x):
        return torch.relu(self.conv(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def test_nearest_neighbours_labels_cache_and_keys(tmp_path):
    store = Store(tmp_path)
    g = torch.Generator().manual_seed(0)
    rx, ry = torch.rand(80, 1, 6, 6, generator=g), torch.randint(0, 3, (80,), generator=g)
    qx = torch.rand(15, 1, 6, 6, generator=g)
    nn = nearest_neighbours(rx, ry, qx, k=2, store=store, progress=False)
    bd, bi = _numpy_brute(rx.numpy(), qx.numpy(), 2, "l2")
    np.testing.assert_array_equal(nn.indices, bi)
    np.testing.assert_array_equal(nn.label, ry.numpy()[bi[:, 0]])
    np.testing.assert_allclose(nn.distance, bd[:, 0], rtol=1e-12)
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 1
    again = nearest_neighbours(rx, ry, qx, k=2, store=store, progress=False)
    np.testing.assert_array_equal(again.indices, nn.indices)
    assert sorted(tmp_path.rglob("*.npz")) == files  # reused, not recomputed
    qx2 = qx.clone()
    qx2[0, 0, 0, 0] = 1 - qx2[0, 0, 0, 0]  # a changed query set (still in [0, 1]) must not reuse the cache
    nearest_neighbours(rx, ry, qx2, k=2, store=store, progress=False)
    assert len(list(tmp_path.rglob("*.npz"))) == 2

    # ImageNet-style normalisation changes L2 geometry per channel
    cx, cq = torch.rand(40, 3, 4, 4, generator=g), torch.rand(5, 3, 4, 4, generator=g)
    nrm = nearest_neighbours(cx, torch.zeros(40, dtype=torch.long), cq, normalise="imagenet", store=False, progress=False)
    m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    np.testing.assert_array_equal(nrm.index, _numpy_brute(((cx - m) / s).numpy(), ((cq - m) / s).numpy(), 1, "l2")[1][:, 0])

    # feature space: neighbours in model.features, cache keyed by the weights
    model = _TinyBackbone()
    feat = nearest_neighbours(rx, ry, qx, space="feature", model=model, store=store, progress=False)
    with torch.no_grad():
        fr, fq = model.features(rx), model.features(qx)
    np.testing.assert_array_equal(feat.index, _numpy_brute(fr.numpy(), fq.numpy(), 1, "l2")[1][:, 0])
    n_before = len(list(tmp_path.rglob("*.npz")))
    with torch.no_grad():
        model.conv.weight.mul_(-1)
    nearest_neighbours(rx, ry, qx, space="feature", model=model, store=store, progress=False)
    assert len(list(tmp_path.rglob("*.npz"))) == n_before + 1
    with pytest.raises(ValueError, match="model"):
        nearest_neighbours(rx, ry, qx, space="feature", store=False)


def test_knn_float64_input_with_large_offset():
    # float32 spacing at 1000 is 6e-5: the 1e-3 structure survives only if the data are centred
    # in float64 before the float32 pass
    rng = np.random.default_rng(5)
    ref = 1000.0 + rng.random((300, 16)) * 1e-3
    qry = 1000.0 + rng.random((25, 16)) * 1e-3
    d, i = knn(ref, qry, k=2, progress=False)
    bd, bi = _numpy_brute(ref, qry, 2, "l2")
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-9)


@pytest.mark.parametrize("gemm", ["torch", "numpy"])
def test_knn_both_cpu_gemm_backends_are_exact(gemm, monkeypatch):
    import probelib.neighbours as nb

    monkeypatch.setattr(nb, "_CALIBRATE_ABOVE_FLOPS", 0)
    monkeypatch.setattr(nb, "_CPU_GEMM", gemm)
    ref, qry = _near_tie_data(n_queries=15)
    d, i = knn(ref, qry, k=2, reference_batch=100, progress=False)
    bd, bi = _numpy_brute(ref, qry, 2, "l2")
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-12)


def test_cpu_gemm_calibration_picks_a_backend(monkeypatch):
    import probelib.neighbours as nb

    monkeypatch.setattr(nb, "_CPU_GEMM", None)
    assert nb._cpu_gemm_backend(1.0) == "torch"  # small jobs never calibrate
    assert nb._CPU_GEMM is None
    assert nb._cpu_gemm_backend(1e12) in ("torch", "numpy")
    assert nb._CPU_GEMM in ("torch", "numpy")


def test_chunked_row_topk_equals_topk_values_with_ties():
    from probelib.neighbours import _row_topk
    g = torch.Generator().manual_seed(0)
    for part in (torch.randn(7, 5000, generator=g),
                 torch.randint(0, 5, (7, 5000), generator=g).float(),   # massive ties
                 torch.randn(3, 64 * 40, generator=g)):                  # no ragged tail
        for k in (1, 9):
            v, i = _row_topk(part, k)
            ref = part.topk(k, dim=1).values
            assert torch.equal(v.sort(1).values, ref.sort(1).values)
            assert torch.equal(part.gather(1, i), v) and all(len(set(r.tolist())) == k for r in i)
