"""The CLI as a whole: every command documented, errors without tracebacks, --config everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import inspector
from inspector.cli import cli


def walk(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from walk(cmd, prefix + (name,))


COMMANDS = list(walk(cli))


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help(path, cmd):
    assert cmd.help and cmd.help.strip(), f"`inspector {' '.join(path)}` has no help text"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


@pytest.mark.parametrize("path, cmd", [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)],
                         ids=[" ".join(p) for p, c in COMMANDS if not isinstance(c, click.Group)])
def test_every_command_takes_config(path, cmd):
    names = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
    assert "--config" in names, f"`inspector {' '.join(path)}` lacks --config"


def test_bad_config_is_one_error_line_without_traceback(tmp_path):
    (tmp_path / "config.toml").write_text("[infer]\nbatch_size = 0\n")
    proc = subprocess.run([sys.executable, "-m", "inspector", "status"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: infer.batch_size in config.toml: must be positive, got 0"
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    (tmp_path / "config.toml").write_text("[infer]\nbatch_size = 0\n")
    env = {"INSPECTOR_DEBUG": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "inspector", "status"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "inspector, version" in result.output


def test_the_command_line_starts_without_the_store_torch_or_the_demo(tmp_path):
    """Registering the commands imports neither SQLAlchemy (the store), torch, nor the demo script: `inspector --help`
    and every command start fast; the commands import those inside their functions."""
    heavy = ("sqlalchemy", "torch", "inspector.cli.demo", "inspector.loop.report")
    code = f"import sys, inspector.cli; print([m for m in {heavy!r} if m in sys.modules])"
    root = str(Path(inspector.__file__).resolve().parent.parent)  # the child imports the inspector under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "[]\n"), proc.stderr
