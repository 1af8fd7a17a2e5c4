"""Grids of suite runs (``python -m probelib sweep GRID.yaml``) on Ray, or sequentially with no Ray.

The grid file and its runs are :mod:`probelib.grid`'s. Each run is :func:`probelib.runner.run_suite`
into its own folder ``<out>/runs/<name>-<key>`` (``key`` hashes the parameter set), and writes
``sweep-done.json`` there atomically, last; a re-run skips every run whose marker is present and
carries the same key, so a killed sweep resumes with only the unfinished (or failed) runs
recomputed. Runs meet only through the content-addressed artifact store (``PROBELIB_PRECOMPUTED``,
resolved once by the driver and handed to every run), so on a cluster put it, and ``--out``, on a
shared filesystem.

Engines: ``ray`` (default where Ray is installed) submits one Ray task per run with the
declared ``num_cpus``/``num_gpus``; ``--address`` joins a running cluster, otherwise a local
Ray instance is started (and shut down) with this machine's cores. ``local`` runs the same
runs one after another in this process, without Ray. Both give every run's kernels
``OMP_NUM_THREADS = ceil(num_cpus)``, so a run computes the same numbers under either engine.

When the runs are done, ``<out>/index.md`` lists every run (parameters, status, verdicts) and
``<out>/tables/<table>.csv`` (+ ``.tex``) stacks each table the runs wrote, with the axes as
leading index levels (e.g. pixel NCG with its 95 % interval for every held-out digit).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from probelib._util import local_cores
from probelib.execute import kernel_env
from probelib.grid import DONE_MARKER, Grid, RunSpec, load_grid, plan_runs
from probelib.store import write_text_atomic

__all__ = ["RunOutcome", "SweepResult", "ENGINES", "execute_run", "run_sweep", "stack_tables", "write_index",
           "default_engine"]

ENGINES = ("ray", "local")


@dataclass
class RunOutcome:
    """What one run gave: ``status`` ok | failed | skipped (done before), its folder and time."""

    key: str
    name: str
    status: str
    folder: str
    elapsed_s: float = 0.0
    error: str | None = None
    host: str | None = None


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`: per-run outcomes (grid order) and the index's paths."""

    grid: Grid
    outcomes: list[RunOutcome]
    index_md: Path
    tables: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every run finished (now or before)."""
        return all(o.status in ("ok", "skipped") for o in self.outcomes)

    @property
    def ran(self) -> list[str]:
        """Names of the runs computed by this call (ok or failed)."""
        return [o.name for o in self.outcomes if o.status != "skipped"]

    @property
    def skipped(self) -> list[str]:
        """Names of the runs found finished and not recomputed."""
        return [o.name for o in self.outcomes if o.status == "skipped"]


# --------------------------------------------------------------------------- one run

def execute_run(spec: RunSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Run one parameter set: :func:`probelib.runner.run_suite` into ``spec.folder``; on success
    write the done-marker atomically, last. Returns a plain dict (a :class:`RunOutcome`'s fields)."""
    from probelib.runner import run_suite

    if isinstance(spec, Mapping):
        spec = RunSpec(**spec)
    folder = Path(spec.folder)
    t0 = time.time()
    host = socket.gethostname()
    try:
        result = run_suite(notebooks_dir=spec.notebooks, only=spec.only, skip=spec.skip,
                           parameters=spec.parameters, smoke=spec.smoke, out=folder, env=spec.env,
                           execution_timeout=spec.timeout, progress=False)
    except Exception as err:  # a run that cannot start is reported, not fatal to the sweep
        return RunOutcome(spec.key, spec.name, "failed", str(folder), time.time() - t0,
                          f"{type(err).__name__}: {err}".splitlines()[0][:500], host).__dict__
    elapsed = time.time() - t0
    if not result.ok:
        failed = result.failed
        error = f"{failed.notebook.stem}: {failed.error}" if failed is not None else "a notebook failed"
        return RunOutcome(spec.key, spec.name, "failed", str(folder), elapsed, error, host).__dict__
    record = {"key": spec.key, "status": "ok", "name": spec.name, "axes": spec.axes, "parameters": spec.parameters,
              "only": spec.only, "skip": spec.skip, "smoke": spec.smoke, "elapsed_s": round(elapsed, 1),
              "host": host, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(folder / DONE_MARKER, json.dumps(record, indent=1, default=str))
    return RunOutcome(spec.key, spec.name, "ok", str(folder), elapsed, None, host).__dict__


# --------------------------------------------------------------------------- engines

def default_engine() -> str:
    """``ray`` where Ray is importable, else ``local``."""
    import importlib.util

    return "ray" if importlib.util.find_spec("ray") is not None else "local"


def _say(progress: bool):
    return (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)


def _run_local(todo: list[RunSpec], progress: bool) -> Iterable[dict[str, Any]]:
    from tqdm.auto import tqdm

    say = _say(progress)
    bar = tqdm(todo, desc="sweep (local)", unit="run", disable=not progress or not todo)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        outcome = execute_run(spec)
        say(f"  {outcome['status']:6s} {spec.name} ({outcome['elapsed_s']:.1f} s)"
            + (f": {outcome['error']}" if outcome["error"] else ""))
        yield outcome


#: Environment of a local Ray instance's processes: the package importable in every worker without a
#: runtime_env (workers for a job runtime_env are started for it, so the ones Ray prestarts at start-up
#: may sit idle), and no usage-stats reporting.
_LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
#: What a sweep on one machine needs of Ray, and no more: the raylet waits longer for its (Python)
#: agents, which start slowly on a busy machine, and no metrics are collected while the runs compute.
_LOCAL_RAY_CONFIG = {"agent_register_timeout_ms": 120_000, "raylet_start_wait_time_s": 120,
                     "enable_metrics_collection": False}


def _start_local_ray(num_cpus: int | None = None, *, progress: bool = True, attempts: int = 3) -> float:
    """Start a local Ray instance for a sweep on this machine; returns the seconds it took.

    No dashboard, no usage stats, no metrics, no runtime_env: its processes inherit this process's
    environment with the package root on ``PYTHONPATH`` (set only while Ray starts), so the
    workers Ray prestarts for the ``num_cpus`` cores (default: this process's cores) can run the tasks.
    The raylet waits a fixed 15 s for its dashboard agent; on a machine loaded by other jobs that can
    pass, so a timed-out start is retried.
    """
    import ray

    env = {**_LOCAL_RAY_ENV, **kernel_env()}
    saved = {k: os.environ.get(k) for k in env}
    t0 = time.perf_counter()
    try:
        os.environ.update(env)
        for attempt in range(1, attempts + 1):
            try:
                ray.init(num_cpus=num_cpus or local_cores(), include_dashboard=False, log_to_driver=progress,
                         _system_config=_LOCAL_RAY_CONFIG)
                break
            except Exception as err:  # Ray raises a bare Exception for the start-up timeout
                ray.shutdown()
                if "timed out during startup" not in str(err) or attempt == attempts:
                    raise
                _say(progress)(f"  the local Ray instance did not start in time (attempt {attempt} of {attempts}): "
                            "retrying")
        return time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_ray(todo: list[RunSpec], resources: Mapping[str, float], address: str | None, progress: bool,
             num_cpus: int | None = None) -> Iterable[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'ray==2.60.0' (see requirements.txt), "
                         "or run the grid without it: --engine local") from None
    from tqdm.auto import tqdm

    say = _say(progress)
    started_here = False
    if not ray.is_initialized():
        if address:  # other hosts: the package root travels as the job's runtime_env
            ray.init(address=address, runtime_env={"env_vars": kernel_env()}, log_to_driver=progress)
        else:
            say(f"  local Ray instance started in {_start_local_ray(num_cpus, progress=progress):.1f} s")
        started_here = True
    try:
        total = ray.cluster_resources()
        for k, ray_name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            if resources[k] > total.get(ray_name, 0):
                raise ValueError(f"each run declares {k}={resources[k]:g}, but the Ray cluster has "
                                 f"{total.get(ray_name, 0):g} {ray_name} in all, so no run could be placed; "
                                 f"lower resources.{k} in the grid (or --{k.replace('_', '-')}-per-run), or add nodes")
        task = ray.remote(execute_run)
        options = dict(num_cpus=resources["num_cpus"], num_gpus=resources["num_gpus"], max_retries=1,
                       retry_exceptions=False)
        pending = {task.options(name=f"probelib-sweep:{spec.name}", **options).remote(spec.__dict__): spec
                   for spec in todo}
        say(f"  submitted {len(pending)} Ray task(s), each num_cpus={resources['num_cpus']:g} "
            f"num_gpus={resources['num_gpus']:g}")
        bar = tqdm(total=len(pending), desc="sweep (ray)", unit="run", disable=not progress or not pending)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # a worker or node died: the run is unfinished, the sweep goes on
                    outcome = RunOutcome(spec.key, spec.name, "failed", spec.folder,
                                         error=f"{type(err).__name__}: {err}".splitlines()[0][:500]).__dict__
                bar.update(1)
                say(f"  {outcome['status']:6s} {spec.name} ({outcome['elapsed_s']:.1f} s"
                    + (f" on {outcome['host']}" if outcome.get("host") else "") + ")"
                    + (f": {outcome['error']}" if outcome["error"] else ""))
                yield outcome
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(grid: Grid | str | os.PathLike, *, engine: str | None = None, address: str | None = None,
              num_cpus: int | None = None, progress: bool = True) -> SweepResult:
    """Run every unfinished run of ``grid`` (a :class:`Grid` or a grid file) and write the index.

    ``engine``: ``ray`` (default where installed) or ``local``. ``address``: join this Ray cluster
    (e.g. ``"auto"`` on a node where ``ray start`` ran, or ``"HEAD:6379"``); without it a local
    Ray instance with ``num_cpus`` (default: all) cores is started and shut down afterwards.
    With ``progress`` (the default) a bar over the runs and a line per finished run are printed;
    ``progress=False`` prints nothing.
    """
    say = _say(progress)
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    engine = engine or default_engine()
    if engine not in ENGINES:
        from probelib._util import unknown_name

        raise unknown_name("engine", engine, ENGINES)
    if address and engine != "ray":
        raise ValueError("--address joins a Ray cluster; use it with --engine ray")
    t0 = time.time()
    plan = plan_runs(grid)
    todo = [spec for spec, done in plan if not done]
    say(f"sweep {grid.name}: {len(plan)} run(s), {len(plan) - len(todo)} done before, {len(todo)} to run "
        f"[{engine}] -> {grid.out}")
    grid.out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, dict[str, Any]] = {}
    if todo:
        stream = (_run_ray(todo, grid.resources, address, progress, num_cpus) if engine == "ray"
                  else _run_local(todo, progress))
        for outcome in stream:
            outcomes[outcome["key"]] = outcome
    results = []
    for spec, done in plan:
        if done:
            results.append(RunOutcome(spec.key, spec.name, "skipped", spec.folder))
        else:
            results.append(RunOutcome(**outcomes[spec.key]))
    elapsed = time.time() - t0
    index_md, tables = write_index(grid, results, engine=engine, elapsed_s=elapsed)
    n_failed = sum(o.status == "failed" for o in results)
    say(f"sweep {grid.name}: {len(todo) - n_failed} ok, {len(plan) - len(todo)} done before, {n_failed} failed "
        f"in {elapsed:.0f} s; index: {index_md}")
    return SweepResult(grid, results, index_md, tables, elapsed)


