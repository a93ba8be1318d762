"""RELIABILITY case 14 against the real daemon subprocess: a reader holding a long read transaction while
the daemon writes, and a full disk under the database (a real tmpfs when this machine lets us mount one,
else the daemon's simulated ENOSPC hook). The other cases are in tests/test_daemon.py, test_kill.py
(case 10), test_load.py (case 12) and test_security.py (case 8 with the subprocess)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon_helpers import db_count, write_config, write_image
from harness import DaemonProcess, wait_for
from inspector.cli import cli

IMAGES = "SELECT COUNT(*) FROM images"

READER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
con.execute("BEGIN")
before = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
print("holding", before, flush=True)
sys.stdin.readline()  # hold the read transaction until the test says so
after = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
con.execute("COMMIT")
print("released", after, flush=True)
"""


def make_station(tmp_path: Path, model_file: Path, db_url: str = "sqlite:///inspector.db", **watch) -> Path:
    return write_config(tmp_path, database_url=db_url, model=model_file, **watch)


@pytest.mark.slow
def test_long_read_transaction_does_not_block_the_daemon(tmp_path, model_file):
    config = make_station(tmp_path, model_file, settle_seconds=0.2)
    capture, db = tmp_path / "capture", tmp_path / "inspector.db"
    daemon = DaemonProcess(tmp_path, config)
    reader = None
    try:
        daemon.wait_ready()
        write_image(capture / "first.tif", seed=1)
        wait_for(lambda: db_count(db, IMAGES) == 1, 60, "the first verdict")
        reader = subprocess.Popen([sys.executable, "-c", READER, str(db)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline().split() == ["holding", "1"]
        for i in range(20):
            write_image(capture / f"during-{i:02d}.tif", seed=100 + i)
        wait_for(lambda: db_count(db, IMAGES) == 21, 120, "20 verdicts while the reader holds its transaction")
        assert reader.poll() is None, "the reader ended early"
        result = CliRunner().invoke(cli, ["verdicts", "--config", str(config), "--format", "json", "--limit", "100"])
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)) == 21  # a short CLI reader meanwhile sees every commit
        out, _ = reader.communicate("\n", timeout=30)
        assert out.split() == ["released", "1"]  # the long reader kept its snapshot the whole time
        assert reader.returncode == 0
        log = daemon.log()
        assert daemon.proc.poll() is None
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        daemon.close()
    assert "locked" not in log and "pausing" not in log and "Traceback" not in log


def mount_tmpfs(folder: Path, size: str = "2m") -> bool:
    """A small real file system for the database; False where this process may not mount."""
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def fill(folder: Path) -> Path:
    """Write one file until the file system says ENOSPC; returns it (delete it to free the space)."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing is left to flush (and fail) on close
        try:
            while True:
                fh.write(b"\0" * 65536)
                os.fsync(fh.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.fixture(params=["tmpfs", "simulated"])
def full_disk(request, tmp_path):
    """(db url, extra env, fill(), free()) for a real small tmpfs or the INSPECTOR_FAULT=enospc hook."""
    if request.param == "tmpfs":
        folder = tmp_path / "dbfs"
        if not mount_tmpfs(folder):
            pytest.skip("cannot mount a tmpfs here (needs root and mount); the simulated case runs instead")
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(folder)], check=False))
        state: dict[str, Path] = {}
        yield (f"sqlite:///{folder}/inspector.db", folder / "inspector.db", {},
               lambda: state.setdefault("filler", fill(folder)), lambda: state.pop("filler").unlink())
    else:
        flag = tmp_path / "disk-is-full"
        yield ("sqlite:///inspector.db", tmp_path / "inspector.db",
               {"INSPECTOR_FAULT": "enospc", "INSPECTOR_FAULT_FILE": str(flag)},
               flag.touch, flag.unlink)


@pytest.mark.slow
def test_full_disk_pauses_reports_and_resumes_with_nothing_lost(tmp_path, model_file, full_disk):
    url, db, env, make_full, free = full_disk
    config = make_station(tmp_path, model_file, db_url=url, after="move", settle_seconds=0.2)
    capture = tmp_path / "capture"
    processed = capture / "processed" / date.today().isoformat()
    daemon = DaemonProcess(tmp_path, config, extra_env=env)
    try:
        daemon.wait_ready()
        for i in range(2):
            write_image(capture / f"before-{i}.tif", seed=i)
        wait_for(lambda: db_count(db, IMAGES) == 2, 60, "two verdicts before the disk fills")
        make_full()
        held = [f"held-{i}.tif" for i in range(3)]
        for i, name in enumerate(held):
            write_image(capture / name, seed=10 + i)
        status = daemon.notify.wait_for(lambda m: m.startswith("STATUS=paused: "), 60, "STATUS=paused")
        assert "disk full" in status, status
        daemon.wait_log("database unavailable, pausing")
        assert db_count(db, IMAGES) == 2
        assert all((capture / name).is_file() for name in held), "a file moved before its outcome was committed"
        assert daemon.proc.poll() is None
        free()
        wait_for(lambda: db_count(db, IMAGES) == 5, 120, "the held files scored once space is free")
        daemon.wait_log("database available again; resuming")
        daemon.notify.wait_for(lambda m: m.startswith("STATUS=scored 5,"), 30, "STATUS without the pause")
        wait_for(lambda: all((processed / name).is_file() for name in held), 30, "the held files moved")
    finally:
        daemon.close()
    assert db_count(db, "SELECT COUNT(*) FROM verdicts") == 5
    assert db_count(db, "SELECT COUNT(*) FROM images WHERE moved_to IS NULL") == 0
    assert db_count(db, "SELECT COUNT(*) FROM rejections") == 0
    assert sorted(p.name for p in processed.iterdir()) == sorted(held + ["before-0.tif", "before-1.tif"])
