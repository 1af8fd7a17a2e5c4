"""Executing one notebook: papermill in a kernel of this interpreter, with per-cell progress lines.

:func:`execute_notebook` runs a notebook with papermill into its output file, atomically. The
kernel is always ``sys.executable`` (:func:`kernel_manager_class`, whatever the user's Jupyter
kernelspecs say), its client polls its sockets (a guard against a missed message with widgets),
and :func:`kernel_env` puts this probelib first on the kernel's path. While a notebook runs,
:class:`CellProgress` prints the code cell being run and the notebook's latest output line.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probelib.report import _fmt_time

if TYPE_CHECKING:  # pragma: no cover
    from probelib.runner import Notebook

__all__ = ["kernel_manager_class", "kernel_env", "kill_running_kernels", "CellProgress", "execute_notebook"]

_KERNELS: weakref.WeakSet = weakref.WeakSet()  # the kernel managers this process started


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
            _KERNELS.add(self)
            self.client_factory = client_class
            if zmq.has("curve"):  # encrypt kernel traffic where libzmq can (silences ipykernel's warning)
                self.transport_encryption = "auto"

        @property
        def kernel_spec(self):  # noqa: D401 - jupyter_client API
            return spec

    return ThisInterpreterKernelManager


def kill_running_kernels() -> int:
    """Kill (SIGKILL, with their process groups) the kernels this process started that still run; return
    how many. The runner calls it on Ctrl-C: a kernel runs in its own session, so the terminal's
    interrupt does not reach it, and a notebook run in a worker thread would otherwise go on."""
    import signal

    killed = 0
    for km in list(_KERNELS):
        provisioner = getattr(km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        if process is None or process.poll() is not None:  # gone (and reaped): its pid may be reused
            continue
        pgid = getattr(provisioner, "pgid", None)  # the kernel's own session: it and its children
        try:
            if pgid:
                os.killpg(pgid, signal.SIGKILL)
            else:
                process.kill()
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    for km in list(_KERNELS):  # reap them, so that none is left a zombie when the runner exits at once
        process = getattr(getattr(km, "provisioner", None), "process", None)
        with contextlib.suppress(Exception):
            process.wait(timeout=5)
    return killed


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


def kernel_env(fresh_since: float | None = None) -> dict[str, str]:
    """Extra environment for the kernels: this probelib first on the path; ``--fresh``'s cut-off."""
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": package_root + (os.pathsep + path if path else "")}
    if fresh_since is not None:
        env["PROBELIB_FRESH_SINCE"] = repr(fresh_since)
    return env


# --------------------------------------------------------------------------- progress

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
        """The current progress line, e.g. ``[3/12] 05_neighbour_visualisation cell 5/6 (0:42) 40%|████ | 4/10``:
        the cell being run, the time since the notebook started, the notebook's latest output line."""
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
                     cwd: Path, env: Mapping[str, str], execution_timeout: float | None = None,
                     progress: CellProgress | None = None) -> None:
    """Execute ``notebook`` with papermill into ``output``, atomically.

    Papermill writes to a temporary file beside ``output``, which is renamed onto ``output`` when
    the run ends, also when a cell fails (the notebook then holds the traceback and papermill's
    ``PapermillExecutionError`` propagates). Any other interruption leaves ``output`` untouched.
    ``progress`` gets each code cell's start and the notebook's stream outputs as they come
    (None: nothing is reported).
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
                kernel_name="python3", language="python", cwd=str(cwd), progress_bar=False,
                kernel_manager_class=kernel_manager_class(env), execution_timeout=execution_timeout, **extra)
        except papermill.PapermillExecutionError:
            os.replace(partial, output)
            raise
        os.replace(partial, output)

