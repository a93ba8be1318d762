"""The inspection daemon against RELIABILITY.md: real files, real watchdog observers, a real database, a real
tiny model, and `inspector watch` as a real subprocess for signals.

Every test that touches the database runs on SQLite and on PostgreSQL (the `station` fixture takes conftest's
parametrized `database_url`) and reads it back through that URL (daemon_helpers.db_rows). The few marked
`sqlite_only` say why next to the mark."""

from __future__ import annotations

import json
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cli_errors import error_of
from daemon_helpers import db_count, db_rows, in_process, make_model, write_config, write_image
from harness import running, wait_for
from image_files import (BAD_KINDS, DICOM_FIELD_MUTATIONS, make_bad_file, sample_image16,
                         write_dicom_mutated, write_tiff16)
from inspector.cli import cli
from inspector.base.configfile import load_config
from inspector.station.daemon import off_main_thread
from inspector.station.mover import unique_destination
from tests.store_rows import record_rejection, record_verdict

IMAGES = "SELECT COUNT(*) FROM images"
VERDICTS = "SELECT COUNT(*) FROM verdicts"
REJECTIONS = "SELECT COUNT(*) FROM rejections"


@pytest.fixture(scope="module")
def detector(model_file):
    from inspector.learn.infer import Detector

    return Detector.load(model_file, device="cpu", batch_size=4)


# conftest's database_url narrowed to its SQLite param, for the tests whose subject is SQLite itself (or that
# stop before the database is opened): each use says why
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def station(tmp_path, model_file, database_url):
    """A config in tmp_path (capture/, models/, var/) on the test's database (a SQLite file in tmp_path or a fresh
    PostgreSQL database: cfg.database.url) with watch keys overridden."""
    def make(**watch):
        config = write_config(tmp_path, database_url=database_url, **watch, model=model_file)
        return load_config(config)
    return make


def outcomes(db: str) -> int:
    return db_count(db, IMAGES) + db_count(db, REJECTIONS)


class CountingDetector:
    """The real detector, counting how many images went through the network."""

    def __init__(self, detector):
        self._detector = detector
        self.predicted = 0

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def score_prepared(self, prepared, paths=None, seconds=None):
        self.predicted += len(prepared)
        return self._detector.score_prepared(prepared, paths, seconds)


# ---- in-process: files, names, observers ---------------------------------------------------------

def test_slow_writer_gets_one_verdict_only_when_complete(tmp_path, station, detector):
    cfg = station(settle_seconds=1.0)
    data = Path(write_image(tmp_path / "source.tif", seed=1)).read_bytes()
    db = cfg.database.url
    with in_process(cfg, detector):
        chunk = len(data) // 10 + 1
        with open(tmp_path / "capture" / "slow.tif", "wb") as fh:
            for start in range(0, len(data), chunk):
                fh.write(data[start:start + chunk])
                fh.flush()
                assert outcomes(db) == 0, "an outcome appeared while the file was still being written"
                time.sleep(0.2)  # the scanner's pace: ~2 s for the whole file
        wait_for(lambda: db_count(db, IMAGES) == 1, 30, "the verdict for slow.tif")
    assert db_rows(db, "SELECT size, status FROM images") == [(len(data), "scored")]
    assert db_count(db, REJECTIONS) == 0 and db_count(db, VERDICTS) == 1


@sqlite_only  # CI time budget: a watcher test, the database only where its outcome is read
def test_temporary_names_are_never_read_and_the_final_name_is_scored(tmp_path, station, detector):
    cfg = station()
    capture = tmp_path / "capture"
    db = cfg.database.url
    temps = {".a.tif.part": "a.tif", "b.tif.tmp": "b.tif", "c.tif~": "c.tif", "d.TIF.PART": "d.tif"}
    with in_process(cfg, detector):
        for i, temp in enumerate(temps):
            write_image(capture / temp, seed=10 + i)
        write_image(capture / "sentinel.tif", seed=9)
        wait_for(lambda: db_count(db, IMAGES) == 1, 30, "the sentinel's verdict")
        for temp, final in temps.items():
            (capture / temp).rename(capture / final)
        wait_for(lambda: db_count(db, IMAGES) == 5, 30, "verdicts for the renamed files")
    names = sorted(os.path.basename(p) for (p,) in db_rows(db, "SELECT path FROM images"))
    assert names == ["a.tif", "b.tif", "c.tif", "d.tif", "sentinel.tif"]
    assert db_count(db, REJECTIONS) == 0


def _bad_name(kind: str) -> str:
    if "dicom" in kind:
        return f"{kind}.dcm"
    if kind in ("tiff_as_png", "huge_png", "png8", "png_rgb16", "truncated_png", "corrupt_png"):
        return f"{kind}.png"
    return f"{kind}.tif"