# --------------------------------------------------------------------------- the cross-run index

def _run_verdicts(folder: Path) -> list[tuple[str, str]]:
    from probelib.report import _load_manifest, collect_verdicts

    found = []
    for stem, entry in sorted(_load_manifest(folder).get("notebooks", {}).items()):
        out = entry.get("output")
        if out and (folder / out).exists():
            try:
                found += [(stem, v) for v in collect_verdicts(folder / out)]
            except Exception:  # an unreadable notebook is listed without verdicts
                pass
    return found


def stack_tables(grid: Grid, finished: Sequence[RunSpec]) -> dict[str, pd.DataFrame]:
    """Every table the finished runs wrote (``tables/<name>.csv``), stacked into one per name with the
    grid's axes as leading index levels, in grid order. An axis whose name is also a column of the
    table (e.g. ``dataset``) becomes the level ``run_<axis>``."""
    frames: dict[str, list[tuple[RunSpec, pd.DataFrame]]] = {}
    for spec in finished:
        folder = Path(spec.folder) / "tables"
        if folder.is_dir():
            for csv in sorted(folder.glob("*.csv")):
                frames.setdefault(csv.stem, []).append((spec, pd.read_csv(csv)))
    stacked = {}
    for name, parts in sorted(frames.items()):
        columns = set().union(*(df.columns for _, df in parts))
        level = {axis: f"run_{axis}" if axis in columns else axis for axis in grid.axes}
        tagged = []
        for spec, df in parts:
            for i, (axis, value) in enumerate(spec.axes.items()):
                df.insert(i, level[axis], value if isinstance(value, (str, int, float, bool)) else json.dumps(value))
            tagged.append(df)
        stacked[name] = pd.concat(tagged, ignore_index=True).set_index(list(level.values()))
    return stacked


