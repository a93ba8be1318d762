"""`inspector config check` (every problem of a config file, before a restart) and `inspector config show` (the
values in effect and where each came from)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from inspector.cli import cli
from inspector.cli.output import JSON, echo_json, format_option
from inspector.base.config import Config
from inspector.base.configfile import SYSTEM_CONFIG, ConfigSource, find_config, load_config, read_config
from inspector.base.errors import ConfigError

LOOKUP = f"--config, $INSPECTOR_CONFIG, ./config.toml, {SYSTEM_CONFIG}, built-in defaults"

CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help=f"Config file (else the lookup: {LOOKUP}).")


def _source(ctx: click.Context, config_path: str | None) -> ConfigSource:
    """The file of this command's --config, else the group's, else the lookup's."""
    return find_config(config_path or (ctx.find_root().obj or {}).get("config_path"))


@cli.group("config")
def config_group() -> None:
    """The configuration: check a file before a restart, show the values in effect."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@CONFIG_OPTION
@click.pass_context
def config_check(ctx: click.Context, file: str | None, config_path: str | None) -> None:
    """Check every key of FILE (else the file the lookup finds) and the rules between keys.

    Exit 0 and `ok: FILE` when it loads; exit 1 listing every problem, not only the first.
    """
    if file:
        if not Path(file).is_file():
            raise ConfigError(f"config file {file} does not exist")
        source = ConfigSource(Path(file), "the command line")
    else:
        source = _source(ctx, config_path)
    if source.path is None:
        click.echo(f"ok: no config file found ({LOOKUP}): the built-in defaults apply")
        return
    load_config(source.path, discover=False)  # one problem raised as itself, several as ConfigProblems
    click.echo(f"ok: {source.path} (found by {source.found_by})")


@config_group.command("show")
@format_option(text_help="(a config file, TOML, each line's comment saying where its value came from)")
@CONFIG_OPTION
@click.pass_context
def config_show(ctx: click.Context, fmt: str, config_path: str | None) -> None:
    """The values in effect and where each came from: the file and its key, or the built-in default.

    Relative paths are shown resolved (against the file's folder, or the current folder for the defaults);
    The secrets (web.proxy_secret, web.metrics_token) and a database password are shown as ***.
    """
    source = _source(ctx, config_path)
    cfg, data = read_config(source.path)
    rows = effective_values(cfg, data)
    file = str(source.path) if source.path else None
    if fmt == JSON:
        keys = [{"key": key, "value": value, "from": "file" if set_in_file else "default",
                 **({"file": file} if set_in_file else {})} for key, value, set_in_file in rows]
        echo_json({"file": file, "found_by": source.found_by, "keys": keys})
        return
    click.echo(f"# the values in effect; the file: {file or 'none'} (found by {source.found_by})")
    click.echo(f"# lookup: {LOOKUP}")
    section = ""
    for key, value, set_in_file in rows:
        name = key.split(".")[0]
        if name != section:
            click.echo(f"\n[{name}]")
            section = name
        click.echo(f"{key.split('.')[1]} = {toml_value(value)}  # {f'{file}: {key}' if set_in_file else 'default'}")


def effective_values(cfg: Config, data: dict) -> list[tuple[str, object, bool]]:
    """(section.key, value as in effect, whether the file set it) for every key, secrets masked."""
    rows = []
    for sfield in dataclasses.fields(cfg):
        if sfield.name == "source":
            continue
        section = getattr(cfg, sfield.name)
        raw = data.get(sfield.name, {})
        for f in dataclasses.fields(section):
            key = f"{sfield.name}.{f.name}"
            value = getattr(section, f.name)
            if f.metadata.get("secret") and value:  # base/config.py marks them
                value = "***"
            elif key == "database.url":
                from inspector.store.store import shown_url

                value = shown_url(value)
            rows.append((key, value, f.name in raw))
    return rows


def toml_value(value: object) -> str:
    """A value as TOML writes it (strings and paths as basic strings, tuples as arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
