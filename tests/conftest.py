"""Fixtures for every test module; shared helper functions are in ``helpers.py``.

Tests that take more than a few seconds on 2 CPU cores (training in subprocesses, notebooks, DDP)
are marked ``slow``: ``pytest -m "not slow"`` runs the rest in a few minutes; CI runs everything.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test caches features and downloads in its own folder, never in the user's."""
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
