"""Which files in the capture folder are candidates, and when each one is complete enough to score."""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from inspector.base.paths import display_path

log = logging.getLogger("inspector.watcher")

# Folders inside capture_dir that hold finished files; never watched, never scanned.
SKIP_DIRS = ("processed", "quarantine")
TEMP_SUFFIXES = (".part", ".tmp", "~")
# Files seen at once per scan step, so one tick never walks a huge folder in one go.
SCAN_STEP = 500


def is_candidate_name(name: str, patterns: tuple[str, ...]) -> bool:
    """Hidden and temporary names are skipped (their final name is scored after the rename)."""
    lower = name.lower()
    if lower.startswith(".") or lower.endswith(TEMP_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(lower, p.lower()) for p in patterns)


def stat_candidate(path: str, root: str) -> tuple[os.stat_result | None, str]:
    """stat of a regular file to score, or (None, why) without ever opening it (FIFOs, devices, links out)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None, "gone"
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        try:
            target_st = os.stat(target)
        except OSError:
            return None, "dangling symlink"
        if os.path.commonpath([target, root]) != root:
            return None, "symlink pointing outside the capture folder"
        st = target_st
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    return st, ""


class FileStamp(NamedTuple):
    """What stat says of one version of a file: a change in any field is a new version."""
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStamp":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def probe(path: str, root: str) -> tuple[FileStamp, str] | None:
    """(stamp, problem) of a candidate, None when it is gone; never opens it.

    A regular file (or a symlink to one inside the capture folder) has problem "" and the stamp of
    its content. A FIFO, device, dangling or outward symlink has the problem in words and the stamp
    of the entry itself (lstat): it gets an `unreadable` outcome without being opened.
    """
    st, why = stat_candidate(path, root)
    if st is not None:
        return FileStamp.of(st), ""
    if why == "gone":
        return None
    try:
        return FileStamp.of(os.lstat(path)), why
    except OSError:
        return None


def in_skipped_dir(path: str, root: str) -> bool:
    """True for files under capture_dir/processed and capture_dir/quarantine (and hidden folders)."""
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    return rel.startswith("..") or parts[0] in SKIP_DIRS or any(p.startswith(".") for p in parts[:-1])


def iter_capture_files(root: str, patterns: tuple[str, ...]) -> Iterator[str]:
    """Every candidate file under root, recursively, without following folder symlinks."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
        except OSError as exc:
            log.warning("cannot list %s: %s", display_path(folder), exc.strerror)
            continue
        for entry in sorted(found, key=lambda e: e.name):
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if not entry.name.startswith(".") and not (folder == root and entry.name in SKIP_DIRS):
                    stack.append(entry.path)
            elif is_candidate_name(entry.name, patterns):
                yield entry.path


class EventHandler(FileSystemEventHandler):
    """Only enqueues (path, closed); all judging happens on the scanner thread."""

    def __init__(self, events: queue.Queue, rescan: threading.Event):
        self.events = events
        self.rescan = rescan

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            self.rescan.set()  # a folder moved in brings files without events of their own
            return
        if event.is_directory or event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        if isinstance(event, FileMovedEvent):
            item = (os.fsdecode(event.dest_path), True)
        else:
            item = (os.fsdecode(event.src_path), isinstance(event, FileClosedEvent))
        try:
            self.events.put(item, timeout=1.0)
        except queue.Full:
            self.rescan.set()  # dropped: the rescan finds the file


def build_observer(root: str, handler: EventHandler, polling: bool, poll_seconds: float = 1.0) -> BaseObserver:
    """inotify (close/move events) on local disks; polling where no events come (network shares)."""
    observer = PollingObserver(timeout=poll_seconds) if polling else Observer()
    observer.schedule(handler, root, recursive=True)
    observer.daemon = True
    observer.start()
    return observer


