"""`inspector watch`: the station daemon (a thin call into inspector.station.daemon)."""

from __future__ import annotations

import click

from inspector.cli import cli, with_config
from inspector.base.config import Config


@cli.command()
@click.option("--once", is_flag=True,
              help="Scan the capture folder, score everything waiting, then exit (for cron and tests).")
@with_config
def watch(cfg: Config, once: bool) -> None:
    """Watch the capture folder and give every new image a verdict or a quarantine record.

    Runs until SIGTERM/SIGINT (finishes the images in hand, exits 0). SIGHUP reloads the model
    from model.path; a model that fails to load or to pass its self-check is refused and the
    old one keeps serving. Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG.
    """
    from inspector.station.daemon import start_watch

    code = start_watch(cfg, once=once)
    click.get_current_context().exit(code)
