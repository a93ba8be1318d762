"""Schema 3: a plant of stations on one database.

Every verdict, image, rejection, review, model and retrain row gains `station` (the rows already
there are the upgrading station's: `station.name` of the config that runs `inspector db upgrade`);
models gain `promoted_at` (the plant's model); new tables `stations` (heartbeats), `claims` (files
being scored, so several daemons can share one capture folder) and `locks` (the plant's retrain).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import context, op

STATION_TABLES = ("images", "rejections", "verdicts", "reviews", "models", "retrains")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXED = ("images", "rejections")


def upgrade() -> None:
    station = context.config.attributes.get("station") or None
    for name in STATION_TABLES:
        op.add_column(name, sa.Column("station", sa.Text, nullable=True))  # a plain ADD COLUMN on both databases
        if name in INDEXED:
            op.create_index(f"ix_{name}_station", name, ["station"])
        if station is not None:
            op.execute(sa.table(name, sa.column("station")).update().values(station=station))
    op.add_column("models", sa.Column("promoted_at", sa.DateTime, nullable=True))
    # Frozen here as they were at schema 3 (schema.py's tables may change in later revisions).
    op.create_table(
        "stations",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("capture_dir", sa.Text, nullable=False),
        sa.Column("model_sha256", sa.Text, nullable=True),
        sa.Column("inspector_version", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=False),
        sa.Column("heartbeat_seconds", sa.Float, nullable=False),
        sa.Column("scored", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("queued", sa.Integer, nullable=False),
        sa.Column("paused_reason", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stopped_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path_raw", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("inode", sa.BigInteger, nullable=False),
        sa.Column("station", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False, index=True),
        sa.Column("claimed_at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=False),
        sa.UniqueConstraint("path_raw", "size", "mtime_ns", "inode", name="uq_claims_file_version"),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("station", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("since", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("inspector never downgrades a database; restore a backup instead")
