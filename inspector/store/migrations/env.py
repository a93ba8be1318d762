"""Alembic's environment: always called programmatically with the writer's open connection."""

from alembic import context

from inspector.store.schema import metadata

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER a constraint; Alembic copies the table instead ("batch" mode).
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
