"""The notebook suite: output helpers the notebooks call, the ordered notebook list, the runner.

Notebooks live in ``notebooks/`` as ``NN_name.ipynb`` and run in the order of ``NN``.
:func:`run_suite` (``python -m probelib run``) executes them with papermill in a kernel of the
current interpreter, writes each executed notebook atomically to ``<out>/notebooks/``, stops at
the first failing cell (keeping that notebook with its traceback), and writes ``<out>/index.md``
and ``<out>/index.html`` (:mod:`probelib.report`): the claim table, every executed notebook, table,
figure and verdict line, with the parameters and the probelib version used. While a notebook runs,
its current cell and latest output line are printed (:class:`CellProgress`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from probelib._util import check_name, unknown_name
from probelib.report import (VERDICT_MIME, VERDICT_PREFIX, Verdict, _fmt_time, _load_manifest, _md_escape,  # noqa: F401
                             _snapshot, _stems, _version, collect_claims, collect_verdicts, write_report)
from probelib.store import atomic_write

__all__ = ["VERDICT_PREFIX", "save_table", "save_figure", "verdict",
           "Notebook", "discover_notebooks", "select_notebooks", "notebook_parameters",
           "parse_parameter_value", "load_parameter_file", "NotebookResult", "SuiteResult", "execute_notebook",
           "CellProgress", "run_suite", "collect_verdicts", "collect_claims", "write_report", "Verdict", "kernel_manager_class", "add_cli"]



def _results_folder(results_dir: str | os.PathLike) -> Path:
    """A relative ``results_dir`` lies in the project (a kernel in notebooks/ writes to the project's results/)."""
    from probelib.paths import project_path

    return project_path(results_dir)


def save_table(df: pd.DataFrame, name: str, results_dir: str | os.PathLike,
               float_format: str = "%.4f") -> Path:
    """Save ``df`` as ``<results_dir>/tables/<name>.csv`` and ``.tex`` (atomically); return the CSV path."""
    check_name(name, "table name")
    folder = _results_folder(results_dir) / "tables"
    csv = folder / f"{name}.csv"
    with atomic_write(csv) as tmp:
        df.to_csv(tmp, float_format=float_format)
    with atomic_write(folder / f"{name}.tex") as tmp:
        tmp.write_text(df.to_latex(float_format=lambda v: float_format % v))
    return csv


def save_figure(fig, name: str, results_dir: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``<results_dir>/figures/<name>.png`` and ``.pdf`` (atomically)."""
    check_name(name, "figure name")
    folder = _results_folder(results_dir) / "figures"
    png = folder / f"{name}.png"
    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    with atomic_write(folder / f"{name}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight")
    return png


def verdict(text: str, *, claim: str | None = None, paper: str | None = None, result: str | None = None,
            p: float | None = None) -> str:
    """Print one verdict line (collected into the results report) and return it.

    With ``claim``, ``paper`` and ``result`` (or when ``text`` is a :class:`~probelib.report.Verdict`
    carrying them), the verdict also enters the report's claim table: in a kernel it is displayed
    as :data:`~probelib.report.VERDICT_MIME` data (front-ends show nothing for it). ``p`` is the
    test's p-value, None when it has none. The printed line is the same either way.
    """
    if claim is not None or paper is not None or result is not None:
        if claim is None or paper is None or result is None:
            raise ValueError("a structured verdict needs claim, paper and result together")
        text = Verdict(str(text), claim=claim, paper=paper, result=result, p=p)
    elif p is not None:
        raise ValueError("p is given only with claim, paper and result")
    line = VERDICT_PREFIX + str(text)
    print(line, flush=True)
    if isinstance(text, Verdict):
        _display_claim(text)
    return line


def _display_claim(v: Verdict) -> None:
    """Send ``v``'s record as display data when running in an IPython kernel; else do nothing."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    from IPython.display import display

    display({VERDICT_MIME: v.record(), "text/plain": ""}, raw=True)


# --------------------------------------------------------------------------- the notebook list

NOTEBOOK_FILE = re.compile(r"^(?P<number>\d+)_(?P<name>[A-Za-z0-9][\w-]*)\.ipynb$")
DEFAULT_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DEFAULT_FAMILY = "mnist5k"
_RESERVED = ("results_dir",)  # set by the runner itself (--out)


@dataclass(frozen=True)
class Notebook:
    """One suite notebook ``NN_name.ipynb``: its number, short name and path."""

    number: int
    name: str  # "pixel_ncg"
    path: Path

    @property
    def stem(self) -> str:
        """The file name without ``.ipynb``, e.g. ``"01_pixel_ncg"``."""
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

    Each token is a number (``3`` or ``03``), a range (``30-33``), a file stem (``03_chi_square``)
    or a short name (``chi_square``); comma-separated lists work too. An unknown token raises
    a ValueError listing the valid names.
    """
    chosen = list(notebooks)
    only_tokens, skip_tokens = _tokens(only), _tokens(skip)
    if only_tokens:
        wanted = {nb.path for t in only_tokens for nb in _match(t, notebooks)}
        chosen = [nb for nb in chosen if nb.path in wanted]
    dropped = {nb.path for t in skip_tokens for nb in _match(t, notebooks)}
    return [nb for nb in chosen if nb.path not in dropped]


# --------------------------------------------------------------------------- parameters

def notebook_parameters(notebook: Notebook | str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The parameters ``notebook`` declares in its ``parameters`` cell (papermill's ``inspect_notebook``).

    Maps each name to ``{"name", "inferred_type_name", "default", "help"}`` (``default`` is source text).
    """
    import papermill

    path = notebook.path if isinstance(notebook, Notebook) else Path(notebook)
    return papermill.inspect_notebook(str(path))


def parse_parameter_value(value: str) -> Any:
    """Convert a ``-p KEY VALUE`` string as papermill's command line does, and more strictly.

    ``True``/``False``/``None`` (any case: ``-p smoke false`` means False) become those values,
    integers and floats become numbers, anything else stays a string (use ``-r`` for a raw
    string, or ``-f params.yaml`` for lists and dicts). The value's type is then checked
    against the notebook's parameter by :func:`check_parameters`.
    """
    word = value.strip().lower()
    if word in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[word]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# What each notebook parameter may hold: (types, check or None, what the check demands). A value
# of another type, or one the check refuses, stops the run before any kernel starts; nothing is
# clamped. Parameters not listed here must have the type of their default in the notebook.
_LIST = (list, tuple)


def _finite_pos(v) -> bool:
    return math.isfinite(v) and v > 0


def _ints(lo: int, hi: int | None = None) -> Callable[[Any], bool]:
    return lambda v: all(lo <= i and (hi is None or i <= hi) for i in (v if isinstance(v, _LIST) else [v]))


def _names(valid: Callable[[], Iterable[str]]) -> Callable[[Any], bool]:
    return lambda v: all(n in set(valid()) for n in (v if isinstance(v, _LIST) else [v]))


def _corruption_names() -> list[str]:
    from probelib.corruptions import corruption_names
    return corruption_names(extra=True)


def _methods() -> list[str]:
    from probelib.training import METHODS
    return list(METHODS)


_ARMS = ("source", "adabn", "adabn+aug")
PARAMETER_RULES: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None, str]] = {
    "smoke": ((bool,), None, "True or False"),
    "adabn": ((bool,), None, "True or False"),
    "dataset": ((str,), None, "a dataset name such as 'mnist5kwo9'"),
    "device": ((str, type(None)), None, "None, 'cpu', 'cuda', 'cuda:<index>' or 'mps'"),
    "eps": ((float, int), _finite_pos, "a finite number > 0"),
    "alpha": ((float,), lambda v: 0 < v < 1, "a number in (0, 1)"),
    "momentum": ((float, int, type(None)), lambda v: v is None or 0 < v <= 1, "None or a number in (0, 1]"),
    "severity": ((int,), _ints(1, 5), "an integer in 1..5"),
    "bn_severity": ((int,), _ints(1, 5), "an integer in 1..5"),
    "severities": (_LIST, lambda v: len(v) > 0 and _ints(1, 5)(v), "a non-empty list of integers in 1..5"),
    "n_images": ((int, type(None)), lambda v: v is None or v >= 1, "None (all) or an integer >= 1"),
    "n_points": ((int,), _ints(1), "an integer >= 1"),
    "n_bins": ((int,), _ints(1), "an integer >= 1"),
    "n_examples": ((int,), _ints(1), "an integer >= 1"),
    "n_show": ((int,), _ints(1), "an integer >= 1"),
    "attack_steps": ((int, type(None)), lambda v: v is None or v >= 1, "None or an integer >= 1"),
    "size": ((int, type(None)), lambda v: v is None or v >= 1, "None or an integer >= 1"),
    "seed": ((int,), _ints(0), "an integer >= 0"),
    "image_index": ((int,), _ints(0), "an integer >= 0"),
    "held_out": ((int, type(None)) + _LIST, lambda v: v is None or _ints(0)(v), "None, a class index >= 0 or a list of them"),
    "ks": (_LIST + (type(None),), lambda v: v is None or (len(v) > 0 and _ints(1)(v)), "None or a non-empty list of integers >= 1"),
    "ms": (_LIST, lambda v: len(v) > 0 and _ints(0)(v), "a non-empty list of integers >= 0"),
    "methods": (_LIST, lambda v: len(v) > 0 and _names(_methods)(v), "a non-empty list of training methods"),
    "feature_methods": (_LIST, lambda v: len(v) > 0 and _names(_methods)(v), "a non-empty list of training methods"),
    "corruption": ((str,), _names(_corruption_names), "a corruption name"),
    "bn_corruption": ((str,), _names(_corruption_names), "a corruption name"),
    "corruptions": (_LIST + (type(None),), lambda v: v is None or (len(v) > 0 and _names(_corruption_names)(v)),
                    "None (all) or a non-empty list of corruption names"),
    "arm": ((str,), _names(lambda: _ARMS), f"one of {', '.join(_ARMS)}"),
    "arms": (_LIST, lambda v: len(v) > 0 and _names(lambda: _ARMS)(v), f"a non-empty list of {', '.join(_ARMS)}"),
    "exclude": (_LIST, lambda v: len(v) > 0 and _names(lambda: ("last", "first"))(v), "a list of 'last', 'first'"),
    "borders": (_LIST, lambda v: len(v) > 0 and _names(lambda: ("none", "black", "white"))(v),
                "a list of 'none', 'black', 'white'"),
}
_TYPE_WORDS = {bool: "True/False", int: "an integer", float: "a number", str: "a string", list: "a list",
               tuple: "a list", type(None): "None", dict: "a mapping"}