def test_bad_files_are_quarantined_and_the_daemon_keeps_going(tmp_path, station, detector):
    cfg = station(after="move")
    capture = tmp_path / "capture"
    db = cfg.database.url
    with in_process(cfg, detector) as daemon:
        for kind in BAD_KINDS:
            make_bad_file(capture / _bad_name(kind), kind)
        write_image(capture / "good.tif", seed=3)
        wait_for(lambda: db_count(db, REJECTIONS) == len(BAD_KINDS) and db_count(db, IMAGES) == 1, 60,
                 "an outcome for every bad file and the good one")
        assert daemon.worker.is_alive()
        wait_for(lambda: (capture / "processed" / date.today().isoformat() / "good.tif").exists(), 10,
                 "good.tif moved to processed/")
    reasons = {os.path.basename(p): r for p, r in db_rows(db, "SELECT path, reason FROM rejections")}
    assert reasons == {_bad_name(k): r for k, r in BAD_KINDS.items()}
    assert sorted(os.listdir(capture / "quarantine")) == sorted(_bad_name(k) for k in BAD_KINDS)
    assert sorted(os.listdir(capture)) == ["processed", "quarantine"]
    (moved,) = db_rows(db, "SELECT moved_to FROM images")
    assert moved[0].endswith(f"processed/{date.today().isoformat()}/good.tif")


class SpyStore:
    """The real store, noting where the file was when each outcome was committed."""

    def __init__(self, store):
        self._store = store
        self.events: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def record_outcomes(self, records, run_id=None):
        self.events.extend(("commit", os.path.exists(r.file.path_raw)) for r in records)
        return self._store.record_outcomes(records, run_id)

    def record_moved(self, path_raw, sha256, moved_to, *version):
        self.events.append(("moved", os.path.exists(path_raw), os.path.exists(moved_to)))
        return self._store.record_moved(path_raw, sha256, moved_to, *version)


def test_after_move_moves_only_after_the_commit_and_never_overwrites(tmp_path, station, detector):
    from inspector.store.store import open_store

    cfg = station(after="move")
    capture = tmp_path / "capture"
    processed = capture / "processed" / date.today().isoformat()
    processed.mkdir(parents=True)
    (processed / "e1.tif").write_bytes(b"an older file of the same name")
    store = SpyStore(open_store(cfg.database.url))
    try:
        with in_process(cfg, detector, store=store):
            write_image(capture / "e1.tif", seed=4)
            wait_for(lambda: len(store.events) == 2, 30, "the commit and the move")
    finally:
        store.close()
    # committed with the file in place; then its destination recorded before the rename (a crash
    # between the two leaves a record pointing where the restart will put the file)
    assert store.events == [("commit", True), ("moved", True, False)]
    assert not (capture / "e1.tif").exists()
    assert (processed / "e1.tif").read_bytes() == b"an older file of the same name"
    assert (processed / "e1-1.tif").stat().st_size > 1000
    assert db_rows(cfg.database.url, "SELECT moved_to FROM images")[0][0].endswith("e1-1.tif")


def test_a_move_cut_short_by_a_crash_is_finished_at_start(tmp_path, station, detector):
    """Outcome committed, then the process died before the rename: the restart moves the file."""
    from inspector.imaging.read import file_sha256
    from inspector.store.store import open_store

    cfg = station(after="move")
    capture = tmp_path / "capture"
    good, bad = write_image(capture / "e7.tif", seed=7), capture / "junk.tif"
    bad.write_bytes(b"not an image")
    store = open_store(cfg.database.url)
    try:
        for path, record in ((good, "verdict"), (bad, "rejection")):
            st = path.stat()
            raw, sha = os.fsencode(path.resolve()), file_sha256(path)
            if record == "verdict":
                record_verdict(store, raw, sha, st.st_size, st.st_mtime_ns, detector.sha256, 0.1, "normal", None,
                               0.5, "global", 0.0, 0.0, inode=st.st_ino, ctime_ns=st.st_ctime_ns)
            else:
                record_rejection(store, raw, sha, st.st_size, st.st_mtime_ns, "not_an_image", "text",
                                 inode=st.st_ino, ctime_ns=st.st_ctime_ns)
        counting = CountingDetector(detector)
        with in_process(cfg, counting, store=store):
            wait_for(lambda: not good.exists() and not bad.exists(), 30, "both moves finished")
    finally:
        store.close()
    moved = capture / "processed" / date.today().isoformat() / "e7.tif"
    assert moved.is_file() and (capture / "quarantine" / "junk.tif").is_file()
    assert db_rows(cfg.database.url, "SELECT moved_to FROM images") == [(str(moved.resolve()),)]
    assert counting.predicted == 0 and db_count(cfg.database.url, VERDICTS) == 1  # nothing scored twice


