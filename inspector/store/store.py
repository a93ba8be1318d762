"""The verdict database, the one place that speaks SQL: one writer (the daemon) and short-lived readers (the CLI).

On SQLite: WAL, synchronous=FULL, busy_timeout, writer transactions begun IMMEDIATE, readers opened
with mode=ro. The tables are schema.py's; the transactions database.py's; the readers queries.py's; the rows of an
outcome records.py's; the plant's claims, heartbeats and locks fleet.py's; the reviews reviews.py's (`store.reviews`),
the retrain runs retrains.py's (`store.retrains`), the audit requests audits.py's (`store.audits`) and the rows the
trends are drawn from trends.py's (`store.trends`).
"""

from __future__ import annotations

from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from inspector import __version__
from inspector.store.database import Database, StoreFullError, sqlite_file
from inspector.base.errors import StoreError
from inspector.store.fleet import Fleet, holds_claim
from inspector.base.paths import display_path
from inspector.store.queries import Queries, moved_place
from inspector.store.records import (WRITERS, FileVersion, RejectionRecord, RescoreRecord, Verdict, VerdictRecord,
                               region_fields)
from inspector.store.audits import Audits
from inspector.store.retrains import Retrains
from inspector.store.reviews import Reviews
from inspector.store.trends import Trends
from inspector.store.schema import (SCHEMA_REVISIONS, SCHEMA_VERSION, alembic_command, alembic_revision, db_now, images,
                              insert_new, metadata, models, rejections, schema_info, to_path_raw, utc_now, verdicts)

# what the daemon, rescore and the tests build a batch of outcomes from, and open a database by
__all__ = ["FileVersion", "RejectionRecord", "RescoreRecord", "Store", "StoreFullError", "Verdict", "VerdictRecord",
           "open_configured", "open_store", "region_fields", "shown_url", "sqlite_file"]

SCHEMA_LOCK_KEY = 0x696E7370  # "insp": the advisory lock of schema changes on PostgreSQL


def _stored_version(conn: Connection) -> int | None:
    names = set(sa.inspect(conn).get_table_names())
    if "schema_info" not in names:
        return 0 if names & {"images", "verdicts"} else None
    row = conn.execute(sa.select(schema_info).order_by(schema_info.c.version.desc())).first()
    return row.version if row else 0


def matches_or_unrecorded(column: sa.ColumnElement, value: object) -> sa.ColumnElement:
    """column == value, or the row never recorded it (schema 1 rows have no inode or ctime: they match any)."""
    return sa.or_(column.is_(None), column == value)


