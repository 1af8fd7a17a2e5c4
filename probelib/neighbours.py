"""Exact nearest neighbours (L2, L1, Linf) in pixel space or in a model's representation.

:func:`knn` is exact: a fast float32 pass (a blocked torch matmul for L2, a faiss flat index
for L1/Linf) proposes ``k + extra`` candidates per query, and the candidates are re-ranked in
float64. A rigorous bound on the float32 error then checks, per query, that no point outside
the candidates can beat the k-th re-ranked one; the few queries that fail the check (exact or
near ties) are answered by a float64 brute force. The result therefore always equals a float64
brute force, ties broken by the lower reference index.

:func:`nearest_neighbours` adds labels, the optional ImageNet normalisation of NCG spec §1.2,
the feature space of a model (§1.3) and caching in the artifact store keyed by the content of
everything the answer depends on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from probelib._util import check_choice, check_images_or_features, check_labels, check_name, default_device
from probelib.models import extract_features
from probelib.store import Store, default_store, fingerprint

__all__ = ["METRICS", "IMAGENET_MEAN", "IMAGENET_STD", "knn", "brute_force_knn", "Neighbours",
           "nearest_neighbours"]

METRICS = ("l2", "l1", "linf")
BACKENDS = ("auto", "torch", "faiss")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_U32 = 2.0 ** -24  # unit round-off of float32


# ----------------------------------------------------------------------------- inputs
def _as_rows(x, name: str) -> torch.Tensor:
    """``x`` (tensor or array of any shape, first axis = points) as a 2-D float32 CPU/any tensor."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have a first axis of points, got a scalar")
    x = x.detach().reshape(len(x), -1)
    if not torch.is_floating_point(x):
        x = x.float()
    return x


def _check_finite(x: torch.Tensor, name: str) -> None:
    # a float32 sum is finite when every value is, unless huge values overflow: then look closer
    if x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite values; nearest neighbours need finite inputs")


# ----------------------------------------------------------------------------- exact float64 pieces
def _exact_dist(q: torch.Tensor, r: torch.Tensor, metric: str) -> torch.Tensor:
    """Float64 distances between q (n, d) and r (n, m, d) row-wise -> (n, m); squared for L2."""
    diff = r.double() - q.double()[:, None, :]
    if metric == "l2":
        return (diff * diff).sum(-1)
    if metric == "l1":
        return diff.abs().sum(-1)
    return diff.abs().amax(-1)


