"""Wall time of the same sweep under ``--engine ray`` (a local Ray instance) and ``--engine local``.

The grid (``--runs`` held-out digits of ``digits``, notebook 01 at smoke sizes, natural + TRADES,
each run declaring ``num_cpus=1``) runs once per engine, each with a fresh artifact store and
results folder, so both do the same work: kernel starts, training, neighbours, tables. The Ray
time includes starting and stopping the local instance (``--num-cpus`` cores). Ray gives back
what it costs only by running runs side by side, so on 2 cores the ratio is about
(Ray start + runs / 2) / runs.

    .venv/bin/python bench/sweep.py [--runs 4] [--num-cpus 2] [--order local,ray]

Last line: ``ray overhead vs local: <ratio>`` (Ray's wall time over local's; goal <= 1.10).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from probelib.grid import load_grid
from probelib.sweep import run_sweep

GRID = """\
name: bench
only: [01]
smoke: true
parameters: {{dataset: digits, methods: [natural, trades]}}
grid: {{held_out: {held_out}}}
resources: {{num_cpus: 1}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs in the grid (held-out digits 1..runs)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="cores of the local Ray instance")
    parser.add_argument("--order", default="local,ray", help="engines in the order they run")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    os.environ["PYTHONPATH"] = str(repo) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="probelib-bench-sweep-") as tmp:
        grid_file = Path(tmp) / "grid.yaml"
        grid_file.write_text(GRID.format(held_out=list(range(1, args.runs + 1))))
        for engine in args.order.split(","):
            grid = load_grid(grid_file, out=Path(tmp) / engine / "out", store=Path(tmp) / engine / "store")
            t0 = time.perf_counter()
            if engine == "ray":  # started here (run_sweep then uses it) to time the start on its own
                import ray

                from probelib.sweep import _start_local_ray

                _start_local_ray(args.num_cpus, {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}, progress=False)
                started = time.perf_counter()
            try:
                result = run_sweep(grid, engine=engine, num_cpus=args.num_cpus, progress=False)
            finally:
                ran = time.perf_counter()
                if engine == "ray":
                    ray.shutdown()
            times[engine] = time.perf_counter() - t0
            if engine == "ray":
                print(f"ray: start {started - t0:.1f} s, runs {ran - started:.1f} s, "
                      f"shutdown {time.perf_counter() - ran:.1f} s", flush=True)
            if not result.ok:
                raise SystemExit(f"{engine}: a run failed: {[o.error for o in result.outcomes if o.error]}")
            per_run = ", ".join(f"{o.elapsed_s:.1f}" for o in result.outcomes)
            print(f"{engine:5s} {times[engine]:7.1f} s wall for {len(result.outcomes)} runs (each: {per_run} s)",
                  flush=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other jobs slow both engines)")
    print(f"ray overhead vs local: {times['ray'] / times['local']:.2f}")


if __name__ == "__main__":
    main()
