"""Schema 4: where the daemon moved a file, byte for byte.

images gain `moved_to_raw` (the destination's exact bytes, as path_raw holds the capture path's); `moved_to`
stays the readable, escaped form for display and search. A name with a newline or bytes that are not UTF-8
was found again only through the exact bytes. Rows moved before keep moved_to_raw NULL (their moved_to is
read as before).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("moved_to_raw", sa.LargeBinary, nullable=True))  # a plain ADD COLUMN


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("moved_to_raw")
