"""Station queries (verdicts, status, rejections; read-only) and `rescore` (`db` is cli/db.py)."""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime

import click

from inspector.cli import cli, with_config
from inspector.cli.output import CSV, TEXT, echo_json, emit_rows, format_option, render_table
from inspector.cli.records import rescore_record
from inspector.base.config import Config
from inspector.base.paths import display_path
from inspector.loop.record import VERDICT_FIELDS, verdict_record
from inspector.base.times import TIME_FORMS, format_age, format_local, iso_time, parse_time

DEFAULT_TABLE_LIMIT = 50


class TimeParam(click.ParamType):
    """Click type for --since/--until."""

    name = "TIME"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()


def open_reader(cfg: Config):
    from inspector.store.store import open_configured

    return open_configured(cfg, readonly=True)


REJECTION_FIELDS = ["time", "reason", "message", "path", "path_raw_hex", "sha256", "size", "mtime_ns", "station"]


def rejection_record(row: dict) -> dict:
    return {
        "time": iso_time(row["created_at"]), "reason": row["reason"], "message": row["message"], "path": row["path"],
        "path_raw_hex": row["path_raw"].hex(), "sha256": row["sha256"], "size": row["size"],
        "mtime_ns": row["mtime_ns"], "station": row["station"],
    }


def add_station_column(headers: list[str], cells: list[list[str]], rows: list[dict]) -> None:
    """A plant's database: a STATION column (second) when the rows come from more than one station."""
    if len({r["station"] for r in rows}) > 1:
        headers.insert(1, "STATION")
        for row, cell in zip(rows, cells):
            cell.insert(1, row["station"] or "-")


FORMAT = format_option(CSV, text_help="(a table) for people")
SINCE = click.option("--since", type=TIME, default=None, help=f"Only from this time on: {TIME_FORMS}.")
UNTIL = click.option("--until", type=TIME, default=None, help="Only before this time (same forms as --since).")
STATION = click.option("--station", default=None, metavar="NAME",
                        help="Only what this station recorded (its station.name; `inspector status` lists them).")
LIMIT = click.option("--limit", type=click.IntRange(min=1), default=None,
                     help=f"Most rows to show (text default {DEFAULT_TABLE_LIMIT}; csv/json default all).")


@cli.command()
@SINCE
@UNTIL
@click.option("--verdict", type=click.Choice(["normal", "abnormal", "rescan"]), default=None,
              help="Only this verdict.")
@click.option("--path", "path_glob", default=None, metavar="GLOB",
              help="Only paths matching this shell pattern (matched against the whole path, e.g. '*/line3/*').")
@click.option("--model", default=None, metavar="SHA", help="Only verdicts of this model, given at capture or by `inspector rescore` "
              "(a sha256 prefix is enough).")
@click.option("--serial", default=None, metavar="SERIAL", help="Only files whose name gave this serial number "
              "(station.serial_pattern; exact).")
@click.option("--lot", default=None, metavar="LOT", help="Only files whose name gave this lot (exact).")
@STATION
@LIMIT
@FORMAT
@with_config
def verdicts(cfg: Config, since, until, verdict, path_glob, model, serial, lot, station, limit, fmt) -> None:
    """List verdicts, newest first, one row per image file.

    Times are shown in local time. Duplicates (same content under another name, scored once)
    are marked "dup". PATH is where the file was scored; with watch.after = "move" a NOW AT column
    says where it was moved (processed/DATE/...). In csv/json, path_raw_hex holds the exact bytes of the file name
    (bytes.fromhex) so names that are not UTF-8 can be recovered; path shows them as \\xNN. SERIAL and LOT
    are what station.serial_pattern read from the file's name at capture (null where it did not match).
    """
    if fmt == TEXT and limit is None:
        limit = DEFAULT_TABLE_LIMIT
    query = dict(since=since, until=until, verdict=verdict, path_glob=path_glob, model=model, station=station,
                 serial=serial, lot=lot)
    with open_reader(cfg) as store:
        rows = store.query_verdicts(**query, limit=limit)
        total = store.count_verdicts(**query) if fmt == TEXT and len(rows) == limit else len(rows)
    cells = [[format_local(r["time"]), r["verdict"] or "-",
              "-" if r["p_abnormal"] is None else f"{r['p_abnormal']:.3f}", display_path(r["path"]),
              (r["model_sha256"] or "-")[:12], "dup" if r["duplicate"] else ""] for r in rows]
    headers = ["TIME", "VERDICT", "P(ABNORMAL)", "PATH", "MODEL", "DUP"]
    add_station_column(headers, cells, rows)
    for key in ("serial", "lot"):  # where the names gave them (station.serial_pattern)
        if any(r[key] for r in rows):
            headers.append(key.upper())
            for row, cell in zip(rows, cells):
                cell.append(row[key] or "-")
    if any(r["moved_to"] for r in rows):  # after = "move": where each file is now
        headers.append("NOW AT")
        for row, cell in zip(rows, cells):
            cell.append(display_path(row["moved_to"]) if row["moved_to"] else "-")
    emit_rows([verdict_record(r) for r in rows], VERDICT_FIELDS, fmt, headers, cells,
              (len(rows), total), "no verdicts match")