@dataclass
class ReadyFile:
    """A file judged complete: its stamp then, since when it was unchanged and when it was judged ready.

    `problem` names why it cannot be opened (it gets `unreadable`); `final` is set when the station has seen
    the file unchanged for watch.incomplete_retry_seconds while holding it as incomplete: a `truncated` (or
    empty) read of it is then final, not provisional.
    """
    path: str
    stamp: FileStamp
    ready_at: float
    stable_since: float = 0.0
    problem: str = ""
    final: bool = False

    @property
    def size(self) -> int:
        return self.stamp.size

    @property
    def mtime_ns(self) -> int:
        return self.stamp.mtime_ns


@dataclass
class _Entry:
    stamp: FileStamp
    stable_since: float
    problem: str = ""
    closed_at: float | None = None
    incomplete: bool = False  # read as cut short: ready again when it changes, or final after the retry time


class Tracker:
    """Files waiting to settle plus files handed to the worker; together at most `capacity` (back-pressure).

    Settling and the retry time run on this station's monotonic clock, from when it first saw the file's
    current stamp: a file server's clock may differ from ours by minutes, so a file's mtime says nothing
    about how long ago, by our clock, it last changed. Only `judge_by_mtime` (`watch --once`, which has
    no earlier sight of the file) lets an mtime older than the retry time make a cut-short read final.
    """

    def __init__(self, root: str, patterns: tuple[str, ...], settle_seconds: float, capacity: int,
                 incomplete_retry_seconds: float = 300.0):
        self.root = root
        self.patterns = patterns
        self.settle_seconds = settle_seconds
        self.incomplete_retry_seconds = incomplete_retry_seconds
        # After a close event the file is stat-ed once more this much later: a scanner may reopen it.
        self.close_guard_seconds = min(settle_seconds, 0.25)
        self.capacity = capacity
        self.judge_by_mtime = False
        self.pending: dict[str, _Entry] = {}
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self.pending) + len(self._claimed)

    def has_room(self) -> bool:
        return len(self) < self.capacity

    def is_tracked(self, path: str) -> bool:
        with self._lock:
            return path in self.pending or path in self._claimed

    def incomplete(self) -> int:
        """Files read as cut short, waiting to grow (or for their retry time to pass)."""
        return sum(entry.incomplete for entry in list(self.pending.values()))

    def release(self, path: str) -> None:
        """The worker is done with a file (outcome committed, or dropped)."""
        with self._lock:
            self._claimed.discard(path)

    def hold(self, item: ReadyFile) -> None:
        """The worker read `item` as incomplete: wait for it to change, or to stay as it is long enough."""
        with self._lock:
            self._claimed.discard(item.path)
            self.pending[item.path] = _Entry(item.stamp, item.stable_since, item.problem, incomplete=True)

    def note(self, path: str, closed: bool, now: float | None = None) -> bool:
        """Record an event or a scan hit; False when the file is no candidate or there is no room."""
        now = time.monotonic() if now is None else now
        if not is_candidate_name(os.path.basename(path), self.patterns) or in_skipped_dir(path, self.root):
            return True
        entry = self.pending.get(path)
        if entry is None and not self.has_room():
            return False
        found = probe(path, self.root)
        if found is None:
            self.pending.pop(path, None)
            return True
        stamp, problem = found
        if entry is None or entry.stamp != stamp:
            entry = _Entry(stamp, now, problem)  # settling starts now, whatever the file's mtime says
            self.pending[path] = entry
        if closed:
            entry.closed_at = now
        return True

    def settle(self, now: float | None = None) -> list[ReadyFile]:
        """Re-stat waiting files; claim and return those unchanged long enough (or shortly after a close)."""
        now = time.monotonic() if now is None else now
        ready: list[ReadyFile] = []
        for path, entry in list(self.pending.items()):
            with self._lock:
                busy = path in self._claimed
            if busy:
                continue  # the worker still has the previous version; judge it after release
            found = probe(path, self.root)
            if found is None:
                del self.pending[path]
                continue
            stamp, problem = found
            if stamp != entry.stamp:
                self.pending[path] = _Entry(stamp, now, problem)  # it changed: settle again (an incomplete one grew)
                continue
            unchanged = now - entry.stable_since
            # a cut-short read of it is final once we have seen it unchanged that long (or, judging by mtime, once
            # its mtime is that old)
            age = age_seconds(stamp) if self.judge_by_mtime else 0.0
            final = max(unchanged if entry.incomplete else 0.0, age) >= self.incomplete_retry_seconds
            if entry.incomplete:
                if not final:
                    continue
            else:
                closed_ok = entry.closed_at is not None and now - entry.closed_at >= self.close_guard_seconds
                if not closed_ok and unchanged < self.settle_seconds:
                    continue
            del self.pending[path]
            with self._lock:
                self._claimed.add(path)
            ready.append(ReadyFile(path, stamp, now, entry.stable_since, entry.problem, final))
        return ready


