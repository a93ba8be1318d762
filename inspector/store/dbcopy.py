"""`inspector db copy`: a station's history (its SQLite file, typically) into another database (the plant's
PostgreSQL), without loss, and idempotent.

Ids differ between databases (the target may hold other stations' rows), so no id is copied: a row is
known by its natural key, and a foreign key (images.verdict_id, reviews.supersedes) travels as the
natural key of the row it points at and becomes the target's id of that row. An insert is the
database's upsert (schema.insert_new) where the key is a unique constraint without a NULL in it;
otherwise (reviews, retrains, rows of schema 1 without an inode) the key is looked up first. Each
table's source rows, and the target's rows of the same keys, are hashed as they are copied: the two
checksums (copycheck.py) say whether the target holds every source row as it is in the source.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Row, make_url

from inspector.store.copycheck import CopySummary, TableCopy, row_digest, row_text
from inspector.base.errors import InspectorError, StoreError
from inspector.base.paths import display_path
from inspector.store.schema import (SCHEMA_VERSION, audits, images, insert_ignoring_conflicts, models, rejections, retrains, reviews,
                              verdicts)
from inspector.store.store import Store, open_store, shown_url, sqlite_file

CHUNK_ROWS = 1000  # source rows per target transaction


class CopyError(InspectorError):
    """The copy ran, but the target does not hold some source rows as they are in the source."""


@dataclass(frozen=True)
class Link:
    """A foreign key, carried by the natural key of the row it points at (columns `<column>__<key>`)."""

    column: str
    table: sa.Table
    key: tuple[str, ...]

    def labels(self) -> list[str]:
        return [f"{self.column}__{k}" for k in self.key]


@dataclass(frozen=True)
class Plan:
    """How one table is copied: its natural key, whether that key is a unique constraint (the upsert decides),
    the key column whose IN fetches a chunk's target rows, its foreign key, and columns the checksum leaves out."""

    table: sa.Table
    key: tuple[str, ...]
    unique: bool
    narrow: str
    link: Link | None = None
    unchecked: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def pk(self) -> sa.Column:
        return next(iter(self.table.primary_key.columns))

    def columns(self) -> list[str]:
        """The columns copied as they are: all but the id and the foreign key's id."""
        return [c.name for c in self.table.columns if c.name != "id" and (not self.link or c.name != self.link.column)]

    def select(self) -> sa.Select:
        """The content of each row (foreign key as natural key), with its own key as `_pk`."""
        cols = [self.pk.label("_pk"), *(self.table.c[c] for c in self.columns())]
        if self.link is None:
            return sa.select(*cols)
        ref = self.link.table.alias("ref")
        cols += [ref.c[k].label(label) for k, label in zip(self.link.key, self.link.labels())]
        return sa.select(*cols).select_from(self.table.outerjoin(ref, self.table.c[self.link.column] == ref.c.id))

    def checked(self) -> list[str]:
        return [c for c in self.columns() + (self.link.labels() if self.link else []) if c not in self.unchecked]


PLANS = (
    # A model is the plant's: the target keeps the row of the station that used it first (its path,
    # first use, station, promotion), so only what the model is (sha256, metadata) is compared.
    Plan(models, ("sha256",), True, "sha256", unchecked=("path", "first_used", "station", "promoted_at")),
    Plan(verdicts, ("sha256", "model_sha256"), True, "sha256"),
    Plan(images, ("path_raw", "sha256", "mtime_ns", "inode"), True, "sha256",
         Link("verdict_id", verdicts, ("sha256", "model_sha256"))),
    Plan(rejections, ("path_raw", "size", "mtime_ns", "inode"), True, "path_raw"),
    Plan(reviews, ("sha256", "reviewer", "created_at", "label"), False, "sha256",
         Link("supersedes", reviews, ("sha256", "reviewer", "created_at", "label"))),
    Plan(retrains, ("started_at", "station"), False, "started_at"),
    Plan(audits, ("sha256",), True, "sha256"),
)


def _where(url: str) -> str:
    file = sqlite_file(url)
    return str(file) if file else shown_url(url)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _parse(url: str, role: str) -> sa.URL:
    """The URL, or a StoreError that never shows its password."""
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise StoreError(f"{role} {shown_url(url)!r} is not a database URL (e.g. sqlite:////var/lib/inspector/inspector.db "
                         "or postgresql+psycopg://inspector@db-host/inspector)") from None


