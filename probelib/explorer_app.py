"""The severity explorer's page (notebook 40) and serving it as a web app (``python -m probelib explore``).

:class:`Explorer` is the interactive page: the controls, a progress area, a readable error line,
the summary and exactly one figure per update, built from a figure that pyplot never sees (so
the inline backend cannot show, close or duplicate it). What it computes and draws is
:mod:`probelib.explorer`'s. :func:`start_explorer` serves notebook 40 with Voilà on 127.0.0.1.
"""

from __future__ import annotations

import html
import io
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probelib._util import unknown_name
from probelib.explorer import (COMPARE_MODES, EXPLORER_MODELS, adabn_unavailable, explore_setting, plot_compare,
                               plot_setting, setting_label, summary_table)

__all__ = ["Explorer", "EXPLORER_NOTEBOOK", "explorer_notebook", "start_explorer", "stop_explorer"]


@contextmanager
def _bars_into(box) -> Iterator[None]:
    """While the block runs, notebook tqdm bars (``tqdm.auto`` in a kernel) appear in ``box``
    (a widget Box) instead of being displayed as outputs, which a front end drops once the
    message that started the computation has been answered; ``box`` is emptied afterwards."""
    try:
        import tqdm.notebook as tn
    except ImportError:  # no ipywidgets: text bars on stderr
        yield
        return
    import ipywidgets as W

    original = tn.display

    def show(obj, *args, **kwargs):
        if isinstance(obj, W.Widget):  # keep the open bars (a finished leave=False bar closes its widget)
            box.children = (*[c for c in box.children if getattr(c, "comm", None) is not None][-2:], obj)
        else:
            original(obj, *args, **kwargs)

    tn.display = show
    try:
        yield
    finally:
        tn.display = original
        box.children = ()


_STYLE = """<style>
.probelib-stale { opacity: 0.3; transition: opacity 0.2s; }
.probelib-explorer-error { color: #a00; font-weight: bold; }
.probelib-explorer-summary table { border-collapse: collapse; font-size: 14px; }
.probelib-explorer-summary td, .probelib-explorer-summary th { border: 1px solid #ccc; padding: 3px 8px; }
.probelib-explorer-reason { color: #666; font-style: italic; }
</style>"""


