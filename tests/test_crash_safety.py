"""Crash safety: runs killed with SIGKILL resume to the same artifacts; damaged files are recomputed;
every file probelib writes goes through an atomic temp-file-and-rename.

The killed runs are real subprocesses (``sys.executable -c ...``) on the embedded ``digits`` set;
the re-runs happen in this process and are compared bit for bit with uninterrupted runs in a
separate store. Everything runs with one CPU thread so the numbers are reproducible.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from probelib import ncg
from probelib.models.checkpoint import read_checkpoint
from probelib.store import Store, file_sha256
from probelib.training import checkpoint_key, default_config, train_or_load

REPO = Path(__file__).resolve().parents[1]
# A small BN WideResNet on the 8×8 digits: ~0.2 s per epoch, so a kill lands part way.
TRAIN_CFG = ("default_config('digits', 'natural', arch='WRN-10-1', epochs=8, lr=0.05, "
             "model_kwargs=(('norm', 'batch'),))")
PRECOMPUTE = "ncg.suite_inputs('digitswo9', ['natural', 'trades'], 2.0, smoke=True, store=Store(root), device='cpu')"


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("PROBELIB_FRESH_SINCE", None)
    return env


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=_child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0):
    """Poll ``condition()`` every 5 ms until it returns something truthy; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before the kill point:\n"
                                 + proc.stderr.read().decode()[-3000:])
        time.sleep(0.005)
    _kill(proc)
    raise AssertionError("the kill point was not reached in time")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (the child and anything it started), then reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _end_process(pid: int, grace: float = 10.0) -> None:
    """Wait for process ``pid`` (started by a child of this test) to exit; SIGKILL it after ``grace`` s."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _store_files(root: Path) -> dict[str, Path]:
    """The finished files of a store (artifacts and seals), without temp files a kill left behind."""
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_killed_part_way_resumes_to_the_uninterrupted_weights(tmp_path, one_thread):
    cfg = eval(TRAIN_CFG)
    root = tmp_path / "killed"
    child = ("import sys, torch\ntorch.set_num_threads(1)\n"
             "from probelib.store import Store\nfrom probelib.training import default_config, train_or_load\n"
             f"train_or_load({TRAIN_CFG}, store=Store(sys.argv[1]), device='cpu', progress=False)\n")
    proc = _start(child, str(root))
    state_path = Store(root).path("checkpoints", cfg.name, checkpoint_key(cfg), ".state.pt")
    final_path = Store(root).path("checkpoints", cfg.name, checkpoint_key(cfg), ".pt")
    try:
        _wait_for(state_path.exists, proc)  # the first epoch's resumable state is on disk
    finally:
        _kill(proc)
    assert not final_path.exists(), "the run finished before it was killed"
    killed_state = read_checkpoint(state_path)  # never half-written, even when killed mid-write
    done = killed_state["epoch"]
    assert 1 <= done < cfg.epochs

    resumed, history = train_or_load(cfg, store=Store(root), device="cpu", progress=False)
    # It resumed: the epochs done before the kill were not run again (their timings are the stored ones).
    assert history["seconds"].tolist()[:done] == [row["seconds"] for row in killed_state["history"]]
    assert Store(root).verify(final_path) and not state_path.exists()

    full, full_history = train_or_load(cfg, store=Store(tmp_path / "full"), device="cpu", progress=False)
    assert _same_state(resumed.state_dict(), full.state_dict())
    columns = ["epoch", "lr", "loss", "train_acc", "test_acc"]
    assert history[columns].equals(full_history[columns])


def test_damaged_training_state_is_recomputed_not_used(tmp_path, one_thread):
    cfg = default_config("digits", "natural", epochs=2, max_train=200, max_test=50)
    full, _ = train_or_load(cfg, store=Store(tmp_path / "full"), device="cpu", progress=False)
    store = Store(tmp_path / "damaged")
    state_path = store.path("checkpoints", cfg.name, checkpoint_key(cfg), ".state.pt")
    state_path.parent.mkdir(parents=True)
    state_path.write_bytes(b"PK\x03\x04 half of a resumable state")  # damaged outside probelib
    with pytest.warns(UserWarning, match=r"damaged.*Training .* from epoch 0 instead"):
        model, history = train_or_load(cfg, store=store, device="cpu", progress=False)
    assert history["epoch"].tolist() == [1, 2]
    assert _same_state(model.state_dict(), full.state_dict())


# ----------------------------------------------------------------------------- precompute
@pytest.mark.slow
def test_precompute_killed_part_way_resumes_reuses_and_matches(tmp_path, one_thread):
    """Kill 00_precompute's computation (ncg.suite_inputs) between writing an artifact and sealing it.

    The child pauses at its third seal (the natural model's test-set neighbours: written, not yet
    sealed) and is SIGKILLed there. The re-run must reuse the two sealed artifacts, recompute the
    unsealed one and everything after it, and end with the store an uninterrupted run writes.
    """
    root = tmp_path / "killed"
    marker = tmp_path / "paused"
    child = ("import os, sys, time, torch\ntorch.set_num_threads(1)\n"
             "from probelib import ncg\nfrom probelib.store import Store\n"
             "root, marker = sys.argv[1], sys.argv[2]\nreal_seal, calls = Store.seal, []\n"
             "def seal(self, path, **meta):\n"
             "    calls.append(path)\n"
             "    if len(calls) == 3:\n"
             "        open(marker + '.tmp', 'w').write(str(path)); os.replace(marker + '.tmp', marker)\n"
             "        time.sleep(600)\n"
             "    return real_seal(self, path, **meta)\n"
             f"Store.seal = seal\n{PRECOMPUTE}\n")
    proc = _start(child, str(root), str(marker))
    try:
        _wait_for(marker.exists, proc)
    finally:
        _kill(proc)
    paused = Path(marker.read_text())
    store = Store(root)
    assert paused.parent.name == "neighbours" and paused.exists() and not store.verify(paused)
    before = {name: p.stat().st_mtime_ns for name, p in _store_files(root).items()}
    sealed_before = [name for name in before if name.endswith(".seal.json")]
    assert len(sealed_before) == 2  # the natural model's checkpoint and its OOD neighbours

    resumed = eval(PRECOMPUTE, {"ncg": ncg, "Store": Store, "root": root})
    full_root = tmp_path / "full"
    full = eval(PRECOMPUTE, {"ncg": ncg, "Store": Store, "root": full_root})
    _assert_same_inputs(resumed, full)
    files, full_files = _store_files(root), _store_files(full_root)
    assert files.keys() == full_files.keys()
    for name in sealed_before:  # what was sealed before the kill was reused, not recomputed
        artifact = name[:-len(".seal.json")]
        assert files[name].stat().st_mtime_ns == before[name]
        assert files[artifact].stat().st_mtime_ns == before[artifact]
    assert store.verify(paused)  # the unsealed one was recomputed and sealed
    _assert_same_artifacts(files, full_files)

    # A damaged artifact is recomputed, not used: flip one byte in a neighbours file and in a
    # checkpoint's weights (which torch.load alone would read without complaint).
    nn_file = next(p for n, p in files.items() if n.startswith("neighbours/digitswo9-pixel-natural-ood")
                   and n.endswith(".npz"))
    ckpt = next(p for n, p in files.items() if n.startswith("checkpoints/") and "natural" in n and n.endswith(".pt"))
    good_weights = torch.load(ckpt, weights_only=True)["state_dict"]
    for path in (nn_file, ckpt):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    assert not _same_state(torch.load(ckpt, weights_only=True)["state_dict"], good_weights)
    again = eval(PRECOMPUTE, {"ncg": ncg, "Store": Store, "root": root})
    _assert_same_inputs(again, full)
    assert store.verify(nn_file) and store.verify(ckpt)
    assert _same_state(torch.load(ckpt, weights_only=True)["state_dict"], good_weights)


def _assert_same_inputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for method in a:
        for f in dataclasses.fields(a[method]):
            assert np.array_equal(getattr(a[method], f.name), getattr(b[method], f.name)), (method, f.name)


def _assert_same_artifacts(files: dict[str, Path], full_files: dict[str, Path]) -> None:
    for name, path in files.items():
        other = full_files[name]
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f, np.load(other, allow_pickle=False) as g:
                assert f.files == g.files and all(np.array_equal(f[k], g[k]) for k in f.files), name
        elif name.endswith(".pt"):
            assert _same_state(read_checkpoint(path)["state_dict"], read_checkpoint(other)["state_dict"]), name
        elif name.endswith(".seal.json"):
            assert json.loads(path.read_text())["meta"] == json.loads(other.read_text())["meta"], name


# ----------------------------------------------------------------------------- executed notebooks
@pytest.mark.slow
def test_killed_notebook_run_leaves_the_previous_output_untouched(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    kernel_pid = tmp_path / "kernel.pid"
    nb.cells = [nbformat.v4.new_code_cell(
        f"import os, time\nopen({str(kernel_pid)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
        f"os.replace({str(kernel_pid)!r} + '.tmp', {str(kernel_pid)!r})\ntime.sleep(600)")]
    source = tmp_path / "01_slow.ipynb"
    nbformat.write(nb, str(source))
    output = tmp_path / "out" / "notebooks" / "01_slow.ipynb"
    output.parent.mkdir(parents=True)
    output.write_text("the previous run's executed notebook")
    child = ("import sys\nfrom pathlib import Path\nfrom probelib.execute import execute_notebook\nfrom probelib.runner import Notebook\n"
             "execute_notebook(Notebook(1, 'slow', Path(sys.argv[1])), Path(sys.argv[2]), {}, cwd=Path(sys.argv[3]), "
             "env={})\n")
    proc = _start(child, str(source), str(output), str(tmp_path))

    try:
        _wait_for(kernel_pid.exists, proc)  # the cell is running; papermill's in-progress copy is on disk
        assert list(output.parent.glob(".*partial*"))
    finally:
        _kill(proc)
        if kernel_pid.exists():  # the kernel (its own session) exits when its parent dies; make sure
            _end_process(int(kernel_pid.read_text()))
    assert output.read_text() == "the previous run's executed notebook"
    assert [p.name for p in output.parent.iterdir() if not p.name.startswith(".")] == ["01_slow.ipynb"]
    # the killed run's in-progress copy is swept by the next run of the same notebook
    nb.cells = [nbformat.v4.new_code_cell("1 + 1")]
    nbformat.write(nb, str(source))
    from probelib.execute import execute_notebook
    from probelib.runner import Notebook
    execute_notebook(Notebook(1, "slow", source), output, {}, cwd=tmp_path, env={})
    assert not list(output.parent.glob(".*partial*"))
    assert nbformat.read(str(output), as_version=4).cells[0].outputs[0]["data"]["text/plain"] == "2"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_temporaries_of_a_killed_writer_are_swept_by_the_next_write(tmp_path):
    from probelib.store import _host, atomic_write, write_text_atomic
    target = tmp_path / "table.csv"
    here = _host()
    stale = tmp_path / f".table.csv.{_dead_pid()}@{here}.k3j1.tmp"     # a writer on this host killed mid-write
    live = tmp_path / f".table.csv.{os.getppid()}@{here}.x9a2.tmp"     # a writer still running
    legacy = tmp_path / f".table.csv.{_dead_pid()}.m2n3.tmp"           # no host named: may be another host's
    other = tmp_path / f".other.csv.{_dead_pid()}@{here}.abcd.tmp"     # another file's: its own write sweeps it
    for f in (stale, live, legacy, other):
        f.write_text("half")
    with atomic_write(target) as tmp:
        assert tmp.name.startswith(f".table.csv.{os.getpid()}@{here}.") and not stale.exists()
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n" and live.exists() and legacy.exists() and other.exists()
    write_text_atomic(tmp_path / "other.csv", "x")
    assert not other.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["table.csv", "other.csv", live.name, legacy.name])


# ----------------------------------------------------------------------------- the audit
_WRITERS = {"save", "savez", "savez_compressed", "savefig", "to_csv", "to_latex", "to_parquet", "to_json",
            "to_pickle", "to_excel", "write_text", "write_bytes", "open_memmap", "tofile", "imwrite"}
_MODULE_WRITERS = {"nbformat.write", "json.dump", "pickle.dump", "yaml.dump", "yaml.safe_dump", "shutil.copy",
                   "shutil.copyfile", "shutil.move", "papermill.execute_notebook"}


def _writes_outside_atomic_write(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that write a file but are not inside ``with atomic_write(...)`` (in-memory buffers excepted)."""
    found = []

    def visit(node: ast.AST, atomic: bool) -> None:
        if isinstance(node, ast.With):
            atomic = atomic or any(isinstance(i.context_expr, ast.Call)
                                   and getattr(i.context_expr.func, "id", None) == "atomic_write" for i in node.items)
        if isinstance(node, ast.Call) and not atomic:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            target = ast.unparse(node.args[0]) if node.args else ""
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name == "open":
                mode = ast.unparse(node.args[1]) if len(node.args) > 1 else keywords.get("mode", "'r'")
                writes = any(c in mode for c in "wax+")
            elif ast.unparse(func) in _MODULE_WRITERS:
                writes = True
            elif name in _WRITERS:  # a DataFrame's to_csv()/to_latex() without a target returns a string
                writes = bool(target or {"path_or_buf", "buf", "path", "fname"} & keywords.keys())
                writes = writes and target != "buf" and not target.startswith("io.")
            else:
                writes = False
            if writes:
                found.append((node.lineno, ast.unparse(node)))
        for child in ast.iter_child_nodes(node):
            visit(child, atomic)

    visit(tree, False)
    return found


