"""config.toml -> frozen dataclasses: defaults, discovery order, and errors naming key and file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inspector.base.config import Config, parse_input_size
from inspector.base import configfile
from inspector.base.configfile import ConfigProblems, find_config, load_config
from inspector.base.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_repository_config_equals_built_in_defaults(repo_root):
    """The documented config.toml states every default: loading it changes nothing but paths."""
    cfg = load_config(repo_root / "config.toml")
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        ours, theirs = getattr(cfg, section.name), getattr(defaults, section.name)
        for f in dataclasses.fields(ours):
            a, b = getattr(ours, f.name), getattr(theirs, f.name)
            if isinstance(a, Path):
                assert a == repo_root / b, f"{section.name}.{f.name}"
            elif section.name == "database" and f.name == "url":
                assert a == f"sqlite:///{repo_root / 'inspector.db'}"
            else:
                assert a == b, f"{section.name}.{f.name}"


def test_every_key_is_documented_in_config_toml(repo_root):
    text = (repo_root / "config.toml").read_text()
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in text
        for f in dataclasses.fields(section.default_factory()):
            assert f"\n{f.name} = " in text, f"{section.name}.{f.name} missing from config.toml"


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path / "c.toml", "[infer]\nbatch_size = 8\n"))
    assert cfg.infer.batch_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.infer.batch_size = 2  # type: ignore[misc]


def test_relative_paths_follow_the_config_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    cfg = load_config(write(sub / "c.toml", '[watch]\ncapture_dir = "cap"\n[database]\nurl = "sqlite:///db/x.db"\n'))
    assert cfg.watch.capture_dir == sub / "cap"
    assert cfg.database.url == f"sqlite:///{sub / 'db' / 'x.db'}"


def test_discovery_order(tmp_path, monkeypatch):
    write(tmp_path / "config.toml", "[infer]\nbatch_size = 3\n")
    assert load_config().infer.batch_size == 3
    env = write(tmp_path / "env.toml", "[infer]\nbatch_size = 5\n")
    monkeypatch.setenv("INSPECTOR_CONFIG", str(env))
    assert load_config().infer.batch_size == 5
    explicit = write(tmp_path / "x.toml", "[infer]\nbatch_size = 7\n")
    assert load_config(explicit).infer.batch_size == 7


def test_the_system_file_comes_after_the_local_one(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    system = write(tmp_path / "etc" / "config.toml", "[infer]\nbatch_size = 9\n")
    monkeypatch.setattr(configfile, "SYSTEM_CONFIG", system)
    monkeypatch.delenv("INSPECTOR_CONFIG", raising=False)
    assert load_config().infer.batch_size == 9
    assert find_config().found_by == str(system)
    write(tmp_path / "config.toml", "[infer]\nbatch_size = 3\n")
    assert load_config().infer.batch_size == 3
    assert find_config().found_by == "./config.toml"


def test_no_file_gives_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(configfile, "SYSTEM_CONFIG", tmp_path / "no-etc" / "config.toml")
    assert find_config().path is None
    cfg = load_config()
    assert cfg.source == "(built-in defaults)"
    assert cfg.model.input_size == (2000, 1000)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[watch]\nsettle = 2\n", "watch.settle in {file}: unknown key"),
        ("[wach]\n", "wach in {file}: unknown section [wach]"),
        ("[infer]\nbatch_size = 'four'\n", "infer.batch_size in {file}: must be a whole number, got 'four'"),
        ("[infer]\nbatch_size = -1\n", "infer.batch_size in {file}: must be positive, got -1"),
        ("[watch]\nsettle_seconds = -0.5\n", "watch.settle_seconds in {file}: must not be negative, got -0.5"),
        ("[model]\ninput_size = [2000, -1]\n", "model.input_size in {file}: sizes must be positive, got [2000, -1]"),
        ("[model]\ninput_size = [2000]\n", "model.input_size in {file}: must be a list of 2 values, got [2000]"),
        ("[watch]\npolling = 'yes'\n", "watch.polling in {file}: must be true or false, got 'yes'"),
        ("[convert]\nmethod = 'fancy'\n", "convert.method in {file}: 'fancy' is not one of naive, global, local, mix, clahe"),
        ("[model]\ndevice = 'tpu'\n", "model.device in {file}: 'tpu' is not auto, cpu, cuda or cuda:N"),
        ("[train]\ntarget_recall = 1.5\n", "train.target_recall in {file}: must be between 0 and 1, got 1.5"),
        ("[database]\nurl = 'inspector.db'\n", "database.url in {file}: 'inspector.db' is not a database URL"),
        ("[review]\nbundle_rule = 'folder'\n", "review.bundle_rule in {file}: 'folder' is neither 'subfolder' nor 'regex:PATTERN'"),
        ("not toml ===\n", "in {file}: is not valid TOML"),
        ("[web]\nremote_user_header = 'X-Remote-User'\ntrusted_proxies = ['127.0.0.1']\n",
         "web.remote_user_header in {file}: is set, but web.proxy_secret is empty"),
        ("[web]\nproxy_secret = 'short'\n", "web.proxy_secret in {file}: must be at least 16 printable characters"),
        ("[web]\nallowed_hosts = ['evil.example:80']\n", "web.allowed_hosts in {file}: 'evil.example:80' is not a host"),
        ("[web]\nconnection_limit = 5\n", "web.connection_limit in {file}: must be at least 10"),
        ("[web]\nmax_request_bytes = 0\n", "web.max_request_bytes in {file}: must be positive, got 0"),
        ("[convert]\nlow_percentile = 150\n", "convert.low_percentile in {file}: must be in [0, 100), got 150.0"),
        ("[convert]\nlow_percentile = 99.99\n",
         "convert.low_percentile in {file}: 99.99 must be below convert.high_percentile (99.99)"),
        ("[convert]\nlow_percentile = 5\nhigh_percentile = 2\n",
         "convert.low_percentile in {file}: 5 must be below convert.high_percentile (2)"),
        ("[database]\nurl = 'mysql://db/inspector'\n",
         "database.url in {file}: inspector keeps its verdicts in SQLite (sqlite:///PATH) or PostgreSQL"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path, text, message):
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message.format(file=path) in str(err.value)


def test_every_problem_of_a_file_is_listed(tmp_path):
    path = write(tmp_path / "c.toml", "[wach]\n[infer]\nbatch_size = 0\nbogus = 1\n[convert]\nlow_percentile = 150\n"
                                      "[web]\nremote_user_header = 'X-Remote-User'\n")
    with pytest.raises(ConfigProblems) as err:
        load_config(path)
    problems = err.value.problems
    assert [(p.key, p.message.split(":")[0]) for p in problems] == [
        ("wach", "unknown section [wach] (known"),
        ("convert.low_percentile", "must be in [0, 100), got 150.0"),
        ("infer.bogus", "unknown key (known in [infer]"),
        ("infer.batch_size", "must be positive, got 0"),
        ("web.remote_user_header", "is set, but web.trusted_proxies is empty"),
        ("web.remote_user_header", "is set, but web.proxy_secret is empty")]
    lines = str(err.value).splitlines()
    assert lines[0] == f"6 problems in {path}:" and lines[4] == "  infer.batch_size: must be positive, got 0"
    assert load_config(write(tmp_path / "ok.toml", "[infer]\nbatch_size = 2\n")).infer.batch_size == 2  # no problem


def test_a_rule_between_keys_is_left_out_when_one_of_its_keys_is_wrong(tmp_path):
    path = write(tmp_path / "c.toml", "[station]\nheartbeat_seconds = 'often'\nclaim_lease_seconds = 1\n")
    with pytest.raises(ConfigError) as err:  # one problem is raised as itself, not as ConfigProblems
        load_config(path)
    assert type(err.value) is ConfigError and [err.value.key] == ["station.heartbeat_seconds"]


def test_missing_explicit_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"config file nope.toml does not exist \(given with --config\)"):
        load_config("nope.toml")
    monkeypatch.setenv("INSPECTOR_CONFIG", "gone.toml")
    with pytest.raises(ConfigError, match=r"does not exist \(set in \$INSPECTOR_CONFIG\)"):
        load_config()


def test_require_dir_names_key_and_file(tmp_path):
    path = write(tmp_path / "c.toml", '[watch]\ncapture_dir = "missing"\n')
    cfg = load_config(path)
    with pytest.raises(ConfigError) as err:
        cfg.require_dir("watch.capture_dir")
    assert str(err.value) == f"watch.capture_dir in {path}: folder {tmp_path / 'missing'} does not exist; create it or change the key"
    (tmp_path / "missing").mkdir()
    assert cfg.require_dir("watch.capture_dir") == tmp_path / "missing"


def test_parse_input_size():
    assert parse_input_size("2000x1000") == (2000, 1000)
    with pytest.raises(ConfigError, match="is not HEIGHTxWIDTH"):
        parse_input_size("2000")
    with pytest.raises(ConfigError, match="must be positive"):
        parse_input_size("0x10")
