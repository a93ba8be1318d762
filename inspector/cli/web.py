"""`inspector serve` (the review station's web pages) and `inspector user ...` (who may use them)."""

from __future__ import annotations

import ipaddress
import sys

import click

from inspector.cli import cli, with_config
from inspector.cli.output import TEXT, echo_json, format_option
from inspector.cli.records import user_record
from inspector.base.config import Config
from inspector.base.errors import InspectorError


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port (default: web.port, 8470; 0 picks a free one and prints it).")
@with_config
def serve(cfg: Config, host: str | None, port: int | None) -> None:
    """Serve the review station: the review queue, station status, verdict search and reports.

    Operators log in with the users of `inspector user add` (or through the plant's reverse proxy,
    web.remote_user_header). GET /healthz answers `ok` without a login, for monitoring; programs (the MES)
    read the JSON API under /api/v1/ with a token of `inspector token add`. Stops on Ctrl-C or SIGTERM.
    """
    from inspector.web.app import serve as run_server

    host = host or cfg.web.host
    port = cfg.web.port if port is None else port
    if not _loopback(host) and not cfg.web.secure_cookies:
        click.echo(f"warning: serving on {host} over plain http: put the station behind the plant's TLS proxy and set "
                   "web.secure_cookies = true, or passwords and sessions travel readable on the network", err=True)

    def ready(url: str, app) -> None:
        users = app.extensions["inspector"]["users"].load()
        click.echo(f"inspector review station on {url} (database {app.extensions['inspector']['store'].where}; "
                   f"{len(users)} user(s) in {cfg.users_path}); Ctrl-C stops it", err=True)
        if not users:
            click.echo("note: no users yet: `inspector user add NAME --role reviewer` adds one", err=True)

    from inspector.base.logsetup import log_to_stderr

    with log_to_stderr(cfg.log.level):  # the audit trail: logins, failures, logouts, decisions, refusals
        run_server(cfg, host, port, ready)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@cli.group()
def user() -> None:
    """Users of the review station (web.users_file): viewers read, reviewers also record decisions."""


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InspectorError("--password-stdin: standard input was empty; give the password on one line")
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password")


PASSWORD_STDIN = click.option("--password-stdin", is_flag=True,
                              help="Read the password from one line of standard input (for scripts) instead of the terminal.")


def users_file(cfg: Config):
    from inspector.web.users import UsersFile

    return UsersFile(cfg.users_path)


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "reviewer"]), required=True,
              help="viewer: reads everything; reviewer: also records decisions.")
@PASSWORD_STDIN
@click.option("--no-password", is_flag=True,
              help="No password: this user comes in only through the reverse proxy (web.remote_user_header).")
@with_config
def user_add(cfg: Config, name: str, role: str, password_stdin: bool, no_password: bool) -> None:
    """Add user NAME with a role; the password is asked twice on the terminal (stored as an argon2id hash)."""
    from inspector.web.users import check_name

    check_name(name)  # before asking for a password
    password = None if no_password else read_password(password_stdin)
    users_file(cfg).add(name, role, password)
    click.echo(f"added {role} {name} to {cfg.users_path}" + (" (no password: reverse proxy only)" if no_password else ""))


@user.command("passwd")
@click.argument("name")
@PASSWORD_STDIN
@with_config
def user_passwd(cfg: Config, name: str, password_stdin: bool) -> None:
    """Set a new password for NAME; the user's open sessions end."""
    from inspector.web.users import UserError

    users = users_file(cfg)
    if users.get(name) is None:  # before asking for a password
        raise UserError(f"no user {name} in {cfg.users_path}; `inspector user list` shows them")
    users.set_password(name, read_password(password_stdin))
    click.echo(f"new password for {name}; their open sessions have ended")


@user.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "reviewer"]))
@with_config
def user_role(cfg: Config, name: str, role: str) -> None:
    """Give NAME another role; the user's open sessions end."""
    users_file(cfg).set_role(name, role)
    click.echo(f"{name} is a {role} now")


@user.command("remove")
@click.argument("name")
@with_config
def user_remove(cfg: Config, name: str) -> None:
    """Remove NAME; their open sessions end. Their reviews stay in the database."""
    users_file(cfg).remove(name)
    click.echo(f"removed {name} from {cfg.users_path}")


@user.command("list")
@format_option()
@with_config
def user_list(cfg: Config, fmt: str) -> None:
    """The users, their roles and when each was last changed (never a password hash)."""
    from inspector.cli.output import render_table

    users = users_file(cfg).load()
    if fmt != TEXT:
        echo_json([user_record(u) for u in sorted(users.values(), key=lambda u: u.name)])
        return
    if not users:
        click.echo(f"no users in {cfg.users_path} yet: `inspector user add NAME --role reviewer`")
        return
    click.echo(render_table(["NAME", "ROLE", "LOGIN", "CHANGED"],
                            [[u.name, u.role, "password" if u.password_hash else "proxy only", u.changed_at]
                             for u in sorted(users.values(), key=lambda u: u.name)]))