class Explorer:
    """The severity explorer page: controls, progress, error line, summary and one figure.

    Each control change schedules an update (``debounce_s`` after the last change, so a run of
    slider steps computes once); :meth:`update` computes now. A control that cannot apply is
    disabled with the reason beside it. ``compare`` shows two settings side by side:
    ``"adabn"`` (source vs AdaBN, batch-norm models) or ``"trades"`` (natural vs TRADES).
    """

    def __init__(self, dataset: str = "mnist5kwo9", model: str = "natural", corruption: str = "gaussian_noise",
                 severity: int = 3, adabn: bool = False, *, compare: str = "off", eps: float = 2.0,
                 n_images: int | None = 1000, n_show: int = 16, smoke: bool = False, device=None,
                 datasets: Sequence[str] = ("mnist5k", "mnist5kwo9"), debounce_s: float = 0.4):
        import ipywidgets as W

        from probelib.corruptions import corruption_names

        if compare not in COMPARE_MODES:
            raise unknown_name("compare mode", compare, COMPARE_MODES)
        self.options = {"eps": eps, "n_images": n_images, "n_show": n_show, "smoke": smoke, "device": device}
        self.debounce_s = float(debounce_s)
        self.controls = {
            "dataset": W.Dropdown(options=sorted({dataset, *datasets}), value=dataset, description="dataset"),
            "model": W.Dropdown(options=EXPLORER_MODELS, value=model, description="model"),
            "corruption": W.Dropdown(options=corruption_names(extra=True), value=corruption,
                                     description="corruption"),
            "severity": W.IntSlider(value=severity, min=1, max=5, description="severity", continuous_update=False),
            "adabn": W.Checkbox(value=adabn, description="AdaBN", indent=False),
            "compare": W.Dropdown(options=[(v, k) for k, v in COMPARE_MODES.items()], value=compare,
                                  description="compare"),
        }
        self.reasons = {k: W.HTML(layout=W.Layout(margin="0 1em")) for k in ("model", "adabn", "compare")}
        for r in self.reasons.values():
            r.add_class("probelib-explorer-reason")
        self.status = W.HTML()
        self.status.add_class("probelib-explorer-status")
        self.progress = W.VBox()  # tqdm bars (training epochs, scoring batches) while a setting computes
        self.error = W.HTML()
        self.error.add_class("probelib-explorer-error")
        self.summary = W.HTML()
        self.summary.add_class("probelib-explorer-summary")
        # The figure is an Image widget: its bytes travel as widget state, so an update computed
        # after the triggering message was answered (the debounce) still reaches the page, and the
        # page holds exactly one figure, whatever the notebook front end or its inline backend do.
        self.figure = W.Image(format="png", layout=W.Layout(max_width="100%", display="none"))
        self.figure.add_class("probelib-explorer-figure")
        self.caption = W.HTML()
        self.caption.add_class("probelib-explorer-figure-caption")
        c, r = self.controls, self.reasons
        self.widget = W.VBox([
            W.HTML(_STYLE),
            W.HBox([c["dataset"], c["model"], r["model"]]),
            W.HBox([c["corruption"], c["severity"]]),
            W.HBox([c["adabn"], r["adabn"]]),
            W.HBox([c["compare"], r["compare"]]),
            self.status, self.progress, self.error, self.summary, self.caption, self.figure])
        self.widget.add_class("probelib-explorer")
        self.result: dict[str, Any] | None = None      # the last single setting (or compare's first)
        self.results: list[dict[str, Any]] = []        # what the page shows now
        self.updates = 0                               # finished updates (figures shown)
        self.failures = 0
        self._pending = None
        self._refresh_controls()
        for w in self.controls.values():
            w.observe(self._changed, names="value")

    # ---- controls
    def setting(self) -> dict[str, Any]:
        """The control values: dataset, model, corruption, severity, adabn, compare."""
        return {name: w.value for name, w in self.controls.items()}

    def _refresh_controls(self) -> None:
        """Disable what cannot apply, with the reason beside it."""
        s = self.setting()
        c, r = self.controls, self.reasons
        compare = s["compare"]
        c["model"].disabled = compare == "trades"
        r["model"].value = "compare mode fixes the models: natural and TRADES" if compare == "trades" else ""
        try:
            models = ("natural", "trades") if compare == "trades" else (s["model"],)
            why_not = next((w for m in models if (w := adabn_unavailable(s["dataset"], m, eps=self.options["eps"]))),
                           None)
        except Exception as err:  # a bad dataset or eps: the update reports it
            why_not = f"({type(err).__name__})"
        if compare == "adabn":
            c["adabn"].disabled = True
            r["adabn"].value = "compare mode shows both: source and AdaBN"
        else:
            c["adabn"].disabled = why_not is not None
            r["adabn"].value = why_not or ""
        r["compare"].value = (f"source vs AdaBN cannot apply: {why_not}; pick bn_wrn"
                              if compare == "adabn" and why_not else "")

    def _changed(self, change: Mapping[str, Any] | None = None) -> None:
        self._refresh_controls()
        self.schedule()

    def schedule(self) -> None:
        """Update ``debounce_s`` after the last call (at once when no event loop runs)."""
        import asyncio

        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.debounce_s <= 0:
            self.update()
            return
        self._pending = loop.call_later(self.debounce_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.update()

    # ---- computing and drawing
    def _stage(self, text: str) -> None:
        self.status.value = f"<b>Computing</b> {html.escape(self._computing)}: {html.escape(text)} …"

    def _compute(self, s: Mapping[str, Any]) -> list[dict[str, Any]]:
        o = self.options
        common = dict(dataset=s["dataset"], corruption=s["corruption"], severity=s["severity"], eps=o["eps"],
                      n_images=o["n_images"], n_show=o["n_show"] if s["compare"] == "off" else min(o["n_show"], 8),
                      smoke=o["smoke"], device=o["device"], progress=True, stage=self._stage)
        if s["compare"] == "off":
            return [explore_setting(model=s["model"], adabn=s["adabn"], **common)]
        if s["compare"] == "adabn":
            why_not = adabn_unavailable(s["dataset"], s["model"], eps=o["eps"])
            if why_not:
                raise ValueError(f"source vs AdaBN cannot apply: {why_not}; pick the bn_wrn model")
            return [explore_setting(model=s["model"], adabn=flag, **common) for flag in (False, True)]
        return [explore_setting(model=m, adabn=s["adabn"], **common) for m in ("natural", "trades")]

    def update(self, *, raise_errors: bool = False) -> dict[str, Any] | None:
        """Compute the setting the controls name and redraw: progress while computing, then the
        summary and exactly one figure; an error shows as a message (and is raised again with
        ``raise_errors``, as the notebook's first render does, so papermill fails with it).
        Returns the (first) result, None after an error."""
        s = self.setting()
        model = "natural and trades" if s["compare"] == "trades" else s["model"]
        arm = COMPARE_MODES[s["compare"]] if s["compare"] == "adabn" else "AdaBN" if s["adabn"] else "source"
        self._computing = setting_label({**s, "model": model, "adabn": arm == "AdaBN"})
        if s["compare"] == "adabn":
            self._computing = self._computing.replace("· source", "· source vs AdaBN")
        self.status.value = f"<b>Computing</b> {html.escape(self._computing)} …"
        self.error.value = ""
        for w in (self.summary, self.figure):
            w.add_class("probelib-stale")
        t0 = time.time()
        failure: BaseException | None = None
        with _bars_into(self.progress):
            try:
                results = self._compute(s)
                fig = plot_setting(results[0]) if len(results) == 1 else plot_compare(*results)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            except Exception as err:  # shown in the page; raised again below when asked
                failure = err
        for w in (self.summary, self.figure):
            w.remove_class("probelib-stale")
        if failure is not None:
            self.failures += 1
            self.results, self.result = [], None
            self.status.value = ""
            self.error.value = (f"Could not compute {html.escape(self._computing)}: "
                                f"{html.escape(type(failure).__name__)}: {html.escape(str(failure))}")
            self.summary.value = self.caption.value = ""
            self.figure.layout.display = "none"
            self.figure.value = b""
            if raise_errors:
                raise failure
            return None
        self.results, self.result = results, results[0]
        self.summary.value = summary_table(results).to_html(index=False, border=0, escape=True)
        self.figure.value = buf.getvalue()
        self.figure.layout.display = None
        self.caption.value = "Figure: " + html.escape("   vs   ".join(setting_label(r) for r in results))
        self.updates += 1
        self.status.value = (f"Showing {html.escape(self._computing)} "
                             f"(computed in {time.time() - t0:.1f} s; update {self.updates})")
        return self.result

    def show(self) -> dict[str, Any]:
        """Display the page and compute the initial setting; an error is shown and raised."""
        from IPython.display import display

        display(self.widget)
        return self.update(raise_errors=True)


# --------------------------------------------------------------------------- serving it (Voilà)

EXPLORER_NOTEBOOK = "40_severity_explorer.ipynb"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc, timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Voilà exited with status {proc.returncode} before serving on port {port}; "
                               "its messages are above")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"Voilà did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def explorer_notebook(parameters: Mapping[str, Any], folder: str | os.PathLike,
                      notebooks_dir: str | os.PathLike | None = None) -> Path:
    """Notebook 40 with ``parameters`` injected (as papermill does) written into ``folder``.

    An unknown parameter name raises ValueError listing the notebook's parameters.
    """
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from probelib.parameters import notebook_parameters
    from probelib.runner import DEFAULT_NOTEBOOKS

    source = Path(notebooks_dir or DEFAULT_NOTEBOOKS) / EXPLORER_NOTEBOOK
    if not source.is_file():
        raise FileNotFoundError(f"the explorer notebook {str(source)!r} does not exist")
    known = notebook_parameters(source)
    for key in parameters:
        if key not in known or key == "results_dir":
            raise unknown_name("explorer parameter", key, [k for k in known if k != "results_dir"])
    nb = load_notebook_node(str(source))  # as papermill reads it (every cell gets metadata.tags)
    if parameters:
        nb = parameterize_notebook(nb, dict(parameters))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / EXPLORER_NOTEBOOK
    from probelib.store import atomic_write

    with atomic_write(target) as tmp:
        nbformat.write(nb, str(tmp))
    return target


def start_explorer(parameters: Mapping[str, Any] | None = None, *, port: int = 0, folder=None,
                   env: Mapping[str, str] | None = None, timeout_s: float = 60.0, quiet: bool = False):
    """Serve notebook 40 (with ``parameters``) as a web app with Voilà on 127.0.0.1:``port``
    (0: a free port). Returns ``(process, url)`` once the server listens; stop it with
    :func:`stop_explorer`. The kernel imports this probelib and uses the project's store.
    """
    import subprocess
    import sys
    import tempfile

    from probelib.execute import kernel_env

    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="probelib-explore-"))
    notebook = explorer_notebook(parameters or {}, folder)
    port = int(port) or _free_port()
    cmd = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser",
           "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--show_tracebacks=False"]
    full_env = {**os.environ, **kernel_env(), **dict(env or {})}
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, cwd=str(folder), env=full_env, stdout=out, stderr=out,
                            start_new_session=True)
    try:
        _wait_for_port(port, proc, timeout_s)
    except BaseException:
        stop_explorer(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/"


def stop_explorer(proc, timeout_s: float = 10.0) -> None:
    """Stop a server :func:`start_explorer` started (and its kernels): SIGTERM, then SIGKILL."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # its own session: the server and the kernels it started
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


