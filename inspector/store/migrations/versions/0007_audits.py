"""Schema 7: audit requests, normal verdicts picked at random for an operator's review.

`inspector review sample --normal N` writes one row per content it picks (unique: a content is audited once);
the review queue shows those normal verdicts beside the flagged ones until they have a standing review, and their
reviews estimate how many defects the model passes as normal (the miss rate, with its Wilson interval).
A new table only: nothing already stored changes.

Revision ID: 0007
Revises: 0006 (serial and lot)
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Frozen here as it is at schema 8 (schema.py's table may change in later revisions).
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("station", sa.Text, nullable=True),
        sa.UniqueConstraint("sha256", name="uq_audits_content"),
    )


def downgrade() -> None:
    op.drop_table("audits")
