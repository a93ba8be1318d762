"""Fixtures of the reliability suite: one tiny real model artifact for every test that needs one."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon_helpers import make_model


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """An untrained ResNet-34 artifact with a 64 x 32 input (daemon_helpers.make_model), written once."""
    path = tmp_path_factory.mktemp("model") / "detector.safetensors"
    make_model(path, seed=0)
    return path
