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
# The exit codes of every command (docs/CLI.md#exit-codes; the table in `cli`'s help): 0 ok, 1 failed (an
# InspectorError, click's ClickException), 2 usage (click), 70 internal, 130 interrupted; `retrain` adds 3 and 4
# (loop/retrain.py), and `status --check` answers as a Nagios plugin does (0 ok, 1 warning, 2 critical).
EXIT_OK, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 70, 130


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_VAR, "") not in ("", "0")


def unexpected(exc: BaseException) -> str:
    """The one line of a bug (exit 70), the traceback printed first with INSPECTOR_DEBUG=1."""
    if debug_enabled():
        traceback.print_exc()
    return f"unexpected {type(exc).__name__}: {exc} (run with {DEBUG_VAR}=1 for the traceback)"


class InternalError(click.ClickException):
    """A bug, not the user's doing: exit 70 (EX_SOFTWARE)."""

    exit_code = EXIT_INTERNAL


class InspectorGroup(click.Group):
    """The exit-code table in one place, for the console entry point and click's own runner alike: a domain
    error (InspectorError) becomes `Error: ...`, exit 1; click's usage errors (unknown option, bad value) exit 2;
    anything else is a bug: `Error: unexpected ...`, exit 70. The traceback only with INSPECTOR_DEBUG=1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InspectorError as exc:
            if debug_enabled():
                traceback.print_exc()
            raise click.ClickException(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: say so briefly, full trace only on request
            raise InternalError(unexpected(exc)) from exc


@click.group(cls=InspectorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (else $INSPECTOR_CONFIG, else ./config.toml, else /etc/inspector/config.toml, "
                   "else built-in defaults; `inspector config show` says which).")
@click.version_option(__version__, prog_name="inspector")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Quality control of X-ray images of fuel-cell electrodes.

    \b
    Exit codes (docs/CLI.md#exit-codes):
      0   ok
      1   the command failed on its input or the station's state (`Error: ...`)
      2   usage error: unknown option, bad option value, missing argument
      3   retrain: the candidate was not promoted (or another retrain runs)
      4   retrain: the run failed; the model in service is untouched
      70  unexpected internal error (a bug): run with INSPECTOR_DEBUG=1 for the traceback
      130 interrupted (Ctrl-C)
    `status --check` answers as a monitoring plugin: 0 ok, 1 warning, 2 critical.
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
    """Console entry point: the exit codes of InspectorGroup, no traceback (unless INSPECTOR_DEBUG=1)."""
    try:
        # standalone_mode=False returns ctx.exit(N) codes instead of exiting: pass them on
        rc = cli.main(args=argv, prog_name="inspector", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug outside a command (InspectorGroup handles those inside one)
        click.echo(f"Error: {unexpected(exc)}", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(rc if isinstance(rc, int) else EXIT_OK)


# The modules that add no command: demo is `make demo`'s script (python -m inspector.cli.demo), output and records
# are what the commands import.
_NO_COMMANDS = {"demo", "output", "records"}


def _register() -> None:
    """Import the command modules; each adds its commands to `cli`."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _NO_COMMANDS:
            importlib.import_module(f"{__name__}.{mod.name}")


_register()

__all__ = ["cli", "main", "with_config", "Config"]
