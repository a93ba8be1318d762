"""Schema 6: the electrode's serial number and lot, with every captured file version.

images gain `serial` and `lot` (indexed: `inspector verdicts --serial X` looks one up), read from the file's
name by `station.serial_pattern` at capture. Rows recorded before, and names the pattern does not match, keep
them NULL; `inspector db backfill-serials` fills the older rows from their names.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("serial", sa.Text, nullable=True))  # plain ADD COLUMNs
    op.add_column("images", sa.Column("lot", sa.Text, nullable=True))
    op.create_index("ix_images_serial", "images", ["serial"])
    op.create_index("ix_images_lot", "images", ["lot"])


def downgrade() -> None:
    op.drop_index("ix_images_lot", table_name="images")
    op.drop_index("ix_images_serial", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("lot")
        batch.drop_column("serial")
