"""The verdict database's schema: SQLAlchemy Core tables, their version, and the Alembic migrations that
bring an older database to it (the revisions live in inspector/migrations/versions)."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 7
# The Alembic revision (inspector/store/migrations/versions) that each schema version is.
SCHEMA_REVISIONS = {1: "0001", 2: "0002", 3: "0003", 4: "0004", 5: "0005", 6: "0006", 7: "0007"}
VERDICTS = ("normal", "abnormal", "rescan")
# A review's label besides dataset.LABELS: the decision it supersedes is taken back (an undo); the image is
# unreviewed again, back in the queue, and no label of it is learned from.
WITHDRAWN = "withdrawn"


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
    sa.Column("heatmap_sha256", sa.Text, nullable=True),  # the PNG as drawn (schema 5; NULL before)
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("station", sa.Text, nullable=True),  # who scored it (NULL: recorded before schema 3)
    # where the normal model's map peaks and what it boxes, in original pixels (NULL: no normal model; schema 5)
    sa.Column("peak_x", sa.Integer, nullable=True),
    sa.Column("peak_y", sa.Integer, nullable=True),
    sa.Column("boxes", sa.Text, nullable=True),  # JSON [[x0, y0, x1, y1], ...]
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
    sa.Column("moved_to", sa.Text, nullable=True),  # where the daemon moved the file, readable (display_path)
    sa.Column("moved_to_raw", sa.LargeBinary, nullable=True),  # ... and its exact bytes (schema 4; NULL before)
    # Which verdict this path shows (the same content may have verdicts from several models).
    sa.Column("verdict_id", sa.Integer, sa.ForeignKey("verdicts.id"), nullable=True),
    # The file version's identity beyond its stat: a rename over the name brings a new inode, a
    # rewrite in place a new ctime. NULL in rows of schema 1 (they match any).
    sa.Column("inode", sa.BigInteger, nullable=True),
    sa.Column("ctime_ns", sa.BigInteger, nullable=True),
    sa.Column("station", sa.Text, nullable=True, index=True),
    # The electrode's serial number and lot, read from the file's name by station.serial_pattern when it was
    # captured (schema 6; NULL: no pattern, a name it does not match, or a row from before)
    sa.Column("serial", sa.Text, nullable=True, index=True),
    sa.Column("lot", sa.Text, nullable=True, index=True),
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
    sa.Column("station", sa.Text, nullable=True),  # the station that first used it
    # Set when `inspector retrain` promotes it: the plant's model, which every daemon loads from its
    # model.path once the file there has this sha256.
    sa.Column("promoted_at", UTCDateTime, nullable=True),
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
    sa.Column("station", sa.Text, nullable=True, index=True),
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
    sa.Column("station", sa.Text, nullable=True),
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
    sa.Column("station", sa.Text, nullable=True),
)
# Schema 3: the plant. One row per station, written by its daemon every station.heartbeat_seconds.
stations = sa.Table(
    "stations", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),  # one per daemon start: tells two daemons of one name apart
    sa.Column("capture_dir", sa.Text, nullable=False),
    sa.Column("model_sha256", sa.Text, nullable=True),
    sa.Column("inspector_version", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("heartbeat_seconds", sa.Float, nullable=False),
    sa.Column("scored", sa.Integer, nullable=False),  # since the daemon started
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("queued", sa.Integer, nullable=False),
    sa.Column("paused_reason", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=False),  # the daemon's STATUS line
    sa.Column("stopped_at", UTCDateTime, nullable=True),  # set on a clean stop
)
# A file being scored by one daemon: the others leave it alone until the lease runs out (a daemon
# renews its leases every heartbeat). The row goes in the transaction that commits the file's outcome.
claims = sa.Table(
    "claims", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path_raw", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("inode", sa.BigInteger, nullable=False),
    sa.Column("station", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False, index=True),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("lease_until", UTCDateTime, nullable=False),
    sa.UniqueConstraint("path_raw", "size", "mtime_ns", "inode", name="uq_claims_file_version"),
)
# Plant-wide jobs that must run once (the nightly retrain): a row lease, renewed while the job runs.
locks = sa.Table(
    "locks", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("station", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("lease_until", UTCDateTime, nullable=False),
)
# Schema 8: normal verdicts picked at random for an audit review (`inspector review sample --normal N`): they wait in
# the review queue beside the flagged ones, and their reviews estimate the defects the model misses on the line.
audits = sa.Table(
    "audits", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),  # the draw's seed: `--seed` picks the same again
    sa.Column("station", sa.Text, nullable=True),
    sa.UniqueConstraint("sha256", name="uq_audits_content"),
)
# The tables whose rows carry the station that wrote them.
STATION_TABLES = ("images", "rejections", "verdicts", "reviews", "models", "retrains")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_path_raw(path: bytes | str | os.PathLike) -> bytes:
    """The exact bytes of a file name, so a non-UTF-8 name round-trips."""
    return path if isinstance(path, bytes) else os.fsencode(path)


def alembic_command(conn: Connection, command_name: str, revision: str, station: str = "") -> None:
    """Run an Alembic command (stamp, upgrade) inside the writer's open transaction; `station` names the
    upgrading station (schema 3 marks the rows already there as its own)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", "inspector.store:migrations")
    config.attributes["connection"] = conn
    config.attributes["station"] = station
    getattr(command, command_name)(config, revision)


def alembic_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def insert_ignoring_conflicts(conn: Connection, table: sa.Table) -> sa.Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect (the database's own upsert)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # open_store refuses other databases
        raise AssertionError(f"no upsert for {conn.dialect.name}")
    return insert(table).on_conflict_do_nothing()


def insert_new(conn: Connection, table: sa.Table, **values: object) -> bool:
    """One row, no select first: True when it went in, False when a row with one of its unique keys was there
    already (committed by this or any other writer)."""
    statement = insert_ignoring_conflicts(conn, table).values(**values).returning(*table.primary_key.columns)
    return conn.execute(statement).first() is not None  # (rowcount is -1 where the key is returned)


def db_now(conn: Connection) -> datetime:
    """The database's clock (UTC), for leases and heartbeats that stations on several hosts compare: their own
    clocks may disagree. SQLite is one machine's file: that machine's clock."""
    if conn.dialect.name == "postgresql":
        return conn.execute(sa.text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one().replace(tzinfo=timezone.utc)
    return utc_now()


def parse_boxes(text: str | None) -> list[list[int]]:
    """verdicts.boxes (JSON [[x0, y0, x1, y1], ...]) as a list; [] for NULL or anything that is not boxes."""
    import json

    try:
        data = json.loads(text) if text else []
    except (ValueError, RecursionError):  # RecursionError: arrays nested deeper than the parser goes
        return []
    if not isinstance(data, list):
        return []
    return [list(box) for box in data if _is_box(box)]


MAX_PIXEL = 2**31 - 1  # pixel coordinates are 32-bit integers (peak_x, peak_y); beyond is no image's


def _is_box(box: object) -> bool:
    """[x0, y0, x1, y1] of plain integers with 0 <= x0 < x1 and 0 <= y0 < y1, all within MAX_PIXEL: an
    empty, inverted (negative width), negative or boolean box is no box to draw."""
    if not (isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box)):
        return False
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= MAX_PIXEL and 0 <= y0 < y1 <= MAX_PIXEL
