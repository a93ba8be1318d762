"""Schema 5: where the normal model's map points, with every verdict, and the heat map's own digest.

verdicts gain `peak_x`, `peak_y` (the map's maximum, in pixels of the original 16-bit image: x the column,
y the row) and `boxes` (JSON: [[x0, y0, x1, y1], ...], the regions above the model's normal threshold, x1 and
y1 exclusive). Verdicts of a model without a normal model, and those recorded before, keep them NULL.
`heatmap_sha256`: the sha256 of the heat map PNG as drawn, so every reader shows it only while the file is
still that one (NULL before: those are checked by name and type only).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("verdicts", sa.Column("peak_x", sa.Integer, nullable=True))  # plain ADD COLUMNs
    op.add_column("verdicts", sa.Column("peak_y", sa.Integer, nullable=True))
    op.add_column("verdicts", sa.Column("boxes", sa.Text, nullable=True))
    op.add_column("verdicts", sa.Column("heatmap_sha256", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("heatmap_sha256")
        batch.drop_column("boxes")
        batch.drop_column("peak_y")
        batch.drop_column("peak_x")
