"""The severity explorer in a real browser: Voilà serves notebook 40, and JupyterLab opens it;
Playwright drives the system Chromium (Debian's ``chromium``; Playwright's own browser download
does not work offline).

Slow (a few minutes each, most of it training the smoke models into the session's private store
on first use); ``-m "not slow"`` skips them. Screenshots land in each test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("PROBELIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FIRST_USE_MS = 300_000  # the first use of a model trains it (smoke size)
UPDATE_MS = 60_000


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no system Chromium (apt-get install -y chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def explorer_url(tmp_path):
    """A Voilà server for notebook 40 (smoke models, the store conftest gives the session); stopped after the test."""
    from probelib.explorer_app import start_explorer, stop_explorer

    store = os.environ["PROBELIB_PRECOMPUTED"]
    proc, url = start_explorer({"smoke": True, "dataset": "mnist5k"}, folder=tmp_path / "served",
                               env={"PROBELIB_PRECOMPUTED": str(store)}, quiet=True, timeout_s=120)
    try:
        yield url
    finally:
        stop_explorer(proc)
    assert proc.poll() is not None, "the Voilà server is still running"


def _label(s: dict) -> str:  # as probelib.explorer.setting_label
    return f"{s['dataset']} · {s['model']} · {s['corruption']} · severity {s['severity']} · " \
           f"{'AdaBN' if s['adabn'] else 'source'}"


class Page:
    """The explorer page in the browser: its controls and what it shows."""

    def __init__(self, page, shots: Path):
        self.page, self.shots, self.updates, self.last_src = page, shots, 0, None

    def _dropdown(self, description: str):
        return self.page.locator(f".widget-dropdown:has(label:text-is('{description}')) select")

    def select(self, description: str, value: str) -> None:
        self._dropdown(description).select_option(value)

    def slide(self, steps: int) -> None:
        handle = self.page.locator(".widget-slider .noUi-handle").first
        handle.focus()
        for _ in range(abs(steps)):
            handle.press("ArrowRight" if steps > 0 else "ArrowLeft")

    def toggle_adabn(self) -> None:
        box = self.page.locator(".widget-checkbox:has-text('AdaBN') input[type=checkbox]")
        assert box.is_enabled(), "the AdaBN box is disabled on a batch-norm model"
        box.click()

    def adabn_disabled_reason(self) -> str | None:
        box = self.page.locator(".widget-checkbox:has-text('AdaBN') input[type=checkbox]")
        return None if box.is_enabled() else self.page.locator(".probelib-explorer-reason").nth(1).inner_text()

    def wait_for_update(self, setting: dict, box: bool, first_use: bool = False) -> str:
        """Wait for the next update; check it shows ``setting`` and exactly one figure."""
        self.updates += 1
        status = self.page.locator(".probelib-explorer-status")
        pattern = re.compile(rf"^Showing .*\(computed in [\d.]+ s; update {self.updates}\)$")
        try:
            self.page.wait_for_function(
                "n => [...document.querySelectorAll('.probelib-explorer-status, .probelib-explorer-error')]"
                ".some(e => e.innerText.includes('update ' + n + ')') || e.innerText.trim().length > 0 "
                "&& e.classList.contains('probelib-explorer-error'))",
                arg=self.updates, polling=250, timeout=FIRST_USE_MS if first_use else UPDATE_MS)
        finally:
            self.page.screenshot(path=str(self.shots / f"update-{self.updates:02d}.png"), full_page=True)
        error = self.page.locator(".probelib-explorer-error").inner_text().strip()
        assert not error, f"update {self.updates} failed: {error}"
        assert pattern.match(status.inner_text().strip()), status.inner_text()
        summary = self.page.locator(".probelib-explorer-summary").inner_text()
        shown = {**setting, "adabn": box and setting["model"] == "bn_wrn"}  # the box counts on BN models only
        assert _label(shown) in summary, f"summary {summary!r} does not show {_label(shown)!r}"
        figures = self.page.locator(".probelib-explorer img")
        assert figures.count() == 1, f"{figures.count()} figures after update {self.updates}"
        caption = self.page.locator(".probelib-explorer-figure-caption").inner_text()
        assert _label(shown) in caption, f"the figure shows {caption!r}, not {_label(shown)!r}"
        src = figures.first.get_attribute("src")
        assert src and src != self.last_src, "the figure did not change"
        self.last_src = src
        box = figures.first.bounding_box()
        assert box and box["width"] > 900, f"figure too small to read: {box}"
        return summary


def test_voila_explorer_twenty_updates(browser, explorer_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(explorer_url, wait_until="commit", timeout=120_000)
    ui = Page(page, tmp_path)
    s = {"dataset": "mnist5k", "model": "natural", "corruption": "gaussian_noise", "severity": 3}
    box = False  # the AdaBN checkbox
    ui.wait_for_update(s, box, first_use=True)  # the initial render (trains natural)
    assert "no batch norm" in (ui.adabn_disabled_reason() or ""), "AdaBN must be disabled (with the reason) on natural"
    corruptions = ["gaussian_noise", "fog", "contrast", "defocus_blur", "impulse_noise"]  # each change is a new one
    actions = []
    used = {"natural"}
    for i in range(19):  # 19 more updates: 20 in a row
        first_use = False
        kind = ("slide", "corruption", "model", "adabn", "slide")[i % 5]
        if kind == "slide":
            step = 1 if s["severity"] < 5 else -1
            ui.slide(step)
            s["severity"] += step
        elif kind == "corruption":
            s["corruption"] = corruptions[(corruptions.index(s["corruption"]) + 1) % len(corruptions)]
            ui.select("corruption", s["corruption"])
        elif kind == "model":
            s["model"] = "bn_wrn" if s["model"] == "natural" else "natural"
            first_use = s["model"] not in used
            used.add(s["model"])
            ui.select("model", s["model"])
        else:
            if s["model"] != "bn_wrn":
                s["model"] = "bn_wrn"
                first_use = s["model"] not in used
                used.add(s["model"])
                ui.select("model", "bn_wrn")
            else:
                ui.toggle_adabn()
                box = not box
        actions.append(kind)
        ui.wait_for_update(s, box, first_use)
    assert ui.updates == 20 and {"slide", "corruption", "model", "adabn"} <= set(actions)


@pytest.fixture
def jupyterlab_url(tmp_path):
    """JupyterLab (no token, loopback, ``window.jupyterapp`` exposed) on a folder holding notebook 40 with
    smoke parameters; stopped after."""
    import subprocess
    import sys

    from probelib.execute import kernel_env
    from probelib.explorer_app import _free_port, _wait_for_port, explorer_notebook, stop_explorer

    folder = tmp_path / "lab"
    explorer_notebook({"smoke": True, "dataset": "mnist5k"}, folder)
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={folder}", "--allow-root", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True"]
    env = {**os.environ, **kernel_env(), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")}
    proc = subprocess.Popen(cmd, cwd=str(folder), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for_port(port, proc, 120)
        yield f"http://127.0.0.1:{port}/lab/tree/40_severity_explorer.ipynb"
    finally:
        stop_explorer(proc)
    assert proc.poll() is not None, "JupyterLab is still running"


# Run All only once the notebook's kernel is up. JupyterLab's execution indicator reads "idle" from
# the start, before the session has a kernel, and Run All in a session without a kernel marks every
# cell not executed and runs nothing (the test then waited 300 s for a first setting never computed).
NOTEBOOK_PANEL = "path => [...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path)"
RUN_ALL_WHEN_KERNEL_READY = f"""async (path) => {{
  const panel = ({NOTEBOOK_PANEL})(path);
  const ready = async () => {{
    await panel.context.ready;
    await panel.sessionContext.ready;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!kernel) return `${{path}} has no kernel`;
    await kernel.info;  // the kernel answered kernel_info: started and connected
    return 'ready';
  }};
  const state = await Promise.race([ready(), new Promise(r => setTimeout(() => r('no kernel within 120 s'), 120000))]);
  if (state !== 'ready') return state;
  window.jupyterapp.shell.activateById(panel.id);
  // not awaited: the command resolves only when every cell has run
  window.jupyterapp.commands.execute('notebook:run-all-cells').catch(e => console.error(e));
  return 'running';
}}"""


def test_jupyterlab_explorer_widgets_render_and_figure_survives(browser, jupyterlab_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(jupyterlab_url, timeout=120_000)
    notebook = jupyterlab_url.rsplit("/", 1)[1]
    page.wait_for_function(f"path => window.jupyterapp && !!({NOTEBOOK_PANEL})(path)", arg=notebook, timeout=120_000)
    assert page.evaluate(RUN_ALL_WHEN_KERNEL_READY, notebook) == "running"
    ui = Page(page, tmp_path)
    s = {"dataset": "mnist5k", "model": "natural", "corruption": "gaussian_noise", "severity": 3}
    ui.wait_for_update(s, False, first_use=True)
    assert page.locator(".widget-dropdown select").count() >= 4 and page.locator(".widget-slider").count() == 1
    for i in range(19):  # 20 updates in a row: the figure stays, one per update
        step = 1 if s["severity"] < 5 else -1
        if i % 2:
            ui.slide(step)
            s["severity"] += step
        else:
            corruptions = ["gaussian_noise", "fog", "contrast"]
            s["corruption"] = corruptions[(corruptions.index(s["corruption"]) + 1) % 3]
            ui.select("corruption", s["corruption"])
        ui.wait_for_update(s, False)
    assert ui.updates == 20
