"""Shared test set-up: torch on few threads, the repository root on hand, `gpu` tests skipped without CUDA,
a real PostgreSQL server for the tests that run on both databases (`database_url`)."""

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


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """An untrained ResNet-34 artifact with a 64 x 32 input (daemon_helpers.make_model), written once; tests only
    read it (the daemon, plant and reliability tests)."""
    from daemon_helpers import make_model

    path = tmp_path_factory.mktemp("model") / "detector.safetensors"
    make_model(path, seed=0)
    return path


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the session (tests/pg_server.py); skipped where none is installed."""
    from pg_server import PostgresServer, find_bin

    if not find_bin("initdb"):
        pytest.skip("PostgreSQL server programs are not installed (make test installs them via apt-get)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A new, empty database: a SQLite file, or a database of its own on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inspector.db'}"
    return request.getfixturevalue("pg_server").fresh_database()


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder, so a stray ./config.toml or inspector.db is never shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSPECTOR_CONFIG", raising=False)
    monkeypatch.delenv("INSPECTOR_DEBUG", raising=False)


def pytest_collection_modifyitems(config, items):
    """A test marked `gpu` is skipped, with the reason, where torch sees no CUDA device.

    torch is imported only when such a test was collected, so a run of other tests stays light.
    """
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: needs a CUDA device, and torch.cuda.is_available() is False here")
    for item in gpu_items:
        item.add_marker(skip)
