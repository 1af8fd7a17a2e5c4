"""The notebook suite: the ordered notebook list and the runner (``python -m probelib run``).

Notebooks live in ``notebooks/`` as ``NN_name.ipynb`` and run in the order of ``NN``.
:func:`run_suite` executes them (:func:`probelib.execute.execute_notebook`: papermill in a kernel
of the current interpreter), writes each executed notebook atomically to ``<out>/notebooks/``,
stops at the first failing cell (keeping that notebook with its traceback), and writes
``<out>/index.md`` and ``<out>/index.html`` (:mod:`probelib.report`). While it runs it prints one
line per notebook with an estimate of the time left (from the previous run's per-notebook times)
and, inside each notebook, the cell being run and its latest output line.

With ``jobs`` > 1, notebooks run side by side: a notebook starts once the notebooks it runs after
have finished. Each notebook says which in its metadata, ``"probelib": {"after": [stems]}``
(without it: after every earlier notebook); ``"exclusive": true`` runs it alone with every core
(``00_precompute``, which the others wait for). Other kernels get ``OMP_NUM_THREADS`` = cores //
jobs, so side-by-side notebooks share the cores instead of fighting over them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from probelib._util import local_cores, unknown_name
from probelib.execute import CellProgress, execute_notebook, kernel_env, kill_running_kernels
from probelib.parameters import RESERVED, check_parameters, notebook_parameters
from probelib.report import OUTPUTS_LOG_ENV, _fmt_time, _load_manifest, _version, recorded_outputs, write_report

__all__ = ["Notebook", "DEFAULT_NOTEBOOKS", "discover_notebooks", "select_notebooks", "RunOrder", "run_order",
           "NotebookResult",
           "SuiteResult", "check_writable_dir", "default_jobs", "run_suite"]


# --------------------------------------------------------------------------- the notebook list

NOTEBOOK_FILE = re.compile(r"^(?P<number>\d+)_(?P<name>[A-Za-z0-9][\w-]*)\.ipynb$")
DEFAULT_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DEFAULT_FAMILY = "mnist5k"


@dataclass(frozen=True)
class Notebook:
    """One suite notebook ``NN_name.ipynb``: its number, short name and path."""

    number: int
    name: str  # "ncg_tables"
    path: Path

    @property
    def stem(self) -> str:
        """The file name without ``.ipynb``, e.g. ``"01_ncg_tables"``."""
        return self.path.stem


def discover_notebooks(folder: str | os.PathLike | None = None) -> list[Notebook]:
    """The ``NN_name.ipynb`` notebooks in ``folder`` (default: the project's ``notebooks/``), in order."""
    folder = Path(folder) if folder is not None else DEFAULT_NOTEBOOKS
    if not folder.is_dir():
        raise FileNotFoundError(f"notebook folder {str(folder)!r} does not exist; pass --notebooks DIR "
                                "pointing at the folder that holds the NN_name.ipynb notebooks")
    found = []
    for path in folder.iterdir():
        m = NOTEBOOK_FILE.match(path.name)
        if m and path.is_file():
            found.append(Notebook(int(m["number"]), m["name"], path.resolve()))
    return sorted(found, key=lambda nb: (nb.number, nb.name))


def _order_metadata(nb: Notebook) -> tuple[list[str] | None, bool]:
    """``(after, exclusive)`` from the notebook's ``"probelib"`` metadata (None: after every earlier one)."""
    import json

    try:
        meta = json.loads(nb.path.read_text(encoding="utf-8")).get("metadata", {}).get("probelib", {})
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"cannot read notebook {str(nb.path)!r}: {err}; fix or remove the file") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{nb.path.name}: metadata 'probelib' must be a mapping, e.g. "
                         '{"after": ["00_precompute"]}, not ' + repr(meta))
    unknown = sorted(set(meta) - {"after", "exclusive"})
    if unknown:
        raise ValueError(f"{nb.path.name}: unknown key(s) {unknown} in metadata 'probelib' (known: after, exclusive)")
    after, exclusive = meta.get("after"), meta.get("exclusive", False)
    if after is not None and not (isinstance(after, list) and all(isinstance(a, str) for a in after)):
        raise ValueError(f"{nb.path.name}: metadata probelib.after must be a list of notebook names such as "
                         f'["00_precompute"], not {after!r}')
    if not isinstance(exclusive, bool):
        raise ValueError(f"{nb.path.name}: metadata probelib.exclusive must be true or false, not {exclusive!r}")
    return after, exclusive