@contextlib.contextmanager
def held_write_lock(url: str):
    """Another session's long write lock: BEGIN IMMEDIATE on the SQLite file; on PostgreSQL a LOCK TABLE on the
    claims table, the daemon's first write for a new file."""
    if url.startswith("sqlite"):
        lock = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("LOCK TABLE claims IN EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


def test_locked_database_pauses_and_resumes_without_moving_files(tmp_path, station, detector):
    """A lock held past database.busy_timeout_seconds (SQLite's busy_timeout, PostgreSQL's lock_timeout) pauses
    the daemon, and says so, instead of waiting mute."""
    cfg = station(after="move")
    capture = tmp_path / "capture"
    db = cfg.database.url
    with in_process(cfg, detector) as daemon:
        with held_write_lock(db):
            write_image(capture / "held.tif", seed=5)
            wait_for(lambda: daemon.paused_reason is not None, 30, "the daemon to pause")
            assert daemon.status_line().startswith("paused: ")
            assert "locked" in daemon.paused_reason
            assert (capture / "held.tif").exists()
        wait_for(lambda: db_count(db, IMAGES) == 1, 60, "the verdict after the lock is gone")
        wait_for(lambda: daemon.paused_reason is None, 10, "the pause to end")
    assert not (capture / "held.tif").exists()


@pytest.mark.parametrize("after", ["keep", "move"])
def test_fifo_dangling_and_outward_symlinks_get_one_unreadable_outcome_without_being_opened(tmp_path, station,
                                                                                            detector, after):
    """Issue 12 case 6: they were never opened (good) but got no outcome at all; now each gets one `unreadable`."""
    cfg = station(after=after)
    capture = tmp_path / "capture"
    db = cfg.database.url
    outside = write_image(tmp_path / "outside.tif", seed=6)
    with in_process(cfg, detector):
        (capture / "link.tif").symlink_to(outside)
        (capture / "dangling.tif").symlink_to(tmp_path / "nowhere.tif")
        os.mkfifo(capture / "pipe.tif")  # opening it for reading would block the worker for ever
        (capture / "folder.tif").mkdir()
        (capture / "2024-05-01").mkdir()
        write_image(capture / "2024-05-01" / "nested.tif", seed=7)
        write_image(capture / "after.tif", seed=8)
        wait_for(lambda: db_count(db, IMAGES) == 2 and db_count(db, REJECTIONS) == 3, 30,
                 "verdicts for nested.tif and after.tif, rejections for the link, the dangling link and the FIFO")
    names = sorted(os.path.basename(p) for (p,) in db_rows(db, "SELECT path FROM images"))
    assert names == ["after.tif", "nested.tif"]
    rejected = {os.path.basename(p): (r, m) for p, r, m in db_rows(db, "SELECT path, reason, message FROM rejections")}
    assert {n: r for n, (r, _) in rejected.items()} == {"link.tif": "unreadable", "dangling.tif": "unreadable",
                                                        "pipe.tif": "unreadable"}
    assert rejected["link.tif"][1].startswith("symlink pointing outside the capture folder: inspector reads only")
    assert rejected["dangling.tif"][1].startswith("dangling symlink")
    assert rejected["pipe.tif"][1].startswith("not a regular file")
    listing = CliRunner().invoke(cli, ["rejections", "--config", cfg.source])
    assert listing.exit_code == 0 and all(name in listing.output for name in rejected), listing.output
    if after == "move":  # moved as entries: the link itself, never its target
        assert sorted(os.listdir(capture / "quarantine")) == ["dangling.tif", "link.tif", "pipe.tif"]
        assert (capture / "quarantine" / "link.tif").is_symlink() and outside.exists()
    with in_process(cfg, detector):  # a restart finds them known: still one outcome each
        write_image(capture / "sentinel.tif", seed=9)
        wait_for(lambda: db_count(db, IMAGES) == 3, 30, "the sentinel's verdict")
    assert db_count(db, REJECTIONS) == 3


def test_two_daemons_on_one_capture_folder_log_each_rejection_once_and_no_false_move_errors(tmp_path, station,
                                                                                          detector, caplog):
    """Two stations (separate state folders) on one folder logged every rejection twice and printed false
    "cannot move ... stays in place" errors: the rejection insert's answer was ignored."""
    import dataclasses

    cfg = station(after="move")
    other = dataclasses.replace(cfg, state=dataclasses.replace(cfg.state, dir=tmp_path / "var2"))
    capture = tmp_path / "capture"
    db = cfg.database.url
    kinds = ["text", "empty", "corrupt_deflate", "png8"]
    with in_process(cfg, detector), in_process(other, detector):
        for i, kind in enumerate(kinds):
            make_bad_file(capture / _bad_name(kind), kind)
            write_image(capture / f"good-{i}.tif", seed=40 + i)
        wait_for(lambda: db_count(db, REJECTIONS) == len(kinds) and db_count(db, IMAGES) == len(kinds), 60,
                 "one outcome per file")
        wait_for(lambda: len(os.listdir(capture / "quarantine")) == len(kinds), 10, "bad files quarantined")
        wait_for(lambda: not any(p.is_file() for p in capture.iterdir()), 10, "every file moved")
    rejected = [r for r in caplog.records if r.getMessage().startswith("rejected ")]
    assert sorted(r.getMessage().split()[2].rstrip(":") for r in rejected) == sorted(f"capture/{_bad_name(k)}" for k in kinds)
    assert "cannot move" not in caplog.text
    assert db_count(db, VERDICTS) == len(kinds)


def test_a_file_deleted_while_it_is_scored_gets_no_verdict_and_no_false_move_error(tmp_path, station, detector,
                                                                                   caplog):
    class DeletingDetector(CountingDetector):
        """The real detector; the operator deletes the scan while the network runs on it."""

        def score_prepared(self, prepared, paths=None, seconds=None):
            for path in list(capture.glob("doomed*.tif")):
                path.unlink()
            return super().score_prepared(prepared, paths, seconds)

    cfg = station(after="move")
    capture = tmp_path / "capture"
    db = cfg.database.url
    with in_process(cfg, DeletingDetector(detector)):
        write_image(capture / "doomed.tif", seed=60)
        wait_for(lambda: not (capture / "doomed.tif").exists(), 30, "the file deleted while it is scored")
        write_image(capture / "after.tif", seed=61)
        wait_for(lambda: db_count(db, IMAGES) == 1, 30, "the next file's verdict")
    assert [os.path.basename(p) for (p,) in db_rows(db, "SELECT path FROM images")] == ["after.tif"]
    assert "cannot move" not in caplog.text and db_count(db, REJECTIONS) == 0


def test_odd_names_round_trip(tmp_path, station, detector):
    cfg = station()
    capture = os.fsencode(tmp_path / "capture")
    db = cfg.database.url
    names = [b"with  spaces .tif", "\u00e9lectrode \u00fc-\u4e2d.tif".encode(), b"bad\xff\xfe name.tif",
             b"n" * 251 + b".tif"]
    assert len(names[-1]) == 255
    with in_process(cfg, detector):
        for i, name in enumerate(names):
            write_image(os.path.join(capture, name), seed=20 + i)
        wait_for(lambda: db_count(db, IMAGES) == 4, 30, "verdicts for the four odd names")
    raw = {bytes(r) for (r,) in db_rows(db, "SELECT path_raw FROM images")}
    assert raw == {os.path.join(capture, n) for n in names}
    shown = {os.path.basename(p) for (p,) in db_rows(db, "SELECT path FROM images")}
    assert "bad\\xff\\xfe name.tif" in shown


@pytest.mark.slow
def test_burst_of_hundreds_every_file_accounted_for(tmp_path, station, detector):
    cfg = station(queue_size=32, rescan_seconds=1.0)  # far more files than room: back-pressure and rescans
    capture = tmp_path / "capture"
    db = cfg.database.url
    n = 300
    with in_process(cfg, detector) as daemon:
        for i in range(n):
            write_image(capture / f"burst-{i:04d}.tif", seed=100 + i)
        wait_for(lambda: db_count(db, IMAGES) == n, 180, f"all {n} verdicts")
        assert len(daemon.tracker) <= 32
    assert db_count(db, "SELECT COUNT(DISTINCT path_raw) FROM images") == n
    assert db_count(db, VERDICTS) == n and db_count(db, REJECTIONS) == 0


def test_same_content_under_two_names_costs_one_inference(tmp_path, station, detector):
    cfg = station()
    capture = tmp_path / "capture"
    db = cfg.database.url
    write_image(capture / "first.tif", seed=30)
    shutil.copy(capture / "first.tif", capture / "second.tif")
    counting = CountingDetector(detector)
    with in_process(cfg, counting):
        wait_for(lambda: db_count(db, IMAGES) == 2, 30, "both names recorded")
        shutil.copy(capture / "first.tif", capture / "third.tif")  # later: found through the database
        wait_for(lambda: db_count(db, IMAGES) == 3, 30, "the third name recorded")
    assert db_count(db, VERDICTS) == 1
    assert counting.predicted == 1
    statuses = sorted(s for (s,) in db_rows(db, "SELECT status FROM images"))
    assert statuses == ["duplicate", "duplicate", "scored"]
    assert db_count(db, "SELECT COUNT(DISTINCT verdict_id) FROM images") == 1


class AbnormalDetector(CountingDetector):
    """The real detector whose every verdict is abnormal (a random tiny model rarely says so)."""

    def score_prepared(self, prepared, paths=None, seconds=None):
        import dataclasses

        return [dataclasses.replace(p, verdict="abnormal") for p in super().score_prepared(prepared, paths, seconds)]


def test_abnormal_verdicts_get_a_heat_map_after_the_commit(tmp_path, station, detector):
    cfg = station()
    db = cfg.database.url
    for i in range(3):
        write_image(tmp_path / "capture" / f"e{i}.tif", seed=40 + i)
    with in_process(cfg, AbnormalDetector(detector)):
        wait_for(lambda: db_count(db, "SELECT COUNT(*) FROM verdicts WHERE heatmap_path IS NOT NULL") == 3,
                 60, "three heat maps")
    rows = db_rows(db, "SELECT sha256, verdict, heatmap_path FROM verdicts")
    for sha, verdict, heatmap in rows:
        assert verdict == "abnormal"
        assert Path(heatmap).is_file() and sha in Path(heatmap).name
        assert Path(heatmap).is_relative_to(tmp_path / "var" / "heatmaps")


@sqlite_only  # CI time budget: a watcher test, the database only where its outcome is read
def test_polling_observer_mode(tmp_path, station, detector):
    from watchdog.observers.polling import PollingObserver

    cfg = station(polling=True, settle_seconds=0.5)
    db = cfg.database.url
    with in_process(cfg, detector, poll_seconds=0.2) as daemon:
        assert isinstance(daemon.observer, PollingObserver)
        write_image(tmp_path / "capture" / "polled.tif", seed=40)
        wait_for(lambda: db_count(db, IMAGES) == 1, 30, "the verdict found by polling")


@sqlite_only  # CI time budget: a watcher test, the database only where its outcome is read
def test_dead_observer_is_rebuilt(tmp_path, station, detector, caplog):
    cfg = station()
    db = cfg.database.url
    with in_process(cfg, detector) as daemon:
        old = daemon.observer
        old.stop()
        wait_for(lambda: daemon.observer is not old and daemon.observer.is_alive(), 10, "a new observer")
        write_image(tmp_path / "capture" / "after-rebuild.tif", seed=41)
        wait_for(lambda: db_count(db, IMAGES) == 1, 30, "the verdict seen by the new observer")
    assert "the file observer stopped; rebuilding the observer" in caplog.text


# ---- the command: --once, start-up errors, pid file ----------------------------------------------

def test_watch_once_scores_files_dropped_while_stopped(tmp_path, station):
    cfg = station()
    capture = tmp_path / "capture"
    for i in range(3):
        write_image(capture / f"waiting-{i}.tif", seed=50 + i)
        old = time.time() - 3600
        os.utime(capture / f"waiting-{i}.tif", (old, old))
    make_bad_file(capture / "empty.tif", "empty")
    # empty for an hour: not_an_image (a fresh empty file is incomplete: --once leaves it for a later run)
    os.utime(capture / "empty.tif", (old, old))
    result = CliRunner().invoke(cli, ["watch", "--once", "--config", cfg.source])
    assert result.exit_code == 0, result.output
    db = cfg.database.url
    assert db_count(db, IMAGES) == 3 and db_count(db, REJECTIONS) == 1
    assert not (tmp_path / "var" / "inspector.pid").exists()
    again = CliRunner().invoke(cli, ["watch", "--once", "--config", cfg.source])
    assert again.exit_code == 0
    assert db_count(db, IMAGES) == 3 and db_count(db, REJECTIONS) == 1


@sqlite_only  # refused before the database is opened: nothing database-specific to run twice
def test_missing_capture_dir_exits_1_with_one_error_line(tmp_path, station):
    cfg = station()
    shutil.rmtree(tmp_path / "capture")
    proc = subprocess.run([sys.executable, "-m", "inspector", "watch", "--once", "--config", cfg.source],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Error: watch.capture_dir in {cfg.source}: folder {tmp_path / 'capture'} "
                                   "does not exist; create it or change the key")


@sqlite_only  # the database.url case is a SQLite file inside the capture folder; both are refused before it is opened
@pytest.mark.parametrize("key,new", [("state.dir", 'dir = "capture/var"'),
                                     ("database.url", 'url = "sqlite:///capture/db/inspector.db"')])
def test_state_or_database_inside_the_capture_folder_is_refused(tmp_path, station, database_url, key, new):
    """The daemon would score its own heat-map PNGs (or database files) as scans: refused at start, one line."""
    cfg = station()
    old = 'dir = "var"' if key == "state.dir" else f'url = "{database_url}"'
    text = Path(cfg.source).read_text()
    assert old in text
    Path(cfg.source).write_text(text.replace(old, new))
    proc = subprocess.run([sys.executable, "-m", "inspector", "watch", "--once", "--config", cfg.source],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    (error,) = proc.stderr.strip().splitlines()
    assert error.startswith(f"Error: {key} in {cfg.source}: ") and "lies inside watch.capture_dir" in error
    assert not (tmp_path / "capture" / "var").exists() and not (tmp_path / "capture" / "db").exists()


@sqlite_only  # the model is loaded before the database is opened: nothing database-specific to run twice
def test_missing_model_says_what_to_do(tmp_path, station):
    cfg = station()
    model = tmp_path / "models" / "detector.safetensors"
    model.unlink()
    result = CliRunner().invoke(cli, ["watch", "--once", "--config", cfg.source])
    assert result.exit_code == 1
    assert error_of(result) == (f"no model at {model}: train one with `inspector train` or write an "
                                     "untrained one with `inspector model init` (or set model.path)")


@sqlite_only  # the model is loaded before the database is opened: nothing database-specific to run twice
def test_damaged_model_says_what_to_do(tmp_path, station):
    cfg = station()
    model = tmp_path / "models" / "detector.safetensors"
    model.write_bytes(model.read_bytes()[:5000])
    result = CliRunner().invoke(cli, ["watch", "--once", "--config", cfg.source])
    assert result.exit_code == 1
    assert error_of(result).startswith(f"model file {model}")
    assert error_of(result).endswith("(train one with `inspector train` or write an untrained one "
                                          "with `inspector model init`)")


def test_off_main_thread_returns_raises_and_leaves_the_main_thread():
    import threading

    from inspector.base.errors import ModelError

    assert off_main_thread(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (5, "inspector-load")

    def broken() -> None:
        raise ModelError("no model at x")

    with pytest.raises(ModelError, match="no model at x"):
        off_main_thread(broken)


def test_unique_destination_never_overwrites(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"1")
    (tmp_path / "a-1.tif").write_bytes(b"2")
    assert unique_destination(str(tmp_path), "a.tif") == str(tmp_path / "a-2.tif")
    assert unique_destination(str(tmp_path), "b.tif") == str(tmp_path / "b.tif")
    long = "x" * 251 + ".tif"
    (tmp_path / long).write_bytes(b"3")
    dest = os.path.basename(unique_destination(str(tmp_path), long))
    assert len(os.fsencode(dest)) <= 255 and dest.endswith("-1.tif")


# ---- the daemon as a real process: signals, restarts, notify --------------------------------------

def _drop(capture: Path, names: list[str], seed0: int) -> None:
    for i, name in enumerate(names):
        write_image(capture / name, seed=seed0 + i)


@pytest.mark.slow
def test_sigkill_then_restart_gives_exactly_one_verdict_per_image(tmp_path, station):
    cfg = station(after="move", settle_seconds=0.3)
    capture = tmp_path / "capture"
    db = cfg.database.url
    names = [f"k-{i:02d}.tif" for i in range(12)]
    with running(tmp_path, Path(cfg.source)) as daemon:
        _drop(capture, names, 60)
        wait_for(lambda: db_count(db, VERDICTS) >= 3, 60, "a few commits before the kill")
        daemon.proc.kill()
        daemon.wait_exit()
    with running(tmp_path, Path(cfg.source)):
        wait_for(lambda: db_count(db, IMAGES) == len(names), 60, "every image after the restart")
    assert db_count(db, VERDICTS) == len(names)
    assert db_rows(db, "SELECT sha256 FROM images GROUP BY sha256 HAVING COUNT(*) > 1") == []
    on_disk = [p.name for p in capture.rglob("k-*.tif")]
    assert sorted(on_disk) == names  # never deleted: each one in capture/ or processed/


@pytest.mark.slow
@sqlite_only  # CI time budget (the file's longest test): a signal test; rows left by a kill mid-burst and a restart
#               are checked on both databases by test_sigkill_then_restart_gives_exactly_one_verdict_per_image
def test_sigterm_mid_burst_exits_0_with_complete_rows(tmp_path, station):
    cfg = station(settle_seconds=0.3)
    capture = tmp_path / "capture"
    db = cfg.database.url
    names = [f"t-{i:02d}.tif" for i in range(24)]
    with running(tmp_path, Path(cfg.source)) as daemon:
        _drop(capture, names, 80)
        wait_for(lambda: db_count(db, VERDICTS) >= 2, 60, "the burst under way")
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        daemon.notify.wait_for(lambda m: m == "STOPPING=1", 5, "STOPPING=1")
        assert "stopped: scored" in daemon.log()
    committed = db_count(db, IMAGES)
    assert db_count(db, "SELECT COUNT(*) FROM images WHERE verdict_id IS NULL") == 0
    assert db_count(db, "SELECT COUNT(*) FROM images i JOIN verdicts v ON v.id = i.verdict_id") == committed
    assert not (tmp_path / "var" / "inspector.pid").exists()
    proc = subprocess.run([sys.executable, "-m", "inspector", "watch", "--once", "--config", cfg.source],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert db_count(db, IMAGES) == len(names)


@pytest.mark.slow
def test_sighup_swaps_a_good_model_and_refuses_a_damaged_one(tmp_path, station):
    cfg = station(settle_seconds=0.3)
    capture = tmp_path / "capture"
    db = cfg.database.url
    model = tmp_path / "models" / "detector.safetensors"
    import hashlib
    old_sha = hashlib.sha256(model.read_bytes()).hexdigest()

    def model_of(name: str) -> str:
        rows = db_rows(db, "SELECT v.model_sha256 FROM images i JOIN verdicts v ON v.id = i.verdict_id "
                           "WHERE i.path LIKE :like", like=f"%{name}")
        return rows[0][0] if rows else ""

    with running(tmp_path, Path(cfg.source), extra_env={"WATCHDOG_USEC": "400000"}) as daemon:
        assert (tmp_path / "var" / "inspector.pid").read_text().strip() == str(daemon.proc.pid)
        daemon.notify.wait_for(lambda m: m == "WATCHDOG=1", 10, "WATCHDOG=1")
        write_image(capture / "one.tif", seed=200)
        wait_for(lambda: model_of("one.tif"), 30, "the first verdict")
        assert model_of("one.tif") == old_sha
        daemon.notify.wait_for(lambda m: m.startswith("STATUS=scored 1,"), 10, "STATUS after one verdict")

        new_sha = make_model(tmp_path / "models" / "candidate.safetensors", seed=1)
        os.replace(tmp_path / "models" / "candidate.safetensors", model)
        daemon.send(signal.SIGHUP)
        daemon.wait_log(f"model reloaded: {old_sha[:12]} -> {new_sha[:12]}")
        write_image(capture / "two.tif", seed=201)
        wait_for(lambda: model_of("two.tif"), 30, "the verdict after the swap")
        assert model_of("two.tif") == new_sha

        good = model.read_bytes()
        model.write_bytes(good[: len(good) // 2])  # truncated
        daemon.send(signal.SIGHUP)
        daemon.wait_log(f"failed, still serving {new_sha[:12]}")
        tampered = bytearray(good)
        tampered[len(good) // 2] ^= 0xFF  # one flipped byte in the weights
        model.write_bytes(bytes(tampered))
        daemon.send(signal.SIGHUP)
        wait_for(lambda: daemon.log().count(f"failed, still serving {new_sha[:12]}") == 2, 30,
                 "the tampered model refused")
        write_image(capture / "three.tif", seed=202)
        wait_for(lambda: model_of("three.tif"), 30, "the verdict after the refused reloads")
        assert model_of("three.tif") == new_sha
        assert "ERROR model reload from" in daemon.log()
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        daemon.notify.wait_for(lambda m: m == "STOPPING=1", 5, "STOPPING=1")
    assert db_count(db, "SELECT COUNT(*) FROM models") == 2


# ---- one bad file never holds back its batch -----------------------------------------------------

@sqlite_only  # CI time budget: a decoding test (bad DICOM headers); rejections beside verdicts in one batch are
#               checked on both databases by the tests on bad files, --once and a batch the network fails on
def test_malformed_dicom_headers_never_hold_back_good_scans(tmp_path, station):
    """DICOMs with every kind of bad header field (text, several values, huge, zero, negative numbers,
    odd photometric), batched with good TIFFs: a rejection for each of them, verdicts for the good ones.
    Before, a Rescale Slope of "abc" dropped its whole batch at every rescan."""
    cfg = station()
    capture = tmp_path / "capture"
    for i, (keyword, value) in enumerate(DICOM_FIELD_MUTATIONS):
        write_dicom_mutated(capture / f"bad-{i:02d}-{keyword}.dcm", keyword, value, seed=i)
    for i in range(6):
        write_image(capture / f"good-{i}.tif", seed=70 + i)
    for path in capture.iterdir():
        os.utime(path, (time.time() - 3600,) * 2)
    proc = subprocess.run([sys.executable, "-m", "inspector", "--config", cfg.source, "watch", "--once"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    db = cfg.database.url
    assert sorted(os.path.basename(p) for (p,) in db_rows(db, "SELECT path FROM images")) == \
        [f"good-{i}.tif" for i in range(6)]
    rejected = {os.path.basename(p): r for p, r in db_rows(db, "SELECT path, reason FROM rejections")}
    assert sorted(rejected) == sorted(p.name for p in capture.glob("bad-*.dcm"))
    assert set(rejected.values()) <= {"corrupt", "too_large", "wrong_dtype", "not_grayscale", "not_an_image"}
    assert "RescaleSlope is 'abc'" in proc.stderr and "unexpected" not in proc.stderr


class BombDetector:
    """The real detector, except that an image whose first pixel is 12345 makes predict raise."""

    def __init__(self, detector):
        self._detector = detector

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def prepare(self, img16):
        prepared = self._detector.prepare(img16)
        prepared.bomb = int(img16[0, 0]) == 12345  # this file makes the network's batch fail
        return prepared

    def score_prepared(self, prepared, paths=None, seconds=None):
        if any(p.bomb for p in prepared):
            raise RuntimeError("boom")
        return self._detector.score_prepared(prepared, paths, seconds)


def test_a_file_that_breaks_its_batch_is_isolated(tmp_path, station, detector, caplog):
    cfg = station()
    capture = tmp_path / "staging"
    capture.mkdir()
    bomb = sample_image16(100, 60, seed=5)
    bomb[0, 0] = 12345
    write_tiff16(str(capture / "bomb.tif"), bomb)
    for i in range(3):
        write_image(capture / f"good-{i}.tif", seed=80 + i)
    db = cfg.database.url
    with in_process(cfg, BombDetector(detector)):
        for path in sorted(capture.iterdir()):  # all four arrive together
            os.replace(path, tmp_path / "capture" / path.name)
        wait_for(lambda: db_count(db, IMAGES) == 3, 30, "verdicts for the three good files")
    assert "boom" in caplog.text
    assert db_count(db, IMAGES) == 3 and (tmp_path / "capture" / "bomb.tif").exists()


def test_a_batch_the_network_fails_on_is_scored_file_by_file(tmp_path, station, detector, caplog):
    """Four prepared files in one batch, one of which breaks the network: the other three still commit."""
    from inspector.station.daemon import Daemon
    from inspector.store.store import open_store
    from inspector.station.watcher import ReadyFile, probe

    cfg = station()
    capture = tmp_path / "capture"
    bomb = sample_image16(100, 60, seed=5)
    bomb[0, 0] = 12345
    write_tiff16(str(capture / "bomb.tif"), bomb)
    for i in range(3):
        write_image(capture / f"good-{i}.tif", seed=80 + i)
    with open_store(cfg.database.url) as store:
        daemon = Daemon(cfg, BombDetector(detector), store)
        ready = [ReadyFile(str(p), probe(str(p), daemon.root)[0], time.monotonic()) for p in sorted(capture.iterdir())]
        jobs = [daemon.intake.prepare(item, daemon.detector) for item in ready]
        assert all(job is not None and job.prepared is not None for job in jobs)
        daemon.scoring.score_isolated(jobs)
    assert "scoring them one by one" in caplog.text
    assert sorted(os.path.basename(p) for (p,) in db_rows(cfg.database.url, "SELECT path FROM images")) == \
        ["good-0.tif", "good-1.tif", "good-2.tif"]


@sqlite_only  # CI time budget: a log test (the escaped name is computed before it is stored); stored odd names
#               are checked on both databases by test_odd_names_round_trip
def test_a_newline_in_a_file_name_cannot_forge_a_log_line(tmp_path, station):
    """The name is escaped in the log, the database's readable path and `inspector verdicts`."""
    cfg = station()
    evil = "evil\n2026-01-01 00:00:00,000 INFO verdict normal p=0.0000 FORGED.tif\r.tif"
    write_image(tmp_path / "capture" / evil, seed=90)
    os.utime(tmp_path / "capture" / evil, (time.time() - 3600,) * 2)
    proc = subprocess.run([sys.executable, "-m", "inspector", "--config", cfg.source, "watch", "--once"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert not any(x.startswith("2026-01-01") or x.startswith("\r") for x in lines)  # nothing forged
    named = [x for x in lines if "FORGED" in x]
    assert named and all("evil\\n2026-01-01" in x and "\\r.tif" in x for x in named)
    assert any(" INFO verdict " in x for x in named)
    (shown,) = db_rows(cfg.database.url, "SELECT path FROM images")
    assert "\n" not in shown[0] and "\r" not in shown[0]
    listing = CliRunner().invoke(cli, ["verdicts", "--config", cfg.source])
    assert sum("FORGED" in x for x in listing.output.splitlines()) == 1


def test_moves_never_follow_a_symlinked_processed_or_quarantine_folder(tmp_path, station, detector, caplog):
    """processed/ and quarantine/ made symlinks to folders elsewhere: nothing leaves the capture folder."""
    cfg = station(after="move")
    capture = tmp_path / "capture"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "p").mkdir(parents=True)
    (elsewhere / "q").mkdir()
    os.symlink(elsewhere / "p", capture / "processed")
    os.symlink(elsewhere / "q", capture / "quarantine")
    db = cfg.database.url
    with in_process(cfg, detector) as daemon:
        write_image(capture / "good.tif", seed=91)
        make_bad_file(capture / "bad.tif", "empty")
        wait_for(lambda: db_count(db, IMAGES) == 1 and db_count(db, REJECTIONS) == 1, 30, "both outcomes")
        wait_for(lambda: caplog.text.count("is a symlink") >= 2, 10, "both refusals logged")
        assert daemon.status_line().startswith("degraded: processed/ is not a real folder inside the capture folder")
        assert "quarantine/ is not a real folder" in daemon.status_line()
    status = CliRunner().invoke(cli, ["status", "--config", cfg.source])
    assert status.exit_code == 0
    assert f"degraded       {capture / 'processed'} is a symlink: files stay in the capture folder" in status.output
    assert (capture / "good.tif").exists() and (capture / "bad.tif").exists()
    assert list((elsewhere / "p").rglob("*")) == [] and list((elsewhere / "q").rglob("*")) == []
    assert db_rows(db, "SELECT moved_to FROM images") == [(None,)]


@sqlite_only  # CI time budget: a watcher test, the database only where its outcome is read
def test_a_capture_folder_deleted_and_re_created_is_watched_again(tmp_path, station, detector, caplog):
    """The observer on the dead folder saw nothing; now the new folder is noticed within seconds, not at the rescan."""
    cfg = station()  # rescan every 600 s: only noticing the new folder can find the file in time
    capture = tmp_path / "capture"
    db = cfg.database.url
    with in_process(cfg, detector) as daemon:
        shutil.rmtree(capture)
        wait_for(lambda: "capture folder missing since" in daemon.status_line(), 10, "the folder's absence noticed")
        capture.mkdir()
        wait_for(lambda: "re-created" in daemon.status_line(), 10, "the new folder noticed")
        write_image(capture / "after.tif", seed=95)
        wait_for(lambda: db_count(db, IMAGES) == 1, 15, "a verdict for a file in the re-created folder")
    assert "the capture folder" in caplog.text and "was re-created" in caplog.text


def test_a_burst_on_postgresql_gets_one_outcome_per_file_in_batched_commits(tmp_path, pg_server):
    """The daemon against a real PostgreSQL server: batches committed in one transaction (each row in a
    savepoint there), duplicates recorded once, a bad file quarantined, a second pass adds nothing."""
    url = pg_server.fresh_database()
    config = write_config(tmp_path, database_url=url)
    make_model(tmp_path / "models" / "detector.safetensors")
    capture = tmp_path / "capture"
    for i in range(9):
        write_image(capture / f"scan-{i}.tif", seed=300 + i)
    shutil.copy(capture / "scan-0.tif", capture / "scan-0-copy.tif")
    make_bad_file(capture / "broken.tif", "text")
    hour_ago = time.time() - 3600
    for path in capture.iterdir():
        os.utime(path, (hour_ago, hour_ago))
    for _ in range(2):  # the second pass finds everything known
        proc = subprocess.run([sys.executable, "-m", "inspector", "--config", str(config), "watch", "--once"],
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
    counts = {t: db_count(url, f"SELECT COUNT(*) FROM {t}") for t in ("images", "verdicts", "rejections")}
    statuses = sorted(s for (s,) in db_rows(url, "SELECT status FROM images"))
    assert counts == {"images": 10, "verdicts": 9, "rejections": 1}
    assert statuses.count("duplicate") == 1 and statuses.count("scored") == 9
    listing = subprocess.run([sys.executable, "-m", "inspector", "--config", str(config), "verdicts", "--format",
                              "json"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)) == 10


def test_a_hard_link_move_cut_short_is_finished_without_a_second_copy(tmp_path, station):
    """On NFS the no-replace move is a hard link into processed/ and then the source unlinked: a daemon killed
    between the two leaves the file under both names. The next run sees the capture name as the version whose
    outcome says where it went, and only unlinks it (no second name, no new outcome)."""
    cfg = station(after="move")
    capture = tmp_path / "capture"
    write_image(capture / "scan.tif", seed=7)
    old = time.time() - 3600
    os.utime(capture / "scan.tif", (old, old))
    assert CliRunner().invoke(cli, ["watch", "--once", "--config", cfg.source]).exit_code == 0
    (moved,) = [p for p in (capture / "processed").rglob("*") if p.is_file()]
    os.link(moved, capture / "scan.tif")  # the state a kill between link and unlink leaves
    result = CliRunner().invoke(cli, ["watch", "--once", "--config", cfg.source])
    assert result.exit_code == 0, result.output
    assert not (capture / "scan.tif").exists()
    assert [p for p in capture.rglob("*") if p.is_file()] == [moved] and moved.stat().st_nlink == 1
    db = cfg.database.url
    assert db_count(db, IMAGES) == 1 and db_count(db, REJECTIONS) == 0
    assert db_rows(db, "SELECT moved_to FROM images") == [(str(moved.resolve()),)]
