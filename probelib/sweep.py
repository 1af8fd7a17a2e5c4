"""Grids of suite runs (``python -m probelib sweep GRID.yaml``) on Ray, or sequentially with no Ray.

A grid file names the notebooks each run executes, the parameters every run shares, and the
axes whose every combination is one *run* (one parameter set, as the NCG authors' ``params.py``)::

    name: mnist5k                  # optional (default: the file name)
    only: [00-04]                  # notebooks per run (default: the whole suite); as `run --only`
    smoke: false
    parameters:                    # the same in every run (notebook parameters)
      dataset: mnist5k
      methods: [natural, trades, at]
    grid:                          # axes: one run per combination
      held_out: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
      eps: [2.0]
    resources: {num_cpus: 2, num_gpus: 0}   # declared per run (Ray places runs by them)

Each run is :func:`probelib.suite.run_suite` into its own folder ``<out>/runs/<name>-<key>``
(``key`` hashes the parameter set), and writes ``sweep-done.json`` there atomically, last; a
re-run skips every run whose marker is present and carries the same key, so a killed sweep
resumes with only the unfinished (or failed) runs recomputed. Runs meet only through the
content-addressed artifact store (``PROBELIB_PRECOMPUTED``, resolved once by the driver and
handed to every run), so on a cluster put it, and ``--out``, on a shared filesystem.

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

import argparse
import ast
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from probelib.store import fingerprint, write_text_atomic

__all__ = ["GridError", "Grid", "RunSpec", "RunOutcome", "SweepResult", "ENGINES", "DONE_MARKER",
           "load_grid", "parse_grid", "plan_runs", "execute_run", "run_sweep", "write_index",
           "default_engine", "add_cli"]

ENGINES = ("ray", "local")
DONE_MARKER = "sweep-done.json"
_TOP_KEYS = {"name": "optional name of the sweep (default: the file name)",
             "notebooks": "folder of NN_name.ipynb notebooks (default: the project's notebooks/)",
             "only": "notebooks each run executes (numbers, ranges, names; default: all)",
             "skip": "notebooks each run skips",
             "smoke": "true for tiny sizes (smoke=True in every notebook declaring it)",
             "parameters": "mapping of notebook parameters shared by every run",
             "grid": "mapping of axes: parameter name -> non-empty list of values",
             "resources": "per-run resources, e.g. {num_cpus: 2, num_gpus: 0}",
             "out": "sweep folder (default results/sweeps/<name>)",
             "timeout": "per-cell time limit in seconds (default: none)"}
_RESOURCE_KEYS = ("num_cpus", "num_gpus")
_EXAMPLE = ("e.g.\n  only: [01]\n  parameters: {dataset: mnist5k, methods: [natural, trades, at]}\n"
            "  grid: {held_out: [0, 1, 2]}\n  resources: {num_cpus: 2}")


class GridError(ValueError):
    """A grid file that cannot run; the message names the entry and the fix. Raised before any run."""


@dataclass(frozen=True)
class RunSpec:
    """One parameter set of a sweep: what :func:`execute_run` needs, as plain values (picklable)."""

    key: str                    # fingerprint of the parameter set
    name: str                   # readable: "held_out=3,eps=2"
    axes: dict[str, Any]        # this run's value on every axis
    parameters: dict[str, Any]  # every notebook parameter it passes (shared + axes)
    folder: str                 # its results folder
    only: list[str] | None
    skip: list[str] | None
    smoke: bool
    notebooks: str | None
    env: dict[str, str]         # added to the kernels' environment (store, threads)
    timeout: float | None = None


@dataclass
class Grid:
    """A validated grid file: the runs it expands to and where they go."""

    name: str
    source: Path | None
    out: Path
    runs: list[RunSpec]
    axes: dict[str, list[Any]]
    resources: dict[str, float]


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


# --------------------------------------------------------------------------- the grid file

def _type_of_default(source: str | None) -> type | None:
    """The Python type of a notebook parameter's default (source text), None when it says nothing."""
    if source is None:
        return None
    try:
        value = ast.literal_eval(source.strip())
    except (ValueError, SyntaxError):
        return None
    return None if value is None else type(value)


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        text = f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")[:80] or "x"


