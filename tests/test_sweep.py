"""Sweeps (probelib.grid, probelib.sweep): grid validation before anything runs, Ray vs local, kill and resume.

The slow tests run a 4-run grid on ``digits`` (notebook 01, smoke sizes, natural + TRADES):
once with the local engine, killed after two runs finished and resumed, once on a local Ray
instance with its own artifact store; the stacked cross-run table must be the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from probelib.grid import DONE_MARKER, GridError, load_grid, parse_grid, plan_runs
from probelib.sweep import run_sweep

GRID = """\
only: [01]
smoke: true
parameters: {dataset: digits, methods: [natural, trades], spaces: [pixel]}
grid: {held_out: [1, 2, 3, 4]}
resources: {num_cpus: 1}
"""


def _grid_file(tmp_path: Path, text: str = GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- refused before anything runs

@pytest.mark.parametrize("text, words", [
    ("grid: {held_ot: [1, 2]}\nonly: [01]\n", ["unknown parameter 'held_ot'", "held_out"]),
    ("grid: {arch: [CNN002]}\nonly: [01]\n", ["unknown parameter 'arch'", "train --list"]),
    ("grid: {held_out: []}\nonly: [01]\n", ["axis 'held_out' is empty", "at least one value"]),
    ("grid: {held_out: 3}\nonly: [01]\n", ["must be a list", "held_out: [3]"]),
    ("grid: {eps: [2.0, fast]}\nonly: [01]\n", ["eps='fast' is a str", "expects a float"]),
    ("grid: {methods: [natural]}\nonly: [01]\n", ["methods='natural' is a str", "expects a list"]),
    ("grid: {held_out: [1]}\nonly: [01]\nresources: {num_gpu: 1}\n", ["unknown resource 'num_gpu'", "num_gpus"]),
    ("grid: {held_out: [1]}\nonly: [01]\nsmoke: yes please\n", ["'smoke' must be true or false"]),
    ("grid: {held_out: [1]}\nonly: [01]\nparamters: {eps: 1}\n", ["unknown entry 'paramters'", "parameters"]),
    ("grid: {held_out: [12]}\nonly: [01]\nparameters: {dataset: digits}\n", ["12"]),
    ("grid: {dataset: [digitz]}\nonly: [01]\n", ["digitz"]),
    ("only: [01]\n", ["'grid:' must be a non-empty mapping"]),
    ("grid: {held_out: [1]}\nonly: [99]\n", ["99"]),
])
def test_bad_grid_refused_before_anything_runs(tmp_path, text, words):
    out = tmp_path / "sweep"
    with pytest.raises(GridError) as err:
        run_sweep(load_grid(_grid_file(tmp_path, text), out=out), engine="local", progress=False)
    for w in words:
        assert w in str(err.value)
    assert not out.exists()  # nothing was written, nothing ran


def test_bad_grid_on_the_command_line_exits_2_with_the_message(tmp_path, capsys):
    from probelib.__main__ import main

    out = tmp_path / "sweep"
    code = main(["sweep", str(_grid_file(tmp_path, "grid: {held_out: []}\nonly: [01]\n")), "--engine", "local",
                 "--out", str(out)])
    assert code == 2
    assert "axis 'held_out' is empty" in capsys.readouterr().err
    assert not out.exists()


def test_grid_expands_to_runs_keyed_by_parameter_set(tmp_path):
    grid = load_grid(_grid_file(tmp_path), out=tmp_path / "sweep", store=tmp_path / "store")
    assert [r.name for r in grid.runs] == [f"held_out={k}" for k in (1, 2, 3, 4)]
    assert [r.parameters["held_out"] for r in grid.runs] == [1, 2, 3, 4]
    assert all(r.parameters["methods"] == ["natural", "trades"] and r.smoke for r in grid.runs)
    assert len({r.key for r in grid.runs}) == 4 and len({r.folder for r in grid.runs}) == 4
    assert grid.runs[0].env["PROBELIB_PRECOMPUTED"] == str((tmp_path / "store").resolve())
    assert grid.runs[0].env["OMP_NUM_THREADS"] == "1"
    # the same file gives the same keys; another shared parameter gives other keys
    again = load_grid(_grid_file(tmp_path), out=tmp_path / "sweep")
    assert [r.key for r in again.runs] == [r.key for r in grid.runs]
    other = parse_grid({"only": ["01"], "smoke": True, "grid": {"held_out": [1, 2, 3, 4]},
                        "parameters": {"dataset": "digits", "methods": ["natural", "at"]}}, out=tmp_path / "sweep")
    assert not {r.key for r in other.runs} & {r.key for r in grid.runs}
    # a marker counts only with its own run's key
    first = grid.runs[0]
    Path(first.folder).mkdir(parents=True)
    (Path(first.folder) / DONE_MARKER).write_text(json.dumps({"key": grid.runs[1].key, "status": "ok"}))
    assert not plan_runs(grid)[0][1]
    (Path(first.folder) / DONE_MARKER).write_text(json.dumps({"key": first.key, "status": "ok"}))
    assert [done for _, done in plan_runs(grid)] == [True, False, False, False]


def test_shipped_grid_is_valid(repo_root, tmp_path):
    grid = load_grid(repo_root / "grids" / "mnist5k.yaml", out=tmp_path / "sweep")
    assert [r.parameters["held_out"] for r in grid.runs] == list(range(10))
    assert all(r.parameters["methods"] == ["natural", "trades", "at"] for r in grid.runs)


# --------------------------------------------------------------------------- running grids (slow)

def _markers(out: Path) -> dict[str, tuple[int, str]]:
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "runs").glob(f"*/{DONE_MARKER}")}


@pytest.fixture(scope="module")
def local_sweep(repo_root, tmp_path_factory):
    """The 4-run grid with the local engine in a subprocess, SIGKILLed once two runs are done, then resumed."""
    tmp = tmp_path_factory.mktemp("sweep_local")
    grid_file, out, store = _grid_file(tmp), tmp / "out", tmp / "store"
    env = {**os.environ, "PYTHONPATH": str(repo_root), "PROBELIB_PRECOMPUTED": str(store)}
    proc = subprocess.Popen([sys.executable, "-m", "probelib", "sweep", str(grid_file), "--engine", "local",
                             "--out", str(out)], env=env, cwd=repo_root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while len(_markers(out)) < 2:
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("two runs did not finish within 600 s")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the notebook kernel it started
        proc.wait()
        proc.stderr.close()
    before = _markers(out)
    grid = load_grid(grid_file, out=out, store=store)
    resumed = run_sweep(grid, engine="local", progress=False)
    return {"grid": grid, "before": before, "resumed": resumed, "out": out}


@pytest.mark.slow
def test_killed_sweep_resumes_with_only_unfinished_runs(local_sweep):
    grid, before, resumed = local_sweep["grid"], local_sweep["before"], local_sweep["resumed"]
    assert 2 <= len(before) < 4
    assert resumed.ok, [o.error for o in resumed.outcomes]
    done_before = {spec.name for spec in grid.runs if Path(spec.folder).name in before}
    assert set(resumed.skipped) == done_before
    assert set(resumed.ran) == {spec.name for spec in grid.runs} - done_before
    after = _markers(local_sweep["out"])
    assert len(after) == 4
    for folder, marker in before.items():  # finished runs were not touched
        assert after[folder] == marker
    manifest = json.loads((local_sweep["out"] / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]].count("skipped") == len(before)
    index = (local_sweep["out"] / "index.md").read_text()
    for k in (1, 2, 3, 4):
        assert f"NCG above chance (pixel, natural, digitswo{k})" in index


@pytest.mark.slow
def test_ray_and_local_engines_give_the_same_cross_run_table(local_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    grid_file = _grid_file(tmp_path)
    # its own store: the Ray runs train and score everything again
    grid = load_grid(grid_file, out=tmp_path / "out", store=tmp_path / "store")
    try:
        result = run_sweep(grid, engine="ray", num_cpus=2, progress=False)
    finally:
        initialised = ray.is_initialized()
        ray.shutdown()
    assert not initialised  # run_sweep shut down the instance it started
    assert result.ok, [o.error for o in result.outcomes]
    assert set(result.ran) == {spec.name for spec in grid.runs}
    local = pd.read_csv(local_sweep["out"] / "tables" / "pixel_ncg.csv")
    on_ray = pd.read_csv(tmp_path / "out" / "tables" / "pixel_ncg.csv")
    assert list(local["held_out"]) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert list(local["dataset"]) == [f"digitswo{k}" for k in (1, 1, 2, 2, 3, 3, 4, 4)]
    assert {"ncg", "ncg_lo", "ncg_hi"} <= set(local.columns)
    pd.testing.assert_frame_equal(on_ray, local)


def test_stacked_tables_put_the_axes_first_and_rename_clashing_ones(tmp_path):
    from probelib.sweep import stack_tables

    grid = parse_grid({"only": ["01"], "grid": {"dataset": ["digitswo1", "digitswo2"], "eps": [1.0, 2.0]}},
                      out=tmp_path / "sweep")
    for spec in grid.runs:  # what each run's notebook wrote
        folder = Path(spec.folder) / "tables"
        folder.mkdir(parents=True)
        pd.DataFrame({"dataset": [spec.axes["dataset"]] * 2, "method": ["natural", "trades"],
                      "ncg": [spec.axes["eps"], -spec.axes["eps"]]}).to_csv(folder / "pixel_ncg.csv", index=False)
    table = stack_tables(grid, grid.runs)["pixel_ncg"]
    assert table.index.names == ["run_dataset", "eps"]  # 'dataset' is also a column of the table
    assert list(table.index) == [(d, e) for d in ("digitswo1", "digitswo2") for e in (1.0, 2.0) for _ in range(2)]
    assert list(table["ncg"]) == [1.0, -1.0, 2.0, -2.0] * 2
    assert (table["dataset"] == table.index.get_level_values("run_dataset")).all()


def test_local_ray_start_passes_the_package_by_environment_and_restores_it(monkeypatch):
    """The local instance gets no runtime_env: its processes inherit PYTHONPATH (package root first) and
    RAY_USAGE_STATS_ENABLED=0 while ray.init runs; afterwards this process's environment is as before.
    A start that timed out (a busy machine) is retried. Ray itself is not started (ray.init is faked)."""
    ray = pytest.importorskip("ray")
    from probelib.execute import kernel_env
    from probelib._util import local_cores
    from probelib.sweep import _start_local_ray

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    calls = []

    def fake_init(**kwargs):
        calls.append((kwargs, os.environ.get("PYTHONPATH"), os.environ.get("RAY_USAGE_STATS_ENABLED")))
        if len(calls) == 1:
            raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    expected_path = kernel_env()["PYTHONPATH"]  # the package root first, then "/elsewhere"
    assert _start_local_ray(progress=False) >= 0
    assert len(calls) == 2
    kwargs, path, stats = calls[-1]
    assert path == expected_path and expected_path.endswith(os.pathsep + "/elsewhere") and stats == "0"
    assert kwargs["num_cpus"] == local_cores() and "runtime_env" not in kwargs
    assert kwargs["include_dashboard"] is False and kwargs["log_to_driver"] is False
    assert os.environ["PYTHONPATH"] == "/elsewhere" and "RAY_USAGE_STATS_ENABLED" not in os.environ
