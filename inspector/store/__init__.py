"""The store layer: the only place that speaks SQL. The schema and its Alembic migrations (schema, migrations),
connections and transactions (database), the Store gateway that every other layer asks by name (store), its
outcome rows (records), readers and counts (queries, counts), the plant's claims, heartbeats and locks (fleet),
reviews and retrain runs (reviews, retrains), and copying a database (dbcopy, copycheck). Imports from learn
and below only for types and values; nothing here imports torch."""
