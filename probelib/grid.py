"""Grid files (``python -m probelib sweep GRID.yaml``): read, validate, expand into runs.

A grid file names the notebooks each run executes, the parameters every run shares, and the
axes whose every combination is one *run* (one parameter set, as the NCG authors' ``params.py``)::

    name: mnist5k                  # optional (default: the file name)
    only: [00-01]                  # notebooks per run (default: the whole suite); as `run --only`
    smoke: false
    parameters:                    # the same in every run (notebook parameters)
      dataset: mnist5k
      methods: [natural, trades, at]
    grid:                          # axes: one run per combination
      held_out: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
      eps: [2.0]
    resources: {num_cpus: 2, num_gpus: 0}   # declared per run (Ray places runs by them)

:func:`load_grid` refuses, before any run, an unknown key or parameter, an empty axis or a value
of the wrong type (:class:`GridError` names the entry and the fix). Each run (:class:`RunSpec`)
goes into its own folder ``<out>/runs/<name>-<key>`` (``key`` hashes the parameter set); a run
whose folder holds :data:`DONE_MARKER` with the same key is done (:func:`plan_runs`).
:mod:`probelib.sweep` runs them.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probelib.store import fingerprint

__all__ = ["GridError", "Grid", "RunSpec", "DONE_MARKER", "load_grid", "parse_grid", "plan_runs"]

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
    from probelib.parameters import RESERVED, notebook_parameters
    from probelib.runner import discover_notebooks, select_notebooks

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
    known = sorted(set().union(*declared.values()) - set(RESERVED) - {"smoke"})
    for name in list(axes) + list(shared):
        if name in RESERVED:
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
