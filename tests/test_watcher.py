"""Which files are candidates and when they are complete: names, file types, settling, scans, events."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest

from harness import wait_for
from inspector.base.paths import display_path
from inspector.station.watcher import (EventHandler, Scanner, Tracker, build_observer, in_skipped_dir,
                               is_candidate_name, iter_capture_files, stat_candidate)

PATTERNS = ("*.tif", "*.tiff", "*.png", "*.dcm")


@pytest.mark.parametrize("name, expected", [
    ("e-0001.tif", True), ("E-0001.TIF", True), ("scan.Tiff", True), ("x.dcm", True), ("x.png", True),
    (".e-0001.tif", False), ("e-0001.tif.part", False), ("e-0001.tif.tmp", False), ("e-0001.tif~", False),
    ("e-0001.TMP", False), ("notes.txt", False), ("e-0001.tif.bak", False),
])
def test_candidate_names(name, expected):
    assert is_candidate_name(name, PATTERNS) is expected


def test_display_path_shows_undecodable_bytes_and_escapes_control_characters():
    assert display_path(os.fsdecode(b"cap/bad\xff.tif")) == "cap/bad\\xff.tif"
    assert display_path(b"cap/\xc3\xa9.tif") == "cap/\u00e9.tif"
    assert display_path("a\nb\rc\x1bd\u2028e.tif") == "a\\nb\\rc\\x1bd\\u2028e.tif"


def test_stat_candidate_never_opens_odd_files(tmp_path):
    root = tmp_path / "capture"
    root.mkdir()
    outside = tmp_path / "outside.tif"
    outside.write_bytes(b"x" * 10)
    inside = root / "inside.tif"
    inside.write_bytes(b"y" * 7)
    (root / "out-link.tif").symlink_to(outside)
    (root / "in-link.tif").symlink_to(inside)
    (root / "dangling.tif").symlink_to(root / "missing.tif")
    os.mkfifo(root / "pipe.tif")
    (root / "folder.tif").mkdir()
    r = str(root)
    assert stat_candidate(str(inside), r)[0].st_size == 7
    assert stat_candidate(str(root / "in-link.tif"), r)[0].st_size == 7
    assert stat_candidate(str(root / "out-link.tif"), r) == (None, "symlink pointing outside the capture folder")
    assert stat_candidate(str(root / "dangling.tif"), r) == (None, "dangling symlink")
    assert stat_candidate(str(root / "pipe.tif"), r) == (None, "not a regular file")
    assert stat_candidate(str(root / "folder.tif"), r) == (None, "not a regular file")
    assert stat_candidate(str(root / "gone.tif"), r) == (None, "gone")


def test_scan_is_recursive_but_skips_processed_quarantine_and_hidden(tmp_path):
    root = tmp_path / "capture"
    for rel in ["a.tif", "2024-05-01/b.TIF", "2024-05-01/deep/c.png", "processed/2024-05-01/d.tif",
                "quarantine/e.tif", ".hidden/f.tif", "g.tif.part", "notes.txt", "sub/processed/h.tif"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"1")
    (root / "link-dir").symlink_to(root / "2024-05-01")  # not followed: no second copy of b and c
    found = sorted(os.path.relpath(p, root) for p in iter_capture_files(str(root), PATTERNS))
    assert found == ["2024-05-01/b.TIF", "2024-05-01/deep/c.png", "a.tif", "sub/processed/h.tif"]
    assert in_skipped_dir(str(root / "processed/x/y.tif"), str(root))
    assert in_skipped_dir(str(root / "quarantine/y.tif"), str(root))
    assert not in_skipped_dir(str(root / "sub/processed/y.tif"), str(root))


def _old(path, seconds_ago: float = 3600) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_tracker_waits_for_settle_seconds(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(b"1" * 10)
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=2.0, capacity=10)
    assert tracker.note(str(path), closed=False, now=100.0)
    assert tracker.settle(now=101.0) == []
    with open(path, "ab") as fh:  # still being written: the clock starts again
        fh.write(b"2" * 10)
    assert tracker.settle(now=101.5) == []
    assert tracker.settle(now=103.0) == []
    ready = tracker.settle(now=103.6)
    assert [(r.path, r.size, r.ready_at) for r in ready] == [(str(path), 20, 103.6)]
    assert len(tracker) == 1 and tracker.is_tracked(str(path))  # claimed until released
    assert tracker.settle(now=200.0) == []
    tracker.release(str(path))
    assert len(tracker) == 0


def test_tracker_close_event_needs_one_more_unchanged_stat(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(b"1" * 10)
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=5.0, capacity=10)
    tracker.note(str(path), closed=True, now=10.0)
    assert tracker.settle(now=10.1) == []  # within the guard
    with open(path, "ab") as fh:  # the scanner reopened it: the close no longer counts
        fh.write(b"2")
    assert tracker.settle(now=10.4) == []
    assert tracker.settle(now=11.0) == []
    tracker.note(str(path), closed=True, now=12.0)
    assert [r.size for r in tracker.settle(now=12.3)] == [11]


def test_tracker_settles_an_old_file_on_its_own_clock_and_ignores_hidden_and_temporary_names(tmp_path):
    """A file whose mtime is long past (dropped while the daemon was down, or a file server's clock behind
    ours) settles like any other: settle_seconds from when the station first saw it (issue 25, case 4)."""
    old = tmp_path / "old.tif"
    old.write_bytes(b"1")
    _old(old)
    os.mkfifo(tmp_path / "pipe.tif")
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=2.0, capacity=10)
    tracker.note(str(old), closed=False, now=50.0)
    tracker.note(str(tmp_path / "pipe.tif"), closed=False, now=50.0)
    tracker.note(str(tmp_path / ".hidden.tif"), closed=True, now=50.0)
    tracker.note(str(tmp_path / "x.tif.part"), closed=True, now=50.0)
    assert tracker.settle(now=50.0) == [] and len(tracker) == 2  # its old mtime does not make it settled
    # the FIFO is handed on too, never opened, with its problem named: it gets an `unreadable` outcome
    assert sorted((r.path, r.problem) for r in tracker.settle(now=52.5)) == [
        (str(old), ""), (str(tmp_path / "pipe.tif"), "not a regular file")]


def test_an_old_mtime_never_makes_a_cut_short_read_final(tmp_path):
    """Issue 25, case 4: a file server's clock 10 minutes behind ours made a half-written file's mtime look old,
    and its first cut-short read final. Only the station's own sight of the file, unchanged, counts."""
    path = tmp_path / "scan.tif"
    path.write_bytes(b"half")
    ten_minutes_ago = time.time() - 600
    os.utime(path, (ten_minutes_ago, ten_minutes_ago))
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=1.0, capacity=10, incomplete_retry_seconds=30.0)
    tracker.note(str(path), closed=False, now=100.0)
    assert tracker.settle(now=100.5) == []
    (item,) = tracker.settle(now=101.0)
    assert not item.final
    tracker.hold(item)
    assert tracker.settle(now=120.0) == []  # seen unchanged for 20 s of our 30: still waiting for the writer
    (item,) = tracker.settle(now=130.5)
    assert item.final
    tracker.judge_by_mtime = True  # `watch --once` has no earlier sight: there the mtime decides
    tracker.release(item.path)
    tracker.note(str(path), closed=False, now=200.0)
    (item,) = tracker.settle(now=201.0)
    assert item.final