def _literal(default_text: str) -> tuple[bool, Any]:
    """``(True, value)`` when a parameters-cell default is a plain literal, else ``(False, None)``."""
    import ast
    try:
        return True, ast.literal_eval(default_text)
    except (ValueError, SyntaxError):
        return False, None


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a notebook parameter
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


_ELEMENTS = {**{k: int for k in ("severities", "ms", "ks", "held_out")},
             **{k: str for k in ("methods", "feature_methods", "corruptions", "arms", "exclude", "borders")}}


def _rule_holds(key: str, value: Any) -> bool:
    """Whether ``value`` satisfies :data:`PARAMETER_RULES` ``[key]`` (type, element type, range, finite)."""
    types, check, _ = PARAMETER_RULES[key]
    if not _type_ok(value, types):
        return False
    if isinstance(value, _LIST) and key in _ELEMENTS:
        kind = _ELEMENTS[key]
        if not all(isinstance(i, kind) and not isinstance(i, bool) for i in value):
            return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    try:
        return check is None or bool(check(value))
    except (TypeError, ValueError):
        return False


def check_parameters(values: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, with one line naming the parameter, a value of the wrong type or out of range.

    ``values``: the overrides (``-p``/``-r``/``-f``); ``declared``: per notebook stem, its
    parameters cell (:func:`notebook_parameters`). For each notebook declaring the name, the
    rule of :data:`PARAMETER_RULES` applies when the notebook's own default satisfies it (so a
    notebook that means something else by the name is not held to it); otherwise the value must
    have the type of the default (an int is accepted for a float; a None default takes anything).
    Non-finite floats are always refused. Nothing is converted or clamped.
    """
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"parameter {key}={value!r} is refused: it must be a finite number; nothing was run")
        for stem, params in declared.items():
            if key not in params:
                continue
            default_text = str(params[key].get("default", "None"))
            literal, default = _literal(default_text)
            if key in PARAMETER_RULES and (not literal or _rule_holds(key, default)):
                if not _rule_holds(key, value):
                    raise ValueError(f"parameter {key}={value!r} is refused: {key} must be "
                                     f"{PARAMETER_RULES[key][2]} (notebook {stem}); nothing was run")
                continue
            if not literal or default is None:
                continue
            expected = type(default)
            types = (float, int) if expected is float else _LIST if expected in _LIST else (expected,)
            if not _type_ok(value, types):
                raise ValueError(f"parameter {key}={value!r} is refused: notebook {stem} expects "
                                 f"{_TYPE_WORDS.get(expected, expected.__name__)} (its default is "
                                 f"{default_text}); nothing was run")
        if key == "device" and value is not None:
            from probelib._util import default_device
            try:
                default_device(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"parameter device={value!r} is refused: {err}; nothing was run") from None
        if key == "dataset" and isinstance(value, str):
            from probelib.data import parse_name
            parse_name(value)


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


def load_parameter_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a papermill-style YAML (or JSON) parameter file: a mapping of parameter name to value."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {str(path)!r} does not exist; -f expects a YAML file "
                                "such as 'epochs: 3' one parameter per line")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # includes Python tags (!!python/...), which safe_load never constructs
        raise ValueError(f"parameter file {str(path)!r} is not plain YAML ({str(err).splitlines()[0]}); write one "
                         "'name: value' per line with plain values (numbers, strings, lists; no !!python tags)") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"parameter file {str(path)!r} must hold a mapping of parameter names to values "
                         f"(e.g. 'epochs: 3'), got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- the kernel

def kernel_manager_class(env: Mapping[str, str] | None = None) -> type:
    """A jupyter ``KernelManager`` class whose kernels run this very interpreter (``sys.executable``).

    The kernelspec named in a notebook (``python3``) may resolve, through the user's Jupyter
    paths, to another Python; this class ignores the kernelspec search and starts
    ``sys.executable -m ipykernel_launcher``, with ``env`` added to the kernel's environment.
    """
    import zmq
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec

    client_class = _polling_client_class()

    spec = KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name=f"Python {platform.python_version()} ({sys.executable})",
        language="python", env=dict(env or {}),
        metadata={"debugger": True, "supported_encryption": ["curve"]})  # as ipykernel's own spec

    class ThisInterpreterKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.client_factory = client_class
            if zmq.has("curve"):  # encrypt kernel traffic where libzmq can (silences ipykernel's warning)
                self.transport_encryption = "auto"

        @property
        def kernel_spec(self):  # noqa: D401 - jupyter_client API
            return spec

    return ThisInterpreterKernelManager


def _polling_client_class() -> type:
    """An async kernel client whose channels wait for messages in 0.5 s polls, never unbounded.

    nbclient waits on the shell and IOPub sockets with ``timeout=None``; with ipywidgets
    (comm traffic, Output widgets) that wait sometimes misses a message that has arrived and
    hangs until some later traffic (jupyter/nbclient#312). Short polls re-check the socket.
    """
    from queue import Empty

    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.channels import AsyncZMQSocketChannel
    from traitlets import Type

    class PollingChannel(AsyncZMQSocketChannel):
        async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
            if timeout is not None and timeout <= 0.5:
                return await super().get_msg(timeout)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                try:
                    return await super().get_msg(wait)
                except Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise

    class PollingKernelClient(AsyncKernelClient):
        shell_channel_class = Type(PollingChannel)
        iopub_channel_class = Type(PollingChannel)
        stdin_channel_class = Type(PollingChannel)
        control_channel_class = Type(PollingChannel)

    return PollingKernelClient


def _kernel_env(fresh_since: float | None) -> dict[str, str]:
    """Extra environment for the kernels: this probelib first on the path; ``--fresh``'s cut-off."""
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": package_root + (os.pathsep + path if path else "")}
    if fresh_since is not None:
        env["PROBELIB_FRESH_SINCE"] = repr(fresh_since)
    return env


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


class CellProgress:
    """Progress lines for one running notebook: the code cell being run and the notebook's latest
    output line (its own prints and tqdm bars), at most one line every ``interval`` seconds.

    Events (:meth:`cell`, :meth:`output`) arrive from the runner's thread; while used as a context
    manager, a ticker thread prints a pending line once ``interval`` has passed, so a cell that runs
    for minutes without output still has its line printed. ``say`` prints one line.
    """

    _ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, label: str, say: Callable[[str], None], interval: float = 10.0, width: int = 110):
        import threading

        self.label, self.say, self.interval, self.width = label, say, float(interval), width
        self.n_cells = 0
        self._cell = 0
        self._line = ""
        self._t0 = time.monotonic()
        self._last_print = -math.inf
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Any = None

    def start(self, n_cells: int) -> None:
        """The notebook about to run has ``n_cells`` code cells (the injected parameters cell included)."""
        with self._lock:
            self.n_cells = n_cells

    def cell(self, number: int) -> None:
        """Code cell ``number`` (1-based) starts; its output line starts empty."""
        with self._lock:
            self._cell, self._line, self._dirty = number, "", True
        self.tick()

    def output(self, text: str) -> None:
        """A chunk of the notebook's stdout/stderr: its last non-blank line (after ``\\r``) is kept."""
        pieces = [p.strip() for p in re.split(r"[\r\n]", self._ANSI.sub("", text)) if p.strip()]
        if not pieces:
            return
        line = pieces[-1]
        line = line if len(line) <= self.width else line[:self.width - 1] + "…"
        with self._lock:
            self._line, self._dirty = line, True
        self.tick()

    def line(self) -> str:
        """The current progress line, e.g. ``[3/14] 03_chi_square cell 5/12 (0:42) 40%|████ | 4/10``: the
        cell being run, the time since the notebook started, the notebook's latest output line."""
        elapsed = _fmt_time(time.monotonic() - self._t0)
        return (f"{self.label} cell {self._cell}/{self.n_cells or '?'} ({elapsed})"
                + (f" {self._line}" if self._line else ""))

    def tick(self) -> None:
        """Print the pending line if ``interval`` has passed since the last one."""
        with self._lock:
            if not self._dirty or time.monotonic() - self._last_print < self.interval:
                return
            self._dirty, self._last_print = False, time.monotonic()
            text = self.line()
        self.say(text)

    def __enter__(self) -> "CellProgress":
        import threading

        def run() -> None:
            while not self._stop.wait(min(1.0, max(0.05, self.interval / 4))):
                self.tick()

        self._thread = threading.Thread(target=run, name=f"progress {self.label}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class _ProgressSink:
    """The file-like object papermill forwards a notebook's stream outputs to (``stdout_file``)."""

    def __init__(self, progress: CellProgress):
        self.progress = progress

    def write(self, text: str) -> int:
        self.progress.output(text)
        return len(text)

    def flush(self) -> None:
        pass


_ENGINE = "probelib-progress"


def _register_progress_engine() -> None:
    """Register the papermill engine that reports each code cell's start to a :class:`CellProgress`."""
    from papermill.engines import NBClientEngine, papermill_engines

    if _ENGINE in papermill_engines._engines:
        return

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress: CellProgress | None = None, **kwargs):
            if progress is not None:
                code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
                progress.start(len(code))
                original = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    original(cell, cell_index, **kw)
                    if cell_index in code:
                        progress.cell(code.index(cell_index) + 1)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(_ENGINE, ProgressEngine)


