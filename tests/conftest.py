"""Shared fixtures. Tests never touch the user's ./data or ./precomputed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread until the module ends: reproducible numbers for the bit-for-bit
    comparisons, and faster than two for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory, monkeypatch):
    """Point the artifact store at a per-session temporary folder unless a test sets its own."""
    if "PROBELIB_PRECOMPUTED" not in os.environ or os.environ.get("PROBELIB_TEST_STORE"):
        store = tmp_path_factory.getbasetemp() / "precomputed"
        monkeypatch.setenv("PROBELIB_PRECOMPUTED", str(store))
        monkeypatch.setenv("PROBELIB_TEST_STORE", "1")
    yield
