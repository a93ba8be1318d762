"""What the wheel says about itself: one version (inspector/__init__.py's, also `inspector --version`), the
Python versions CI runs, the MIT license with its file, and py.typed."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

import inspector


def test_the_version_has_one_source(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "inspector.__version__"}


def test_version_option_is_the_installed_metadata():
    proc = subprocess.run([sys.executable, "-m", "inspector", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout == f"inspector, version {importlib.metadata.version('inspector')}\n"
    assert importlib.metadata.version("inspector") == inspector.__version__


@pytest.fixture
def wheel(tmp_path, repo_root):
    """The wheel of the package's own files (pip with the installed setuptools: no network)."""
    src, out = tmp_path / "src", tmp_path / "wheel"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo_root / name, src / name)
    shutil.copytree(repo_root / "inspector", src / "inspector", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("inspector-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_carries_license_version_python_and_py_typed(wheel, repo_root):
    names = set(wheel.namelist())
    info = f"inspector-{inspector.__version__}.dist-info"
    metadata = wheel.read(f"{info}/METADATA").decode().splitlines()
    assert f"Version: {inspector.__version__}" in metadata
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert wheel.read(f"{info}/licenses/LICENSE") == (repo_root / "LICENSE").read_bytes()
    assert "inspector/py.typed" in names
    assert "inspector/web/openapi.json" in names  # the API's contract, served at /api/v1/openapi.json


def test_the_python_it_claims_is_the_one_it_needs(repo_root):
    """hashlib.file_digest and tomllib are 3.11's; the README says what pyproject says."""
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    readme = (repo_root / "README.md").read_text()
    assert "Python 3.11+" in readme and "3.10" not in readme