class RunOrder(NamedTuple):
    """When a chosen notebook may start: after ``after`` (chosen notebooks); ``exclusive``: alone;
    ``declared``: ``after`` comes from its metadata, so it needs their results and is skipped when
    one fails (an undeclared order, every earlier notebook, only orders: ``--keep-going`` runs it)."""

    after: set[str]
    exclusive: bool
    declared: bool


def run_order(chosen: Sequence[Notebook], notebooks: Sequence[Notebook]) -> dict[str, RunOrder]:
    """For each chosen notebook, its :class:`RunOrder`.

    ``after`` names earlier notebooks of ``notebooks`` by stem; one that is not chosen is taken as
    done (its results are in the store). A name that is unknown, or not earlier, is refused.
    """
    position = {nb.stem: i for i, nb in enumerate(notebooks)}
    chosen_stems = {nb.stem for nb in chosen}
    order: dict[str, RunOrder] = {}
    for nb in chosen:
        after, exclusive = _order_metadata(nb)
        if after is None:
            needs = {other.stem for other in chosen if position[other.stem] < position[nb.stem]}
        else:
            for name in after:
                if name not in position:
                    raise unknown_name(f"notebook in {nb.path.name}'s metadata probelib.after", name, position)
                if position[name] >= position[nb.stem]:
                    raise ValueError(f"{nb.path.name}: metadata probelib.after names {name!r}, which is not an "
                                     "earlier notebook; a notebook can only run after earlier ones")
            needs = {name for name in after if name in chosen_stems}
        order[nb.stem] = RunOrder(needs, exclusive, after is not None)
    return order


def default_jobs() -> int:
    """``--jobs auto``: as many notebooks at a time as there are cores, at most 4."""
    return max(1, min(4, local_cores()))


def _match(token: str, notebooks: Sequence[Notebook]) -> list[Notebook]:
    token = token.strip()
    if token.endswith(".ipynb"):
        token = token[:-len(".ipynb")]
    token = Path(token).name
    span = re.fullmatch(r"(\d+)-(\d+)", token)
    if span:
        lo, hi = int(span[1]), int(span[2])
        hits = [nb for nb in notebooks if lo <= nb.number <= hi]
    elif token.isdigit():
        hits = [nb for nb in notebooks if nb.number == int(token)]
    else:
        hits = [nb for nb in notebooks if token in (nb.stem, nb.name)]
    if not hits:
        valid = [nb.stem for nb in notebooks] + [nb.name for nb in notebooks]
        raise unknown_name("notebook", token, valid)
    return hits


def _tokens(values: Iterable[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, int)):
        values = [values]
    return [t for v in values for t in str(v).split(",") if t.strip()]


def select_notebooks(notebooks: Sequence[Notebook], only: Iterable[str] | str | None = None,
                     skip: Iterable[str] | str | None = None) -> list[Notebook]:
    """The notebooks to run: ``only`` (if given) minus ``skip``, in suite order.

    Each token is a number (``5`` or ``05``), a range (``30-33``), a file stem (``01_ncg_tables``)
    or a short name (``ncg_tables``); comma-separated lists work too. An unknown token raises
    a ValueError listing the valid names.
    """
    chosen = list(notebooks)
    only_tokens, skip_tokens = _tokens(only), _tokens(skip)
    if only_tokens:
        wanted = {nb.path for t in only_tokens for nb in _match(t, notebooks)}
        chosen = [nb for nb in chosen if nb.path in wanted]
    dropped = {nb.path for t in skip_tokens for nb in _match(t, notebooks)}
    return [nb for nb in chosen if nb.path not in dropped]


# --------------------------------------------------------------------------- running