def write_index(grid: Grid, outcomes: Sequence[RunOutcome], *, engine: str = "local",
                elapsed_s: float = 0.0) -> tuple[Path, dict[str, Path]]:
    """Write ``<out>/tables/<name>.csv/.tex`` (stacked tables), ``<out>/sweep.json`` and ``<out>/index.md``."""
    from probelib import __version__
    from probelib.report import _md_escape, save_table

    out = grid.out
    by_key = {o.key: o for o in outcomes}
    finished = [s for s in grid.runs if by_key.get(s.key) and by_key[s.key].status in ("ok", "skipped")]
    tables = {name: save_table(df, name, out) for name, df in stack_tables(grid, finished).items()}
    runs_json = []
    for spec in grid.runs:
        o = by_key[spec.key]
        runs_json.append({"name": spec.name, "key": spec.key, "axes": spec.axes, "status": o.status,
                          "folder": os.path.relpath(spec.folder, out), "elapsed_s": round(o.elapsed_s, 1),
                          "host": o.host, "error": o.error})
    manifest = {"probelib_version": __version__, "name": grid.name,
                "grid_file": str(grid.source) if grid.source else None, "engine": engine,
                "elapsed_s": round(elapsed_s, 1), "resources": grid.resources, "axes": grid.axes,
                "tables": sorted(tables), "runs": runs_json}
    write_text_atomic(out / "sweep.json", json.dumps(manifest, indent=1, default=str))

    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    md = [f"# probelib sweep — {grid.name}", "",
          f"probelib {__version__} · engine {engine} · {len(grid.runs)} run(s): {counts['ok']} ok, "
          f"{counts['skipped']} done before, {counts['failed']} failed · {elapsed_s:.0f} s  ",
          f"Grid file: `{grid.source}` · per run: num_cpus={grid.resources['num_cpus']:g}, "
          f"num_gpus={grid.resources['num_gpus']:g}", ""]
    if counts["failed"]:
        md += ["**Failed runs** (re-run the same command to retry only these):", ""]
        md += [f"- `{o.name}`: {_md_escape(o.error or '')}" for o in outcomes if o.status == "failed"] + [""]
    md += ["## Runs", "", "| run | status | time | report |", "|---|---|---|---|"]
    for spec in grid.runs:
        o = by_key[spec.key]
        rel = os.path.relpath(Path(spec.folder) / "index.md", out)
        report = f"[index.md]({rel})" if (Path(spec.folder) / "index.md").exists() else "—"
        md.append(f"| `{_md_escape(spec.name)}` | {o.status} | {o.elapsed_s:.1f} s | {report} |")
    md += ["", "## Stacked tables", ""]
    if tables:
        md += [f"- {name}: [CSV](tables/{name}.csv) · [TEX](tables/{name}.tex) "
               f"({len(pd.read_csv(p))} rows, index {', '.join(grid.axes)} first)" for name, p in tables.items()]
    else:
        md.append("(no finished run wrote a table)")
    md += ["", "## Verdicts", ""]
    for spec in finished:
        md.append(f"**{_md_escape(spec.name)}**")
        md.append("")
        md += [f"- {stem}: {_md_escape(v)}" for stem, v in _run_verdicts(Path(spec.folder))] or ["- (none)"]
        md.append("")
    index_md = write_text_atomic(out / "index.md", "\n".join(md) + "\n")
    return index_md, tables

