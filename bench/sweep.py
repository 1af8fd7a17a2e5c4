"""Wall time of the same sweep under ``--engine ray`` (a local Ray instance) and ``--engine local``.

The grid: ``--runs`` held-out digits of ``digits`` (default 10, digits 0..9: the size of the shipped
``grids/mnist5k.yaml`` axis), notebook 01 at smoke sizes, natural + TRADES, each run declaring
``num_cpus=1`` (its kernel computes with one thread under either engine, so both give the same
numbers). Each engine runs it once with a fresh artifact store and results folder, so both do the
same work: kernel starts, training, neighbours, tables. The Ray time includes starting and stopping
the local instance (``--num-cpus`` cores), and the start is also reported on its own. Ray gives back
what it costs only by running runs side by side, so on 2 cores the ratio is about
(Ray start + runs / 2) / runs: the more runs, the better the start is amortised. Real grids
amortise it far better than this one (each run is a suite run of minutes to hours, not a ~20 s
smoke notebook), so report the small grid too (``--runs 4``: start-up weighs most there).

    .venv/bin/python bench/sweep.py [--runs 10] [--num-cpus 2] [--order local,ray]

Last line: ``ray overhead vs local: <ratio>`` (Ray's wall time, start included, over local's;
goal <= 1.10). Other jobs on the machine slow both engines unevenly: the load average is printed
before and after each engine; run it more than once, and alternate ``--order``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from probelib.grid import load_grid
from probelib.sweep import _local_cores, _start_local_ray, run_sweep

GRID = """\
name: bench
only: [01]
smoke: true
parameters: {{dataset: digits, methods: [natural, trades]}}
grid: {{held_out: {held_out}}}
resources: {{num_cpus: 1}}
"""


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() \
        else f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, choices=range(1, 11), metavar="1..10",
                        help="runs in the grid (held-out digits 0..runs-1; default 10)")
    parser.add_argument("--num-cpus", type=int, default=_local_cores(), help="cores of the local Ray instance")
    parser.add_argument("--order", default="local,ray", help="engines in the order they run")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent  # the kernels import this copy of probelib under either engine
    os.environ["PYTHONPATH"] = str(repo) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="probelib-bench-sweep-") as tmp:
        grid_file = Path(tmp) / "grid.yaml"
        grid_file.write_text(GRID.format(held_out=list(range(args.runs))))
        print(f"grid: {args.runs} runs (held-out digits 0..{args.runs - 1} of digits, notebook 01, smoke, "
              f"natural + trades, num_cpus=1 each); {_local_cores()} cores", flush=True)
        for engine in args.order.split(","):
            grid = load_grid(grid_file, out=Path(tmp) / engine / "out", store=Path(tmp) / engine / "store")
            load_before = _load()
            t0 = time.perf_counter()
            if engine == "ray":  # started here (run_sweep then uses it) to time the start on its own
                import ray

                try:
                    start_s = _start_local_ray(args.num_cpus, progress=False)
                except Exception as err:  # on a machine loaded by other jobs the raylet can miss its 15 s
                    raise SystemExit(f"ray: the local instance did not start ({str(err).splitlines()[0][:200]}); "
                                     f"load average {load_before} before, {_load()} now") from None
                started = time.perf_counter()
            try:
                result = run_sweep(grid, engine=engine, num_cpus=args.num_cpus, progress=False)
            finally:
                ran = time.perf_counter()
                if engine == "ray":
                    ray.shutdown()
            times[engine] = time.perf_counter() - t0
            if not result.ok:
                raise SystemExit(f"{engine}: a run failed: {[o.error for o in result.outcomes if o.error]}")
            per_run = ", ".join(f"{o.elapsed_s:.1f}" for o in result.outcomes)
            print(f"{engine:5s} {times[engine]:7.1f} s wall for {len(result.outcomes)} runs (each: {per_run} s); "
                  f"load average {load_before} before, {_load()} after", flush=True)
            if engine == "ray":
                times["ray_runs"] = ran - started
                stop_s = time.perf_counter() - ran
                print(f"ray   start {start_s:.1f} s, runs {ran - started:.1f} s, shutdown {stop_s:.1f} s", flush=True)
    if "local" in times and "ray" in times:
        print(f"ray runs alone (start and shutdown left out) vs local: {times['ray_runs'] / times['local']:.2f}")
        print(f"ray overhead vs local: {times['ray'] / times['local']:.2f}")


if __name__ == "__main__":
    main()