def _same_database(a: sa.URL, b: sa.URL, url_a: str, url_b: str) -> bool:
    file_a, file_b = sqlite_file(url_a), sqlite_file(url_b)
    if file_a or file_b:
        return bool(file_a and file_b and file_a.resolve() == file_b.resolve())
    return (a.get_backend_name(), a.host, a.port, a.database, dict(a.query)) == \
        (b.get_backend_name(), b.host, b.port, b.database, dict(b.query))


def open_source(url: str, busy_timeout_seconds: float = 30.0) -> Store:
    """The source, read-only, at the current schema; an older one is refused with what to run (never written)."""
    parsed = _parse(url, "SOURCE_URL")
    file = sqlite_file(url)
    if parsed.get_backend_name() == "sqlite" and (file is None or not file.is_file()):
        raise StoreError(f"source database {file or url} does not exist: check SOURCE_URL")
    try:
        return open_store(url, busy_timeout_seconds, readonly=True)
    except StoreError as exc:
        found = re.search(r"has (no tables|schema version (\d+)), this inspector needs schema", str(exc))
        if found is None:
            raise StoreError(f"source: {_one_line(exc)}") from exc
        if found.group(2) is None:
            raise StoreError(f"source database {_where(url)} has no inspector tables: nothing to copy "
                             "(check SOURCE_URL)") from exc
        raise StoreError(
            f"source database {_where(url)} has schema version {found.group(2)}; db copy reads schema "
            f"{SCHEMA_VERSION} and never writes to its source: upgrade it first with `inspector --config C db "
            f"upgrade`, C a config whose database.url is {shown_url(url)!r} "
            "and station.name the station's name (its rows get that name), then copy again") from exc


def open_target(url: str, busy_timeout_seconds: float = 30.0) -> Store:
    """The target as a writer: its schema is created or migrated."""
    _parse(url, "TARGET_URL")
    try:
        return open_store(url, busy_timeout_seconds)
    except StoreError as exc:
        raise StoreError(f"target: {_one_line(exc)}") from exc


def copy_database(source_url: str, target_url: str, station: str | None = None, chunk_rows: int = CHUNK_ROWS,
                  busy_timeout_seconds: float = 30.0, progress: Callable[[int, str], Any] | None = None) -> CopySummary:
    """Copy models, verdicts, images, rejections, reviews, retrains and audits (in that order, each in chunks of
    `chunk_rows`, one target transaction each); rows without a station get `station` when given."""
    if _same_database(_parse(source_url, "SOURCE_URL"), _parse(target_url, "TARGET_URL"), source_url, target_url):
        raise StoreError(f"SOURCE_URL and TARGET_URL are the same database ({_where(source_url)})")
    with ExitStack() as stack:
        source = stack.enter_context(open_source(source_url, busy_timeout_seconds))
        target = stack.enter_context(open_target(target_url, busy_timeout_seconds))
        summary = CopySummary(source.where, target.where, target.schema_action, station)
        promoted = target.promoted_model()
        with source.read() as src:
            for plan in PLANS:
                summary.tables.append(_copy_table(plan, src, target, station, chunk_rows, progress))
        now = target.promoted_model()
        if now and (promoted is None or now["sha256"] != promoted["sha256"]):
            summary.plant_model = f"{now['sha256'][:12]} ({now['path']}, station {now['station'] or 'unnamed'})"
    return summary


def _copy_table(plan: Plan, src: Connection, target: Store, station: str | None, chunk_rows: int,
                progress: Callable[[int, str], Any] | None) -> TableCopy:
    done = TableCopy(plan.name)
    done.source_rows = src.execute(sa.select(sa.func.count()).select_from(plan.table)).scalar_one()
    bar = progress(done.source_rows, plan.name) if progress else None
    query, last = plan.select().order_by(plan.pk).limit(chunk_rows), None
    while True:
        rows = src.execute(query if last is None else query.where(plan.pk > last)).all()
        if not rows:
            break
        last = rows[-1]._pk
        with target.write() as conn:
            _copy_chunk(plan, rows, conn, station, done)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return done


def _target_rows(conn: Connection, plan: Plan, contents: list[dict]) -> list[Row]:
    """The target's rows that may share a key with these (one IN on the plan's narrow column)."""
    values = list({row_text([c[plan.narrow]]): c[plan.narrow] for c in contents}.values())
    return conn.execute(plan.select().where(plan.table.c[plan.narrow].in_(values))).all()


