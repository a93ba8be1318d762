"""`inspector config check` and `inspector config show` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from inspector.base.configfile import SYSTEM_CONFIG, load_config

BROKEN = """\
[convert]
low_percentile = 150
[infer]
batch_size = 0
batch = 4
[database]
url = "mysql://db/inspector"
[web]
remote_user_header = "X-Remote-User"
[wach]
"""


def inspector(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("INSPECTOR_CONFIG", "INSPECTOR_DEBUG")}
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, cwd=cwd,
                          env={**environ, **(env or {})}, timeout=120)


def test_check_lists_every_problem_and_exits_1(tmp_path):
    (tmp_path / "broken.toml").write_text(BROKEN)
    proc = inspector("config", "check", "broken.toml", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "Error: 7 problems in broken.toml:",
        "  wach: unknown section [wach] (known: imaging, convert, model, infer, train, watch, state, station, "
        "database, log, quality, review, retrain, web, metrics, alerts)",
        "  convert.low_percentile: must be in [0, 100), got 150.0",
        "  infer.batch: unknown key (known in [infer]: batch_size, threads, workers)",
        "  infer.batch_size: must be positive, got 0",
        "  database.url: inspector keeps its verdicts in SQLite (sqlite:///PATH) or PostgreSQL "
        "(postgresql+psycopg://...), not in 'mysql'",
        "  web.remote_user_header: is set, but web.trusted_proxies is empty: name the reverse proxy's address, the "
        "only sender whose user header is believed",
        "  web.remote_user_header: is set, but web.proxy_secret is empty: any program on a trusted proxy's host (and "
        "any web page through DNS rebinding) could name a user; set a secret the proxy sends in "
        "X-Inspector-Proxy-Secret on every request (e.g. `openssl rand -hex 32`)"]
    assert "Traceback" not in proc.stderr


def test_check_finds_a_rule_between_keys_that_used_to_fail_in_training(tmp_path):
    (tmp_path / "c.toml").write_text("[convert]\nlow_percentile = 60\nhigh_percentile = 40\n")
    proc = inspector("--config", "c.toml", "config", "check", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == ("Error: convert.low_percentile in c.toml: 60 must be below convert.high_percentile (40): "
                           "the window runs from the low to the high percentile of the training images' pixels\n")


def test_check_of_broken_toml_and_of_a_missing_file(tmp_path):
    (tmp_path / "c.toml").write_text("[convert\n")
    proc = inspector("config", "check", "c.toml", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: in c.toml: is not valid TOML: ")
    proc = inspector("config", "check", "gone.toml", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (1, "Error: config file gone.toml does not exist\n")


def test_check_ok_names_the_file_and_how_it_was_found(tmp_path):
    (tmp_path / "config.toml").write_text("[infer]\nbatch_size = 2\n")
    (tmp_path / "env.toml").write_text("[infer]\nbatch_size = 3\n")
    proc = inspector("config", "check", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "ok: config.toml (found by ./config.toml)\n")
    proc = inspector("config", "check", cwd=tmp_path, env={"INSPECTOR_CONFIG": "env.toml"})
    assert (proc.returncode, proc.stdout) == (0, "ok: env.toml (found by $INSPECTOR_CONFIG)\n")
    proc = inspector("config", "check", "env.toml", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "ok: env.toml (found by the command line)\n")


def test_without_any_file_the_defaults_are_ok(tmp_path):
    if SYSTEM_CONFIG.exists():
        pytest.skip(f"{SYSTEM_CONFIG} exists on this machine: the lookup finds it")
    proc = inspector("config", "check", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: no config file found (--config, $INSPECTOR_CONFIG, "
                                                           "./config.toml, /etc/inspector/config.toml, ")
    shown = json.loads(inspector("config", "show", "--format", "json", cwd=tmp_path).stdout)
    assert shown["file"] is None and shown["found_by"] == "built-in defaults"
    assert {k["from"] for k in shown["keys"]} == {"default"}


def test_show_says_where_each_value_came_from(tmp_path):
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "station.toml"
    config.write_text('[watch]\ncapture_dir = "cap"\n[infer]\nbatch_size = 2\n'
                      '[web]\nproxy_secret = "0123456789abcdef-secret"\n'
                      '[database]\nurl = "postgresql+psycopg://ins:hunter2@db.plant/inspector"\n')
    proc = inspector("config", "show", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"# the values in effect; the file: {config} (found by --config)"
    assert f'capture_dir = "{tmp_path / "etc" / "cap"}"  # {config}: watch.capture_dir' in lines
    assert f"batch_size = 2  # {config}: infer.batch_size" in lines
    assert "threads = 0  # default" in lines and "low_percentile = 0.01  # default" in lines
    assert f'proxy_secret = "***"  # {config}: web.proxy_secret' in lines
    assert "hunter2" not in proc.stdout and "0123456789abcdef" not in proc.stdout
    shown = json.loads(inspector("--config", str(config), "config", "show", "--format", "json", cwd=tmp_path).stdout)
    assert (shown["file"], shown["found_by"]) == (str(config), "--config")
    keys = {k["key"]: k for k in shown["keys"]}
    assert keys["infer.batch_size"] == {"key": "infer.batch_size", "value": 2, "from": "file", "file": str(config)}
    assert keys["model.input_size"] == {"key": "model.input_size", "value": [2000, 1000], "from": "default"}
    assert keys["watch.capture_dir"]["value"] == str(tmp_path / "etc" / "cap")


def test_show_masks_every_secret_field_in_text_and_json(tmp_path):
    """web.metrics_token as web.proxy_secret: base/config.py marks both secret, config show reads the mark."""
    config = tmp_path / "c.toml"
    config.write_text('[web]\nmetrics_token = "tok-0123456789abcdef"\nproxy_secret = "sec-0123456789abcdef"\n')
    proc = inspector("config", "show", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f'metrics_token = "***"  # {config}: web.metrics_token' in proc.stdout.splitlines()
    assert f'proxy_secret = "***"  # {config}: web.proxy_secret' in proc.stdout.splitlines()
    assert "0123456789abcdef" not in proc.stdout
    proc = inspector("config", "show", "--format", "json", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    keys = {k["key"]: k for k in json.loads(proc.stdout)["keys"]}
    assert keys["web.metrics_token"] == {"key": "web.metrics_token", "value": "***", "from": "file",
                                         "file": str(config)}
    assert keys["web.proxy_secret"]["value"] == "***"
    assert "0123456789abcdef" not in proc.stdout


def test_show_writes_a_config_file_that_loads_to_the_same_values(tmp_path):
    """Its TOML output is a config: the values in effect, pinned (paths already resolved)."""
    config = tmp_path / "c.toml"
    config.write_text('[model]\nfeatures = ["layer3", "layer2"]\ninput_size = [400, 200]\n'
                      '[watch]\npatterns = ["*.tif"]\npolling = true\nsettle_seconds = 0.25\n'
                      '[station]\nname = "line 2 \\"east\\""\n')
    proc = inspector("config", "show", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pinned = tmp_path / "pinned" / "config.toml"
    pinned.parent.mkdir()
    pinned.write_text(proc.stdout)
    tomllib.loads(proc.stdout)
    original, again = load_config(config), load_config(pinned)
    assert again.source != original.source
    for name in ("model", "watch", "station", "convert", "infer", "train", "state", "web", "review", "retrain"):
        assert getattr(again, name) == getattr(original, name), name
    assert again.database.url == original.database.url
