"""`inspector token ...`: the review station's API tokens (web/tokens.py), for the MES and other programs."""

from __future__ import annotations


import click

from inspector.cli import cli, with_config
from inspector.cli.output import JSON, echo_json, format_option
from inspector.base.config import Config


def tokens_file(cfg: Config):
    from inspector.web.tokens import TokensFile, tokens_path

    return TokensFile(tokens_path(cfg))


@cli.group()
def token() -> None:
    """API tokens of the review station's JSON API (/api/v1/): read-only, one per program that reads it."""


@token.command("add")
@click.argument("name")
@with_config
def token_add(cfg: Config, name: str) -> None:
    """Make a read-only API token named NAME and print it, once (only its SHA-256 is kept).

    The token alone goes to standard output (TOKEN=$(inspector token add mes)); the program sends it as
    `Authorization: Bearer TOKEN`.
    """
    tokens = tokens_file(cfg)
    secret = tokens.add(name)
    click.echo(secret)
    click.echo(f"added read-only API token {name} to {tokens.path}: this is the only time it is shown; "
               f"`inspector token revoke {name}` ends it", err=True)


@token.command("list")
@format_option()
@with_config
def token_list(cfg: Config, fmt: str) -> None:
    """The API tokens: name, scope, when made, last used (to the minute) and revoked (never the tokens)."""
    from inspector.cli.output import render_table

    tokens = tokens_file(cfg)
    entries = sorted(tokens.load().values(), key=lambda t: t.name)
    if fmt == JSON:
        echo_json([t.to_json() for t in entries])
    elif not entries:
        click.echo(f"no API tokens in {tokens.path} yet: `inspector token add NAME`")
    else:
        click.echo(render_table(["NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED"],
                                [[t.name, t.scope, t.created_at, t.last_used_at or "never", t.revoked_at or "-"]
                                 for t in entries]))


@token.command("revoke")
@click.argument("name")
@with_config
def token_revoke(cfg: Config, name: str) -> None:
    """Refuse the API token NAME from the next request on (a running review station too); its name stays listed."""
    earlier = tokens_file(cfg).revoke(name)
    click.echo(f"API token {name} was revoked already, at {earlier}" if earlier else f"revoked API token {name}")
