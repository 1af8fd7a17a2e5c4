"""The notebook suite: output helpers the notebooks call, the ordered notebook list, the runner."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from probelib.store import atomic_write

VERDICT_PREFIX = "VERDICT: "


def save_table(df: pd.DataFrame, name: str, results_dir: str | os.PathLike,
               float_format: str = "%.4f") -> Path:
    """Save ``df`` as ``<results_dir>/tables/<name>.csv`` and ``.tex`` (atomically); return the CSV path."""
    folder = Path(results_dir) / "tables"
    csv = folder / f"{name}.csv"
    with atomic_write(csv) as tmp:
        df.to_csv(tmp, float_format=float_format)
    with atomic_write(folder / f"{name}.tex") as tmp:
        tmp.write_text(df.to_latex(float_format=lambda v: float_format % v))
    return csv


def save_figure(fig, name: str, results_dir: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``<results_dir>/figures/<name>.png`` and ``.pdf`` (atomically)."""
    folder = Path(results_dir) / "figures"
    png = folder / f"{name}.png"
    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    with atomic_write(folder / f"{name}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight")
    return png


def verdict(text: str) -> str:
    """Print one verdict line (collected into the results report) and return it."""
    line = VERDICT_PREFIX + text
    print(line, flush=True)
    return line
