"""The project's folders resolve the same from any working directory (kernels start in notebooks/)."""

from __future__ import annotations

from probelib.paths import project_path, project_root


def test_project_root_from_notebooks_folder_and_elsewhere(repo_root, tmp_path, monkeypatch):
    from probelib.data import data_root
    from probelib.store import default_store

    assert project_root(repo_root / "notebooks") == repo_root
    assert project_root(tmp_path) is None
    monkeypatch.delenv("PROBELIB_PRECOMPUTED", raising=False)
    monkeypatch.delenv("PROBELIB_DATA", raising=False)
    for cwd in (repo_root / "notebooks", tmp_path):  # a kernel in notebooks/; a script outside the project
        monkeypatch.chdir(cwd)
        assert project_path("results/mnist5k") == repo_root / "results" / "mnist5k"
        assert default_store().root.resolve() == repo_root / "precomputed"
        assert data_root() == repo_root / "data"
    assert project_path(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("PROBELIB_PRECOMPUTED", str(tmp_path / "store"))  # the variables still override
    monkeypatch.setenv("PROBELIB_DATA", str(tmp_path / "data"))
    assert default_store().root.resolve() == (tmp_path / "store").resolve()
    assert data_root() == tmp_path / "data"
