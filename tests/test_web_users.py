"""`inspector user ...` and the users file: argon2id hashes, roles, a private file written atomically, and errors
that say what to do."""

from __future__ import annotations

import json
import stat

import pytest
from click.testing import CliRunner

from cli_errors import error_of
from inspector.cli import cli
from inspector.web.users import UserError, UsersFile


@pytest.fixture
def config(tmp_path):
    (tmp_path / "config.toml").write_text('[state]\ndir = "var"\n')
    return str(tmp_path / "config.toml")


def run(config, *args, stdin=None):
    return CliRunner().invoke(cli, [*args, "--config", config], input=stdin)


def test_add_stores_a_slow_salted_hash_in_a_private_file(config, tmp_path):
    result = run(config, "user", "add", "ann", "--role", "reviewer", "--password-stdin", stdin="correct horse 1\n")
    assert result.exit_code == 0, result.output
    path = tmp_path / "var" / "web-users.json"
    assert result.output == f"added reviewer ann to {path}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = json.loads(path.read_text())["users"]["ann"]
    assert entry["role"] == "reviewer" and entry["password_hash"].startswith("$argon2id$")
    assert "correct horse" not in path.read_text()
    users = UsersFile(path)
    assert users.verify("ann", "correct horse 1").name == "ann"
    assert users.verify("ann", "correct horse 2") is None and users.verify("nobody", "correct horse 1") is None
    second = run(config, "user", "add", "bob", "--role", "reviewer", "--password-stdin", stdin="correct horse 1\n")
    assert second.exit_code == 0
    hashes = {u.password_hash for u in UsersFile(path).load().values()}
    assert len(hashes) == 2  # salted: the same password, two hashes


def test_the_password_is_asked_twice_on_the_terminal(config, tmp_path):
    result = run(config, "user", "add", "vic", "--role", "viewer", stdin="viewer-pass-1\nviewer-pass-1\n")
    assert result.exit_code == 0, result.output
    assert "Password:" in result.output and "Repeat the password:" in result.output
    assert "viewer-pass-1" not in result.output  # hidden input
    assert UsersFile(tmp_path / "var" / "web-users.json").verify("vic", "viewer-pass-1").role == "viewer"


def test_refusals_say_what_to_do(config):
    assert run(config, "user", "add", "ann", "--role", "reviewer", "--password-stdin", stdin="long-enough-1\n").exit_code == 0
    assert error_of(run(config, "user", "add", "ann", "--role", "viewer", "--password-stdin", stdin="other-pass-1\n")) == \
        "user ann exists already: `inspector user passwd ann` sets a new password, `inspector user role ann ROLE` another role"
    assert error_of(run(config, "user", "add", "bob", "--role", "reviewer", "--password-stdin", stdin="short\n")) == \
        "the password is too short: at least 8 characters"
    assert "is not a user name" in error_of(run(config, "user", "add", "bob smith", "--role", "viewer", "--no-password"))
    assert run(config, "user", "add", "x", "--role", "admin", "--no-password").exit_code == 2
    assert error_of(run(config, "user", "passwd", "nobody", "--password-stdin", stdin="whatever-1\n")).startswith(
        "no user nobody in ")
    assert error_of(run(config, "user", "remove", "nobody")).startswith("no user nobody in ")
    assert "standard input was empty" in error_of(run(config, "user", "add", "eve", "--role", "viewer",
                                                      "--password-stdin", stdin=""))


def test_list_role_passwd_and_remove(config, tmp_path):
    run(config, "user", "add", "ann", "--role", "reviewer", "--password-stdin", stdin="first-pass-1\n")
    run(config, "user", "add", "proxyuser", "--role", "viewer", "--no-password")
    listed = run(config, "user", "list").output.splitlines()
    assert listed[0].split() == ["NAME", "ROLE", "LOGIN", "CHANGED"]
    assert listed[1].split()[:3] == ["ann", "reviewer", "password"] and listed[2].split()[:4] == \
        ["proxyuser", "viewer", "proxy", "only"]
    users = UsersFile(tmp_path / "var" / "web-users.json")
    stamp = users.get("ann").stamp
    assert run(config, "user", "passwd", "ann", "--password-stdin", stdin="second-pass-2\n").exit_code == 0
    assert users.verify("ann", "first-pass-1") is None and users.verify("ann", "second-pass-2") is not None
    assert users.get("ann").stamp != stamp
    assert run(config, "user", "role", "ann", "viewer").output == "ann is a viewer now\n"
    assert users.get("ann").role == "viewer"
    assert users.verify("proxyuser", "") is None  # no password: never through the login form
    assert run(config, "user", "remove", "ann").exit_code == 0 and users.get("ann") is None


def test_a_damaged_users_file_is_named(tmp_path):
    path = tmp_path / "users.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match=r"is not valid JSON .* add the users again"):
        UsersFile(path).load()
    path.write_text(json.dumps({"format": "inspector-users", "users": {"x": {"role": "root"}}}))
    with pytest.raises(UserError, match="user 'x' has no valid role"):
        UsersFile(path).load()