@cli.command()
@SINCE
@UNTIL
@STATION
@LIMIT
@FORMAT
@with_config
def rejections(cfg: Config, since, until, station, limit, fmt) -> None:
    """List files that got no verdict (quarantined) and why, newest first."""
    if fmt == TEXT and limit is None:
        limit = DEFAULT_TABLE_LIMIT
    with open_reader(cfg) as store:
        rows = store.query_rejections(since=since, until=until, limit=limit, station=station)
        total = store.count_rejections(since=since, until=until, station=station) if len(rows) == limit else len(rows)
    headers = ["TIME", "REASON", "PATH", "MESSAGE"]
    cells = [[format_local(r["created_at"]), r["reason"], display_path(r["path"]), display_path(r["message"])]
             for r in rows]
    add_station_column(headers, cells, rows)
    emit_rows([rejection_record(r) for r in rows], REJECTION_FIELDS, fmt, headers, cells,
              (len(rows), total), "no rejections match")


def abnormal_record(check) -> dict:
    """trends.AbnormalCheck for `status --format json`."""
    return {"today": check.today, "today_abnormal": check.today_abnormal, "rate": check.rate,
            "baseline_days": check.baseline_days, "baseline": check.baseline,
            "baseline_abnormal": check.baseline_abnormal, "baseline_rate": check.baseline_rate, "alert": check.alert}


def audit_record(audit) -> dict:
    """trends.AuditEstimate for `status --format json`: the miss rate and its 95% Wilson interval."""
    interval = audit.interval
    return {"requested": audit.requested, "reviewed": audit.reviewed, "abnormal": audit.abnormal,
            "miss_rate": audit.rate, "interval": list(interval) if interval else None}


@cli.command()
@STATION
@format_option()
@click.option("--check", is_flag=True, help="For cron, systemd timers and Nagios: one line, exit 0 ok, 1 warning, "
              "2 critical, from the alert rules' conditions (thresholds: [alerts] in config.toml).")