def test_tracker_holds_an_incomplete_file_until_it_grows_or_its_retry_time_passes(tmp_path):
    path = tmp_path / "scan.tif"
    path.write_bytes(b"half")
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=1.0, capacity=10, incomplete_retry_seconds=30.0)
    tracker.note(str(path), closed=False, now=100.0)
    (item,) = tracker.settle(now=101.5)
    tracker.hold(item)  # the worker read it as cut short
    assert tracker.incomplete() == 1 and len(tracker) == 1
    assert tracker.settle(now=110.0) == []  # unchanged, but not for 30 s yet: no outcome
    with open(path, "ab") as fh:  # the writer resumes
        fh.write(b" and the rest")
    assert tracker.settle(now=111.0) == [] and tracker.incomplete() == 0  # it grew: settling again
    (again,) = tracker.settle(now=112.5)
    assert (again.size, again.final) == (17, False)
    tracker.hold(again)  # still cut short: now it stays unchanged
    assert tracker.settle(now=140.0) == []
    (last,) = tracker.settle(now=142.6)  # unchanged for 30 s since it last grew (111): its `truncated` is final
    assert last.final


def test_tracker_capacity_is_back_pressure(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.tif"
        p.write_bytes(b"1")
        paths.append(str(p))
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=1.0, capacity=2)
    assert tracker.note(paths[0], False, now=0.0) and tracker.note(paths[1], False, now=0.0)
    assert tracker.note(paths[2], False, now=0.0) is False
    assert tracker.note(paths[0], True, now=0.0)  # a file already waiting is always updated
    assert not tracker.has_room()


