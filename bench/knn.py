"""Benchmark: probelib's exact 1-NN vs scikit-learn brute force vs raw faiss, and the fraction of
this machine's float32 GEMM (sgemm) peak that probelib reaches.

    .venv/bin/python bench/knn.py [--reference 50000] [--dim 3072] [--queries 4096] [--repeats 3]

A 50 000 × 3 072 float32 reference set (CIFAR-sized rows) in [0, 1]; queries from the same
distribution. Every method is timed in the same run, interleaved over ``--repeats`` rounds so
that load from other processes hits all of them alike; the best time of each is reported.
The sgemm peak is the best of torch and numpy float32 matmuls (a 4096³ square one and the exact
block shape probelib uses). probelib's figure counts only the useful work, 2·nq·nr·d flops,
against its whole wall time (centring, top-k, float64 re-rank and certification included).

Exactness: wherever the three methods disagree on a query's 1-NN, the float64 distances to the
competing candidates decide; probelib must never lose (it is certified exact).

OpenBLAS: on some processors this workplace sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which
slow a current numpy. This script re-executes itself once with both removed (for this process
only) and prints the BLAS kernels threadpoolctl then reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")) and "_PROBELIB_BENCH_REEXEC" not in os.environ:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["_PROBELIB_BENCH_REEXEC"] = "1"
    print("note: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE were set; re-running with both unset", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probelib.neighbours import knn  # noqa: E402


def blas_info() -> list[str]:
    from threadpoolctl import threadpool_info

    lines = []
    for lib in threadpool_info():
        lines.append(f"  {lib.get('internal_api')}: {os.path.basename(lib.get('filepath', ''))} "
                     f"kernel={lib.get('architecture', '-')} threads={lib.get('num_threads')} "
                     f"version={lib.get('version')}")
    cfg = torch.__config__.show()
    blas = [p.split("=")[1].split(",")[0] for p in cfg.replace("\n", ",").split(",") if "BLAS_INFO=" in p]
    lines.append(f"  torch: BLAS={blas[0] if blas else '?'} threads={torch.get_num_threads()} "
                 f"cpu capability={torch.backends.cpu.get_cpu_capability()}")
    return lines


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--sklearn-queries", type=int, default=512,
                    help="queries for scikit-learn (slower; its time is scaled to --queries)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import faiss
    from sklearn.neighbors import NearestNeighbors

    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')!r}")
    print("BLAS kernels (threadpoolctl):")
    print("\n".join(blas_info()))
    print(f"faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}; cores {os.cpu_count()}")

    rng = np.random.default_rng(0)
    nr, d, nq = args.reference, args.dim, args.queries
    ref = rng.random((nr, d), dtype=np.float32)
    qry = rng.random((nq, d), dtype=np.float32)
    ref_t, qry_t = torch.from_numpy(ref), torch.from_numpy(qry)
    flops = 2.0 * nq * nr * d
    print(f"reference {nr}×{d} float32, queries {nq}; useful work 2·nq·nr·d = {flops / 1e9:.1f} GFLOP")

    # sgemm peak candidates
    sq = torch.rand(4096, 4096)
    sq_np = sq.numpy()
    blk_q, blk_r = torch.rand(4096, 3088), torch.rand(16384, 3088)
    blk_out = torch.empty(4096, 16384)

    index = faiss.IndexFlatL2(d)
    index.add(ref)
    skl = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(ref)
    nsk = min(args.sklearn_queries, nq)

    best: dict[str, float] = {}
    gflops: dict[str, float] = {}
    results = {}

    def record(name, seconds, work):
        if seconds < best.get(name, float("inf")):
            best[name] = seconds
            gflops[name] = work / seconds / 1e9

    for rep in range(args.repeats):
        t, _ = timed(lambda: sq @ sq)
        record("sgemm torch 4096³", t, 2 * 4096 ** 3)
        t, _ = timed(lambda: sq_np @ sq_np)
        record("sgemm numpy 4096³", t, 2 * 4096 ** 3)
        t, _ = timed(lambda: torch.mm(blk_q, blk_r.T, out=blk_out))
        record("sgemm torch 4096×3088×16384", t, 2 * 4096 * 3088 * 16384)
        t, out = timed(lambda: knn(ref_t, qry_t, k=1, progress=False))
        record("probelib knn (exact)", t, flops)
        results["probelib"] = out
        results["probelib_fallbacks"] = knn.last_fallbacks
        t, out = timed(lambda: index.search(qry, 1))
        record("faiss IndexFlatL2", t, flops)
        results["faiss"] = out
        if rep == 0 or args.repeats <= 2:
            t, out = timed(lambda: skl.kneighbors(qry[:nsk], 1))
            record("sklearn brute (scaled)", t * nq / nsk, flops)
            results["sklearn"] = out
        print(f"  round {rep + 1}/{args.repeats} done", flush=True)

    peak_name = max((k for k in gflops if k.startswith("sgemm")), key=gflops.get)
    peak = gflops[peak_name]
    print(f"\n{'method':34s} {'seconds':>9s} {'GFLOP/s':>9s} {'of peak':>8s}")
    for name in best:
        print(f"{name:34s} {best[name]:9.3f} {gflops[name]:9.1f} {gflops[name] / peak:8.3f}")
    print(f"sgemm peak = {peak:.1f} GFLOP/s ({peak_name})")

    # exactness: settle every disagreement with float64 distances
    p_d, p_i = results["probelib"]
    f_i = results["faiss"][1][:, 0]
    s_i = results["sklearn"][1][:, 0]
    p_i = p_i[:, 0]

    def d64(q, r):
        return float(np.sqrt(((qry[q].astype(np.float64) - ref[r].astype(np.float64)) ** 2).sum()))

    lost = 0
    for other, name in ((f_i, "faiss"), (s_i, "sklearn")):
        rows = np.nonzero(p_i[: len(other)] != other)[0]
        worse = sum(d64(q, p_i[q]) > d64(q, other[q]) or (d64(q, p_i[q]) == d64(q, other[q]) and p_i[q] > other[q])
                    for q in rows)
        lost += worse
        print(f"1-NN disagreements with {name}: {len(rows)} (probelib farther in {worse})")
    import probelib.neighbours as nb
    print(f"probelib GEMM: {nb._CPU_GEMM or 'torch'} (calibrated once per process); "
          f"float64 fallbacks: {results['probelib_fallbacks']}; exact: {'yes' if lost == 0 else 'NO'}")
    print(f"speed-up vs faiss {best['faiss IndexFlatL2'] / best['probelib knn (exact)']:.2f}×, "
          f"vs sklearn {best['sklearn brute (scaled)'] / best['probelib knn (exact)']:.2f}×")
    print(f"fraction of sgemm peak: {gflops['probelib knn (exact)'] / peak:.3f}")


if __name__ == "__main__":
    main()
