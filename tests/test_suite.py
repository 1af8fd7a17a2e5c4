"""The suite runner (probelib.runner) on tiny notebooks written into a temporary folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from probelib.__main__ import main
from probelib.parameters import load_parameter_file, parse_parameter_value
from probelib.report import VERDICT_PREFIX, collect_verdicts
from probelib.runner import discover_notebooks, run_suite, select_notebooks

GOOD = '''\
import os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from probelib.report import save_table, save_figure, verdict
print("EXECUTABLE", sys.executable)
print("FRESH", os.environ.get("PROBELIB_FRESH_SINCE"))
save_table(pd.DataFrame({"alpha": [alpha], "dataset": [dataset]}), "tab_good", results_dir)
fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([0, alpha])
save_figure(fig, "fig_good", results_dir)
verdict(f"alpha is {alpha} on {dataset}: YES")
'''


def _write(folder: Path, name: str, body: str, params: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell(f"# {name}"),
                             new_code_cell(params, metadata={"tags": ["parameters"]}),
                             new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def suite_dir(tmp_path) -> Path:
    """01_good (tables, figure, verdict), 02_bad (raises), 03_after (plain; declares no dataset)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _write(folder, "01_good", GOOD,
           'dataset = "mnist5kwo9"\nsmoke = False\nresults_dir = "results/x"\nalpha = 1\n')
    _write(folder, "02_bad", "raise RuntimeError('deliberate failure in 02_bad')",
           'smoke = False\nresults_dir = "results/x"\n')
    _write(folder, "03_after", "print('after ran', smoke)",
           'smoke = False\nresults_dir = "results/x"\nbeta = 0.5\n')
    (folder / "notes.ipynb").write_text("{}")  # not NN_name: ignored
    return folder


