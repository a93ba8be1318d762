"""The cli layer, the top: the `inspector` command, a click group; each command (cli/<topic>.py) is a thin call into
the library, and `demo` drives the whole station on a synthetic set. It may import every layer below; nothing
imports it. Commands import torch-using modules inside their functions, so `inspector verdicts` starts fast."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable

import click

from inspector import __version__
from inspector.base.config import Config
from inspector.base.configfile import load_config
from inspector.base.errors import InspectorError

DEBUG_VAR = "INSPECTOR_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_VAR, "") not in ("", "0")


class InspectorGroup(click.Group):
    """Every command's domain error (InspectorError) becomes click's `Error: ...`, exit 1, in one place:
    for the console entry point and for click's own runner alike (the traceback with INSPECTOR_DEBUG=1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InspectorError as exc:
            if debug_enabled():
                traceback.print_exc()
            raise click.ClickException(str(exc)) from exc


@click.group(cls=InspectorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (else $INSPECTOR_CONFIG, else ./config.toml, else /etc/inspector/config.toml, "
                   "else built-in defaults; `inspector config show` says which).")
@click.version_option(__version__, prog_name="inspector")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Quality control of X-ray images of fuel-cell electrodes.

    Set INSPECTOR_DEBUG=1 to see a traceback on errors.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def with_config(func: Callable) -> Callable:
    """Add --config to a command and pass it the loaded Config as `cfg`."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="Config file (else $INSPECTOR_CONFIG, else ./config.toml, else /etc/inspector/config.toml).")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args, config_path: str | None = None, **kwargs):
        group_path = (ctx.find_root().obj or {}).get("config_path")
        cfg = load_config(config_path or group_path)
        return ctx.invoke(func, *args, cfg=cfg, **kwargs)

    return wrapper


def main(argv: list[str] | None = None) -> None:
    """Console entry point: `Error: ...` and exit 1 for domain errors (InspectorGroup), no traceback."""
    try:
        # standalone_mode=False returns ctx.exit(N) codes instead of exiting: pass them on
        rc = cli.main(args=argv, prog_name="inspector", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so briefly, full trace only on request
        if debug_enabled():
            raise
        click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (set {DEBUG_VAR}=1 for a traceback)", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


def _register() -> None:
    """Import the command modules; each adds its commands to `cli`."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_register()

__all__ = ["cli", "main", "with_config", "Config"]