def _rank_rows(dist: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (distance, index) and keep k: stable sort on index, then on distance."""
    o = torch.argsort(idx, dim=1, stable=True)
    dist, idx = dist.gather(1, o), idx.gather(1, o)
    o = torch.argsort(dist, dim=1, stable=True)[:, :k]
    return dist.gather(1, o), idx.gather(1, o)


def _brute_raw(ref: torch.Tensor, qry: torch.Tensor, k: int, metric: str,
               block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Float64 brute force returning squared L2 (or L1/Linf) distances; ties -> lower index."""
    ref64 = ref.cpu().double()
    dists = np.empty((len(qry), k))
    idxs = np.empty((len(qry), k), dtype=np.int64)
    for row, q in enumerate(qry.cpu().double()):
        d = torch.cat([_exact_dist(q[None], ref64[None, a:a + block], metric)[0]
                       for a in range(0, len(ref64), block)]).numpy()
        o = np.lexsort((np.arange(len(d)), d))[:k]
        dists[row], idxs[row] = d[o], o
    return dists, idxs


def brute_force_knn(reference, queries, k: int = 1, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    """Float64 brute force (the reference answer :func:`knn` must equal); ties -> lower index."""
    check_choice("metric", metric, METRICS)
    ref, qry = _as_rows(reference, "reference"), _as_rows(queries, "queries")
    d, i = _brute_raw(ref, qry, k, metric)
    return (np.sqrt(d) if metric == "l2" else d), i


# ----------------------------------------------------------------------------- candidate passes
def _center(x: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """A centre for the data (mean of the first rows) in the data's precision (at least float32):
    it only reduces float32 cancellation; exactness never depends on it, since the error bound
    uses the centred norms. Float64 data are centred before they are rounded to float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x[:rows].to(dtype).mean(0)


def _centred_into(x: torch.Tensor, center: torch.Tensor, out: torch.Tensor) -> None:
    """out (float32) = x - center, subtracting in float64 when the centre is float64."""
    x = x.to(out.device)
    if center.dtype == torch.float64:
        out.copy_(x.double() - center)
    else:
        torch.sub(x, center, out=out)


_CPU_GEMM: str | None = None  # "torch" (its BLAS, e.g. MKL) or "numpy" (OpenBLAS), chosen once
_CALIBRATE_ABOVE_FLOPS = 1e11


def _cpu_gemm_backend(flops: float) -> str:
    """The faster float32 GEMM on this CPU for a large job: torch's BLAS or numpy's.

    They differ by 10-20 % depending on the processor (MKL is slow on some AMD parts; an
    OPENBLAS_CORETYPE override slows OpenBLAS), so large jobs (> 1e11 flops) time both once per
    process on a 512×2048×2048 product (~0.2 s) and keep the faster; small jobs use torch.
    """
    global _CPU_GEMM
    if flops < _CALIBRATE_ABOVE_FLOPS:
        return "torch"
    if _CPU_GEMM is None:
        import time

        g = torch.Generator().manual_seed(0)
        a, b = torch.rand(512, 2048, generator=g), torch.rand(2048, 2048, generator=g)
        o = torch.empty(512, 2048)
        an, bn, on = a.numpy(), b.numpy(), o.numpy()
        runs = {"torch": lambda: torch.mm(a, b.T, out=o), "numpy": lambda: np.matmul(an, bn.T, out=on)}
        best = {}
        for name, run in runs.items():
            run()
            times = []
            for _ in range(3):
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            best[name] = min(times)
        _CPU_GEMM = min(best, key=best.get)
    return _CPU_GEMM


def _row_topk(part: torch.Tensor, k: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row (unsorted) and their columns, as ``topk`` gives them,
    about twice as fast on wide rows: the k largest values lie in the k chunks (of ``chunk``
    columns) with the largest maxima, so only those chunks (and the ragged tail) are searched."""
    n, m = part.shape
    n_chunks = m // chunk
    if n_chunks < 4 * k:
        return part.topk(k, dim=1, largest=True, sorted=False)
    maxima = part[:, :n_chunks * chunk].view(n, n_chunks, chunk).amax(2)
    best = maxima.topk(k, dim=1, largest=True, sorted=False).indices
    cols = (best[:, :, None] * chunk + torch.arange(chunk, device=part.device)).view(n, -1)
    if n_chunks * chunk < m:
        tail = torch.arange(n_chunks * chunk, m, device=part.device)
        cols = torch.cat([cols, tail.expand(n, -1)], 1)
    v, j = part.gather(1, cols).topk(k, dim=1, largest=True, sorted=False)
    return v, cols.gather(1, j)


def _torch_l2_candidates(ref: torch.Tensor, qry: torch.Tensor, kc: int, device: torch.device,
                         query_batch: int, reference_batch: int, progress: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate squared L2 candidates via a blocked float32 matmul on centred data.

    Each reference block is centred and augmented with a column |r|²/2, each query with a
    column −1 (zero padding keeps rows 16-aligned), so a single GEMM yields q·r − |r|²/2, whose
    largest values are the nearest points (d² = |q|² − 2(q·r − |r|²/2)); no extra pass over the
    distance block is needed before the top-k.

    Returns (approximate d² of the kc candidates, their indices, error bound per query): any point
    outside the candidates has approximate d² >= the last candidate's, and every approximate d²
    is within the bound of the true one.
    """
    nq, d = qry.shape
    nr = len(ref)
    dp = -(-(d + 1) // 16) * 16
    center = _center(ref).to(device)
    qb_size, rb_size = min(query_batch, nq), min(reference_batch, nr)
    best_v = torch.full((nq, kc), -math.inf, device=device)
    best_i = torch.full((nq, kc), -1, dtype=torch.long, device=device)
    q_norm = torch.empty(nq, dtype=torch.float64, device=device)
    r_norm_max = 0.0
    r_aug = torch.empty(rb_size, dp, device=device)
    r_aug[:, d + 1:] = 0.0
    q_aug = torch.empty(qb_size, dp, device=device)
    q_aug[:, d + 1:] = 0.0
    q_aug[:, d] = -1.0
    out = torch.empty(qb_size * rb_size, device=device)
    gemm = _cpu_gemm_backend(2.0 * nq * nr * dp) if device.type == "cpu" else "torch"
    bar = tqdm(total=math.ceil(nr / rb_size) * math.ceil(nq / qb_size), desc="knn (l2)", leave=False,
               disable=not progress)
    for a in range(0, nr, rb_size):
        nrb = min(rb_size, nr - a)
        rb = r_aug[:nrb]
        _centred_into(ref[a:a + nrb], center, rb[:, :d])
        rn = torch.linalg.vector_norm(rb[:, :d], dim=1).double().pow(2)
        r_norm_max = max(r_norm_max, float(rn.max()))
        if not math.isfinite(r_norm_max):
            raise ValueError("reference holds NaN or infinite values; nearest neighbours need finite inputs")
        rb[:, d] = (rn / 2).float()
        for b in range(0, nq, qb_size):
            nqb = min(qb_size, nq - b)
            qb = q_aug[:nqb]
            if a == 0 or nq > qb_size:  # a single query block stays centred in q_aug
                _centred_into(qry[b:b + nqb], center, qb[:, :d])
            if a == 0:
                q_norm[b:b + nqb] = torch.linalg.vector_norm(qb[:, :d], dim=1).double().pow(2)
                if not bool(torch.isfinite(q_norm[b:b + nqb]).all()):
                    raise ValueError("queries hold NaN or infinite values; nearest neighbours need finite inputs")
            part = out[:nqb * nrb].view(nqb, nrb)
            if gemm == "numpy":  # q.r - |r|^2/2 : larger is nearer
                np.matmul(qb.numpy(), rb.numpy().T, out=part.numpy())
            else:
                torch.mm(qb, rb.T, out=part)
            v, i = _row_topk(part, min(kc, nrb))
            v = torch.cat([best_v[b:b + nqb], v], 1)
            i = torch.cat([best_i[b:b + nqb], i + a], 1)
            v, o = v.topk(kc, dim=1, largest=True, sorted=True)
            best_v[b:b + nqb], best_i[b:b + nqb] = v, i.gather(1, o)
            bar.update(1)
    bar.close()
    approx = q_norm[:, None] - 2 * best_v.double()
    # |fl(sum of d+1 products) - exact| <= gamma_{d+1} (|q||r| + |r|^2/2) <= gamma (|q|^2 + |r|^2),
    # doubled for the factor 2; the float32 norms add gamma (|q|^2 + |r|^2) at most: bound generously.
    gamma = (d + 1) * _U32 / (1 - (d + 1) * _U32)
    bound = (3 * gamma + 8 * _U32) * (q_norm + r_norm_max) * 1.01 + 1e-30
    return approx, best_i, bound


def _faiss_candidates(ref: torch.Tensor, qry: torch.Tensor, kc: int, metric: str,
                      query_batch: int, reference_batch: int, progress: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates from faiss flat indexes (one per reference block), merged; see the torch path."""
    import faiss

    nq, d = qry.shape
    nr = len(ref)
    faiss_metric = {"l2": faiss.METRIC_L2, "l1": faiss.METRIC_L1, "linf": faiss.METRIC_Linf}[metric]
    best_v = torch.full((nq, kc), math.inf, dtype=torch.float64)
    best_i = torch.full((nq, kc), -1, dtype=torch.long)
    q_np = qry.cpu().float().numpy()
    r_norm_max = 0.0
    bar = tqdm(total=math.ceil(nr / reference_batch) * math.ceil(nq / query_batch),
               desc=f"knn ({metric}, faiss)", leave=False, disable=not progress)
    for a in range(0, nr, reference_batch):
        rb = np.ascontiguousarray(ref[a:a + reference_batch].cpu().float().numpy())
        if metric == "l2":
            r_norm_max = max(r_norm_max, float((rb.astype(np.float64) ** 2).sum(1).max()))
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlat(d, faiss_metric)
        index.add(rb)
        take = min(kc, len(rb))
        for b in range(0, nq, query_batch):
            v, i = index.search(np.ascontiguousarray(q_np[b:b + query_batch]), take)
            v = torch.cat([best_v[b:b + len(v)], torch.from_numpy(v).double()], 1)
            i = torch.cat([best_i[b:b + len(i)], torch.from_numpy(i).long() + a], 1)
            v, o = v.topk(kc, dim=1, largest=False, sorted=True)
            best_v[b:b + len(v)], best_i[b:b + len(v)] = v, i.gather(1, o)
            bar.update(1)
        del index
    bar.close()
    if metric == "l2":  # faiss's BLAS path: |q|^2 + |r|^2 - 2 q.r in float32, uncentred; the norms
        # (float32 sums) and the dot product each err by at most gamma_d times their magnitudes
        q_norm = torch.from_numpy((q_np.astype(np.float64) ** 2).sum(1))
        gamma = d * _U32 / (1 - d * _U32)
        bound = (3 * gamma + 8 * _U32) * (q_norm + r_norm_max) * 1.01 + 1e-30
    else:  # direct sums (L1) or maxima (Linf) of |q_i - r_i|: a relative error
        rel = (d + 2) * _U32 * 1.01 if metric == "l1" else 2 * _U32
        bound = rel * best_v[:, -1].clamp_min(0) + 1e-30
    return best_v, best_i, bound


# ----------------------------------------------------------------------------- the algorithm
def knn(reference, queries, k: int = 1, metric: str = "l2", *, extra_candidates: int = 8,
        backend: str = "auto", device: str | torch.device | None = "cpu",
        query_batch: int = 4096, reference_batch: int = 16384,
        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query among ``reference``.

    Three steps (module docstring): (1) a float32 pass proposes ``k + extra_candidates``
    candidates per query with a bound on its rounding error; (2) the candidates that can be
    among the k nearest are re-ranked in float64; (3) a query whose k-th re-ranked distance is
    not certified below every non-candidate's is answered by a float64 brute force.

    Args:
        reference: tensor or array, one point per row of its first axis (any trailing shape).
        queries: same, with the same number of values per point.
        k: neighbours per query (1 <= k <= len(reference)).
        metric: ``"l2"``, ``"l1"`` or ``"linf"``.
        extra_candidates: candidates re-ranked in float64 beyond k (exactness does not
            depend on it: queries whose candidates cannot be certified fall back to float64).
        backend: ``"torch"`` (blocked matmul, L2 only), ``"faiss"`` (flat index), or
            ``"auto"`` (torch for L2, faiss for L1/Linf).
        device: device for the torch L2 pass (CPU by default; ``None`` = automatic).
        query_batch, reference_batch: block sizes bounding memory.

    Returns:
        ``(distances, indices)``: float64 and int64 numpy arrays of shape (n_queries, k), nearest
        first, true (not squared) distances, equal to a float64 brute force (ties -> lower index).
    """
    ref, qry = _knn_inputs(reference, queries, k, metric, backend, extra_candidates, query_batch, reference_batch)
    if len(qry) == 0:
        return np.empty((0, k)), np.empty((0, k), dtype=np.int64)
    kc = min(len(ref), k + extra_candidates)
    # (1) float32 candidates: approximate (squared for L2) distances, indices, error bound per query
    if metric == "l2" and backend in ("auto", "torch"):
        with _ieee_fp32_matmul():
            approx, cand, bound = _torch_l2_candidates(ref, qry, kc, default_device(device), query_batch,
                                                       reference_batch, progress)
        approx, cand, bound = approx.cpu(), cand.cpu(), bound.cpu()
    else:
        approx, cand, bound = _faiss_candidates(ref, qry, kc, metric, query_batch, reference_batch, progress)
    ref, qry = ref.cpu(), qry.cpu()
    # (2) float64 re-rank
    out_d, out_i = _rerank(ref, qry, approx, cand, bound, k, metric)
    # (3) certify: every non-candidate has true distance >= approx_last - bound; it must exceed the k-th
    if kc == len(ref):
        unsure = torch.zeros(len(qry), dtype=torch.bool)
    else:
        unsure = ~((approx[:, -1] - bound) > out_d[:, -1])
    if bool(unsure.any()):
        rows = torch.nonzero(unsure).flatten()
        d_fb, i_fb = _brute_raw(ref, qry[rows], k, metric)
        out_d[rows], out_i[rows] = torch.from_numpy(d_fb), torch.from_numpy(i_fb)
    knn.last_fallbacks = int(unsure.sum())  # diagnostics for tests and the bench
    dist = out_d.sqrt() if metric == "l2" else out_d
    return dist.numpy(), out_i.numpy()


knn.last_fallbacks = 0


def _knn_inputs(reference, queries, k, metric, backend, extra_candidates, query_batch, reference_batch
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`knn`'s arguments checked; the two point sets as 2-D tensors."""
    check_choice("metric", metric, METRICS)
    check_choice("backend", backend, BACKENDS)
    ref, qry = _as_rows(reference, "reference"), _as_rows(queries, "queries")
    if ref.shape[1] != qry.shape[1]:
        raise ValueError(f"reference and queries differ in values per point: {ref.shape[1]} vs "
                         f"{qry.shape[1]}; pass points of the same shape (or the same representation)")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(ref):
        raise ValueError(f"k must be an integer in 1..len(reference)={len(ref)}, got {k!r}")
    for name, value in (("extra_candidates", extra_candidates), ("query_batch", query_batch),
                        ("reference_batch", reference_batch)):
        if not isinstance(value, (int, np.integer)) or value < (0 if name == "extra_candidates" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'extra_candidates' else 'positive'}"
                             f" integer, got {value!r}")
    if backend == "torch" and metric != "l2":
        raise ValueError(f"backend='torch' supports metric='l2' only; use backend='faiss' or 'auto' "
                         f"for metric={metric!r}")
    if not (metric == "l2" and backend in ("auto", "torch")):  # the torch pass checks its (centred) norms instead
        _check_finite(ref, "reference")
        _check_finite(qry, "queries")
    return ref, qry


def _rerank(ref: torch.Tensor, qry: torch.Tensor, approx: torch.Tensor, cand: torch.Tensor, bound: torch.Tensor,
            k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest candidates by float64 distance, ties -> lower index. Only candidates that can be
    among the k nearest (approximate distance within 2·bound of the k-th approximate one) need their
    exact distance; the others cannot beat the first k candidates and stay at +inf."""
    needed = approx <= (approx[:, k - 1] + 2 * bound)[:, None]
    needed[:, :k] = True
    rows, cols = torch.nonzero(needed, as_tuple=True)
    exact = torch.full(approx.shape, math.inf, dtype=torch.float64)
    step = max(1, int(2 ** 19 // max(1, ref.shape[1])))  # cache-sized float64 blocks (~10x faster than 2**24)
    for b in range(0, len(rows), step):
        r, c = rows[b:b + step], cols[b:b + step]
        exact[r, c] = _exact_dist(qry[r], ref[cand[r, c]][:, None, :], metric)[:, 0]
    return _rank_rows(exact, cand, k)


@contextlib.contextmanager
def _ieee_fp32_matmul() -> Iterator[None]:
    """Keep CUDA float32 matmuls in full precision (no TF32) so the error bound holds."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


# ----------------------------------------------------------------------------- labelled, cached
@dataclass
class Neighbours:
    """k nearest training neighbours of a query set: (n, k) arrays, nearest first."""

    indices: np.ndarray
    labels: np.ndarray
    distances: np.ndarray

    @property
    def index(self) -> np.ndarray:
        """Index of the 1-NN, shape (n,)."""
        return self.indices[:, 0]

    @property
    def label(self) -> np.ndarray:
        """Label of the 1-NN, shape (n,)."""
        return self.labels[:, 0]

    @property
    def distance(self) -> np.ndarray:
        """Distance to the 1-NN, shape (n,)."""
        return self.distances[:, 0]

    def __len__(self) -> int:
        return len(self.indices)


def _normaliser(normalise) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if normalise is None or normalise is False:
        return None
    if isinstance(normalise, str):
        if normalise != "imagenet":
            raise ValueError(f"normalise must be None, 'imagenet' or a (mean, std) pair, got {normalise!r}")
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        mean, std = normalise
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise ValueError(f"normalise must be None, 'imagenet' or a (mean, std) pair of per-channel "
                         f"sequences, got {normalise!r}") from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"normalise=(mean, std) needs equal lengths and std > 0, got {normalise!r}")
    return mean, std


def _apply_normalise(x: torch.Tensor, ms) -> torch.Tensor:
    if ms is None:
        return x
    mean, std = ms
    if x.ndim != 4 or x.shape[1] != len(mean):
        raise ValueError(f"normalise with {len(mean)} channels needs N×{len(mean)}×H×W images, "
                         f"got shape {tuple(x.shape)}")
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def nearest_neighbours(reference_x, reference_y, queries, *, k: int = 1, metric: str = "l2",
                       space: str = "pixel", model: torch.nn.Module | None = None,
                       normalise=None, store: Store | None | bool = None, name: str = "neighbours",
                       device: str | torch.device | None = None,
                       progress: bool = True) -> Neighbours:
    """k nearest neighbours of ``queries`` in the reference set, with labels, cached in the store.

    Args:
        reference_x, reference_y: the reference set (NCG: the seen-class training split) and labels.
        queries: the points to look up (OOD images, test images, ...).
        space: ``"pixel"`` (raw values, optionally normalised) or ``"feature"`` (``model``'s
            representation via ``model.features``; the spec uses the naturally trained model).
        reference_x, queries: images float in [0, 1] (N×C×H×W; uint8 and 0–255 floats are
            refused) or feature vectors (N×D, any finite float), both of the same kind.
        normalise: ``None``, ``"imagenet"`` (spec §1.2 for ImageNet sets) or ``(mean, std)``;
            applied per channel to both sets before the search (pixel space only).
        store: a :class:`Store`, ``None`` for the default store, ``False`` for no caching. The key
            is a fingerprint of both sets, the labels, k, metric, space, normalisation and the
            model's weights, so a changed dataset or model never reuses stale neighbours.
        name: readable part of the artifact's file name.
    """
    check_choice("space", space, ("pixel", "feature"))
    check_choice("metric", metric, METRICS)
    check_name(name, "name")
    default_device(device)  # an unavailable device is refused even when the result is cached
    ms = _normaliser(normalise)
    if space == "feature" and model is None:
        raise ValueError("space='feature' needs model=<the backbone whose features(x) defines the space>")
    if space == "feature" and ms is not None:
        raise ValueError("normalise applies to pixel space only; a model normalises its own input")
    if isinstance(reference_x, np.ndarray):
        reference_x = torch.from_numpy(reference_x)
    if isinstance(queries, np.ndarray):
        queries = torch.from_numpy(queries)
    # images (N×C×H×W) float in [0, 1]; feature vectors (N×D) any finite float; never uint8
    check_images_or_features(reference_x, "reference_x")
    check_images_or_features(queries, "queries")
    if reference_x.ndim != queries.ndim:
        raise ValueError(f"reference_x and queries must both be images or both feature vectors, got shapes "
                         f"{tuple(reference_x.shape)} and {tuple(queries.shape)}")
    reference_y = torch.from_numpy(check_labels(reference_y, None, "reference_y", n=len(reference_x)))
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(reference_x):
        raise ValueError(f"k must be an integer in 1..len(reference_x)={len(reference_x)}, got {k!r}")

    def compute() -> dict[str, np.ndarray]:
        if space == "feature":
            ref, qry = (extract_features(model, t, device=device, desc="features" if progress else None)
                        for t in (reference_x, queries))
        else:
            ref, qry = _apply_normalise(reference_x, ms), _apply_normalise(queries, ms)
        dist, idx = knn(ref, qry, k=k, metric=metric, device="cpu", progress=progress)
        return {"indices": idx, "labels": reference_y.numpy()[idx], "distances": dist}

    if store is False:
        arrays = compute()
    else:
        st = default_store() if store is None or store is True else store
        key = fingerprint("neighbours-v1", reference_x, reference_y, queries, int(k), metric, space,
                          list(ms) if ms else None, model if space == "feature" else None)
        arrays = st.cached_arrays("neighbours", f"{name}-{space}-{metric}", key, compute)
    return Neighbours(arrays["indices"].astype(np.int64), arrays["labels"].astype(np.int64),
                      arrays["distances"].astype(np.float64))
