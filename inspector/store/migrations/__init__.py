"""Alembic migrations of the verdict database, run by `inspector.store.store.open_store` (never by hand).

A new database is created from `inspector.store.schema.metadata` and stamped at the head revision; an
older one is upgraded revision by revision inside one writer transaction.
"""