@dataclass
class NotebookResult:
    """What running one notebook gave: its status, output notebook, time and outputs."""

    notebook: Notebook
    status: str  # "ok", "failed", "not run"
    output: Path | None = None
    elapsed_s: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class SuiteResult:
    """The outcome of :func:`run_suite`: per-notebook results and the report's paths."""

    out: Path
    results: list[NotebookResult]
    index_md: Path
    index_html: Path
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when every selected notebook ran without error."""
        return all(r.status == "ok" for r in self.results)

    @property
    def failed(self) -> NotebookResult | None:
        """The notebook that failed, if any."""
        return next((r for r in self.results if r.status == "failed"), None)


def _first_error(nb_path: Path) -> str | None:
    import nbformat

    try:
        nb = nbformat.read(str(nb_path), as_version=4)
    except Exception:  # pragma: no cover - an unreadable output is reported as such
        return None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return None


def check_writable_dir(path: Path, what: str, fix: str) -> None:
    """Raise a one-line error unless ``path`` is (or can be created as) a folder this process can write in.

    The check writes and removes a probe file, so it holds for root, read-only mounts and ACLs alike;
    a folder that does not exist yet is not created (its nearest existing parent is probed).
    """
    import errno
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a folder; {fix}")
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be created: {str(probe_dir)!r} is a file; {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".probelib-write-check-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = ("the disk is full" if err.errno == errno.ENOSPC else
                  "it is on a read-only file system" if err.errno == errno.EROFS else
                  "permission denied" if err.errno in (errno.EACCES, errno.EPERM) else err.strerror or str(err))
        raise ValueError(f"{what} {str(path)!r} is not writable ({reason} in {str(probe_dir)!r}); {fix}") from None


def _default_out(dataset: str | None) -> Path:
    family = DEFAULT_FAMILY
    if dataset:
        from probelib.data import parse_name

        family = parse_name(dataset)[0]
    from probelib.paths import project_path

    return project_path("results") / family


def run_suite(*, notebooks_dir: str | os.PathLike | None = None, dataset: str | None = None,
              only: Iterable[str] | str | None = None, skip: Iterable[str] | str | None = None,
              parameters: Mapping[str, Any] | None = None, smoke: bool = False,
              out: str | os.PathLike | None = None, fresh: bool = False,
              cwd: str | os.PathLike | None = None, execution_timeout: float | None = None,
              env: Mapping[str, str] | None = None, keep_going: bool = False, progress: bool = True,
              progress_every: float = 10.0, jobs: int = 1) -> SuiteResult:
    """Run the ordered notebooks with papermill and write the results report.

    ``dataset`` goes to notebooks that declare a ``dataset`` parameter (None keeps each
    notebook's default); ``parameters`` (papermill overrides) go to every notebook declaring
    them, and a name that no selected notebook declares raises ValueError before anything runs.
    ``smoke`` passes ``smoke=True``; ``results_dir`` is always ``out`` (default
    ``results/<dataset family>``). ``fresh`` makes the kernels' artifact store recompute what it
    holds (``PROBELIB_FRESH_SINCE`` = the start time), once, without deleting anything.
    The run stops at the first failing notebook; ``SuiteResult.failed`` names it and its
    output notebook keeps the traceback. ``cwd`` (default: the notebook folder's parent) is
    where the kernels run, so a relative ``precomputed/`` store lands in the project root.
    ``env`` adds variables to the kernels' environment (e.g. ``PROBELIB_PRECOMPUTED``);
    ``keep_going`` runs the remaining notebooks after a failure (the result still fails).
    With ``progress`` (the default), one line per notebook (with the time left by the last run's
    times) and, while it runs, its progress (:class:`~probelib.execute.CellProgress`: the code cell
    being run and the notebook's latest output line, at most one line every ``progress_every``
    seconds) are printed; ``progress=False`` prints nothing.
    ``jobs``: how many notebooks may run at once (see the module docstring for the order each
    notebook declares); with ``jobs`` = 1 they run one by one in suite order. After a failure no
    new notebook starts (the running ones finish); with ``keep_going`` only the notebooks that run
    after a failed one are left out.
    """
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    # ---- check everything before writing anything
    all_notebooks = discover_notebooks(notebooks_dir)
    if not all_notebooks:
        raise FileNotFoundError(f"no NN_name.ipynb notebooks in {str(notebooks_dir or DEFAULT_NOTEBOOKS)!r}")
    chosen = select_notebooks(all_notebooks, only=only, skip=skip)
    if not chosen:
        raise ValueError("--only/--skip left no notebook to run; valid notebooks: "
                         + ", ".join(nb.stem for nb in all_notebooks))
    overrides = dict(parameters or {})
    for key in RESERVED:
        if key in overrides:
            raise ValueError(f"parameter {key!r} is set by the runner; use --out DIR (out=...) instead")
    declared = {nb.stem: notebook_parameters(nb) for nb in chosen}
    known = set().union(*declared.values())
    for key in overrides:
        if key not in known:
            raise unknown_name("parameter", key, known or ["(none declared)"])
    check_parameters(overrides, declared)  # types and ranges, before any kernel starts
    if execution_timeout is not None and not (isinstance(execution_timeout, (int, float))
                                              and not isinstance(execution_timeout, bool)
                                              and math.isfinite(execution_timeout) and execution_timeout > 0):
        raise ValueError(f"--timeout must be a finite number of seconds > 0 (or omitted for none), "
                         f"got {execution_timeout!r}")
    if dataset is not None:
        from probelib.data import parse_name

        parse_name(dataset)  # an unknown dataset name fails here, before any notebook runs
    out = (Path(out) if out is not None else _default_out(dataset)).resolve()
    cwd = Path(cwd).resolve() if cwd is not None else chosen[0].path.parent.parent
    check_writable_dir(out, "--out", "pass --out DIR naming a folder you can write to")
    store_root = Path(dict(env or {}).get("PROBELIB_PRECOMPUTED") or os.environ.get("PROBELIB_PRECOMPUTED")
                      or "precomputed")
    store_root = store_root if store_root.is_absolute() else cwd / store_root
    check_writable_dir(store_root, "the artifact store", "make it writable, or point PROBELIB_PRECOMPUTED at "
                       "a writable folder")
    if not (isinstance(progress_every, (int, float)) and math.isfinite(progress_every) and progress_every >= 0):
        raise ValueError(f"progress_every must be a finite number of seconds >= 0, got {progress_every!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number of notebooks >= 1 (or --jobs auto), got {jobs!r}")
    order = run_order(chosen, all_notebooks)

    started = time.time()
    env = {**kernel_env(started if fresh else None), **dict(env or {})}
    results: list[NotebookResult] = []
    for nb in chosen:
        params: dict[str, Any] = {"results_dir": str(out)}
        if dataset is not None and "dataset" in declared[nb.stem]:
            params["dataset"] = dataset
        if smoke and "smoke" in declared[nb.stem]:
            params["smoke"] = True
        params.update({k: v for k, v in overrides.items() if k in declared[nb.stem]})
        results.append(NotebookResult(nb, "not run", parameters=params))

    say(f"probelib {_version()}: {len(chosen)} notebook(s) -> {out}"
        + (" [smoke]" if smoke else "") + (" [fresh]" if fresh else "")
        + (f" [{jobs} at a time]" if jobs > 1 else ""))
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_times(out)  # progress hook: the ETA comes from the last run's per-notebook times
    threads = {} if jobs == 1 or "OMP_NUM_THREADS" in env or "OMP_NUM_THREADS" in os.environ else \
        {"OMP_NUM_THREADS": str(max(1, local_cores() // jobs))}
    n = len(results)
    by_stem = {r.notebook.stem: r for r in results}
    # one at a time: suite order; side by side: the longest chain first
    priority = _priorities(order, previous, smoke) if jobs > 1 else {stem: i for i, stem in enumerate(order)}
    started_count = 0

    def run_one(res: NotebookResult, label: str, logs: Path) -> None:
        nb = res.notebook
        log = logs / f"{nb.stem}.outputs"
        kernel_env_nb = {**env, **({} if order[nb.stem].exclusive else threads), OUTPUTS_LOG_ENV: str(log)}
        t0 = time.time()
        output = out / "notebooks" / nb.path.name
        cells = CellProgress(label, say, progress_every) if progress else None
        try:
            with cells or contextlib.nullcontext():
                execute_notebook(nb, output, res.parameters, cwd=cwd, env=kernel_env_nb,
                                 execution_timeout=execution_timeout, progress=cells)
            res.status = "ok"
        except Exception as err:  # papermill's execution error, a dead kernel, a timeout
            res.status = "failed"
            res.error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        res.elapsed_s = time.time() - t0
        res.output = output if output.exists() else None
        res.tables, res.figures = recorded_outputs(log, out)
        if res.status == "failed":
            if res.output is not None:
                res.error = _first_error(res.output) or res.error
            say(f"{label} FAILED after {res.elapsed_s:.1f} s: {res.error}")
            where = res.output if res.output is not None else "(no output notebook was written)"
            say(f"  executed notebook with the traceback: {where}")
        else:
            say(f"{label} ok in {res.elapsed_s:.1f} s")

    import tempfile
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending = [r.notebook.stem for r in results]
    running: dict[Any, str] = {}
    stopped = False
    # The pool is shut down by hand: on Ctrl-C the runner must not wait for the notebooks' threads
    # (each ends once it sees its kernel gone); the logs folder may still be written by them then.
    with tempfile.TemporaryDirectory(prefix="probelib-run-", ignore_cleanup_errors=True) as logs:
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="notebook")
        try:
            while pending or running:
                busy = set(running.values())
                for stem in list(pending):  # one that needs a failed (or skipped) notebook's results is skipped
                    blocked = sorted(d for d in order[stem].after if by_stem[d].status == "failed"
                                     or (d not in pending and d not in busy and by_stem[d].status == "not run"))
                    if blocked and order[stem].declared:
                        pending.remove(stem)
                        by_stem[stem].error = f"not run: it runs after {blocked[0]}, which did not finish"
                if not stopped:
                    unfinished = set(pending) | busy
                    ready = sorted((stem for stem in pending if not order[stem].after & unfinished),
                                   key=lambda stem: priority[stem])
                    for stem in ready:
                        exclusive = order[stem].exclusive
                        if len(running) >= jobs or any(order[r].exclusive for r in busy) or (exclusive and running):
                            break
                        pending.remove(stem)
                        started_count += 1
                        label = f"[{started_count}/{n}] {stem}"
                        say(f"{label} ... (elapsed {_fmt_time(time.time() - started)}"
                            + _eta([stem, *pending], previous, smoke, left=jobs == 1) + ")")
                        running[pool.submit(run_one, by_stem[stem], label, Path(logs))] = stem
                        busy.add(stem)
                        if exclusive:
                            break
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    stem = running.pop(future)
                    future.result()  # run_one records every notebook error; anything else is a bug: raise it
                    if by_stem[stem].status == "failed" and not keep_going:
                        stopped = True
        except BaseException:  # Ctrl-C (or a bug here): stop the running notebooks now, not when they end
            kill_running_kernels()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    elapsed = time.time() - started
    run_info = {"started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
                "elapsed_s": round(elapsed, 1), "dataset": dataset, "smoke": smoke, "fresh": fresh,
                "overrides": overrides, "notebooks_dir": str(chosen[0].path.parent),
                "command": " ".join(["python -m probelib run"] + sys.argv[2:]) if _from_cli() else None}
    index_md, index_html = write_report(out, results, run_info)
    failed = [r.notebook.stem for r in results if r.status == "failed"]
    if not failed:
        say(f"done: {n} notebook(s) in {_fmt_time(elapsed)}; report: {index_md}")
    elif keep_going:
        say(f"{len(failed)} notebook(s) failed ({', '.join(failed)}); report: {index_md}")
    else:
        say(f"stopped at {failed[0]}; report so far: {index_md}")
    return SuiteResult(out, results, index_md, index_html, elapsed)


def _previous_times(out: Path) -> dict[str, dict[str, Any]]:
    """Per-notebook ``{"elapsed_s", "smoke"}`` of the runs recorded in ``out``'s manifest."""
    manifest = _load_manifest(out)
    times = {}
    for stem, e in (manifest.get("notebooks") or {}).items():
        if isinstance(e, dict) and e.get("status") == "ok" and isinstance(e.get("elapsed_s"), (int, float)):
            smoke = bool((e.get("parameters") or {}).get("smoke", False))
            times[stem] = {"elapsed_s": float(e["elapsed_s"]), "smoke": smoke}
    return times


def _eta(remaining: Sequence[str], previous: Mapping[str, Mapping[str, Any]], smoke: bool, left: bool = True) -> str:
    """``"; last run took m:ss, left ~m:ss"`` (``remaining[0]`` is the notebook starting) from earlier
    runs of the same size, or "" when unknown; ``left=False``: this notebook's time only."""
    known = [previous[s]["elapsed_s"] for s in remaining if s in previous and previous[s]["smoke"] == smoke]
    if not remaining or remaining[0] not in previous or previous[remaining[0]]["smoke"] != smoke:
        return "" if not known or not left else f"; left ≥ ~{_fmt_time(sum(known))} by the last run's times"
    took = f"; last run took {_fmt_time(previous[remaining[0]]['elapsed_s'])}"
    if not left:
        return took
    left_text = f"~{_fmt_time(sum(known))}" if len(known) == len(remaining) else f"≥ ~{_fmt_time(sum(known))}"
    return f"{took}, left {left_text}"


def _priorities(order: Mapping[str, RunOrder], previous: Mapping[str, Mapping[str, Any]],
                smoke: bool) -> dict[str, tuple[float, int, int]]:
    """Which ready notebook starts first: the one heading the longest chain of notebooks that run after
    it (by the last run's times, else one unit each), then the one more notebooks wait for, then
    suite order. A sort key: smaller starts first."""
    stems = list(order)
    known = {s: previous[s]["elapsed_s"] for s in stems if s in previous and previous[s]["smoke"] == smoke}
    cost = known if len(known) == len(stems) else dict.fromkeys(stems, 1.0)  # mixed units would mislead
    after_me = {s: [t for t in stems if s in order[t].after] for s in stems}
    chain: dict[str, float] = {}
    waiting: dict[str, set[str]] = {}
    for s in reversed(stems):  # every notebook runs after earlier ones only
        chain[s] = cost[s] + max((chain[t] for t in after_me[s]), default=0.0)
        waiting[s] = set(after_me[s]).union(*(waiting[t] for t in after_me[s]))
    return {s: (-chain[s], -len(waiting[s]), i) for i, s in enumerate(stems)}


def _from_cli() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "run"

