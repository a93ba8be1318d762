"""Counts per electrode, one definition for `inspector status` and the report: a duplicate file (the same content
again under another name) is counted under `duplicates` only, never in `total`; the pass rate is the normal verdicts
over every electrode (a rejected file did not pass). Also the model of the newest verdict, the one `status` and the
report both name as the model in use."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from inspector.store.schema import VERDICTS, images, models, rejections, verdicts

OUTCOMES = ("normal", "abnormal", "rescan", "rejected", "pending", "duplicates")


def count_electrodes(items: Iterable[tuple[Hashable, str, bool, int]]) -> dict[Hashable, dict]:
    """(group, outcome, duplicate file, how many) -> per group: each outcome's count, `total` (duplicates left out)
    and `pass_rate` (None for a group without an electrode)."""
    groups: dict[Hashable, dict[str, int]] = {}
    for group, outcome, duplicate, n in items:
        counts = groups.setdefault(group, dict.fromkeys(OUTCOMES, 0))
        counts["duplicates" if duplicate else outcome] += n
    out = {}
    for group, g in groups.items():
        total = sum(g.values()) - g["duplicates"]
        out[group] = {"total": total, **g, "pass_rate": g["normal"] / total if total else None}
    return out


def newest_verdict_model(conn: Connection, station: str | None = None) -> tuple[dict | None, datetime | None]:
    """The model of the newest capture verdict (the newest electrode's, duplicates aside; station: of that station's
    files) with when that file was seen: the models row, or its sha256 alone for a model never recorded."""
    joined = images.join(verdicts, sa.and_(images.c.verdict_id == verdicts.c.id, images.c.status != "duplicate"))
    query = sa.select(verdicts.c.model_sha256, images.c.first_seen).select_from(joined)
    if station is not None:
        query = query.where(images.c.station == station)
    last = conn.execute(query.order_by(images.c.first_seen.desc(), images.c.id.desc()).limit(1)).first()
    if last is None:
        return None, None
    found = conn.execute(sa.select(models).where(models.c.sha256 == last.model_sha256)).first()
    model = dict(found._mapping) if found else {"sha256": last.model_sha256, "path": None, "meta_json": None,
                                                "first_used": None}
    return model, last.first_seen


def count_by(conn: Connection, column: sa.ColumnElement, time_column: sa.ColumnElement,
             since: datetime | None = None, station: str | None = None) -> dict[str, int]:
    """Rows of time_column's table by `column` (since: from then on; station: that station's rows only)."""
    table = time_column.table
    query = sa.select(column, sa.func.count()).select_from(table).group_by(column)
    if station is not None:
        query = query.where(table.c.station == station)
    if since is not None:
        query = query.where(time_column >= since)
    return {key: int(n) for key, n in conn.execute(query)}


def today_by_station(conn: Connection, today_start_utc: datetime, station: str | None = None) -> dict:
    """Per station, the files recorded (`images_today_by_station`) and rejected (`rejections_today_by_station`)
    since today_start_utc."""
    return {"images_today_by_station": count_by(conn, images.c.station, images.c.first_seen, today_start_utc, station),
            "rejections_today_by_station": count_by(conn, rejections.c.station, rejections.c.created_at,
                                                    today_start_utc, station)}


def status_counts(conn: Connection, today_start_utc: datetime, station: str | None = None) -> dict:
    """Queries.status_counts in one read transaction."""
    mine = (lambda table: table.c.station == station) if station is not None else (lambda table: sa.true())
    model, last_seen = newest_verdict_model(conn, station)

    def electrodes(since: datetime | None = None) -> dict:
        duplicate = images.c.status == "duplicate"
        outcome = sa.func.coalesce(verdicts.c.verdict, "pending")
        query = (sa.select(duplicate, outcome, sa.func.count())
                 .select_from(images.outerjoin(verdicts, images.c.verdict_id == verdicts.c.id))
                 .where(mine(images)).group_by(duplicate, outcome))
        if since is not None:
            query = query.where(images.c.first_seen >= since)
        found = count_electrodes(("all", o, bool(d), int(n)) for d, o, n in conn.execute(query))
        return found.get("all", dict.fromkeys(OUTCOMES, 0))

    today, total = electrodes(today_start_utc), electrodes()
    return {
        "model": model,
        "verdicts_today": {v: today[v] for v in sorted(VERDICTS) if today[v]},
        "verdicts_total": {v: total[v] for v in sorted(VERDICTS) if total[v]},
        "duplicates_today": today["duplicates"],
        "duplicates_total": total["duplicates"],
        "rejections_today": count_by(conn, rejections.c.reason, rejections.c.created_at, today_start_utc, station),
        "rejections_total": count_by(conn, rejections.c.reason, rejections.c.created_at, station=station),
        "last_verdict_at": last_seen,
        **today_by_station(conn, today_start_utc, station),
    }
