"""Shared test set-up: torch on few threads, and the repository root on hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.pop("INSPECTOR_CONFIG", None)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder, so a stray ./config.toml or inspector.db is never shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSPECTOR_CONFIG", raising=False)
    monkeypatch.delenv("INSPECTOR_DEBUG", raising=False)
