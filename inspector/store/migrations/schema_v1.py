"""Schema 1 frozen as inspector created it: the starting point of the migrations (never edit)."""

import sqlalchemy as sa

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info", metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("inspector_version", sa.Text, nullable=False),
    sa.Column("upgraded_at", sa.DateTime, nullable=False),
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
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
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
    sa.Column("first_seen", sa.DateTime, nullable=False, index=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("duplicate_of", sa.Text, nullable=True),
    sa.Column("moved_to", sa.Text, nullable=True),
    sa.Column("verdict_id", sa.Integer, sa.ForeignKey("verdicts.id"), nullable=True),
    sa.UniqueConstraint("path_raw", "sha256", name="uq_images_path_content"),
    sa.Index("ix_images_path_size_mtime", "path_raw", "size", "mtime_ns"),
)
models = sa.Table(
    "models", metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("meta_json", sa.Text, nullable=False),
    sa.Column("first_used", sa.DateTime, nullable=False),
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
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.UniqueConstraint("path_raw", "size", "mtime_ns", name="uq_rejections_file"),
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
    sa.Column("created_at", sa.DateTime, nullable=False),
)
retrains = sa.Table(
    "retrains", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("decision", sa.Text, nullable=True),
    sa.Column("current_score_json", sa.Text, nullable=True),
    sa.Column("candidate_score_json", sa.Text, nullable=True),
    sa.Column("candidate_path", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
)
