"""`db upgrade` (the schema), `db copy` (a station's history into the plant's database) and `db backfill-serials`."""

from __future__ import annotations

import sys

import click

from inspector.cli import cli, with_config
from inspector.base.config import Config, bad_station_name


@cli.group()
def db() -> None:
    """Manage the verdict database."""


@db.command()
@with_config
def upgrade(cfg: Config) -> None:
    """Create the database schema, or migrate an older one (safe to run any time)."""
    from inspector.store.schema import SCHEMA_VERSION
    from inspector.store.store import open_configured

    with open_configured(cfg) as store:
        click.echo(f"database {store.where}: schema {store.schema_action} (version {SCHEMA_VERSION})")


def _station_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (not value or bad_station_name(value)):
        raise click.BadParameter(f"{value!r} is not a station name: 1 to 64 printable characters, no leading or "
                                 "trailing spaces")
    return value


@db.command("copy")
@click.argument("source_url")
@click.argument("target_url")
@click.option("--station", default=None, metavar="NAME", callback=_station_name,
              help="Name the rows recorded without a station (before schema 3) as this station's; give the same "
                   "name on every run (default: they stay without one).")
@with_config
def copy_command(cfg: Config, source_url: str, target_url: str, station: str | None) -> None:
    """Copy a station's history from SOURCE_URL (typically its SQLite file, sqlite:////path/inspector.db)
    into TARGET_URL (typically the plant's PostgreSQL database).

    Copies models, verdicts, images, rejections, reviews and retrains; not the live state of running
    daemons (stations, claims, locks). The source is opened read-only and must be at the current
    schema. The target's schema is created or migrated. Rows are matched by their natural key (ids
    differ between databases), so a row already in the target is left as it is and a second run
    copies nothing. Prints, per table, the source rows, those copied, those already there and a
    checksum of the source rows and of the target's rows of the same keys; exit 1 when any table
    does not match. Of the config only database.busy_timeout_seconds is used.
    """
    from tqdm import tqdm

    from inspector.store.dbcopy import CopyError, copy_database

    summary = copy_database(source_url, target_url, station, busy_timeout_seconds=cfg.database.busy_timeout_seconds,
                            progress=lambda total, name: tqdm(total=total, desc=name, unit="row", leave=False,
                                                              disable=not sys.stderr.isatty()))
    for line in summary.lines():
        click.echo(line)
    if not summary.matches:
        raise CopyError(summary.mismatch())


@db.command("backfill-serials")
@with_config
def backfill_serials_command(cfg: Config) -> None:
    """Read the serial number and lot of files recorded without one from their names, by today's
    station.serial_pattern (as the daemon reads them at capture).

    Only files recorded in this config's watch.capture_dir are read (the pattern sees the name relative
    to it); a file that already has a serial is never changed. Safe to run again.
    """
    from inspector.loop.serials import backfill_serials
    from inspector.store.store import open_configured

    with open_configured(cfg) as store:
        click.echo(backfill_serials(store, cfg).line())