def _resolve(path: str | os.PathLike, base: Path | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base is None else (base / p)


def load_grid(path: str | os.PathLike, *, out: str | os.PathLike | None = None, only: Sequence[str] | None = None,
              resources: Mapping[str, float] | None = None, store: str | os.PathLike | None = None) -> Grid:
    """Read and validate the grid file at ``path`` (see the module docstring); nothing runs.

    ``out``, ``only`` and ``resources`` override the file's. Raises :class:`GridError` naming the
    entry and the fix for an unknown key or parameter, an empty axis, a wrong type.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {str(path)!r} does not exist; write a YAML grid file, {_EXAMPLE}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"grid file {str(path)!r} is not plain YAML ({str(err).splitlines()[0]}); "
                        f"write plain mappings and lists, {_EXAMPLE}") from None
    return parse_grid(data, source=path, out=out, only=only, resources=resources, store=store)


def parse_grid(data: Any, *, source: Path | None = None, out: str | os.PathLike | None = None,
               only: Sequence[str] | None = None, resources: Mapping[str, float] | None = None,
               store: str | os.PathLike | None = None) -> Grid:
    """Validate a grid given as a mapping (what :func:`load_grid` reads) and expand it into runs."""
    from probelib.suite import _RESERVED, discover_notebooks, notebook_parameters, select_notebooks

    where = f"grid file {str(source)!r}" if source is not None else "grid"
    if not isinstance(data, dict):
        raise GridError(f"{where} must be a mapping with 'grid:' (axes) and optional 'parameters:', 'only:', "
                        f"'resources:'; got {type(data).__name__}; {_EXAMPLE}")
    unknown = sorted(set(map(str, data)) - set(_TOP_KEYS))
    if unknown:
        keys = "; ".join(f"{k}: {v}" for k, v in _TOP_KEYS.items())
        raise GridError(f"{where}: unknown entry {unknown[0]!r}. Notebook parameters go under 'parameters:' (shared) "
                        f"or 'grid:' (axes); the top-level entries are: {keys}")
    axes = data.get("grid")
    if not isinstance(axes, dict) or not axes:
        raise GridError(f"{where}: 'grid:' must be a non-empty mapping of axes (parameter -> list of values); "
                        f"{_EXAMPLE}")
    for name, values in axes.items():
        if not isinstance(values, list):
            raise GridError(f"{where}: axis {name!r} must be a list of values, got {values!r}; "
                            f"write e.g. '{name}: [{values!r}]' for a single value, or move it under 'parameters:'")
        if not values:
            raise GridError(f"{where}: axis {name!r} is empty, so the grid has no runs; give it at least one value "
                            f"(e.g. '{name}: [...]') or remove the axis")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise GridError(f"{where}: axis {name!r} repeats a value ({values!r}); list each value once")
    shared = data.get("parameters") or {}
    if not isinstance(shared, dict):
        raise GridError(f"{where}: 'parameters:' must be a mapping of notebook parameter -> value, got "
                        f"{type(shared).__name__}")
    both = sorted(set(shared) & set(axes))
    if both:
        raise GridError(f"{where}: {both[0]!r} is both a shared parameter and an axis; keep it in one place")
    smoke = data.get("smoke", False)
    if not isinstance(smoke, bool):
        raise GridError(f"{where}: 'smoke' must be true or false, got {smoke!r}")
    timeout = data.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise GridError(f"{where}: 'timeout' must be a positive number of seconds, got {timeout!r}")

    res = dict(data.get("resources") or {})
    if not isinstance(data.get("resources") or {}, dict):
        raise GridError(f"{where}: 'resources:' must be a mapping such as {{num_cpus: 2, num_gpus: 0}}")
    res.update({k: v for k, v in dict(resources or {}).items() if v is not None})
    for k, v in res.items():
        if k not in _RESOURCE_KEYS:
            raise GridError(f"{where}: unknown resource {k!r}; per-run resources are {', '.join(_RESOURCE_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "num_cpus" and v == 0):
            raise GridError(f"{where}: resource {k} must be a number {'> 0' if k == 'num_cpus' else '>= 0'}, "
                            f"got {v!r}")
    res = {"num_cpus": float(res.get("num_cpus", 1)), "num_gpus": float(res.get("num_gpus", 0))}

    base = source.parent if source is not None else None
    nb_dir = data.get("notebooks")
    if nb_dir is not None and not isinstance(nb_dir, str):
        raise GridError(f"{where}: 'notebooks' must be a folder path, got {nb_dir!r}")
    nb_path = str(_resolve(nb_dir, base).resolve()) if nb_dir else None
    selection: dict[str, list[str] | None] = {}
    for key, given in (("only", only if only else data.get("only")), ("skip", data.get("skip"))):
        if given is None:
            selection[key] = None
            continue
        tokens = [given] if isinstance(given, (str, int)) else given
        if not isinstance(tokens, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool)
                                                   for t in tokens):
            raise GridError(f"{where}: {key!r} must be a list of notebooks (numbers, ranges like '30-33', names), "
                            f"got {given!r}")
        selection[key] = [str(t) for t in tokens]
    try:
        chosen = select_notebooks(discover_notebooks(nb_path), selection["only"], selection["skip"])
    except (ValueError, FileNotFoundError) as err:
        raise GridError(f"{where}: {err}") from None
    if not chosen:
        raise GridError(f"{where}: 'only'/'skip' leave no notebook to run")
    declared: dict[str, dict[str, Any]] = {nb.stem: notebook_parameters(nb) for nb in chosen}
    known = sorted(set().union(*declared.values()) - set(_RESERVED) - {"smoke"})
    for name in list(axes) + list(shared):
        if name in _RESERVED:
            raise GridError(f"{where}: {name!r} is set by the sweep itself (each run's own folder); remove it")
        if name == "smoke":
            raise GridError(f"{where}: set smoke with the top-level 'smoke: true', not as a parameter")
        if name not in known:
            hint = (" (the architecture follows the dataset's paper settings, see `python -m probelib train --list`)"
                    if name in ("arch", "architecture") else "")
            raise GridError(f"{where}: unknown parameter {name!r}{hint}; the selected notebooks "
                            f"({', '.join(declared)}) declare: {', '.join(known)}. Fix the name, or select notebooks "
                            "that declare it with 'only:'")
    # types: each value must fit the type of every selected notebook's default (None defaults take anything)
    for name in known:
        wanted = {(stem, _type_of_default(params[name].get("default")))
                  for stem, params in declared.items() if name in params}
        values = axes.get(name, [shared[name]] if name in shared else [])
        for value in values:
            for stem, kind in sorted(wanted, key=lambda w: w[0]):
                if kind is not None and value is not None and not _fits(value, kind):
                    raise GridError(f"{where}: {name}={value!r} is a {type(value).__name__}, but {stem} expects a "
                                    f"{kind.__name__} (its default is {declared[stem][name].get('default')}); "
                                    f"write a {kind.__name__}" + (" such as [a, b]" if kind is list else ""))

    name = data.get("name") or (source.stem if source is not None else "sweep")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise GridError(f"{where}: 'name' must be a plain name (letters, digits, '-', '_', '.'), got {name!r}")
    out_dir = Path(out) if out is not None else (
        _resolve(data["out"], Path.cwd()) if data.get("out") else Path("results") / "sweeps" / name)
    out_dir = out_dir.resolve()
    store_root = Path(store or os.environ.get("PROBELIB_PRECOMPUTED") or "precomputed").resolve()
    env = {"PROBELIB_PRECOMPUTED": str(store_root), "OMP_NUM_THREADS": str(max(1, math.ceil(res["num_cpus"]))),
           "MKL_NUM_THREADS": str(max(1, math.ceil(res["num_cpus"])))}
    if os.environ.get("PROBELIB_DATA"):
        env["PROBELIB_DATA"] = str(Path(os.environ["PROBELIB_DATA"]).resolve())

    runs: list[RunSpec] = []
    axis_names = list(axes)
    for combo in itertools.product(*(axes[a] for a in axis_names)):
        point = dict(zip(axis_names, combo))
        params = {**shared, **point}
        _check_datasets(where, params)
        key = fingerprint("probelib.sweep-run/1", {"parameters": params, "only": selection["only"],
                                                   "skip": selection["skip"], "smoke": smoke,
                                                   "notebooks": nb_path})
        label = ",".join(f"{a}={_slug(v)}" for a, v in point.items())
        folder = out_dir / "runs" / f"{_slug(label.replace(',', '_'))[:80]}-{key[:10]}"
        runs.append(RunSpec(key=key, name=label, axes=point, parameters=params, folder=str(folder),
                            only=selection["only"], skip=selection["skip"], smoke=smoke, notebooks=nb_path,
                            env=env, timeout=float(timeout) if timeout is not None else None))
    return Grid(name=name, source=source, out=out_dir, runs=runs, axes={a: list(v) for a, v in axes.items()},
                resources=res)


def _check_datasets(where: str, params: Mapping[str, Any]) -> None:
    """Dataset names and held-out classes are checked here, before any run (as run_suite would, later)."""
    dataset = params.get("dataset")
    if dataset is None:
        return
    try:
        from probelib.data import parse_name

        parse_name(dataset)
        if params.get("held_out") is not None:
            from probelib.ncg import held_out_datasets

            held_out_datasets(dataset, params["held_out"])
    except (ValueError, KeyError) as err:
        raise GridError(f"{where}: {err}") from None


def plan_runs(grid: Grid) -> list[tuple[RunSpec, bool]]:
    """Each run with whether it is already done (its marker present, with its key)."""
    return [(spec, _is_done(spec)) for spec in grid.runs]


def _is_done(spec: RunSpec) -> bool:
    marker = Path(spec.folder) / DONE_MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("key") == spec.key and record.get("status") == "ok"


# --------------------------------------------------------------------------- one run

def execute_run(spec: RunSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Run one parameter set: :func:`probelib.suite.run_suite` into ``spec.folder``; on success
    write the done-marker atomically, last. Returns a plain dict (a :class:`RunOutcome`'s fields)."""
    from probelib.suite import run_suite

    if isinstance(spec, Mapping):
        spec = RunSpec(**spec)
    folder = Path(spec.folder)
    t0 = time.time()
    host = socket.gethostname()
    try:
        result = run_suite(notebooks_dir=spec.notebooks, only=spec.only, skip=spec.skip,
                           parameters=spec.parameters, smoke=spec.smoke, out=folder, env=spec.env,
                           execution_timeout=spec.timeout, progress_bar=False, quiet=True)
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


def _say(quiet: bool):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))


