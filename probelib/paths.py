"""Where the project's folders are, whatever the working directory.

A kernel started by JupyterLab or Voilà runs in ``notebooks/``; a script may run anywhere. The
default store (``precomputed/``), data root (``data/``) and results folder (``results/``) are
the *project's*: the nearest folder holding both ``notebooks/`` and ``pyproject.toml``, looked
for upward from the working directory, then from the installed package; the working directory
when neither lies inside a project. ``$PROBELIB_PRECOMPUTED``, ``$PROBELIB_DATA`` (and explicit
arguments) still override.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "project_path"]

_MARKERS = ("notebooks", "pyproject.toml")


def _is_project(folder: Path) -> bool:
    return (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file()


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The project folder above ``start`` (default: the cwd, then this package); None outside any."""
    starts = [Path(start)] if start is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for s in starts:
        s = s.resolve()
        for folder in (s, *s.parents):
            if _is_project(folder):
                return folder
    return None


def project_path(path: str | os.PathLike) -> Path:
    """``path`` as is when absolute, else under :func:`project_root` (the cwd outside any project)."""
    path = Path(path)
    if path.is_absolute():
        return path
    return (project_root() or Path.cwd()) / path