def _executed(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def test_discover_and_select(suite_dir):
    nbs = discover_notebooks(suite_dir)
    assert [nb.stem for nb in nbs] == ["01_good", "02_bad", "03_after"]
    stems = lambda sel: [nb.stem for nb in sel]  # noqa: E731
    assert stems(select_notebooks(nbs, only=["1", "03"])) == ["01_good", "03_after"]
    assert stems(select_notebooks(nbs, only="bad,01_good.ipynb")) == ["01_good", "02_bad"]
    assert stems(select_notebooks(nbs, only="2-3")) == ["02_bad", "03_after"]
    assert stems(select_notebooks(nbs, skip=["bad"])) == ["01_good", "03_after"]
    assert stems(select_notebooks(nbs, only="1-3", skip="3")) == ["01_good", "02_bad"]
    with pytest.raises(ValueError, match=r"unknown notebook 'goood'.*'good'.*01_good"):
        select_notebooks(nbs, only="goood")
    with pytest.raises(ValueError, match="unknown notebook '7'"):
        select_notebooks(nbs, skip="7")


def test_parameter_values_follow_papermill(tmp_path):
    assert [parse_parameter_value(v) for v in ("True", "False", "None", "3", "-2.5", "1e-3", "abc")] \
        == [True, False, None, 3, -2.5, 1e-3, "abc"]
    f = tmp_path / "p.yaml"
    f.write_text("alpha: 4\nnames: [a, b]\n")
    assert load_parameter_file(f) == {"alpha": 4, "names": ["a", "b"]}
    f.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_parameter_file(f)


def test_unknown_names_fail_before_anything_runs(suite_dir, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "--only", "goood"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown notebook 'goood'" in err and "01_good" in err and "03_after" in err
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "-p", "alpah", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown parameter 'alpah'" in err and "alpha" in err
    params = tmp_path / "p.yaml"
    params.write_text("gamma: 1\n")
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "-f", str(params)])
    assert rc == 2 and "unknown parameter 'gamma'" in capsys.readouterr().err
    # beta is declared only by 03_after: not known when 03 is skipped
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "--skip", "3", "-p", "beta", "1"])
    assert rc == 2 and "unknown parameter 'beta'" in capsys.readouterr().err
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "--dataset", "mnistfive"])
    assert rc == 2 and "unknown dataset 'mnistfive'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_run_selected_notebooks_writes_report(suite_dir, tmp_path, monkeypatch, capsys):
    # A decoy 'python3' kernelspec that cannot start: the runner must use this interpreter anyway.
    decoy = tmp_path / "jupyter" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(json.dumps(
        {"argv": [str(tmp_path / "no-such-python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "decoy", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    out = tmp_path / "res"
    result = run_suite(notebooks_dir=suite_dir, only=["1", "after"], parameters={"alpha": 3},
                       dataset="mnist5kwo9", smoke=True, out=out, fresh=True)
    printed = capsys.readouterr().out
    assert result.ok, [r.error for r in result.results]
    assert "[1/2] 01_good" in printed and "[2/2] 03_after" in printed
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["01_good.ipynb", "03_after.ipynb"]

    good = _executed(out / "notebooks" / "01_good.ipynb")
    injected = good.metadata["papermill"]["parameters"]
    assert injected == {"results_dir": str(out.resolve()), "dataset": "mnist5kwo9", "smoke": True, "alpha": 3}
    text = "".join(o.get("text", "") for c in good.cells for o in c.get("outputs", []))
    assert f"EXECUTABLE {sys.executable}" in text
    assert "FRESH None" not in text and "FRESH " in text  # --fresh reached the kernel
    # 03 declares neither dataset nor alpha: it gets neither
    assert _executed(out / "notebooks" / "03_after.ipynb").metadata["papermill"]["parameters"] == \
        {"results_dir": str(out.resolve()), "smoke": True}
    assert collect_verdicts(out / "notebooks" / "01_good.ipynb") == ["alpha is 3 on mnist5kwo9: YES"]

    for f in ("tables/tab_good.csv", "tables/tab_good.tex", "figures/fig_good.png", "figures/fig_good.pdf"):
        assert (out / f).is_file(), f
    md = (out / "index.md").read_text()
    for needle in ("notebooks/01_good.ipynb", "notebooks/03_after.ipynb", "tables/tab_good.csv",
                   "tables/tab_good.tex", "figures/fig_good.png", "figures/fig_good.pdf",
                   "alpha is 3 on mnist5kwo9: YES", "-p alpha", "mnist5kwo9", "probelib 0.", "| ok |"):
        assert needle in md, needle
    html = (out / "index.html").read_text()
    assert "tables/tab_good.tex" in html and "fig_good.pdf" in html and "alpha is 3 on mnist5kwo9: YES" in html
    assert not [p for p in out.rglob("*") if "partial" in p.name or p.name.endswith(".tmp")]


@pytest.mark.slow
def test_failing_notebook_stops_run_and_is_kept(suite_dir, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "--skip", "good"])
    printed = capsys.readouterr().out
    assert rc == 1
    failed = out / "notebooks" / "02_bad.ipynb"
    assert f"executed notebook with the traceback: {failed.resolve()}" in printed
    errors = [o for c in _executed(failed).cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "RuntimeError" and errors[0]["traceback"]
    assert not (out / "notebooks" / "03_after.ipynb").exists()  # stopped: 03 never ran
    md = (out / "index.md").read_text()
    assert "FAILED: 02_bad" in md and "deliberate failure in 02_bad" in md and "03_after" in md
    assert "[02_bad](notebooks/02_bad.ipynb) | failed" in md

    # --keep-going runs 03 after the failure but still exits non-zero
    rc = main(["run", "--notebooks", str(suite_dir), "--out", str(out), "--skip", "1", "--keep-going"])
    capsys.readouterr()
    assert rc == 1 and (out / "notebooks" / "03_after.ipynb").is_file()


def test_verdict_prefix_is_what_collect_reads(tmp_path):
    nb = new_notebook(cells=[new_code_cell("", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"noise\n{VERDICT_PREFIX}A: YES\n"),
        nbformat.v4.new_output("stream", name="stdout", text=[f"{VERDICT_PREFIX}B: NO\n"])])])
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert collect_verdicts(tmp_path / "x.ipynb") == ["A: YES", "B: NO"]


def test_eta_from_the_previous_run_of_the_same_size(tmp_path):
    from probelib.runner import _eta, _previous_times

    (tmp_path / "suite.json").write_text(json.dumps({"notebooks": {
        "00_a": {"status": "ok", "elapsed_s": 540.0, "parameters": {}},
        "01_b": {"status": "ok", "elapsed_s": 60.0, "parameters": {}},
        "02_c": {"status": "failed", "elapsed_s": 3.0, "parameters": {}},
        "03_d": {"status": "ok", "elapsed_s": 5.0, "parameters": {"smoke": True}}}}))
    previous = _previous_times(tmp_path)
    assert sorted(previous) == ["00_a", "01_b", "03_d"]
    assert _eta(["00_a", "01_b"], previous, smoke=False) == "; last run took 9:00, left ~10:00"
    assert _eta(["01_b", "02_c"], previous, smoke=False) == "; last run took 1:00, left ≥ ~1:00"
    assert _eta(["03_d"], previous, smoke=False) == ""  # a smoke run's time says nothing about a full one
    assert _eta(["03_d"], previous, smoke=True) == "; last run took 0:05, left ~0:05"
    assert _previous_times(tmp_path / "missing") == {}


def test_report_lists_each_verdict_once(tmp_path):
    from probelib.report import write_report
    from probelib.runner import Notebook, NotebookResult

    nb = new_notebook(cells=[new_code_cell("", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"{VERDICT_PREFIX}A: YES\n{VERDICT_PREFIX}B: NO\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"{VERDICT_PREFIX}A: YES\n")])])
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "01_x.ipynb")
    result = NotebookResult(Notebook(1, "x", tmp_path / "01_x.ipynb"), "ok", output=tmp_path / "notebooks" / "01_x.ipynb",
                            elapsed_s=1.0)
    info = {"started": "2026-01-01T00:00:00+00:00", "elapsed_s": 1.0, "dataset": None, "smoke": True,
            "fresh": False, "overrides": {}}
    index_md, index_html = write_report(tmp_path, [result], info)
    assert index_md.read_text().count("A: YES") == 1 and index_html.read_text().count("A: YES") == 1


# --------------------------------------------------------------------------- notebooks side by side (--jobs)

SIDE = '''\
import json, os, time
import pandas as pd
from probelib.report import save_table
start = time.time()
time.sleep(pause)
save_table(pd.DataFrame({"x": [1]}), f"tab_{tag}", results_dir)
with open(os.path.join(results_dir, f"span_{tag}.json"), "w") as fh:
    json.dump({"start": start, "end": time.time(), "threads": os.environ.get("OMP_NUM_THREADS")}, fh)
if fail:
    raise RuntimeError(f"deliberate failure in {tag}")
'''


def _side_suite(folder: Path, after: dict[str, list[str] | None], exclusive: tuple[str, ...] = (),
                fail: tuple[str, ...] = (), pause: float = 3.0) -> Path:
    folder.mkdir()
    for stem, names in after.items():
        path = _write(folder, stem, SIDE, f'results_dir = "r"\ntag = "{stem}"\npause = {pause}\n'
                                          f'fail = {stem in fail}\n')
        nb = nbformat.read(str(path), as_version=4)
        meta = {} if names is None else {"after": names}
        if stem in exclusive:
            meta["exclusive"] = True
        if meta:
            nb.metadata["probelib"] = meta
        nbformat.write(nb, path)
    return folder


def _spans(out: Path) -> dict[str, dict]:
    return {p.stem[len("span_"):]: json.loads(p.read_text()) for p in out.glob("span_*.json")}


@pytest.mark.slow
def test_jobs_run_notebooks_side_by_side_in_their_declared_order(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("probelib.runner.local_cores", lambda: 4)
    folder = _side_suite(tmp_path / "nb", {"00_first": [], "01_a": ["00_first"], "02_b": ["00_first"],
                                           "03_c": ["01_a", "02_b"]}, exclusive=("00_first",))
    out = tmp_path / "res"
    result = run_suite(notebooks_dir=folder, out=out, jobs=2, progress=False)
    assert result.ok, [r.error for r in result.results]
    span = _spans(out)
    assert span["01_a"]["start"] < span["02_b"]["end"] and span["02_b"]["start"] < span["01_a"]["end"]  # overlap
    assert span["00_first"]["end"] <= min(span["01_a"]["start"], span["02_b"]["start"])
    assert span["03_c"]["start"] >= max(span["01_a"]["end"], span["02_b"]["end"])
    # 4 cores, 2 at a time: 2 threads per kernel; the exclusive notebook keeps the default (every core)
    assert span["01_a"]["threads"] == "2" and span["00_first"]["threads"] is None
    # each notebook's tables are its own, although they were written while another notebook ran
    assert {r.notebook.stem: r.tables for r in result.results} == \
        {s: [f"tab_{s}"] for s in ("00_first", "01_a", "02_b", "03_c")}
    manifest = json.loads((out / "suite.json").read_text())
    assert manifest["notebooks"]["02_b"]["tables"] == ["tab_02_b"]


@pytest.mark.slow
def test_jobs_failure_skips_what_needs_it(tmp_path):
    after = {"00_bad": [], "01_needs_bad": ["00_bad"], "02_free": [], "03_plain": None}
    folder = _side_suite(tmp_path / "nb", after, fail=("00_bad",), pause=0.0)
    out = tmp_path / "res"
    result = run_suite(notebooks_dir=folder, out=out, jobs=2, keep_going=True, progress=False)
    status = {r.notebook.stem: r.status for r in result.results}
    # 01 needs 00's results (declared): skipped; 02 declares nothing to wait for; 03 (no metadata)
    # only runs after the earlier ones, so --keep-going runs it
    assert status == {"00_bad": "failed", "01_needs_bad": "not run", "02_free": "ok", "03_plain": "ok"}
    skipped = next(r for r in result.results if r.notebook.stem == "01_needs_bad")
    assert "00_bad" in skipped.error
    # without --keep-going nothing new starts after the failure (the order puts 00 first, alone)
    out2 = tmp_path / "res2"
    folder2 = _side_suite(tmp_path / "nb2", after, exclusive=("00_bad",), fail=("00_bad",), pause=0.0)
    result = run_suite(notebooks_dir=folder2, out=out2, jobs=2, progress=False)
    assert [r.status for r in result.results] == ["failed", "not run", "not run", "not run"]


def test_bad_order_metadata_is_refused_before_anything_runs(tmp_path):
    cases = [({"00_a": [], "01_b": ["02_c"], "02_c": []}, "not an earlier notebook"),
             ({"00_a": [], "01_b": ["00_aa"]}, r"unknown notebook.*'00_aa'.*00_a"),
             ({"00_a": [], "01_b": "00_a"}, "must be a list of notebook names")]
    for i, (after, message) in enumerate(cases):
        folder = tmp_path / f"nb{i}"
        folder.mkdir()
        for stem, names in after.items():
            path = _write(folder, stem, "pass", 'results_dir = "r"\n')
            nb = nbformat.read(str(path), as_version=4)
            nb.metadata["probelib"] = {"after": names}
            nbformat.write(nb, path)
        out = tmp_path / f"res{i}"
        with pytest.raises(ValueError, match=message):
            run_suite(notebooks_dir=folder, out=out, jobs=2, progress=False)
        assert not out.exists()
    folder = tmp_path / "nb_excl"
    folder.mkdir()
    path = _write(folder, "00_a", "pass", 'results_dir = "r"\n')
    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["probelib"] = {"exclusive": "yes"}
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="exclusive must be true or false"):
        run_suite(notebooks_dir=folder, out=tmp_path / "r", progress=False)
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be a whole number"):
            run_suite(notebooks_dir=folder, out=tmp_path / "r", jobs=jobs, progress=False)


def test_jobs_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--jobs", "0"])
    assert "--jobs takes a whole number >= 1 or 'auto'" in capsys.readouterr().err


def test_the_suite_declares_a_valid_order():
    from probelib.runner import run_order

    notebooks = discover_notebooks()
    order = run_order(notebooks, notebooks)
    assert order["00_precompute"].exclusive and order["00_precompute"].after == set()
    # every notebook that uses the NCG models notebook 00 trains runs after it
    for stem in ("01_ncg_tables", "05_neighbour_visualisation", "06_pretrained_ncg", "10_robustness",
                 "20_corrupted_ncg", "40_severity_explorer"):
        assert "00_precompute" in order[stem].after, stem
    assert "06_pretrained_ncg" in order["20_corrupted_ncg"].after  # 20 reuses 06's corrupted-set predictions
    for stem in ("31_label_shift", "32_black_border", "33_ncg_under_adabn"):
        assert order[stem].after == {"30_adabn_shift_grid"}, stem  # the AdaBN model notebook 30 trains
    assert all(o.declared for o in order.values())


def test_one_writer_lets_one_holder_in_at_a_time(tmp_path):
    import threading
    import time

    from probelib.store import one_writer

    lock = tmp_path / "sub" / ".x.lock"
    inside, events = threading.Event(), []

    def second():
        inside.wait()
        with one_writer(lock):
            events.append("second in")

    t = threading.Thread(target=second)
    t.start()
    with one_writer(lock):
        inside.set()
        time.sleep(0.5)
        events.append("first out")
    t.join(10)
    assert events == ["first out", "second in"] and lock.exists()


@pytest.mark.slow
def test_ctrl_c_stops_notebooks_running_side_by_side(tmp_path):
    """Kernels run in their own sessions: the terminal's Ctrl-C reaches only the runner, which must
    stop them (it used to wait for them to finish once notebooks ran in worker threads)."""
    import os
    import signal
    import subprocess
    import time

    folder = tmp_path / "nb"
    folder.mkdir()
    pids = tmp_path / "pids"
    pids.mkdir()
    for stem in ("01_a", "02_b"):
        path = _write(folder, stem, f"import os, time\nopen(r'{pids}/{stem}', 'w').write(str(os.getpid()))\n"
                                    "time.sleep(300)\n", 'results_dir = "r"\n')
        nb = nbformat.read(str(path), as_version=4)
        nb.metadata["probelib"] = {"after": []}
        nbformat.write(nb, path)
    proc = subprocess.Popen([sys.executable, "-m", "probelib", "run", "--notebooks", str(folder), "--out",
                             str(tmp_path / "res"), "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # a test run started in the background inherits SIGINT ignored: restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while len(list(pids.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        kernels = [int(p.read_text()) for p in pids.iterdir()]
        assert len(kernels) == 2, "both notebooks should be running side by side"
        started = time.time()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert time.time() - started < 30
        time.sleep(0.5)
        for pid in kernels:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # the kernel is gone, not left sleeping
    finally:
        if proc.poll() is None:
            proc.kill()
