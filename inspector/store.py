"""The verdict database: SQLAlchemy Core tables and the few queries the daemon and CLI need.

One writer (the daemon) and short-lived readers (the CLI). On SQLite: WAL, synchronous=FULL,
busy_timeout, writer transactions begun IMMEDIATE, readers opened with mode=ro.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from inspector import __version__
from inspector.errors import StoreError
from inspector.paths import display_path

SCHEMA_VERSION = 2
# The Alembic revision (inspector/migrations/versions) that each schema version is.
SCHEMA_REVISIONS = {1: "0001", 2: "0002"}
VERDICTS = ("normal", "abnormal", "rescan")


class StoreFullError(StoreError):
    """The disk (or database quota) is full: the daemon pauses and retries, files stay in place."""


class UTCDateTime(sa.types.TypeDecorator):
    """Aware datetimes in, stored as naive UTC (portable), aware UTC out."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info", metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("inspector_version", sa.Text, nullable=False),
    sa.Column("upgraded_at", UTCDateTime, nullable=False),
)
verdicts = sa.Table(
    "verdicts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("model_sha256", sa.Text, nullable=False),
    sa.Column("p_abnormal", sa.Float, nullable=True),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("ready_to_commit_seconds", sa.Float, nullable=True),
    sa.Column("inference_seconds", sa.Float, nullable=True),
    sa.Column("heatmap_path", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.UniqueConstraint("sha256", "model_sha256", name="uq_verdicts_content_model"),
)
images = sa.Table(
    "images", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("path_raw", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=False, index=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("duplicate_of", sa.Text, nullable=True),
    sa.Column("moved_to", sa.Text, nullable=True),
    # Which verdict this path shows (the same content may have verdicts from several models).
    sa.Column("verdict_id", sa.Integer, sa.ForeignKey("verdicts.id"), nullable=True),
    # The file version's identity beyond its stat: a rename over the name brings a new inode, a
    # rewrite in place a new ctime. NULL in rows of schema 1 (they match any).
    sa.Column("inode", sa.BigInteger, nullable=True),
    sa.Column("ctime_ns", sa.BigInteger, nullable=True),
    # One row per file version: the same content exported again under the same name gets its own row.
    sa.UniqueConstraint("path_raw", "sha256", "mtime_ns", "inode", name="uq_images_file_version"),
    sa.Index("ix_images_path_size_mtime", "path_raw", "size", "mtime_ns"),
)
models = sa.Table(
    "models", metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("meta_json", sa.Text, nullable=False),
    sa.Column("first_used", UTCDateTime, nullable=False),
)
rejections = sa.Table(
    "rejections", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("path_raw", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.Text, nullable=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("inode", sa.BigInteger, nullable=True),
    sa.Column("ctime_ns", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("path_raw", "size", "mtime_ns", "inode", name="uq_rejections_file_version"),
)
reviews = sa.Table(
    "reviews", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False, index=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("anomalies", sa.Text, nullable=False, default=""),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("model_verdict", sa.Text, nullable=True),
    sa.Column("model_sha256", sa.Text, nullable=True),
    sa.Column("supersedes", sa.Integer, sa.ForeignKey("reviews.id"), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
retrains = sa.Table(
    "retrains", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("decision", sa.Text, nullable=True),
    sa.Column("current_score_json", sa.Text, nullable=True),
    sa.Column("candidate_score_json", sa.Text, nullable=True),
    sa.Column("candidate_path", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_path_raw(path: bytes | str | os.PathLike) -> bytes:
    """The exact bytes of a file name, so a non-UTF-8 name round-trips."""
    return path if isinstance(path, bytes) else os.fsencode(path)


def sqlite_file(url: str) -> Path | None:
    """The file behind a sqlite URL, None for other databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _is_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, OSError) and orig.errno == errno.ENOSPC:
        return True
    if getattr(orig, "pgcode", None) == "53100":  # PostgreSQL disk_full
        return True
    text = str(orig).lower()
    return "database or disk is full" in text or "no space left" in text


class Store:
    """A database handle; every write method is one short transaction, committed on return."""

    def __init__(self, engine: Engine, url: str, readonly: bool, busy_timeout_seconds: float):
        self.engine = engine
        self.url = url
        self.readonly = readonly
        self.busy_timeout_seconds = busy_timeout_seconds
        self.schema_action = ""  # what open_store did to the schema: created, migrated or current

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    @property
    def where(self) -> str:
        path = sqlite_file(self.url)
        return str(path) if path else make_url(self.url).render_as_string(hide_password=True)

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Database faults become StoreError (StoreFullError for a full disk) with what to do."""
        try:
            yield
        except (StoreError, sa_exc.IntegrityError):
            raise  # an IntegrityError is a race the caller resolves (an idempotent insert)
        except (sa_exc.OperationalError, sa_exc.DatabaseError, OSError) as exc:
            orig = getattr(exc, "orig", exc)
            if _is_full(exc):
                raise StoreFullError(f"database {self.where}: disk full ({orig}); free space, "
                                     "the daemon retries and leaves the files in place") from exc
            text = str(orig)
            if "locked" in text.lower() or "busy" in text.lower():
                raise StoreError(f"database {self.where} stayed locked for {self.busy_timeout_seconds:g} s "
                                 "(database.busy_timeout_seconds): another process holds a long write "
                                 "transaction; try again or stop it") from exc
            raise StoreError(f"database {self.where}: {text}") from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One writer transaction (BEGIN IMMEDIATE on SQLite), committed on exit."""
        if self.readonly:
            raise StoreError(f"database {self.where} is open read-only; this command cannot write")
        with self.translate_errors(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """One short read transaction (a consistent snapshot; a plain BEGIN: it takes no write lock)."""
        with self.translate_errors(), self.engine.connect() as conn:
            conn = conn.execution_options(inspector_read=True)
            with conn.begin():
                yield conn

    # ---- schema -------------------------------------------------------------------------
    def schema_version(self) -> int | None:
        """The stored schema version; 0 for tables without a schema_info; None for an empty db."""
        with self.read() as conn:
            names = set(sa.inspect(conn).get_table_names())
            if "schema_info" not in names:
                return 0 if names & {"images", "verdicts"} else None
            row = conn.execute(sa.select(schema_info).order_by(schema_info.c.version.desc())).first()
            return row.version if row else 0

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
            if version is None:
                metadata.create_all(conn)  # a new database: today's schema at once (Alembic's cookbook)
                _alembic(conn, "stamp", SCHEMA_REVISIONS[SCHEMA_VERSION])
            else:
                if version in SCHEMA_REVISIONS and _alembic_revision(conn) is None:
                    _alembic(conn, "stamp", SCHEMA_REVISIONS[version])  # made before inspector used Alembic
                _alembic(conn, "upgrade", SCHEMA_REVISIONS[SCHEMA_VERSION])
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
    def record_model(self, sha256: str, path: str, meta_json: str) -> None:
        """Remember a model the first time it scores (idempotent)."""
        with self.write() as conn:
            if conn.execute(sa.select(models.c.sha256).where(models.c.sha256 == sha256)).first() is None:
                conn.execute(sa.insert(models).values(sha256=sha256, path=str(path), meta_json=meta_json,
                                                      first_used=utc_now()))

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
                        query = query.where(sa.or_(column.is_(None), column == value))
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

    def record_verdict(self, path_raw: bytes | str, sha256: str, size: int, mtime_ns: int, model_sha256: str,
                       p_abnormal: float | None, verdict: str, reason: str | None, threshold: float,
                       method: str, ready_to_commit_seconds: float | None,
                       inference_seconds: float | None, inode: int | None = None,
                       ctime_ns: int | None = None) -> str:
        """Record an image and its verdict in one transaction: 'new', 'duplicate' or 'exists'.

        'exists': this file version (path, content, mtime, inode) is already recorded; its ctime is
        refreshed. The same content under the same name but another mtime or inode (exported again)
        is a 'duplicate' row of its own.
        """
        if verdict not in VERDICTS:
            raise StoreError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        raw = to_path_raw(path_raw)
        try:
            with self.write() as conn:
                same = sa.and_(images.c.path_raw == raw, images.c.sha256 == sha256, images.c.mtime_ns == mtime_ns,
                               sa.or_(images.c.inode.is_(None), images.c.inode == inode))
                if conn.execute(sa.select(images.c.id).where(same).limit(1)).first() is not None:
                    conn.execute(sa.update(images).where(same).values(inode=inode, ctime_ns=ctime_ns))
                    return "exists"
                prior = conn.execute(sa.select(verdicts.c.id).where(
                    verdicts.c.sha256 == sha256, verdicts.c.model_sha256 == model_sha256)).first()
                now = utc_now()
                row = dict(path=display_path(raw), path_raw=raw, sha256=sha256, size=size, mtime_ns=mtime_ns,
                           inode=inode, ctime_ns=ctime_ns, first_seen=now)
                if prior is not None:
                    first = conn.execute(sa.select(images.c.path).where(images.c.sha256 == sha256)
                                         .order_by(images.c.id).limit(1)).scalar()
                    conn.execute(sa.insert(images).values(**row, status="duplicate", duplicate_of=first,
                                                          verdict_id=prior.id))
                    return "duplicate"
                verdict_id = conn.execute(sa.insert(verdicts).values(
                    sha256=sha256, model_sha256=model_sha256, p_abnormal=p_abnormal, verdict=verdict,
                    reason=reason, threshold=threshold, method=method,
                    ready_to_commit_seconds=ready_to_commit_seconds, inference_seconds=inference_seconds,
                    created_at=now)).inserted_primary_key[0]
                conn.execute(sa.insert(images).values(**row, status="scored", verdict_id=verdict_id))
                return "new"
        except sa_exc.IntegrityError:
            # Another writer committed the same row between our check and insert (not on SQLite).
            return "exists"

    def record_rejection(self, path_raw: bytes | str, sha256: str | None, size: int, mtime_ns: int,
                         reason: str, message: str, inode: int | None = None, ctime_ns: int | None = None) -> str:
        """Record why a file was not scored; idempotent per file version ('new' or 'exists')."""
        raw = to_path_raw(path_raw)
        try:
            with self.write() as conn:
                same = sa.and_(rejections.c.path_raw == raw, rejections.c.size == size,
                               rejections.c.mtime_ns == mtime_ns,
                               sa.or_(rejections.c.inode.is_(None), rejections.c.inode == inode))
                if conn.execute(sa.select(rejections.c.id).where(same).limit(1)).first() is not None:
                    conn.execute(sa.update(rejections).where(same).values(inode=inode, ctime_ns=ctime_ns))
                    return "exists"
                conn.execute(sa.insert(rejections).values(
                    path=display_path(raw), path_raw=raw, sha256=sha256, size=size, mtime_ns=mtime_ns,
                    inode=inode, ctime_ns=ctime_ns, reason=reason, message=message, created_at=utc_now()))
                return "new"
        except sa_exc.IntegrityError:
            return "exists"

    def record_moved(self, path_raw: bytes | str, sha256: str, moved_to: str | None, mtime_ns: int | None = None,
                     inode: int | None = None) -> None:
        """Note where a scored file is being moved (before the rename; None when the rename failed).

        With mtime and inode only that file version's row changes: the same content exported again
        under the same name is another row, moved to another place.
        """
        where = [images.c.path_raw == to_path_raw(path_raw), images.c.sha256 == sha256]
        if mtime_ns is not None:
            where.append(images.c.mtime_ns == mtime_ns)
        if inode is not None:
            where.append(sa.or_(images.c.inode.is_(None), images.c.inode == inode))
        with self.write() as conn:
            conn.execute(sa.update(images).where(*where).values(moved_to=None if moved_to is None else str(moved_to)))

    def file_outcome(self, path_raw: bytes | str, size: int, mtime_ns: int, inode: int | None = None) -> dict | None:
        """What is recorded for this file version: kind 'verdict' (with sha256, moved_to) or 'rejection'."""
        raw = to_path_raw(path_raw)
        with self.read() as conn:
            for kind, table in (("verdict", images), ("rejection", rejections)):
                query = sa.select(table.c.sha256, *([table.c.moved_to] if table is images else [])).where(
                    table.c.path_raw == raw, table.c.size == size, table.c.mtime_ns == mtime_ns)
                if inode is not None:
                    query = query.where(sa.or_(table.c.inode.is_(None), table.c.inode == inode))
                row = conn.execute(query.order_by(table.c.id.desc()).limit(1)).first()
                if row is not None:
                    return {"kind": kind, "sha256": row.sha256, "moved_to": getattr(row, "moved_to", None)}
        return None

    def set_heatmap(self, sha256: str, model_sha256: str, heatmap_path: str) -> None:
        """Attach a Grad-CAM image to a verdict."""
        with self.write() as conn:
            conn.execute(sa.update(verdicts).where(verdicts.c.sha256 == sha256,
                                                   verdicts.c.model_sha256 == model_sha256)
                         .values(heatmap_path=str(heatmap_path)))

    # ---- readers ------------------------------------------------------------------------
    def _verdict_select(self, since, until, verdict, model, columns) -> sa.Select:
        query = sa.select(*columns).select_from(images.outerjoin(verdicts, images.c.verdict_id == verdicts.c.id))
        if since is not None:
            query = query.where(images.c.first_seen >= since)
        if until is not None:
            query = query.where(images.c.first_seen < until)
        if verdict is not None:
            if verdict not in VERDICTS:
                raise StoreError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
            query = query.where(verdicts.c.verdict == verdict)
        if model:
            if not re.fullmatch(r"[0-9a-fA-F]{1,64}", model):
                raise StoreError(f"model {model!r} is not a sha256 or a prefix of one (hex digits)")
            query = query.where(verdicts.c.model_sha256.like(model.lower() + "%"))
        return query

    def _glob(self, query: sa.Select, path_glob: str | None) -> tuple[sa.Select, str | None]:
        """Filter by a shell pattern over the whole path in SQL: GLOB on SQLite, LIKE elsewhere.

        Returns the query and the pattern left for Python (a [...] class on a database without GLOB).
        """
        if path_glob is None:
            return query, None
        if self.engine.dialect.name == "sqlite":
            return query.where(images.c.path.op("GLOB")(path_glob)), None
        if "[" in path_glob:
            return query, path_glob
        like = "".join({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c) for c in path_glob)
        return query.where(images.c.path.like(like, escape="\\")), None

    def query_verdicts(self, since: datetime | None = None, until: datetime | None = None,
                       verdict: str | None = None, path_glob: str | None = None, model: str | None = None,
                       limit: int | None = None) -> list[dict]:
        """One row per image path with its verdict, newest first; path_glob matches the whole path."""
        cols = [images.c.id, images.c.first_seen.label("time"), images.c.path, images.c.path_raw, images.c.sha256,
                images.c.size, images.c.mtime_ns, images.c.status, images.c.duplicate_of, images.c.moved_to,
                verdicts.c.model_sha256, verdicts.c.p_abnormal, verdicts.c.verdict, verdicts.c.reason,
                verdicts.c.threshold, verdicts.c.method, verdicts.c.ready_to_commit_seconds,
                verdicts.c.inference_seconds, verdicts.c.heatmap_path, verdicts.c.created_at.label("verdict_time")]
        query, left = self._glob(self._verdict_select(since, until, verdict, model, cols), path_glob)
        query = query.order_by(images.c.first_seen.desc(), images.c.id.desc())
        if left is None and limit is not None:
            query = query.limit(limit)
        out = []
        with self.read() as conn:
            for row in conn.execute(query):
                if left is not None and not fnmatch.fnmatchcase(row.path, left):
                    continue
                item = dict(row._mapping)
                item["duplicate"] = row.status == "duplicate"
                out.append(item)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def count_verdicts(self, since: datetime | None = None, until: datetime | None = None,
                       verdict: str | None = None, path_glob: str | None = None, model: str | None = None) -> int:
        """How many rows query_verdicts would return without a limit (for "50 of N shown")."""
        query, left = self._glob(self._verdict_select(since, until, verdict, model, [images.c.path]), path_glob)
        with self.read() as conn:
            if left is not None:
                return sum(fnmatch.fnmatchcase(p, left) for p in conn.execute(query).scalars())
            return int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())

    def _rejection_filter(self, query: sa.Select, since: datetime | None, until: datetime | None) -> sa.Select:
        if since is not None:
            query = query.where(rejections.c.created_at >= since)
        if until is not None:
            query = query.where(rejections.c.created_at < until)
        return query

    def query_rejections(self, since: datetime | None = None, until: datetime | None = None,
                         limit: int | None = None) -> list[dict]:
        """Files that got no verdict and why, newest first."""
        query = self._rejection_filter(sa.select(rejections), since, until)
        query = query.order_by(rejections.c.created_at.desc(), rejections.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def count_rejections(self, since: datetime | None = None, until: datetime | None = None) -> int:
        query = self._rejection_filter(sa.select(sa.func.count()).select_from(rejections), since, until)
        with self.read() as conn:
            return int(conn.execute(query).scalar_one())

    def status_counts(self, today_start_utc: datetime) -> dict:
        """Model in use, counts by verdict and by rejection reason (today and total), last verdict time."""
        joined = images.join(verdicts, images.c.verdict_id == verdicts.c.id)
        with self.read() as conn:
            last = conn.execute(sa.select(verdicts.c.model_sha256, verdicts.c.created_at)
                                .order_by(verdicts.c.created_at.desc(), verdicts.c.id.desc()).limit(1)).first()
            model = None
            if last is not None:
                found = conn.execute(sa.select(models).where(models.c.sha256 == last.model_sha256)).first()
                model = dict(found._mapping) if found else {"sha256": last.model_sha256, "path": None,
                                                            "meta_json": None, "first_used": None}

            def by(column, table, time_column, since=None) -> dict[str, int]:
                query = sa.select(column, sa.func.count()).select_from(table).group_by(column)
                if since is not None:
                    query = query.where(time_column >= since)
                return {key: int(n) for key, n in conn.execute(query)}

            def count_duplicates(since=None) -> int:
                query = sa.select(sa.func.count()).select_from(images).where(images.c.status == "duplicate")
                if since is not None:
                    query = query.where(images.c.first_seen >= since)
                return int(conn.execute(query).scalar_one())

            return {
                "model": model,
                "verdicts_today": by(verdicts.c.verdict, joined, images.c.first_seen, today_start_utc),
                "verdicts_total": by(verdicts.c.verdict, joined, images.c.first_seen),
                "duplicates_today": count_duplicates(today_start_utc),
                "duplicates_total": count_duplicates(),
                "rejections_today": by(rejections.c.reason, rejections, rejections.c.created_at, today_start_utc),
                "rejections_total": by(rejections.c.reason, rejections, rejections.c.created_at),
                "last_verdict_at": last.created_at if last is not None else None,
            }


def _alembic(conn: Connection, command_name: str, revision: str) -> None:
    """Run an Alembic command (stamp, upgrade) inside the writer's open transaction."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", "inspector:migrations")
    config.attributes["connection"] = conn
    getattr(command, command_name)(config, revision)


def _alembic_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


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


def open_store(url: str, busy_timeout_seconds: float = 30.0, readonly: bool = False) -> Store:
    """Open the database; the writer creates/migrates the schema, a reader checks it and never writes."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise StoreError(f"{url!r} is not a database URL (e.g. sqlite:///inspector.db)") from exc
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
    try:
        engine = sa.create_engine(connect_url)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use database URL {parsed.render_as_string(hide_password=True)}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        _install_sqlite_listeners(engine, readonly, busy_timeout_seconds)
    store = Store(engine, url, readonly, busy_timeout_seconds)
    try:
        if readonly:
            store.check_schema()
        else:
            store.schema_action = store.ensure_schema()
    except BaseException:
        store.close()
        raise
    return store
