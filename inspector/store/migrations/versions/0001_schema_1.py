"""Schema 1: bring a pre-release (schema 0) database to schema 1.

Schema 0 had no schema_info and lacked some tables and columns; all of schema 1's additions
were new tables or nullable columns. A schema 1 database is stamped here without running this.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from inspector.store.migrations import schema_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    schema_v1.metadata.create_all(bind, checkfirst=True)  # the tables schema 0 lacked
    inspector = sa.inspect(bind)
    for table in schema_v1.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))  # all nullable


def downgrade() -> None:
    raise NotImplementedError("inspector never downgrades a database; restore a backup instead")