def test_scanner_skips_known_files_and_waits_for_room(tmp_path):
    for i in range(5):
        p = tmp_path / f"{i}.tif"
        p.write_bytes(b"1")
        _old(p)
    known = {os.fsencode(tmp_path / "1.tif")}
    tracker = Tracker(str(tmp_path), PATTERNS, settle_seconds=1.0, capacity=2)
    scanner = Scanner(tracker, lambda raw, stamp: raw in known, rescan_seconds=60.0)
    scanner.step(now=0.0)
    assert sorted(os.path.basename(p) for p in tracker.pending) == ["0.tif", "2.tif"]
    assert scanner.active and scanner.passes == 0
    done = [os.path.basename(r.path) for r in tracker.settle(now=1.0)]
    scanner.step(now=1.1)  # still no room: both are claimed by the worker
    assert scanner.active and not tracker.pending
    for name in done:  # the worker commits them: from now on they are known
        known.add(os.fsencode(tmp_path / name))
        tracker.release(str(tmp_path / name))
    scanner.step(now=1.2)
    assert sorted(os.path.basename(p) for p in tracker.pending) == ["3.tif", "4.tif"]
    for r in tracker.settle(now=2.3):
        known.add(os.fsencode(r.path))
        tracker.release(r.path)
    scanner.step(now=2.4)
    assert not scanner.active and scanner.passes == 1
    scanner.step(now=30.0)  # next pass only after rescan_seconds
    assert not scanner.active
    scanner.step(now=63.0)
    assert scanner.passes == 2 and not tracker.pending  # every file has an outcome now


def test_handler_with_a_real_observer(tmp_path):
    events: queue.Queue = queue.Queue(maxsize=100)
    rescan = threading.Event()
    observer = build_observer(str(tmp_path), EventHandler(events, rescan), polling=False)
    seen: list[tuple[str, bool]] = []
    try:
        (tmp_path / "a.tif").write_bytes(b"12345")
        part = tmp_path / ".b.tif.part"
        part.write_bytes(b"1")
        part.rename(tmp_path / "b.tif")
        (tmp_path / "sub").mkdir()

        def got(item):
            while not events.empty():
                seen.append(events.get_nowait())
            return item in seen

        wait_for(lambda: got((str(tmp_path / "a.tif"), True)), 10, "close event for a.tif")
        wait_for(lambda: got((str(tmp_path / "b.tif"), True)), 10, "moved-in event for b.tif")
        wait_for(rescan.is_set, 10, "a new folder asks for a rescan")
    finally:
        observer.stop()
        observer.join(5)


def test_handler_full_queue_asks_for_rescan(tmp_path):
    from watchdog.events import FileModifiedEvent

    events: queue.Queue = queue.Queue(maxsize=1)
    rescan = threading.Event()
    handler = EventHandler(events, rescan)
    handler.dispatch(FileModifiedEvent(str(tmp_path / "a.tif")))
    assert not rescan.is_set()
    handler.dispatch(FileModifiedEvent(str(tmp_path / "b.tif")))  # waits 1 s, then gives up
    assert rescan.is_set()
    assert events.get_nowait() == (str(tmp_path / "a.tif"), False)