def age_seconds(stamp: FileStamp) -> float:
    """Seconds since the file was last modified by the wall clock (0 for an mtime in the future); only
    `watch --once` trusts it: a file server's clock may differ from ours."""
    return max(0.0, time.time() - stamp.mtime_ns / 1e9)


class Scanner:
    """The startup scan and the periodic rescan: walks the folder in steps, queuing files with no outcome."""

    def __init__(self, tracker: Tracker, known: Callable[[bytes, FileStamp], bool], rescan_seconds: float):
        self.tracker = tracker
        self.known = known
        self.rescan_seconds = rescan_seconds
        self.passes = 0  # completed passes
        self._walk: Iterator[str] | None = None
        self._held: str | None = None  # found while there was no room
        self._next_at = 0.0

    @property
    def active(self) -> bool:
        return self._walk is not None

    def step(self, force: bool = False, now: float | None = None) -> None:
        """Advance the current pass while the tracker has room; start a new one when due (or forced)."""
        now = time.monotonic() if now is None else now
        if self._walk is None:
            if not force and now < self._next_at:
                return
            self._walk = iter_capture_files(self.tracker.root, self.tracker.patterns)
        for _ in range(SCAN_STEP):
            path = self._held if self._held is not None else next(self._walk, None)
            self._held = None
            if path is None:
                self._walk = None
                self.passes += 1
                self._next_at = now + self.rescan_seconds
                return
            if self.tracker.is_tracked(path):
                continue
            found = probe(path, self.tracker.root)
            if found is None or self.known(os.fsencode(path), found[0]):
                continue
            if not self.tracker.note(path, closed=False, now=now):
                self._held = path  # the scanner waits for room (back-pressure)
                return


class OutsideCapture(OSError):
    """A destination folder is a symlink (or not a folder): moving there could leave the capture folder."""


def real_dir_inside(root: str, *parts: str) -> str:
    """root/parts..., each level a real folder (created when missing), never followed through a symlink."""
    folder = root
    for part in parts:
        folder = os.path.join(folder, part)
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        mode = os.lstat(folder).st_mode
        if not stat.S_ISDIR(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a folder"
            raise OutsideCapture(f"{display_path(folder)} is {kind}; inspector moves files only into real "
                                 "folders inside the capture folder")
    return folder


class CaptureFolder:
    """The capture folder as the daemon's workers see it: a file still the version judged, a file's name for the log.

    A file found changed is offered to the main thread again (`events`, or a rescan when that queue is full).
    """

    def __init__(self, root: str, events: queue.Queue[tuple[str, bool]], rescan: threading.Event):
        self.root = root
        self.events = events
        self.rescan = rescan

    def unchanged(self, item: ReadyFile) -> bool:
        """The file is still the version that was judged ready; if not, it is offered to the tracker again."""
        found = probe(item.path, self.root)
        if found is None:
            return False
        if found[0] != item.stamp:
            try:
                self.events.put_nowait((item.path, False))
            except queue.Full:
                self.rescan.set()
            return False
        return True

    def shown(self, path: str) -> str:
        """A file's name for the log: relative to the capture folder's parent, escaped."""
        return display_path(os.path.join(os.path.basename(self.root), os.path.relpath(path, self.root)))
