"""Every notebook in notebooks/ runs under papermill with smoke parameters, in suite order.

Notebooks are discovered, so a new ``NN_name.ipynb`` is covered without editing this file. The
suite runs once per session through the runner itself (``probelib.suite.run_suite``), with
``results_dir`` in a temporary folder and one artifact store shared by all notebooks (so the
smoke models ``00_precompute`` trains are reused by the later notebooks); each notebook then
gets its own test result. ``-k`` selects notebooks: only the selected ones are executed.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from probelib.suite import DEFAULT_NOTEBOOKS, discover_notebooks, notebook_parameters, run_suite

NOTEBOOKS = discover_notebooks(DEFAULT_NOTEBOOKS) if DEFAULT_NOTEBOOKS.is_dir() else []
REQUIRED_PARAMETERS = {"dataset", "smoke", "device", "results_dir"}


def _selected_stems(session: pytest.Session) -> list[str]:
    stems = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if item.module.__name__.endswith("test_notebooks") and callspec and "stem" in callspec.params \
                and item.originalname == "test_notebook_runs":
            stems.append(callspec.params["stem"])
    return stems


@pytest.fixture(scope="session")
def suite_run(request, tmp_path_factory):
    """Run the selected notebooks once (smoke=True, keep going past failures); the SuiteResult."""
    stems = _selected_stems(request.session) or [nb.stem for nb in NOTEBOOKS]
    store = tmp_path_factory.getbasetemp() / "precomputed"  # the store conftest gives every test
    out = tmp_path_factory.mktemp("suite-results")
    return run_suite(notebooks_dir=DEFAULT_NOTEBOOKS, only=stems, smoke=True, out=out,
                     env={"PROBELIB_PRECOMPUTED": str(store)}, keep_going=True,
                     progress_bar=False)


@pytest.mark.parametrize("stem", [nb.stem for nb in NOTEBOOKS])
def test_notebook_follows_conventions(stem):
    """Cell 0 markdown, cell 1 the tagged parameters cell with the common parameters, no outputs."""
    nb_path = next(nb.path for nb in NOTEBOOKS if nb.stem == stem)
    nb = nbformat.read(str(nb_path), as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.strip(), "cell 0: markdown description"
    assert nb.cells[1].cell_type == "code" and "parameters" in nb.cells[1].metadata.get("tags", []), \
        "cell 1 must be the code cell tagged 'parameters'"
    missing = REQUIRED_PARAMETERS - set(notebook_parameters(nb_path))
    assert not missing, f"parameters cell lacks {sorted(missing)}"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"commit notebooks with outputs cleared (cells {dirty} have outputs)"


@pytest.mark.parametrize("stem", [nb.stem for nb in NOTEBOOKS])
def test_notebook_runs(stem, suite_run):
    """The notebook executed top to bottom with smoke=True: no error output."""
    result = next(r for r in suite_run.results if r.notebook.stem == stem)
    assert result.status == "ok", f"{stem} failed: {result.error}; executed notebook: {result.output}"
    executed = nbformat.read(str(result.output), as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert executed.metadata["papermill"]["parameters"]["smoke"] is True
    assert Path(suite_run.index_md).is_file() and f"notebooks/{stem}.ipynb" in suite_run.index_md.read_text()