def test_every_file_probelib_writes_goes_through_atomic_write():
    offenders = []
    for path in sorted((REPO / "probelib").rglob("*.py")):
        if path.name == "store.py":  # atomic_write itself
            continue
        for line, call in _writes_outside_atomic_write(ast.parse(path.read_text())):
            if path.name == "execute.py" and call.startswith(
                    "papermill.execute_notebook(str(notebook.path), str(partial)"):
                continue  # a temp name renamed onto the output (the kill test above checks it)
            if path.name == "report.py" and call.startswith("open(log, 'a'"):
                continue  # the runner's outputs log: appended lines in its own temporary folder, not a result
            offenders.append(f"{path.relative_to(REPO)}:{line}: {call}")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):  # notebooks save through save_table/save_figure
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                src = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
                for line, call in _writes_outside_atomic_write(ast.parse(src)):
                    offenders.append(f"{path.relative_to(REPO)}: {call}")
    assert offenders == [], "write these through probelib.store.atomic_write:\n" + "\n".join(offenders)


def test_the_audit_catches_a_plain_write():
    code = ("import torch\nfrom probelib.store import atomic_write\n"
            "torch.save(obj, path)\nwith atomic_write(path) as tmp:\n    torch.save(obj, tmp)\n"
            "df.to_csv('t.csv')\nopen(path, 'w').write('x')\nfig.savefig(path)\n")
    lines = [line for line, _ in _writes_outside_atomic_write(ast.parse(code))]
    assert lines == [3, 6, 7, 8]
