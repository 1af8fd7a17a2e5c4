"""The notebook commands of ``python -m probelib``: ``run`` (the suite), ``sweep`` (a grid of runs) and
``explore`` (notebook 40 as a web app).

They share one way to pass notebook parameters (``-p KEY VALUE``, ``-r KEY VALUE``, ``-f
params.yaml``, ``--smoke``) and to choose notebooks (``--only``); each command reads its options
and calls :func:`probelib.runner.run_suite`, :func:`probelib.sweep.run_sweep` or
:func:`probelib.explorer_app.start_explorer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["COMMANDS", "add_cli"]


# --------------------------------------------------------------------------- shared options

def _add_parameter_options(p: argparse.ArgumentParser, what: str, smoke: str) -> None:
    """``-p``/``-r``/``-f`` (notebook parameters) and ``--smoke``; read back by :func:`_parameters`."""
    p.add_argument("-p", "--parameters", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help=f"{what} (True/False/None/numbers converted)")
    p.add_argument("-r", "--parameters-raw", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="parameter kept as a string")
    p.add_argument("-f", "--parameters-file", action="append", metavar="PARAMS.yaml",
                   help="YAML file of parameters")
    p.add_argument("--smoke", action="store_true", help=smoke)


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters ``-f`` files, then ``-p`` and ``-r`` give, later ones winning."""
    from probelib.parameters import load_parameter_file, parse_parameter_value

    parameters: dict[str, Any] = {}
    for f in args.parameters_file or []:
        parameters.update(load_parameter_file(f))
    for key, value in args.parameters or []:
        parameters[key] = parse_parameter_value(value)
    for key, value in args.parameters_raw or []:
        parameters[key] = value
    return parameters


