"""`inspector export` (CSV / JSON / HTML reports) and `inspector retrain` (nightly, promotes only a better model)."""

from __future__ import annotations

import click

from inspector.cli import cli, with_config
from inspector.cli.output import TEXT, echo_json, format_option
from inspector.cli.records import retrain_record
from inspector.cli.station import STATION, TIME
from inspector.base.times import TIME_FORMS
from inspector.base.config import Config


@cli.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "html"]), required=True,
              help="csv/json: one row per image outcome (verdicts and rejections) with its review status; "
                   "html: one self-contained report file for a browser.")
@click.option("-o", "--output", "--out", "out", type=click.Path(dir_okay=False), required=True, metavar="FILE",
              help="File to write (replaced atomically).")
@click.option("--since", type=TIME, default=None, help=f"Only images first seen from this time on: {TIME_FORMS}.")
@click.option("--until", type=TIME, default=None, help="Only images first seen before this time (same forms).")
@STATION
@with_config
def export_command(cfg: Config, fmt: str, out: str, since, until, station: str | None) -> None:
    """Export image outcomes as CSV, JSON or a self-contained HTML report.

    The HTML report (no server, no network: images are embedded) shows totals and pass
    rate per day and per bundle, the abnormal and rescan images with thumbnails, heat maps
    and review status, the latest cross-validation (Table 1, ROC curve, confusion matrix)
    and the model in use. The database is opened read-only.
    """
    from inspector.cli.station import open_reader
    from inspector.loop.export import export_report

    with open_reader(cfg) as store:
        path, n = export_report(store, cfg, fmt, out, since, until, station)
    click.echo(f"wrote {n} outcome(s) to {path} ({fmt})")


@cli.command("retrain")
@click.option("--dry-run", is_flag=True, help="Run everything (training set, cross-validation, candidate) but "
                                              "never replace the model or signal the daemon.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs for both sides [default: the current model's, else train.epochs].")
@format_option()
@with_config
@click.pass_context
def retrain_command(ctx: click.Context, cfg: Config, dry_run: bool, epochs: int | None, fmt: str) -> None:
    """Nightly retraining: promote a model trained on the reviewed images only if it is not worse.

    Builds a dataset from retrain.base_dataset plus every reviewed image, runs the same
    leave-one-bundle-out cross-validation for the current model's settings and for the
    candidate (each method in retrain.methods), and promotes the candidate only if its
    pooled balanced accuracy and its abnormal recall at the chosen threshold are not
    lower. Promotion keeps the old model as <name>.previous.safetensors, renames the new
    one onto model.path atomically and asks the daemon to reload (SIGHUP to the pid in
    state.dir/inspector.pid, else `systemctl reload inspector`). Every run is recorded in
    the database.

    \b
    With --format json the progress goes to standard error and standard output
    holds one JSON object: the decision, its exit code, the reasons and both scores.

    \b
    Exit codes (the table of every command: docs/CLI.md#exit-codes):
      0  promoted (or, with --dry-run, would be promoted)
      1  configuration error (e.g. retrain.base_dataset empty)
      2  usage error (a bad option value)
      3  not promoted: the candidate is worse, or another retrain is running on a
         host sharing this database (once per plant); the reasons are printed
      4  failed: the model file and the daemon are left untouched
    """
    from inspector.loop.retrain import retrain

    say = click.echo if fmt == TEXT else (lambda line: click.echo(line, err=True))
    result = retrain(cfg, dry_run=dry_run, epochs=epochs, say=say)
    if result.decision == "failed":
        for reason in result.reasons:
            click.echo(f"Error: retrain failed: {reason}", err=True)
        click.echo(f"{cfg.model.path} and the daemon were left untouched", err=True)
    elif fmt == TEXT:
        click.echo(f"decision: {result.decision}")
    if fmt != TEXT:
        echo_json(retrain_record(result))
    ctx.exit(result.exit_code)