def _run_local(todo: list[RunSpec], quiet: bool) -> Iterable[dict[str, Any]]:
    from tqdm.auto import tqdm

    say = _say(quiet)
    bar = tqdm(todo, desc="sweep (local)", unit="run", disable=quiet or not todo)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        outcome = execute_run(spec)
        say(f"  {outcome['status']:6s} {spec.name} ({outcome['elapsed_s']:.1f} s)"
            + (f": {outcome['error']}" if outcome["error"] else ""))
        yield outcome


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _local_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Environment of a local Ray instance's processes: the package importable in every worker without a
#: runtime_env (workers for a job runtime_env are started for it, so the ones Ray prestarts at start-up
#: may sit idle), and no usage-stats reporting.
_LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
#: What a sweep on one machine needs of Ray, and no more: the raylet waits longer for its (Python)
#: agents, which start slowly on a busy machine, and no metrics are collected while the runs compute.
_LOCAL_RAY_CONFIG = {"agent_register_timeout_ms": 120_000, "raylet_start_wait_time_s": 120,
                     "enable_metrics_collection": False}


def _start_local_ray(num_cpus: int | None = None, *, quiet: bool = False, attempts: int = 3) -> float:
    """Start a local Ray instance for a sweep on this machine; returns the seconds it took.

    No dashboard, no usage stats, no metrics, no runtime_env: its processes inherit this process's
    environment with the package root on ``PYTHONPATH`` (set only while Ray starts), so the
    workers Ray prestarts for the ``num_cpus`` cores (default: this process's cores) can run the tasks.
    The raylet waits a fixed 15 s for its dashboard agent; on a machine loaded by other jobs that can
    pass, so a timed-out start is retried.
    """
    import ray

    path = os.environ.get("PYTHONPATH", "")
    env = {**_LOCAL_RAY_ENV, "PYTHONPATH": _package_root() + (os.pathsep + path if path else "")}
    saved = {k: os.environ.get(k) for k in env}
    t0 = time.perf_counter()
    try:
        os.environ.update(env)
        for attempt in range(1, attempts + 1):
            try:
                ray.init(num_cpus=num_cpus or _local_cores(), include_dashboard=False, log_to_driver=not quiet,
                         _system_config=_LOCAL_RAY_CONFIG)
                break
            except Exception as err:  # Ray raises a bare Exception for the start-up timeout
                ray.shutdown()
                if "timed out during startup" not in str(err) or attempt == attempts:
                    raise
                _say(quiet)(f"  the local Ray instance did not start in time (attempt {attempt} of {attempts}): "
                            "retrying")
        return time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_ray(todo: list[RunSpec], resources: Mapping[str, float], address: str | None, quiet: bool,
             num_cpus: int | None = None) -> Iterable[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'ray==2.60.0' (see requirements.txt), "
                         "or run the grid without it: --engine local") from None
    from tqdm.auto import tqdm

    say = _say(quiet)
    started_here = False
    if not ray.is_initialized():
        if address:  # other hosts: the package root travels as the job's runtime_env
            path = os.environ.get("PYTHONPATH", "")
            runtime_env = {"env_vars": {"PYTHONPATH": _package_root() + (os.pathsep + path if path else "")}}
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=not quiet)
        else:
            say(f"  local Ray instance started in {_start_local_ray(num_cpus, quiet=quiet):.1f} s")
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
        bar = tqdm(total=len(pending), desc="sweep (ray)", unit="run", disable=quiet or not pending)
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
              num_cpus: int | None = None, quiet: bool = False) -> SweepResult:
    """Run every unfinished run of ``grid`` (a :class:`Grid` or a grid file) and write the index.

    ``engine``: ``ray`` (default where installed) or ``local``. ``address``: join this Ray cluster
    (e.g. ``"auto"`` on a node where ``ray start`` ran, or ``"HEAD:6379"``); without it a local
    Ray instance with ``num_cpus`` (default: all) cores is started and shut down afterwards.
    """
    say = _say(quiet)
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
        stream = (_run_ray(todo, grid.resources, address, quiet, num_cpus) if engine == "ray"
                  else _run_local(todo, quiet))
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
    from probelib.suite import _load_manifest, collect_verdicts

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
    from probelib.suite import _md_escape, save_table

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


