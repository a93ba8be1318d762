"""Test helpers for the daemon: configs in tmp_path, tiny models and images, short reads of its database, and the
daemon as an in-process thread. The daemon as a real subprocess, and bounded waits (never fixed sleeps), are
tests/harness.py's."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from harness import wait_for
from image_files import sample_image16, write_tiff16

ROOT = Path(__file__).resolve().parent.parent
INPUT_SIZE = (64, 32)
WINDOW = (1000, 4000)  # sample_image16 values lie in 1000-4000


def make_model(path: Path, seed: int = 0) -> str:
    """An untrained tiny model artifact (64x32 input, random weights); returns its file sha256."""
    from inspector.learn.model import init_model

    path.parent.mkdir(parents=True, exist_ok=True)
    init_model(path, "global", WINDOW, INPUT_SIZE, weights="none", seed=seed)
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_image(path: Path | bytes, seed: int) -> Path | bytes:
    """A small valid 16-bit TIFF (100 x 60) whose content depends on seed."""
    write_tiff16(os.fsdecode(path), sample_image16(100, 60, seed))
    return path


def write_config(tmp_path: Path, database_url: str = "sqlite:///inspector.db", model: Path | None = None,
                 **watch: object) -> Path:
    """config.toml in tmp_path: capture/, a tiny CPU model, the db (SQLite beside it unless database_url says
    otherwise) and state beside it; watch keys overridable. `model`: a model file copied to models/detector.safetensors,
    where the config points."""
    if model is not None:
        (tmp_path / "models").mkdir(exist_ok=True)
        shutil.copy(model, tmp_path / "models" / "detector.safetensors")
    # a file read as cut short is final after 1 s unchanged (300 s in production): bad files are quarantined quickly
    settings = {"settle_seconds": 0.5, "incomplete_retry_seconds": 1.0, "rescan_seconds": 600.0, "queue_size": 64, "after": "keep", "polling": False}
    settings.update(watch)
    (tmp_path / "capture").mkdir(exist_ok=True)
    lines = ["[watch]", 'capture_dir = "capture"']
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    lines += ["[model]", 'path = "models/detector.safetensors"', 'device = "cpu"', "input_size = [64, 32]",
              'weights = "none"', "[infer]", "batch_size = 4", "threads = 1", "[train]", "threads = 1",
              "[database]", f'url = "{database_url}"', "busy_timeout_seconds = 0.5",
              "[state]", 'dir = "var"', "[log]", 'level = "DEBUG"']
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def db_rows(db: Path | str, sql: str, *params: object, **binds: object) -> list[tuple]:
    """A short read of the daemon's database, as a CLI reader would do it; [] before its tables exist.

    `db` is a database URL (SQLite or PostgreSQL; the SQL goes through SQLAlchemy's text(), parameters bound
    by name: `WHERE path LIKE :like`, like=...) or, as older callers pass it, the path of a SQLite file
    (sqlite3, positional `?` parameters)."""
    if isinstance(db, Path) or "://" not in db:
        if binds:
            raise TypeError("a SQLite path takes positional ? parameters; name them only with a URL")
        return _sqlite_file_rows(Path(db), sql, params)
    if params:
        raise TypeError("with a database URL, bind parameters by name (:name) in the SQL")
    import sqlalchemy as sa

    engine = _reader_engine(db)
    if engine is None:  # a SQLite file the daemon has not created yet
        return []
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), binds)]
    except sa.exc.DBAPIError as exc:
        # SQLite: "no such table"; PostgreSQL: undefined_table (SQLSTATE 42P01)
        if "no such table" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "42P01":
            return []
        raise


def db_count(db: Path | str, sql: str, *params: object, **binds: object) -> int:
    rows = db_rows(db, sql, *params, **binds)
    return int(rows[0][0]) if rows else 0


def _sqlite_file_rows(db: Path, sql: str, params: tuple) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()


_ENGINES: dict[str, object] = {}


def _reader_engine(url: str):
    """One engine per URL, holding no connection between reads (NullPool): a SQLite file opened read-only
    (never created by a read), a PostgreSQL database over its own short connection. None while a SQLite
    file does not exist."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    if url in _ENGINES:
        return _ENGINES[url]
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        file = Path(parsed.database or "")
        if not file.is_file():
            return None
        target = sa.URL.create("sqlite", database=f"file:{quote(str(file.resolve()), safe='/')}",
                               query={"mode": "ro", "uri": "true"})
        engine = sa.create_engine(target, poolclass=NullPool, connect_args={"timeout": 5})
    else:
        engine = sa.create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": 10})
    _ENGINES[url] = engine
    return engine


@contextlib.contextmanager
def in_process(cfg, detector, store=None, poll_seconds: float = 0.2) -> Iterator[object]:
    """The Daemon on a thread of the test process (no signals), stopped and joined on exit."""
    from inspector.station.daemon import Daemon
    from inspector.store.store import open_store

    own = store is None
    store = store or open_store(cfg.database.url, cfg.database.busy_timeout_seconds)
    daemon = Daemon(cfg, detector, store)
    daemon.poll_seconds = poll_seconds
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), name="test-daemon")
    thread.start()
    try:
        wait_for(lambda: daemon.scanner.passes >= 1, 30, "the startup scan")
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        if own:
            store.close()
    assert not thread.is_alive(), "the daemon did not stop"
    assert result.get("code") == 0


def add_normal_model(path: Path, images16: list, groups: list[str] | None = None) -> str:
    """Fit a normal model (the "input" stage) on the given normal scans, converted and resized as the detector
    does, into the model file at `path` (rewritten, as `inspector train` writes one); returns its sha256."""
    import dataclasses

    from inspector.learn import normalmap
    from inspector.learn.infer import Detector
    from inspector.learn.model import preprocess_batch, save_model

    det = Detector.load(path, device="cpu")
    x = preprocess_batch([det.convert(img) for img in images16], det.meta.input_size)
    feats = normalmap.NormalFeatures({normalmap.INPUT: normalmap.stage_features(normalmap.INPUT, x, {})},
                                     groups or ["bundle01"] * len(images16))
    model, cal = normalmap.fit(feats)
    det.net.normal = model
    normal = {"stages": list(model.stages), "calibration": cal, "images": len(images16),
              "bundles": len(set(feats.groups))}
    return save_model(path, det.net, dataclasses.replace(det.meta, normal=normal))
