"""The store is the only place that speaks SQL: outside the modules of the `store` layer in docs/DESIGN.md no
module imports sqlalchemy or sqlite3 (or a database driver), builds a statement, runs one on a connection, or
imports a table from schema.py; every other module asks the store by name (store.reviews.pending(...), ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import sqlalchemy as sa

from inspector.store import queries, schema
from tests.test_layers import PACKAGE, layers, modules

DRIVERS = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "alembic")
STATEMENTS = {"select", "insert", "update", "delete", "text", "exists"}  # sqlalchemy's statement builders (sa.X)
BARE_STATEMENTS = {"select", "text"}  # the same called by bare name (no other function of the package is named so)
ON_A_CONNECTION = {"execute", "exec_driver_sql", "executemany", "executescript", "scalars", "scalar_one"}


def sql_objects() -> set[str]:
    """The names of schema.py's tables (and queries.py's SQL expressions) that hand a module raw SQL."""
    found = {name for name, value in vars(schema).items() if isinstance(value, (sa.Table, sa.MetaData))}
    return found | {name for name, value in vars(queries).items()
                    if callable(value) and getattr(value, "__module__", "") == queries.__name__
                    and name in ("is_reviewed", "newest_review_id", "newest_review_label")}


def sql_in(path: Path, tables: set[str]) -> list[str]:
    """Where a file speaks SQL itself: `line: what`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in DRIVERS:
                found.append(f"{node.lineno}: from {node.module} import ...")
            elif node.module in ("inspector.store.schema", "inspector.store.queries"):
                found += [f"{node.lineno}: imports {a.name} from {node.module}" for a in node.names if a.name in tables]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in BARE_STATEMENTS:
                found.append(f"{node.lineno}: {func.id}(...)")
            elif isinstance(func, ast.Attribute) and func.attr in ON_A_CONNECTION:
                found.append(f"{node.lineno}: .{func.attr}(...)")
            elif (isinstance(func, ast.Attribute) and func.attr in STATEMENTS and isinstance(func.value, ast.Name)
                  and func.value.id in ("sa", "sqlalchemy")):
                found.append(f"{node.lineno}: {func.value.id}.{func.attr}(...)")
        elif isinstance(node, ast.Attribute) and node.attr in ("engine", "dialect") and \
                isinstance(node.value, ast.Name) and node.value.id in ("store", "conn"):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def store_modules() -> set[str]:
    return {name for name, (_, label) in layers().items() if label == "store"}


def test_only_the_store_speaks_sql():
    tables = sql_objects()
    allowed = store_modules()
    speaking = {name: sql_in(path, tables) for name, path in modules().items()
                if name not in allowed}
    assert {name: lines for name, lines in speaking.items() if lines} == {}, \
        "move these statements into the store (a store-layer module) and call it by name"


def test_the_store_layer_holds_the_database_modules():
    assert {"store.store", "store.queries", "store.fleet", "store.schema", "store.reviews", "store.retrains",
            "store.counts"} <= store_modules()
    assert all((PACKAGE / f"{name.replace('.', '/')}.py").is_file() or (PACKAGE / name.replace('.', '/')).is_dir()
               for name in store_modules())


def test_the_scan_can_fail(tmp_path):
    """Each way of speaking SQL is seen: a driver import, a statement, a raw connection, a table."""
    src = tmp_path / "mod.py"
    src.write_text("import sqlite3\nfrom sqlalchemy import select\nfrom inspector.store.schema import images, WITHDRAWN\n"
                   "def f(store):\n    import sqlalchemy as sa\n    with store.read() as conn:\n"
                   "        conn.execute(sa.select(images))\n    text('SELECT 1')\n    store.engine.dispose()\n")
    found = sql_in(src, sql_objects())
    assert [line.split(":")[0] for line in found] == ["1", "2", "3", "5", "7", "7", "8", "9"], found
    assert not any("WITHDRAWN" in line for line in found)  # a constant of the schema is no SQL
