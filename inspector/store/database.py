"""The database handle under the store: the engine, its short read and write transactions, and the translation
of database faults into StoreError with what to do (SQLite and PostgreSQL, passwords hidden)."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from inspector.base.errors import StoreError


class StoreFullError(StoreError):
    """The disk (or database quota) is full: the daemon pauses and retries, files stay in place."""


def sqlite_file(url: str) -> Path | None:
    """The file behind a sqlite URL, None for other databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _is_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, OSError) and orig.errno == errno.ENOSPC:
        return True
    if getattr(orig, "sqlstate", None) == "53100":  # PostgreSQL disk_full (psycopg 3's SQLSTATE)
        return True
    text = str(orig).lower()
    return "database or disk is full" in text or "no space left" in text


class Database:
    """An engine and its transactions: every write is one short transaction, committed on return. Rows written
    through it carry `station` (station.name; None for a database opened without one)."""

    def __init__(self, engine: Engine, url: str, readonly: bool, busy_timeout_seconds: float,
                 station: str | None = None):
        self.station = station
        self.engine = engine
        self.url = url
        self.readonly = readonly
        self.busy_timeout_seconds = busy_timeout_seconds

    def close(self) -> None:
        self.engine.dispose()

    @property
    def where(self) -> str:
        path = sqlite_file(self.url)
        return str(path) if path else make_url(self.url).render_as_string(hide_password=True)

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Database faults become StoreError (StoreFullError for a full disk) with what to do."""
        try:
            yield
        except (StoreError, sa_exc.IntegrityError):
            raise  # an IntegrityError is a race the caller resolves (an idempotent insert)
        except (sa_exc.OperationalError, sa_exc.DatabaseError, OSError) as exc:
            orig = getattr(exc, "orig", exc)
            if _is_full(exc):
                raise StoreFullError(f"database {self.where}: disk full ({orig}); free space, "
                                     "the daemon retries and leaves the files in place") from exc
            # One line: the server's message, detail and hint without psycopg's LINE/caret context; libpq's lines
            # (a connection that failed) joined.
            diag = getattr(orig, "diag", None)
            parts = [getattr(diag, name, None) for name in ("message_primary", "message_detail", "message_hint")]
            text = "; ".join(filter(None, parts)) if parts[0] else str(orig)
            text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
            lock_timeout = getattr(orig, "sqlstate", None) == "55P03"  # PostgreSQL lock_not_available
            if lock_timeout or "locked" in text.lower() or "busy" in text.lower():
                raise StoreError(f"database {self.where} stayed locked for {self.busy_timeout_seconds:g} s "
                                 "(database.busy_timeout_seconds): another process holds a long write "
                                 "transaction; try again or stop it") from exc
            if getattr(orig, "sqlstate", None) == "42501":  # PostgreSQL insufficient_privilege
                raise StoreError(f"database {self.where}: {text}: the role in database.url lacks this privilege "
                                 "(`inspector db upgrade` needs the owner role; docs/PLANT.md: Roles and GRANTs on a "
                                 "plant database)") from exc
            raise StoreError(f"database {self.where}: {text}") from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One writer transaction (BEGIN IMMEDIATE on SQLite), committed on exit."""
        if self.readonly:
            raise StoreError(f"database {self.where} is open read-only; this command cannot write")
        with self.translate_errors(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """One short read transaction: a consistent snapshot that takes no write lock (a plain BEGIN on
        SQLite's WAL; REPEATABLE READ elsewhere, where READ COMMITTED would see commits mid-transaction)."""
        snapshot = {} if self.engine.dialect.name == "sqlite" else {"isolation_level": "REPEATABLE READ"}
        with self.translate_errors(), self.engine.connect() as conn:
            conn = conn.execution_options(inspector_read=True, **snapshot)
            with conn.begin():
                yield conn