# --------------------------------------------------------------------------- command line

def _cmd_sweep(args: argparse.Namespace) -> int:
    resources = {"num_cpus": args.num_cpus_per_run, "num_gpus": args.num_gpus_per_run}
    grid = load_grid(args.grid, out=args.out, only=args.only, resources=resources)
    if args.list:
        for spec, done in plan_runs(grid):
            print(f"{'done' if done else 'todo':5s} {spec.name:40s} {spec.folder}")
        return 0
    result = run_sweep(grid, engine=args.engine, address=args.address, num_cpus=args.num_cpus)
    return 0 if result.ok else 1


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep``: ``python -m probelib sweep GRID.yaml`` runs a grid of suite runs."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of suite runs (Ray, or --engine local) and stack their tables",
        description="Run every parameter set of GRID.yaml as a suite run into its own folder, skip runs "
                    "finished before, and write <out>/index.md with the stacked tables and every run's "
                    "verdicts. Exit status 1 when a run failed.")
    p.add_argument("grid", help="grid file (YAML), e.g. grids/mnist5k.yaml")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="ray: one Ray task per run (default where Ray is installed); local: one after another")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto, or HEAD_IP:6379); default: a local instance")
    p.add_argument("--num-cpus", type=int, dest="num_cpus",
                   help="cores of the local Ray instance (default: all of this machine's)")
    p.add_argument("--num-cpus-per-run", type=float, dest="num_cpus_per_run",
                   help="override the grid's resources.num_cpus")
    p.add_argument("--num-gpus-per-run", type=float, dest="num_gpus_per_run",
                   help="override the grid's resources.num_gpus")
    p.add_argument("--only", nargs="+", action="extend", metavar="NB",
                   help="notebooks each run executes (overrides the grid's 'only')")
    p.add_argument("--out", help="sweep folder (default: the grid's 'out', else results/sweeps/<name>)")
    p.add_argument("--list", action="store_true", help="list the runs and whether each is done; run nothing")
    p.set_defaults(func=_cmd_sweep)