def _add_only(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--only", nargs="+", action="extend", metavar="NB", help=help)


# --------------------------------------------------------------------------- run

def _cmd_run(args: argparse.Namespace) -> int:
    from probelib.parameters import notebook_parameters
    from probelib.runner import default_jobs, discover_notebooks, run_suite, select_notebooks

    overrides = _parameters(args)
    if args.list:
        for nb in select_notebooks(discover_notebooks(args.notebooks), args.only, args.skip):
            print(f"{nb.stem:28s} {', '.join(notebook_parameters(nb))}")
        return 0
    try:
        result = run_suite(notebooks_dir=args.notebooks, dataset=args.dataset, only=args.only,
                           skip=args.skip, parameters=overrides, smoke=args.smoke, out=args.out,
                           fresh=args.fresh, execution_timeout=args.timeout, keep_going=args.keep_going,
                           progress_every=args.progress_every,
                           jobs=default_jobs() if args.jobs == "auto" else args.jobs)
    except KeyboardInterrupt:  # the runner killed its kernels; exit now, not when their threads have noticed
        print("interrupted: the running notebooks were stopped; a re-run reuses what was already computed",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except OSError as err:  # a full disk, a folder that became read-only: one line, no traceback
        if isinstance(err, FileNotFoundError) and err.filename is None:
            raise
        import errno
        where = f" {err.filename!r}" if err.filename else ""
        fix = ("free space on that disk or pass --out on another" if err.errno == errno.ENOSPC else
               "make it writable or pass --out / PROBELIB_PRECOMPUTED elsewhere")
        print(f"error: cannot write{where}: {err.strerror or err}; {fix}. Re-running reuses what was "
              "already computed", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="dataset for notebooks declaring a 'dataset' parameter "
                                     "(default: each notebook's own, the embedded mnist5k family)")
    _add_only(p, "run only these notebooks: numbers (3, 03), ranges (30-33), or names "
                 "(05_neighbour_visualisation, neighbour_visualisation); commas work too")
    p.add_argument("--skip", nargs="+", action="extend", metavar="NB", help="skip these notebooks (as --only)")
    _add_parameter_options(p, "papermill parameter override", "tiny sizes (smoke=True) for a quick check")
    p.add_argument("--out", help="results folder (default results/<dataset family>, e.g. results/mnist5k)")
    p.add_argument("--fresh", action="store_true",
                   help="recompute every artifact once (ignores what precomputed/ holds; deletes nothing)")
    p.add_argument("--keep-going", action="store_true",
                   help="after a failing notebook, run the rest anyway (the exit status still says it failed)")
    p.add_argument("--notebooks", help="folder of NN_name.ipynb notebooks (default: the project's notebooks/)")
    p.add_argument("--timeout", type=float, default=None, help="per-cell time limit in seconds (default: none)")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="while a notebook runs, print its current cell and latest output line at most this "
                        "often (default: 10; 0: every cell and output)")
    p.add_argument("--jobs", type=_jobs, default="auto", metavar="N",
                   help="notebooks run side by side, each after the ones its metadata names (default: auto = "
                        "the cores, at most 4; 1: one by one in suite order)")
    p.add_argument("--list", action="store_true", help="list the selected notebooks and their parameters, run nothing")


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--jobs takes a whole number >= 1 or 'auto', not {text!r}")
    return value


# --------------------------------------------------------------------------- sweep

def _cmd_sweep(args: argparse.Namespace) -> int:
    from probelib.grid import load_grid, plan_runs
    from probelib.sweep import run_sweep

    resources = {"num_cpus": args.num_cpus_per_run, "num_gpus": args.num_gpus_per_run}
    grid = load_grid(args.grid, out=args.out, only=args.only, resources=resources)
    if args.list:
        for spec, done in plan_runs(grid):
            print(f"{'done' if done else 'todo':5s} {spec.name:40s} {spec.folder}")
        return 0
    result = run_sweep(grid, engine=args.engine, address=args.address, num_cpus=args.num_cpus)
    return 0 if result.ok else 1


def _sweep_options(p: argparse.ArgumentParser) -> None:
    from probelib.sweep import ENGINES

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
    _add_only(p, "notebooks each run executes (overrides the grid's 'only')")
    p.add_argument("--out", help="sweep folder (default: the grid's 'out', else results/sweeps/<name>)")
    p.add_argument("--list", action="store_true", help="list the runs and whether each is done; run nothing")


# --------------------------------------------------------------------------- explore

def _cmd_explore(args: argparse.Namespace) -> int:
    from probelib.explorer_app import start_explorer, stop_explorer

    parameters = _parameters(args)
    if args.smoke:
        parameters["smoke"] = True
    proc, url = start_explorer(parameters, port=args.port)
    print(f"severity explorer: {url}  (Ctrl-C stops it)", flush=True)
    try:
        return proc.wait() and 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_explorer(proc)


def _explore_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 = any free port)")
    _add_parameter_options(p, "initial state, as for run: dataset, model, corruption, severity, adabn, compare, "
                              "eps, n_images, smoke, device", "tiny models and 64 images (smoke=True)")


# --------------------------------------------------------------------------- the commands

#: name: (what it runs, its options, one-line help, description)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str, str]] = {
    "run": (_cmd_run, _run_options, "run the notebook suite with papermill and write results/<name>/index.md",
            "Run the ordered notebooks (notebooks/NN_name.ipynb) with papermill, write the executed notebooks, "
            "tables and figures under --out, and an index.md/index.html report. Stops at the first failing "
            "notebook (exit status 1)."),
    "explore": (_cmd_explore, _explore_options, "serve the severity explorer (notebook 40) as a web app with Voilà",
                "Serve notebooks/40_severity_explorer.ipynb as a standalone web page (Voilà, code hidden) on "
                "127.0.0.1 and print its URL. Models come from the project's precomputed/ store (trained on "
                "first use)."),
    "sweep": (_cmd_sweep, _sweep_options, "run a grid of suite runs (Ray, or --engine local) and stack their tables",
              "Run every parameter set of GRID.yaml as a suite run into its own folder, skip runs finished before, "
              "and write <out>/index.md with the stacked tables and every run's verdicts. Exit status 1 when a "
              "run failed."),
}


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add :data:`COMMANDS` (``run``, ``explore``, ``sweep``) to ``python -m probelib``."""
    for name, (func, options, summary, description) in COMMANDS.items():
        p = subparsers.add_parser(name, help=summary, description=description)
        p.set_defaults(func=func)
        options(p)