@with_config
def status(cfg: Config, station: str | None, fmt: str, check: bool) -> None:
    """Show every station's heartbeat, the model in use, today's and total counts, the last verdict and the
    files waiting in this station's capture folder.

    A station is "running" while its daemon writes its heartbeat (every station.heartbeat_seconds),
    "not responding" once three heartbeats are missed (killed, host down, network cut), "stopped"
    after a clean stop. With --station, the counts are that station's only. The abnormal rate is
    today's against the last 7 days' (ABOVE when, beyond chance, more than double); "missed" is
    the miss rate the audits of normal verdicts estimate (`inspector review sample`).

    --check prints one line instead and exits 2 (critical) for a station not responding (with --station: also
    stopped), state.dir's disk nearly full or a database that cannot answer; 1 (warning) for an abnormal rate or
    rejections in the last hour far above their trailing baseline, or many files waiting; else 0.
    """
    from inspector.loop.overview import station_overview

    if check:
        run_check(cfg, station)

    with open_reader(cfg) as store:
        view = station_overview(cfg, store, station)
    counts, stations, plant_model, waiting, degraded = (view.counts, view.stations, view.plant_model, view.waiting,
                                                        view.degraded)
    model = view.model
    if fmt == "json":
        out = dict(counts, last_verdict_at=iso_time(counts["last_verdict_at"]), files_waiting=waiting,
                   to_review=view.to_review, degraded=degraded, abnormal_check=abnormal_record(view.abnormal),
                   audit=audit_record(view.audit),
                   capture_dir=str(cfg.watch.capture_dir), database=view.database, station=station,
                   stations=[dict(s, started_at=iso_time(s["started_at"]), last_seen=iso_time(s["last_seen"]),
                                  stopped_at=iso_time(s["stopped_at"])) for s in stations],
                   plant_model=dict(plant_model, promoted_at=iso_time(plant_model["promoted_at"]))
                   if plant_model else None)
        if model:
            out["model"] = dict(model, first_used=iso_time(model["first_used"]), promoted_at=iso_time(model.get("promoted_at")))
        echo_json(out)
        return
    click.echo(f"database       {view.database}" + (f"  (station {station} only)" if station else ""))
    for problem in degraded:
        click.echo(f"degraded       {problem}")
    click.echo(f"model          {model['sha256'][:12]}  {model['path'] or '(path not recorded)'}" if model
               else "model          none yet (no verdicts)")
    if plant_model:
        click.echo(f"plant model    {plant_model['sha256'][:12]}  promoted {format_local(plant_model['promoted_at'])}"
                   f" by {plant_model['station'] or 'a retrain'}")
    for label in ("verdicts", "rejections"):
        keys = sorted(set(counts[f"{label}_today"]) | set(counts[f"{label}_total"]))
        parts = [f"{k} {counts[f'{label}_today'].get(k, 0)}/{counts[f'{label}_total'].get(k, 0)}" for k in keys]
        click.echo(f"{label:<14} {', '.join(parts) if parts else 'none'}  (today/total)")
    click.echo(f"duplicates     {counts['duplicates_today']}/{counts['duplicates_total']}  (today/total)")
    click.echo(f"last verdict   {format_local(counts['last_verdict_at'])}")
    click.echo(f"to review      {view.to_review} abnormal/rescan verdict(s) and audits without a decision "
               "(`inspector reviews --pending`, or the review station: `inspector serve`)")
    click.echo(f"abnormal rate  {view.abnormal.describe()}")
    click.echo(f"missed         {view.audit.describe()}")
    if waiting is None:
        click.echo(f"files waiting  unknown: capture folder {cfg.watch.capture_dir} does not exist")
    else:
        click.echo(f"files waiting  {waiting} in {cfg.watch.capture_dir}")
    if not stations:
        click.echo("stations       none has run a daemon on this database yet" if station is None
                   else f"stations       no heartbeat from station {station!r}")
        return
    click.echo("stations")
    cells = [["  " + s["name"], s["host"], s["state"].upper() if s["state"] == "not responding" else s["state"],
              format_age(s["seen_seconds_ago"]), str(s["scored_today"]), str(s["rejected_today"]),
              str(s["queued"]) if s["state"] == "running" else "-",
              f"paused: {s['paused_reason']}" if s["paused_reason"] and s["state"] == "running" else ""]
             for s in stations]
    click.echo(render_table(["  NAME", "HOST", "STATE", "LAST SEEN", "SCORED TODAY", "REJECTED TODAY", "QUEUE",
                             "NOTE"], cells))


def run_check(cfg: Config, station: str | None) -> None:
    """`status --check`: loop/health.py's verdict as one line and its exit code."""
    from inspector.base.errors import StoreError
    from inspector.loop.health import CRITICAL, check_health

    try:
        with open_reader(cfg) as store:
            health = check_health(cfg, store, station)
    except StoreError as exc:
        click.echo(f"CRITICAL: the database cannot answer: {exc}")
        click.get_current_context().exit(CRITICAL)
    click.echo(health.line())
    click.get_current_context().exit(health.code)


@cli.command()
@SINCE
@UNTIL
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="The model to score with (default: model.path in config.toml).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: model.device in config.toml).")
@format_option()
@with_config
def rescore(cfg: Config, since, until, model_path: str | None, device: str | None, fmt: str) -> None:
    """Score recorded images again with another model, beside their capture verdicts.

    Every image recorded (first seen from --since, before --until) that has no verdict of the
    model yet is read from where it was last recorded (its processed/ place, else its capture
    path), checked against its recorded sha256, and scored at the pipeline's full rate
    (infer.workers threads prepare, one runs the model). Its capture verdict stays; the new one
    is listed by `inspector verdicts --model SHA`. Stopped at any point, a new run goes on where
    it stopped; images no longer found are listed and skipped. Safe while `inspector watch` runs.
    """
    from tqdm import tqdm

    from inspector.station.daemon import load_detector
    from inspector.base.pipeline import worker_count
    from inspector.loop.rescore import rescore as run_rescore
    from inspector.store.store import open_configured

    model = {k: v for k, v in (("path", model_path), ("device", device)) if v}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))
    detector = load_detector(cfg)
    with open_configured(cfg) as store:
        summary = run_rescore(store, detector, since, until, cfg.imaging.max_height, cfg.imaging.max_width,
                              worker_count(cfg.infer.workers),
                              lambda n: tqdm(total=n, desc="rescoring", unit="img", disable=not sys.stderr.isatty()))
    if fmt == TEXT:
        click.echo("\n".join(summary.lines()))
    else:
        echo_json(rescore_record(summary))
