"""A plant of real `inspector watch` daemons on one capture folder and one database (tests/test_plant.py and
tests/reliability/test_same_names.py): each daemon a subprocess with its own station name and state folder."""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from daemon_helpers import write_config
from harness import DaemonProcess

HEARTBEAT_SECONDS = 0.5
LEASE_SECONDS = 3.0  # a killed daemon's claims are taken over this long after its last renewal
OUTCOMES = "SELECT path_raw FROM images UNION ALL SELECT path_raw FROM rejections"


def plant_config(tmp_path: Path, name: str, url: str, model: Path, settle_seconds: float = 0.3) -> Path:
    """tmp_path/name/config.toml: station `name` with its own state folder, on the shared tmp_path/capture
    (after = "move") and the shared database; a rescan every second (it re-offers files claimed elsewhere)."""
    folder = tmp_path / name
    folder.mkdir()
    config = write_config(folder, url, after="move", settle_seconds=settle_seconds, rescan_seconds=1.0)
    (folder / "capture").rmdir()  # write_config's own; the plant shares tmp_path/capture
    (tmp_path / "capture").mkdir(exist_ok=True)
    text = config.read_text()
    for old, new in (('capture_dir = "capture"', f'capture_dir = "{tmp_path / "capture"}"'),
                     ('path = "models/detector.safetensors"', f'path = "{model}"'),
                     ("busy_timeout_seconds = 0.5", "busy_timeout_seconds = 5.0")):
        assert old in text, old
        text = text.replace(old, new)
    text += (f'[station]\nname = "{name}"\nheartbeat_seconds = {HEARTBEAT_SECONDS}\n'
             f"claim_lease_seconds = {LEASE_SECONDS}\n")
    config.write_text(text)
    return config


@contextlib.contextmanager
def plant(tmp_path: Path, configs: list[Path], envs: list[dict | None] | None = None) -> Iterator[list[DaemonProcess]]:
    """The daemons, started together and each READY; on a failure every log is printed."""
    envs = envs or [None] * len(configs)
    daemons = [DaemonProcess(tmp_path, config, extra_env=env) for config, env in zip(configs, envs)]
    try:
        for daemon in daemons:
            daemon.wait_ready(timeout=120)
        yield daemons
    except BaseException:
        for config, daemon in zip(configs, daemons):
            daemon.dump_threads()
            print(f"==== {config.parent.name} (exit {daemon.proc.poll()}) ====\n{daemon.log()[-15000:]}")
        raise
    finally:
        for daemon in daemons:
            daemon.close()


class Database:
    """Short reads of the plant's database from the test (a new connection each time: the server may restart)."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def rows(self, sql: str, **params: object) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]

    def outcomes(self) -> Counter:
        return Counter(bytes(raw) for (raw,) in self.rows(OUTCOMES))

    def close(self) -> None:
        self.engine.dispose()


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