def _resolve(conn: Connection, link: Link, contents: list[dict]) -> dict[str, int]:
    """Natural key (as text) -> the target's id, for the rows these contents point at."""
    wanted = {c[link.labels()[0]] for c in contents if c[link.labels()[0]] is not None}
    if not wanted:
        return {}
    table = link.table
    found = conn.execute(sa.select(table.c.id, *(table.c[k] for k in link.key))
                         .where(table.c[link.key[0]].in_(wanted)).order_by(table.c.id.desc()))
    return {row_text(list(r[1:])): r.id for r in found}


def _describe(plan: Plan, content: dict) -> str:
    def short(v: Any) -> str:
        if isinstance(v, (bytes, memoryview)):
            return display_path(bytes(v))
        text = str(v)
        return text[:12] + "…" if re.fullmatch(r"[0-9a-f]{64}", text) else text
    return " ".join(f"{k}={short(content[k])}" for k in plan.key)


def _upsert(conn: Connection, table: sa.Table, key: tuple[str, ...]) -> sa.Insert:
    """schema.insert_new for many rows in one statement: INSERT ... ON CONFLICT DO NOTHING RETURNING the key of
    each row that went in (a row whose key was there, from this or any other writer, returns nothing)."""
    return insert_ignoring_conflicts(conn, table).returning(*(table.c[k] for k in key))


def _copy_chunk(plan: Plan, rows: list[Row], conn: Connection, station: str | None, done: TableCopy) -> None:
    """Insert the chunk's new rows, name unnamed ones, then hash the source rows and the target's rows of their keys.

    Keys without a NULL under a unique constraint go through the upsert, all in one statement; the others are
    looked up first (in one query) and inserted in one statement, or one by one where a row may point at one
    inserted before it (reviews.supersedes)."""
    table, link, columns, checked = plan.table, plan.link, plan.columns(), plan.checked()
    name_them = station is not None and "station" not in plan.unchecked
    contents = [{k: v for k, v in row._mapping.items() if k != "_pk"} for row in rows]
    looked_up = not plan.unique or any(c[k] is None for c in contents for k in plan.key)
    index = {row_text([r._mapping[k] for k in plan.key]): r._pk
             for r in (_target_rows(conn, plan, contents) if looked_up else [])}
    ids = _resolve(conn, link, contents) if link else {}
    upserts: list[tuple[str, dict, dict | None]] = []  # key, values, the row as recorded if it is to be named
    inserts: dict[str, dict] = {}
    keys = []
    for content in contents:
        recorded = dict(content) if content["station"] is None else None
        if recorded is not None:
            done.no_station += 1
            if station is not None:
                content["station"] = station
        values = {c: content[c] for c in columns}
        if link:
            values[link.column] = ids.get(row_text([content[label] for label in link.labels()]))
        key = row_text([content[k] for k in plan.key])
        keys.append(key)
        unnamed = recorded if recorded is not None and name_them else None
        found = index.get(key) if key in index or unnamed is None else index.get(row_text([recorded[k] for k in plan.key]))
        if plan.unique and all(content[k] is not None for k in plan.key):
            upserts.append((key, values, unnamed))
        elif found is not None or key in inserts:
            done.there += 1
            if unnamed is not None and found is not None:  # copied before without --station: name it now
                conn.execute(sa.update(table).where(plan.pk == found, table.c.station.is_(None)).values(station=station))
        elif link and link.table is table:  # a later row may point at this one
            index[key] = ids[key] = conn.execute(sa.insert(table).values(**values).returning(plan.pk)).scalar_one()
            done.new += 1
        else:
            inserts[key] = values
    if inserts:
        conn.execute(sa.insert(table), list(inserts.values()))
        done.new += len(inserts)
    if upserts:
        went_in = {row_text(list(r)) for r in conn.execute(_upsert(conn, table, plan.key), [v for _, v, _ in upserts])}
        done.new += len(went_in)
        done.there += len(upserts) - len(went_in)
        for key, _, recorded in upserts:
            if recorded is not None and key not in went_in:
                conn.execute(sa.update(table).where(*(table.c[k] == recorded[k] for k in plan.key),
                                                    table.c.station.is_(None)).values(station=station))
    found_rows: dict[str, set[bytes]] = {}
    for r in _target_rows(conn, plan, contents):
        found_rows.setdefault(row_text([r._mapping[k] for k in plan.key]), set()).add(
            row_digest(row_text([r._mapping[c] for c in checked])))
    digests = [row_digest(key) for key in keys]
    for digest, content in zip(digests, contents):
        done.add_source(digest, row_digest(row_text([content[c] for c in checked])))
    for key, digest, content in zip(keys, digests, contents):
        done.compare(digest, found_rows.get(key, set()), lambda: _describe(plan, content))
