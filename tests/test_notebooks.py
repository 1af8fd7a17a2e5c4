"""Every notebook in notebooks/ runs under papermill with smoke parameters, in suite order.

Notebooks are discovered, so a new ``NN_name.ipynb`` is covered without editing this file. The
suite runs once per session through the runner itself (``probelib.runner.run_suite``), with
``results_dir`` in a temporary folder and one artifact store shared by all notebooks (so the
smoke models ``00_precompute`` trains are reused by the later notebooks); each notebook then
gets its own test result, and its outputs are checked: the files it must write under
``results_dir`` and the verdicts it must print (``EXPECTED``; the smoke defaults are
``mnist5kwo9`` for the NCG and corruption notebooks and ``mnist5k`` for AdaBN). ``-k`` selects
notebooks: only the selected ones are executed.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest

from probelib.parameters import notebook_parameters
from probelib.runner import DEFAULT_NOTEBOOKS, discover_notebooks, run_suite

NOTEBOOKS = discover_notebooks(DEFAULT_NOTEBOOKS) if DEFAULT_NOTEBOOKS.is_dir() else []
REQUIRED_PARAMETERS = {"dataset", "smoke", "device", "results_dir"}
CHECKS = ("test_notebook_runs", "test_notebook_outputs")
EXPECTED = {  # notebook -> (files under results_dir, phrases its verdict lines hold)
    "00_precompute": (["tables/ncg_precompute_summary.csv"], ["NCG above chance (pixel", "NCG above chance (feature"]),
    "01_ncg_tables": (["tables/pixel_ncg.csv", "tables/pixel_ncg.tex", "tables/pixel_robust_better_counts.csv",
                       "tables/feature_ncg.csv", "tables/feature_robust_better_counts.csv",
                       "tables/chi_square.csv", "tables/ncg_distance_bins.csv",
                       "figures/fig5_ncg_distance_bins.png", "figures/fig5_ncg_distance_bins.pdf"],
                      ["robust > natural NCG (pixel", "NCG above chance (pixel", "robust > natural NCG (feature",
                       "mixup > natural NCG (feature", "NCG above chance (mnist5kwo9, pixel",
                       "robust > natural NCG in most distance bins"]),
    "05_neighbour_visualisation": (["figures/ood_nearest_neighbours.png", "tables/nn_distance_vs_ncg.csv",
                                    "figures/nn_distance_vs_ncg.png"], ["Pearson r(mean NN distance, NCG)"]),
    "06_pretrained_ncg": (["tables/pretrained_reload_check.csv", "tables/pretrained_ncg_pixel.csv",
                           "tables/pretrained_ncg_feature.csv",
                           "tables/pretrained_corrupted_ncg_smoke-pretrained-mnist5kwo9-c.csv"],
                          ["reload with identical logits", "NCG above chance (pretrained, pixel",
                           "NCG above chance (pretrained, feature", "corrupted-data NCG (pretrained"]),
    "10_robustness": (["tables/robustness_mnist5kwo9.csv", "figures/fig3_rob_histograms_mnist5kwo9.png"],
                      ["robust radius far below the OOD distance for every method"]),
    "20_corrupted_ncg": (["tables/corrupted_ncg_smoke-mnist5kwo9-c.csv",
                          "figures/corrupted_ncg_slopes_smoke-mnist5kwo9-c.png"], ["keeps NCG above natural"]),
    "21_severity_gallery": (["figures/severity_gallery_mnist5kwo9.png", "tables/severity_change_mnist5kwo9.csv"],
                            ["mean change grows with severity"]),
    "30_adabn_shift_grid": (["tables/adabn_shift_grid_mnist5k.csv", "tables/adabn_paired_gains_mnist5k.csv",
                             "figures/adabn_gain_by_corruption_mnist5k.png", "tables/tent_table_mnist5k.csv",
                             "tables/tent_paired_gains_mnist5k.csv"],
                            ["AdaBN helps on noise", "AdaBN helps on blur", "significantly hurts accuracy",
                             "entropy minimisation (tent) vs AdaBN on the shift grid"]),
    "31_label_shift": (["tables/adabn_label_shift_mnist5k.csv", "figures/adabn_label_shift_gain_mnist5k.png",
                        "tables/tent_label_shift_mnist5k.csv", "figures/tent_label_shift_mnist5k.png"],
                       ["AdaBN hurts more the fewer classes", "limits the damage",
                        "entropy minimisation (tent) vs AdaBN under label shift"]),
    "32_black_border": (["tables/adabn_black_border_mnist5k.csv", "figures/adabn_black_border_mnist5k.png"],
                        ["hurts on the black border", "hurts on the white border",
                         "entropy minimisation (tent) vs AdaBN on the black border",
                         "entropy minimisation (tent) vs AdaBN on the white border"]),
    "33_ncg_under_adabn": (["tables/adabn_ncg_mnist5k.csv", "figures/adabn_ncg_mnist5k.png"],
                           ["moves predictions toward the nearest category"]),
    "40_severity_explorer": (["tables/explorer_mnist5kwo9_natural_gaussian_noise3.csv"], ["explorer initial state"]),
}


def _selected_stems(session: pytest.Session) -> list[str]:
    stems = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if item.module.__name__.endswith("test_notebooks") and callspec and "stem" in callspec.params \
                and item.originalname in CHECKS:
            stems.append(callspec.params["stem"])
    return stems


@pytest.fixture(scope="session")
def suite_run(request, tmp_path_factory):
    """Run the selected notebooks once (smoke=True, keep going past failures); the SuiteResult."""
    stems = _selected_stems(request.session) or [nb.stem for nb in NOTEBOOKS]
    store = tmp_path_factory.getbasetemp() / "precomputed"  # the store conftest gives every test
    out = tmp_path_factory.mktemp("suite-results")
    return run_suite(notebooks_dir=DEFAULT_NOTEBOOKS, only=stems, smoke=True, out=out,
                     env={"PROBELIB_PRECOMPUTED": str(store)}, keep_going=True)


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


@pytest.mark.slow
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


def _verdicts(executed_notebook: Path) -> list[str]:
    nb = nbformat.read(str(executed_notebook), as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    return [line for line in text.splitlines() if line.startswith("VERDICT: ")]


def test_every_notebook_has_expected_outputs():
    assert sorted(EXPECTED) == sorted(nb.stem for nb in NOTEBOOKS), "list each notebook's outputs in EXPECTED"


@pytest.mark.slow
@pytest.mark.parametrize("stem", [nb.stem for nb in NOTEBOOKS])
def test_notebook_outputs(stem, suite_run):
    """The smoke run wrote the notebook's tables and figures and printed its verdicts."""
    result = next(r for r in suite_run.results if r.notebook.stem == stem)
    assert result.status == "ok", f"{stem} failed: {result.error}"
    files, phrases = EXPECTED[stem]
    missing = [f for f in files if not (suite_run.out / f).is_file() or not (suite_run.out / f).stat().st_size]
    assert not missing, f"{stem} did not write {missing}"
    verdicts = _verdicts(result.output)
    for phrase in phrases:
        assert any(phrase in v for v in verdicts), f"{stem}: no verdict says {phrase!r}: {verdicts}"
    if stem == "10_robustness":  # NCG Fig. 3: radii below the OOD distances, fractions in [0, 1]
        table = pd.read_csv(suite_run.out / files[0], index_col="method")
        assert list(table.index) == ["natural", "trades", "at"]
        assert (table["attacked"] >= 1).all() and (table["failed"] <= table["attacked"]).all()
        assert ((table["mean radius"] > 0) & (table["mean distance"] > table["mean radius"])).all()
        assert table[["XD", "covered", "NCG"]].apply(lambda c: c.between(0, 1)).all().all()
    if stem == "20_corrupted_ncg":  # 3 methods × 2 corruptions × 5 severities of the smoke set's 60 images
        table = pd.read_csv(suite_run.out / files[0])
        assert len(table) == 3 * 2 * 5 and table["ncg"].between(0, 1).all() and (table["n"] == 60).all()
        assert len(verdicts) == 2


