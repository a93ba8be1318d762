"""Schema 2: a file's identity includes its inode and ctime (a new file under an old name is new).

images and rejections gain `inode` and `ctime_ns`; their unique keys become the file version:
images (path_raw, sha256, mtime_ns, inode), so the same content exported again under the same
name is a duplicate row of its own; rejections (path_raw, size, mtime_ns, inode). Rows written
before have no inode: they match any (the old path + size + mtime test).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from inspector.store.migrations import schema_v1

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_KEYS = {
    "images": ("uq_images_path_content", "uq_images_file_version", ["path_raw", "sha256", "mtime_ns", "inode"]),
    "rejections": ("uq_rejections_file", "uq_rejections_file_version", ["path_raw", "size", "mtime_ns", "inode"]),
}


def upgrade() -> None:
    for name, (old_key, new_key, columns) in NEW_KEYS.items():
        # Copied from schema 1's own definition, not reflected: the old key's name is then certain
        # (a schema 0 table had it unnamed) and the copy works the same on SQLite and PostgreSQL.
        source = schema_v1.metadata.tables[name]
        with op.batch_alter_table(name, copy_from=source, recreate="always") as batch:
            batch.add_column(sa.Column("inode", sa.BigInteger, nullable=True))
            batch.add_column(sa.Column("ctime_ns", sa.BigInteger, nullable=True))
            batch.drop_constraint(old_key, type_="unique")
            batch.create_unique_constraint(new_key, columns)
        # the copy keeps only the table-level Index objects; put back the columns' own indexes too
        have = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes(name)}
        for index in source.indexes:
            if index.name not in have:
                op.create_index(index.name, name, [column.name for column in index.columns])


def downgrade() -> None:
    raise NotImplementedError("inspector never downgrades a database; restore a backup instead")