def execute_notebook(notebook: Notebook, output: Path, parameters: Mapping[str, Any], *,
                     cwd: Path, env: Mapping[str, str], progress_bar: bool = False,
                     execution_timeout: float | None = None, progress: CellProgress | None = None) -> None:
    """Execute ``notebook`` with papermill into ``output``, atomically.

    Papermill writes to a temporary file beside ``output``, which is renamed onto ``output`` when
    the run ends, also when a cell fails (the notebook then holds the traceback and papermill's
    ``PapermillExecutionError`` propagates). Any other interruption leaves ``output`` untouched.
    ``progress`` gets each code cell's start and the notebook's stream outputs as they come.
    """
    import papermill

    from probelib.store import writer_temporary

    extra: dict[str, Any] = {}
    if progress is not None:
        _register_progress_engine()
        sink = _ProgressSink(progress)
        extra = {"engine_name": _ENGINE, "progress": progress, "stdout_file": sink, "stderr_file": sink}
    # the in-progress copy is locked while papermill writes it; dead runs' copies are swept (by host,
    # pid and lock, or by age), never a live run's on another host sharing the folder
    with writer_temporary(output, ".partial.ipynb") as partial:
        try:
            papermill.execute_notebook(
                str(notebook.path), str(partial), parameters=dict(parameters),
                kernel_name="python3", language="python", cwd=str(cwd), progress_bar=progress_bar,
                kernel_manager_class=kernel_manager_class(env), execution_timeout=execution_timeout, **extra)
        except papermill.PapermillExecutionError:
            os.replace(partial, output)
            raise
        os.replace(partial, output)


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
              cwd: str | os.PathLike | None = None, progress_bar: bool | None = None,
              execution_timeout: float | None = None, env: Mapping[str, str] | None = None,
              keep_going: bool = False, quiet: bool = False, progress_every: float = 10.0) -> SuiteResult:
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
    Unless ``quiet``, each notebook's progress is printed while it runs (:class:`CellProgress`: the
    code cell being run and the notebook's latest output line, at most one line every
    ``progress_every`` seconds); ``progress_bar`` (default off) is papermill's own cell bar instead.
    """
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    # ---- check everything before writing anything
    all_notebooks = discover_notebooks(notebooks_dir)
    if not all_notebooks:
        raise FileNotFoundError(f"no NN_name.ipynb notebooks in {str(notebooks_dir or DEFAULT_NOTEBOOKS)!r}")
    chosen = select_notebooks(all_notebooks, only=only, skip=skip)
    if not chosen:
        raise ValueError("--only/--skip left no notebook to run; valid notebooks: "
                         + ", ".join(nb.stem for nb in all_notebooks))
    overrides = dict(parameters or {})
    for key in _RESERVED:
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
    if progress_bar is None:
        progress_bar = False
    if not (isinstance(progress_every, (int, float)) and math.isfinite(progress_every) and progress_every >= 0):
        raise ValueError(f"progress_every must be a finite number of seconds >= 0, got {progress_every!r}")

    started = time.time()
    env = {**_kernel_env(started if fresh else None), **dict(env or {})}
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
        + (" [smoke]" if smoke else "") + (" [fresh]" if fresh else ""))
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_times(out)  # progress hook: the ETA comes from the last run's per-notebook times
    n = len(results)
    for i, res in enumerate(results, 1):
        nb = res.notebook
        say(f"[{i}/{n}] {nb.stem} ... (elapsed {_fmt_time(time.time() - started)}"
            f"{_eta([r.notebook.stem for r in results[i - 1:]], previous, smoke)})")
        before = _snapshot(out)
        t0 = time.time()
        output = out / "notebooks" / nb.path.name
        progress = None if quiet or progress_bar else CellProgress(f"[{i}/{n}] {nb.stem}", say, progress_every)
        try:
            if progress is None:
                execute_notebook(nb, output, res.parameters, cwd=cwd, env=env, progress_bar=progress_bar,
                                 execution_timeout=execution_timeout)
            else:
                with progress:
                    execute_notebook(nb, output, res.parameters, cwd=cwd, env=env, progress_bar=progress_bar,
                                     execution_timeout=execution_timeout, progress=progress)
            res.status = "ok"
        except Exception as err:  # papermill's execution error, a dead kernel, a timeout
            res.status = "failed"
            res.error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        res.elapsed_s = time.time() - t0
        res.output = output if output.exists() else None
        after = _snapshot(out)
        changed = [p for p, t in after.items() if before.get(p) != t]
        res.tables, res.figures = _stems(changed, "tables"), _stems(changed, "figures")
        if res.status == "failed":
            if res.output is not None:
                res.error = _first_error(res.output) or res.error
            say(f"[{i}/{n}] {nb.stem} FAILED after {res.elapsed_s:.1f} s: {res.error}")
            where = res.output if res.output is not None else "(no output notebook was written)"
            say(f"  executed notebook with the traceback: {where}")
            if not keep_going:
                break
            continue
        say(f"[{i}/{n}] {nb.stem} ok in {res.elapsed_s:.1f} s")

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


def _eta(remaining: Sequence[str], previous: Mapping[str, Mapping[str, Any]], smoke: bool) -> str:
    """``"; this one ~m:ss, left ~m:ss"`` from earlier runs of the same size, or "" when unknown."""
    known = [previous[s]["elapsed_s"] for s in remaining if s in previous and previous[s]["smoke"] == smoke]
    if not remaining or remaining[0] not in previous or previous[remaining[0]]["smoke"] != smoke:
        return "" if not known else f"; left ≥ ~{_fmt_time(sum(known))} by the last run's times"
    left = f"~{_fmt_time(sum(known))}" if len(known) == len(remaining) else f"≥ ~{_fmt_time(sum(known))}"
    return f"; last run took {_fmt_time(previous[remaining[0]]['elapsed_s'])}, left {left}"


def _from_cli() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "run"


# --------------------------------------------------------------------------- command line

def _cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for f in args.parameters_file or []:
        overrides.update(load_parameter_file(f))
    for key, value in args.parameters or []:
        overrides[key] = parse_parameter_value(value)
    for key, value in args.parameters_raw or []:
        overrides[key] = value
    if args.list:
        for nb in select_notebooks(discover_notebooks(args.notebooks), args.only, args.skip):
            names = ", ".join(notebook_parameters(nb))
            print(f"{nb.stem:28s} {names}")
        return 0
    try:
        result = run_suite(notebooks_dir=args.notebooks, dataset=args.dataset, only=args.only,
                           skip=args.skip, parameters=overrides, smoke=args.smoke, out=args.out,
                           fresh=args.fresh, execution_timeout=args.timeout, keep_going=args.keep_going,
                           progress_every=args.progress_every)
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


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` (the notebook suite) to ``python -m probelib``."""
    p = subparsers.add_parser(
        "run", help="run the notebook suite with papermill and write results/<name>/index.md",
        description="Run the ordered notebooks (notebooks/NN_name.ipynb) with papermill, write the "
                    "executed notebooks, tables and figures under --out, and an index.md/index.html "
                    "report. Stops at the first failing notebook (exit status 1).")
    p.add_argument("--dataset", help="dataset for notebooks declaring a 'dataset' parameter "
                                     "(default: each notebook's own, the embedded mnist5k family)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NB",
                   help="run only these notebooks: numbers (3, 03), ranges (30-33), or names "
                        "(03_chi_square, chi_square); commas work too")
    p.add_argument("--skip", nargs="+", action="extend", metavar="NB", help="skip these notebooks (as --only)")
    p.add_argument("-p", "--parameters", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="papermill parameter override (True/False/None/numbers converted)")
    p.add_argument("-r", "--parameters-raw", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="papermill parameter override kept as a string")
    p.add_argument("-f", "--parameters-file", action="append", metavar="PARAMS.yaml",
                   help="YAML file of parameter overrides")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (smoke=True) for a quick check")
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
    p.add_argument("--list", action="store_true", help="list the selected notebooks and their parameters, run nothing")
    p.set_defaults(func=_cmd_run)