# ----------------------------------------------------------------------------- tracked notebooks stay clean

def _git(repo_root: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo_root), *args], check=True, capture_output=True, text=True).stdout


def _is_git_checkout(repo_root: Path) -> bool:
    import shutil
    import subprocess

    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(repo_root), "rev-parse", "--git-dir"], capture_output=True).returncode == 0


def _outputs(nb: nbformat.NotebookNode) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]


def test_tracked_notebooks_carry_no_outputs(repo_root):
    """Every notebook git tracks, as staged (what a commit takes) and on disk, has no outputs."""
    if not _is_git_checkout(repo_root):
        pytest.skip("not a git checkout")
    tracked = [p for p in _git(repo_root, "ls-files", "-z", "--", "*.ipynb").split("\0") if p]
    assert tracked, "no tracked notebooks found"
    dirty = {}
    for path in tracked:
        staged = nbformat.reads(_git(repo_root, "show", f":{path}"), as_version=4)
        on_disk = nbformat.read(str(repo_root / path), as_version=4)
        for where, nb in (("staged", staged), ("on disk", on_disk)):
            if _outputs(nb):
                dirty[f"{path} ({where})"] = _outputs(nb)
    assert not dirty, (f"notebooks with outputs (cells): {dirty}; run `make` once (it installs the nbstripout git "
                       "filter) and `git add` them again, or clear outputs")


def test_git_filter_strips_outputs_and_leaves_clean_notebooks_alone(repo_root, tmp_path):
    """.gitattributes sends notebooks through the nbstripout filter that make configures; that filter
    removes outputs and keeps a clean notebook byte for byte (so it never dirties the tree)."""
    import subprocess
    import sys

    attrs = (repo_root / ".gitattributes").read_text()
    assert "*.ipynb filter=nbstripout" in attrs
    makefile = (repo_root / "Makefile").read_text()
    assert "git config filter.nbstripout.clean" in makefile and "-m nbstripout --keep-id" in makefile
    strip = [sys.executable, "-m", "nbstripout", "--keep-id", "-t"]
    clean = next(nb.path for nb in NOTEBOOKS if nb.stem == "40_severity_explorer").read_text()
    assert subprocess.run(strip, input=clean, capture_output=True, text=True, check=True).stdout == clean
    nb = nbformat.reads(clean, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count = 3
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    stripped = subprocess.run(strip, input=nbformat.writes(nb), capture_output=True, text=True, check=True).stdout
    assert not _outputs(nbformat.reads(stripped, as_version=4))