class Store(Database, Queries, Fleet):
    """The database handle every other module asks by name: the schema, the writers of outcomes, the readers
    (Queries), the plant's claims and locks (Fleet), the reviews (`.reviews`), the retrain runs (`.retrains`), the
    audit requests (`.audits`) and the trends' rows (`.trends`)."""

    def __init__(self, engine: Engine, url: str, readonly: bool, busy_timeout_seconds: float,
                 station: str | None = None):
        super().__init__(engine, url, readonly, busy_timeout_seconds, station)
        self.schema_action = ""  # what open_store did to the schema: created, migrated or current
        self.reviews = Reviews(self)
        self.retrains = Retrains(self)
        self.audits = Audits(self)
        self.trends = Trends(self)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- schema -------------------------------------------------------------------------
    def schema_version(self) -> int | None:
        """The stored schema version; 0 for tables without a schema_info; None for an empty db."""
        with self.read() as conn:
            return _stored_version(conn)

    def _refuse_newer(self, version: int) -> None:
        with self.read() as conn:
            by = conn.execute(sa.select(schema_info.c.inspector_version)
                              .order_by(schema_info.c.version.desc())).scalar()
        raise StoreError(f"database {self.where} has schema version {version}, written by inspector {by}; "
                         f"this is inspector {__version__} (schema {SCHEMA_VERSION}): "
                         f"install inspector {by} or newer")

    def ensure_schema(self) -> str:
        """Create the tables, or migrate an older schema with Alembic; returns 'created', 'migrated' or 'current'."""
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            self._refuse_newer(version)
        if version == SCHEMA_VERSION:
            return "current"
        with self.write() as conn:
            # Several stations started at once on a new plant database: one creates or migrates, the others
            # wait here and then find it done (SQLite's writer lock does the same for its BEGIN IMMEDIATE).
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            version = _stored_version(conn)
            if version == SCHEMA_VERSION:
                return "current"
            if version is None:
                metadata.create_all(conn)  # a new database: today's schema at once (Alembic's cookbook)
                alembic_command(conn, "stamp", SCHEMA_REVISIONS[SCHEMA_VERSION])
            else:
                if version in SCHEMA_REVISIONS and alembic_revision(conn) is None:
                    alembic_command(conn, "stamp", SCHEMA_REVISIONS[version])  # made before inspector used Alembic
                alembic_command(conn, "upgrade", SCHEMA_REVISIONS[SCHEMA_VERSION], self.station or "")
            conn.execute(sa.delete(schema_info))
            conn.execute(sa.insert(schema_info).values(version=SCHEMA_VERSION, inspector_version=__version__,
                                                       upgraded_at=utc_now()))
        return "created" if version is None else "migrated"

    def check_schema(self) -> None:
        """Refuse a database this inspector cannot read (missing, older or newer schema)."""
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            self._refuse_newer(version)
        if version != SCHEMA_VERSION:
            found = "no tables" if version is None else f"schema version {version}"
            raise StoreError(f"database {self.where} has {found}, this inspector needs schema "
                             f"{SCHEMA_VERSION}: run `inspector db upgrade`")

    # ---- writer -------------------------------------------------------------------------
    def record_model(self, sha256: str, path: str, meta_json: str, promoted: bool = False) -> None:
        """Remember a model the first time it scores (idempotent); `promoted`: `inspector retrain` made it the
        plant's model, which every daemon on this database loads once its model.path holds it."""
        with self.write() as conn:
            insert_new(conn, models, sha256=sha256, path=str(path), meta_json=meta_json, first_used=utc_now(),
                       station=self.station)
            if promoted:
                conn.execute(sa.update(models).where(models.c.sha256 == sha256).values(promoted_at=db_now(conn)))

    def known_file(self, path_raw: bytes | str, size: int, mtime_ns: int, inode: int | None = None,
                   ctime_ns: int | None = None) -> bool:
        """True when this exact file version already has an outcome (the rescan skips hashing it).

        Path, size and mtime must match; so must inode and ctime when given and recorded: new content
        renamed over an old name with its mtime kept (`cp -p`, `rsync -t`) has another inode, a rewrite
        in place another ctime. Such a file is not known: the worker hashes it and decides.
        """
        raw = to_path_raw(path_raw)
        with self.read() as conn:
            for table in (images, rejections):
                query = sa.select(table.c.id).where(table.c.path_raw == raw, table.c.size == size,
                                                    table.c.mtime_ns == mtime_ns)
                for column, value in ((table.c.inode, inode), (table.c.ctime_ns, ctime_ns)):
                    if value is not None:
                        query = query.where(matches_or_unrecorded(column, value))
                if conn.execute(query.limit(1)).first() is not None:
                    return True
        return False

    def known_files(self, stats: list[tuple[bytes, int, int]]) -> set[tuple[bytes, int, int]]:
        """Which of many (path_raw, size, mtime_ns) have an outcome, in a few queries (for `status`)."""
        found: set[tuple[bytes, int, int]] = set()
        wanted = set(stats)
        paths = sorted({raw for raw, _, _ in wanted})
        with self.read() as conn:
            for start in range(0, len(paths), 500):
                chunk = paths[start:start + 500]
                for table in (images, rejections):
                    rows = conn.execute(sa.select(table.c.path_raw, table.c.size, table.c.mtime_ns)
                                        .where(table.c.path_raw.in_(chunk)))
                    found.update(key for key in ((bytes(r[0]), r[1], r[2]) for r in rows) if key in wanted)
        return found

    def outcome_for(self, sha256: str, model_sha256: str) -> dict | None:
        """The verdict already given to this content by this model (one inference per content)."""
        with self.read() as conn:
            row = conn.execute(sa.select(verdicts).where(
                verdicts.c.sha256 == sha256, verdicts.c.model_sha256 == model_sha256)).first()
        return dict(row._mapping) if row else None

    def record_verdict(self, record: VerdictRecord) -> str:
        """Record an image and its verdict in one transaction: 'new', 'duplicate' or 'exists'.

        'exists': this file version (path, content, mtime, inode) is already recorded; its ctime is
        refreshed. The same content under the same name but another mtime or inode (exported again)
        is a 'duplicate' row of its own.
        """
        (result,) = self.record_outcomes([record])
        return result

    def record_rejection(self, record: RejectionRecord) -> str:
        """Record why a file was not scored; idempotent per file version ('new' or 'exists')."""
        (result,) = self.record_outcomes([record])
        return result

    def record_outcomes(self, records: list[VerdictRecord | RejectionRecord | RescoreRecord],
                        run_id: str | None = None) -> list[str]:
        """Verdicts and rejections of a batch of files (or rescored verdicts) in ONE transaction: all are
        committed, or none. Each row is the database's own upsert (INSERT ... ON CONFLICT DO NOTHING): a row
        another writer committed first is 'exists', never an error.

        With `run_id` (a daemon's), each file's claim is checked in the same transaction; a file whose claim that
        daemon no longer holds (its lease ran out and another daemon took the file over) is 'lost': nothing is
        written for it, and the daemon neither reports nor moves it. The daemon gives its claims up after the moves.
        """
        results: list[str] = []
        with self.write() as conn:
            for record in records:
                if run_id is not None and hasattr(record, "file") and not holds_claim(conn, record.file, run_id):
                    results.append("lost")
                    continue
                results.append(WRITERS[type(record)](conn, record, self.station))
        return results

    def record_moved(self, path_raw: bytes | str, sha256: str, moved_to: bytes | str | None,
                     mtime_ns: int | None = None, inode: int | None = None) -> None:
        """Note where a scored file is being moved (before the rename; None when the rename failed): its exact
        bytes (moved_to_raw) and its readable form (moved_to, display_path), as path_raw and path.

        With mtime and inode only that file version's row changes: the same content exported again
        under the same name is another row, moved to another place.
        """
        where = [images.c.path_raw == to_path_raw(path_raw), images.c.sha256 == sha256]
        if mtime_ns is not None:
            where.append(images.c.mtime_ns == mtime_ns)
        if inode is not None:
            where.append(matches_or_unrecorded(images.c.inode, inode))
        with self.write() as conn:
            conn.execute(sa.update(images).where(*where).values(
                moved_to=None if moved_to is None else display_path(moved_to),
                moved_to_raw=None if moved_to is None else to_path_raw(moved_to)))

    def file_outcome(self, path_raw: bytes | str, size: int, mtime_ns: int, inode: int | None = None) -> dict | None:
        """What is recorded for this file version: kind 'verdict' (with sha256, moved_to) or 'rejection'."""
        raw = to_path_raw(path_raw)
        with self.read() as conn:
            for kind, table in (("verdict", images), ("rejection", rejections)):
                query = sa.select(table.c.sha256, *([table.c.moved_to, table.c.moved_to_raw] if table is images
                                                    else [])).where(
                    table.c.path_raw == raw, table.c.size == size, table.c.mtime_ns == mtime_ns)
                if inode is not None:
                    query = query.where(matches_or_unrecorded(table.c.inode, inode))
                row = conn.execute(query.order_by(table.c.id.desc()).limit(1)).first()
                if row is not None:
                    return {"kind": kind, "sha256": row.sha256, "moved_to": moved_place(row._mapping) if
                            table is images else None}
        return None

    def images_without_serial(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        """(id, path_raw) of recorded file versions without a serial, in id order past `after_id` (pages)."""
        with self.read() as conn:
            rows = conn.execute(sa.select(images.c.id, images.c.path_raw).where(
                images.c.serial.is_(None), images.c.id > after_id).order_by(images.c.id).limit(limit)).all()
        return [(row.id, bytes(row.path_raw)) for row in rows]

    def set_serials(self, found: list[tuple[int, str, str | None]]) -> int:
        """Give these images rows (id, serial, lot) their serial and lot where they have none yet; how many got one."""
        changed = 0
        with self.write() as conn:
            for image_id, serial, lot in found:
                changed += conn.execute(sa.update(images).where(images.c.id == image_id, images.c.serial.is_(None))
                                        .values(serial=serial, lot=lot)).rowcount
        return changed

    def set_heatmap(self, sha256: str, model_sha256: str, heatmap_path: str, heatmap_sha256: str | None = None) -> None:
        """Attach a heat map to a verdict: where it is and the digest of its PNG as drawn."""
        with self.write() as conn:
            conn.execute(sa.update(verdicts).where(verdicts.c.sha256 == sha256,
                                                   verdicts.c.model_sha256 == model_sha256)
                         .values(heatmap_path=str(heatmap_path), heatmap_sha256=heatmap_sha256))

def _install_sqlite_listeners(engine: Engine, readonly: bool, busy_timeout_seconds: float) -> None:
    """Pragmas on every new connection; BEGIN IMMEDIATE for the writer (the SQLAlchemy pysqlite recipe)."""

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, record) -> None:
        dbapi_conn.isolation_level = None  # sqlite3 stops emitting its own BEGIN; we emit it below
        cur = dbapi_conn.cursor()
        if not readonly:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
        cur.execute("PRAGMA synchronous=FULL")  # WAL+NORMAL can lose a commit on power loss
        cur.execute("PRAGMA foreign_keys=ON")
        if readonly:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn) -> None:
        deferred = readonly or conn.get_execution_options().get("inspector_read", False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def _install_read_only_sessions(engine: Engine) -> None:
    """A reader's PostgreSQL sessions refuse every write, whatever the role may do."""

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.close()
        dbapi_conn.commit()


CONNECT_TIMEOUT_SECONDS = 10  # a network database that does not answer: the daemon pauses and retries


def shown_url(url: str) -> str:
    """A URL as a message may show it: no password, neither in its user info nor as libpq's ?password=."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        scheme, sep, rest = url.partition("://")
        userinfo, at, place = rest.rpartition("@")  # the last @: a password may hold one unencoded
        place = place.split("?")[0] if "password" in place else place
        return f"{scheme}{sep}{userinfo.split(':')[0]}{':***' if ':' in userinfo else ''}{at}{place}"
    if "password" in parsed.query:
        parsed = parsed.difference_update_query(["password"]).set(password="***")
    return parsed.render_as_string(hide_password=True)


def open_configured(cfg, readonly: bool = False, create: bool = True) -> Store:
    """open_store with the config's database.url, busy timeout and station name; `create=False`: a writer that
    refuses a database that is not there yet ("start inspector watch") instead of creating an empty one (a review,
    the review station: they need verdicts to exist)."""
    if not create and not readonly:
        open_configured(cfg, readonly=True).close()  # raises "no database at ... yet"
    return open_store(cfg.database.url, cfg.database.busy_timeout_seconds, readonly=readonly,
                      station=cfg.station_name)


def open_store(url: str, busy_timeout_seconds: float = 30.0, readonly: bool = False,
               station: str | None = None) -> Store:
    """Open the database; the writer creates/migrates the schema, a reader checks it and never writes."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise StoreError(f"{shown_url(url)!r} is not a database URL (e.g. sqlite:///inspector.db)") from exc
    if "password" in parsed.query:  # libpq's ?password=: moved where every message hides it (`***`)
        password = parsed.query["password"]
        parsed = parsed.difference_update_query(["password"]).set(
            password=password if isinstance(password, str) else password[-1])
        url = parsed.render_as_string(hide_password=False)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"database URL {parsed.render_as_string(hide_password=True)}: inspector keeps its "
                         "verdicts in SQLite (one station) or PostgreSQL (a plant), not in " + backend)
    file = sqlite_file(url)
    connect_url: object = url
    if file is not None:
        if readonly:
            if not file.is_file():
                raise StoreError(f"no database at {file} yet: start `inspector watch` (or check database.url)")
            uri_path = quote(str(file.resolve()), safe="/")
            connect_url = sa.URL.create("sqlite", database=f"file:{uri_path}",
                                        query={"mode": "ro", "uri": "true"})
        elif not file.parent.is_dir():
            raise StoreError(f"folder {file.parent} for the database does not exist: create it or change database.url")
    elif parsed.get_backend_name() == "sqlite" and readonly:
        raise StoreError(f"no database at {url} yet: start `inspector watch` (or check database.url)")
    # A network database: every connection taken from the pool is tested first (a server restarted or a
    # connection dropped costs a reconnect, not an error), and a server that does not answer fails in
    # CONNECT_TIMEOUT_SECONDS (the daemon then pauses with a bounded backoff, retry.MAX_BACKOFF_SECONDS).
    # A lock another session holds longer than database.busy_timeout_seconds fails the statement
    # (lock_timeout, as SQLite's busy_timeout does), so the daemon pauses and says so instead of waiting mute.
    options = {} if backend == "sqlite" else {
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                         "options": f"-c lock_timeout={max(1, int(busy_timeout_seconds * 1000))}"}}
    try:
        engine = sa.create_engine(connect_url, **options)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        hint = " (pip install 'inspector[postgres]')" if backend == "postgresql" else ""
        raise StoreError(f"cannot use database URL {parsed.render_as_string(hide_password=True)}: "
                         f"{type(exc).__name__}{hint}") from exc
    if parsed.get_backend_name() == "sqlite":
        _install_sqlite_listeners(engine, readonly, busy_timeout_seconds)
    elif readonly and parsed.get_backend_name() == "postgresql":
        _install_read_only_sessions(engine)
    store = Store(engine, url, readonly, busy_timeout_seconds, station)
    try:
        if readonly:
            store.check_schema()
        else:
            store.schema_action = store.ensure_schema()
    except BaseException:
        store.close()
        raise
    return store
