"""The inspection daemon: watch -> bounded queue -> one worker -> Detector.predict -> store.

Signals only set flags; the main thread scans, settles files and supervises the observer and the
worker; the worker scores and commits, and moves a file only after its outcome is committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import logging
import os
import queue
import signal
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from datetime import date
from pathlib import Path
from typing import Any, Callable

from inspector.config import Config
from inspector.errors import ConfigError, ImageError, ModelError, StoreError
from inspector.notify import log_to_stderr, notify, pid_file, watchdog_interval_seconds
from inspector.paths import display_path
from inspector.pipeline import Turns, worker_count, worker_pool
from inspector.mover import Mover
from inspector.watcher import (SKIP_DIRS, EventHandler, FileStamp, ReadyFile, Scanner, Tracker,
                               build_observer, probe)

log = logging.getLogger("inspector.daemon")

TICK_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 30.0
HEATMAP_DRAIN_SECONDS = 10.0  # on stop, heat maps still queued get this long; verdicts are already committed
RECENT_OUTCOMES = 256  # outcomes remembered by content, more than the files ever in flight
REBUILD_SECONDS = 2.0  # at most one observer rebuild attempt this often


def fault_point(point: str) -> None:
    """A named instant in a file's handling (after_read, after_infer, after_commit, mid_move, store:NAME).

    Does nothing. The reliability tests run the daemon through tests/fault_runner.py, which replaces this
    function to kill the process or fail a store write there; the service itself reads no test settings.
    """


class _Stopped(Exception):
    """A stop was requested while the database was unavailable: give up the batch, commit nothing."""


def load_detector(cfg: Config) -> Any:
    """Load the model and score its check image; a missing or damaged file says how to get one."""
    from inspector.infer import Detector

    path = Path(cfg.model.path)
    hint = "train one with `inspector train` or write an untrained one with `inspector model init`"
    if not path.is_file():
        raise ModelError(f"no model at {path}: {hint} (or set model.path)")
    try:
        detector = Detector.load(path, device=cfg.model.device, batch_size=cfg.infer.batch_size)
        detector.self_check()
    except ModelError as exc:
        raise ModelError(f"{exc} ({hint})") from exc
    return detector


def off_main_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on a short-lived thread; its result, or its exception re-raised here.

    The daemon keeps every torch call on its worker thread. A model loaded (and self-checked) on
    the main thread would leave the main thread owning an OpenMP team of its own; with two teams
    libgomp has more threads than cores and stops spinning between parallel regions, and every
    forward pass of the worker ran slower (bench/torch_threads.py measures it). A thread that ends frees its team.
    """
    result: list[Any] = []
    error: list[BaseException] = []

    def call() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # handed to the caller, which decides
            error.append(exc)

    thread = threading.Thread(target=call, name="inspector-load", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def model_meta_json(detector: Any) -> str:
    meta = detector.meta
    if hasattr(meta, "to_json"):
        return meta.to_json()
    return json.dumps(dataclasses.asdict(meta), default=str, sort_keys=True)


@dataclasses.dataclass
class _Job:
    """One file through the pipeline: prepared by a pool worker, scored and committed by the model's thread."""

    ready: ReadyFile
    sha256: str | None = None
    img16: Any = None  # kept until the commit, for a heat map
    prepared: Any = None  # prepare.Prepared: what the network takes (or the gate's rescan reason)
    seconds: float = 0.0  # spent preparing it
    outcome: dict | None = None  # existing verdict for this content and model
    rejection: tuple[str, str] | None = None


class Daemon:
    """One capture folder, one model, one database; `run()` returns when stopped (or done, once=True)."""

    def __init__(self, cfg: Config, detector: Any, store: Any,
                 load: Callable[[Config], Any] = load_detector):
        from inspector.heatmaps import HeatmapQueue  # torch and OpenCV: imported once a daemon is made

        self.cfg = cfg
        self.detector = detector
        self.store = store
        self.load = load
        self.root = os.path.realpath(cfg.watch.capture_dir)
        self.tracker = Tracker(self.root, cfg.watch.patterns, cfg.watch.settle_seconds, cfg.watch.queue_size,
                               cfg.watch.incomplete_retry_seconds)
        self.scanner = Scanner(self.tracker, self._known, cfg.watch.rescan_seconds)
        # files with a committed outcome still in the capture folder: a move a crash interrupted
        self.leftovers: queue.Queue = queue.Queue(maxsize=cfg.watch.queue_size)
        self.events: queue.Queue = queue.Queue(maxsize=cfg.watch.queue_size)
        self.ready: queue.Queue = queue.Queue()
        self.rescan = threading.Event()
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.observer: Any = None
        self.worker: threading.Thread | None = None
        self.counts = {"scored": 0, "abnormal": 0, "rejected": 0}
        self.paused_reason: str | None = None
        self.heatmaps = HeatmapQueue(store, cfg.state.dir)  # drawn by the worker when no file waits
        self.poll_seconds = 1.0
        self._rebuild_at = 0.0
        self._root_id = folder_identity(self.root)  # a deleted and re-created folder is another folder
        self.folder_note: str | None = None  # the capture folder's absence or re-creation, for STATUS
        self.mover = Mover(self.root, cfg.watch.after == "move", self._store_call, store, self._unchanged, self._shown,
                           lambda point: fault_point(point))  # looked up at each call: the fault runner replaces it
        self.workers = worker_count(cfg.infer.workers)
        self.turns = Turns(getattr(getattr(detector, "device", None), "type", "cpu") == "cpu")
        self._recent: OrderedDict[str, dict] = OrderedDict()  # sha256 -> outcome of this model, newest last
        self.once = False  # one pass (`watch --once`): an incomplete file is left for a later run

    # ---- main thread: scan, settle, supervise -------------------------------------------------
    def run(self, once: bool = False) -> int:
        """Serve until stop is set (or, with once, until everything waiting has an outcome)."""
        handler = EventHandler(self.events, self.rescan)
        self.once = once
        if not once:
            self.observer = build_observer(self.root, handler, self.cfg.watch.polling, self.poll_seconds)
        self.worker = threading.Thread(target=self._work, name="inspector-worker", daemon=True)
        self.worker.start()
        ready_sent, last_status, next_watchdog = False, "", 0.0
        watchdog_seconds = watchdog_interval_seconds()
        code = 0
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if not self.worker.is_alive():
                    log.error("the worker thread died; exiting so the service manager restarts inspector")
                    code = 1
                    break
                try:
                    self._tick(now, handler)
                except Exception:  # a bug in one tick must not end the station; the next tick retries
                    log.exception("unexpected error in the scanner loop")
                if not ready_sent and (self.scanner.passes or not self.tracker.has_room()):
                    notify("READY=1")
                    log.info("ready: watching %s with model %s", display_path(self.root), self.detector.sha256[:12])
                    ready_sent = True
                status = self.status_line()
                if status != last_status:
                    notify(f"STATUS={status}")
                    last_status = status
                if watchdog_seconds and now >= next_watchdog and self._threads_alive():
                    notify("WATCHDOG=1")
                    next_watchdog = now + watchdog_seconds
                if once and self.scanner.passes and len(self.tracker) == 0 and self.events.empty():
                    break
                if once and self._root_id is None:  # one pass over a folder that is gone cannot finish
                    code = 1
                    break
                self.stop.wait(TICK_SECONDS)
        finally:
            notify("STOPPING=1")
            self.stop.set()
            if self.observer is not None:
                self.observer.stop()
                self.observer.join(timeout=5)
            self.worker.join()
            if once and code == 0:
                self._finish_moves()  # the worker has stopped: no other mover is left
        log.info("stopped: %s", self.status_line())
        return code

    def _check_folder(self, handler: EventHandler) -> bool:
        """Notice the capture folder deleted or re-created (an observer on the old one sees nothing); False while gone."""
        current = folder_identity(self.root)
        if current == self._root_id:
            return True
        stamp = time.strftime("%H:%M:%S")
        if current is None:
            if self._root_id is not None:
                log.error("the capture folder %s is gone; waiting for it to come back", display_path(self.root))
                self.folder_note = f"capture folder missing since {stamp}"
                self._root_id = None
            return False
        log.warning("the capture folder %s was re-created (%s); watching the new one and rescanning",
                    display_path(self.root), self.folder_note or "replaced")
        self.folder_note = f"capture folder re-created at {stamp}; files dropped while it was gone were lost"
        self._root_id = current
        if self.observer is not None:
            self._rebuild_observer(handler, "the capture folder was re-created")
        self.rescan.set()
        return True

    def _tick(self, now: float, handler: EventHandler) -> None:
        """Supervise the folder and the observer, take in events, advance the scan, hand settled files on."""
        if not self._check_folder(handler):
            return
        if self.observer is not None and not self.observer.is_alive() and now >= self._rebuild_at:
            self._rebuild_at = now + REBUILD_SECONDS
            self._rebuild_observer(handler)
        self._drain_events(now)
        if self.rescan.is_set() and not self.scanner.active:
            self.rescan.clear()
            self.scanner.step(force=True, now=now)
        else:
            self.scanner.step(now=now)
        for item in self.tracker.settle(now):
            log.debug("ready %s (%d bytes)", self._shown(item.path), item.size)
            self.ready.put(item)

    def status_line(self) -> str:
        """The systemd STATUS text: what has been done and what is waiting."""
        queued, incomplete = len(self.tracker), self.tracker.incomplete()
        text = (f"scored {self.counts['scored']}, abnormal {self.counts['abnormal']}, "
                f"rejected {self.counts['rejected']}, queued {queued}")
        if incomplete:
            text += f" ({incomplete} incomplete, waiting to grow)"
        text = f"{self.folder_note}; {text}" if self.folder_note else text
        if self.mover.degraded:
            text = f"degraded: {'; '.join(self.mover.degraded.values())}; {text}"
        return f"paused: {self.paused_reason}; {text}" if self.paused_reason else text

    def _threads_alive(self) -> bool:
        observer_ok = self.observer is None or self.observer.is_alive()
        return observer_ok and self.worker is not None and self.worker.is_alive()

    def _rebuild_observer(self, handler: EventHandler, why: str = "the file observer stopped") -> None:
        log.warning("%s; rebuilding the observer and rescanning %s", why, display_path(self.root))
        try:
            self.observer.stop()
        except Exception:  # already dead: nothing to stop
            pass
        try:
            self.observer = build_observer(self.root, handler, self.cfg.watch.polling, self.poll_seconds)
        except OSError as exc:
            log.error("cannot watch %s (%s); retrying, the rescan keeps scoring", display_path(self.root), exc)
        self.rescan.set()

    def _drain_events(self, now: float) -> None:
        while True:
            try:
                path, closed = self.events.get_nowait()
            except queue.Empty:
                return
            if not self.tracker.note(path, closed, now):
                self.rescan.set()  # no room now: the rescan picks it up when there is

    def request_stop(self, *_: Any) -> None:
        self.stop.set()

    def request_reload(self, *_: Any) -> None:
        self.reload.set()

    # ---- worker thread: score and commit ------------------------------------------------------
    def _known(self, path_raw: bytes, stamp: FileStamp) -> bool:
        """The scanner's test; with after = "move" a known file still here is a move to finish."""
        known = self.store.known_file(path_raw, *stamp)
        if known and self.cfg.watch.after == "move":
            with contextlib.suppress(queue.Full):  # the next rescan offers it again
                self.leftovers.put_nowait((os.fsdecode(path_raw), stamp))
        return known

    def _finish_moves(self) -> None:
        """Complete moves that a crash cut short (outcome committed, file not yet moved)."""
        while True:
            try:
                path, stamp = self.leftovers.get_nowait()
            except queue.Empty:
                return
            found = probe(path, self.root)
            if found is None or found[0] != stamp:
                continue  # already moved, or a new version under the old name (judged as new)
            raw = os.fsencode(path)
            outcome = self._store_call(self.store.file_outcome, raw, stamp.size, stamp.mtime_ns, stamp.inode)
            if outcome is None:
                continue
            log.info("finishing an interrupted move of %s", self._shown(path))
            item = ReadyFile(path, stamp, time.monotonic(), problem=found[1])
            if outcome["kind"] == "rejection":
                self.mover.move(item, ("quarantine",), outcome["sha256"], None)
            else:
                self.mover.move(item, ("processed", date.today().isoformat()), outcome["sha256"], raw)

    def _work(self) -> None:
        """The only thread that runs the model. A pool of workers prepares the files ahead of it (hash,
        read, quality gate, conversion); this thread takes them in order, in batches of the files in
        flight, scores them, commits each batch in one transaction and then moves the files. Heat maps are
        drawn here when no file waits."""
        batch_size = self.cfg.infer.batch_size
        ahead = 2 * batch_size + self.workers  # files being prepared or waiting for the model: memory stays flat
        inflight: deque[tuple[ReadyFile, Future]] = deque()
        pool = worker_pool(self.workers)
        try:
            while not self.stop.is_set():
                if not inflight and self.reload.is_set():  # every file in flight was prepared for the old model
                    self.reload.clear()
                    self._reload_model()
                self._finish_moves()
                self._feed(pool, inflight, ahead)
                if not inflight:
                    self.heatmaps.run_one()  # nothing waits to be scored: draw evidence owed
                    continue
                # The files in flight, up to a batch: a lone file is scored at once, a burst in full batches
                # (waiting for files already being prepared costs no throughput; small batches would).
                pairs = [inflight.popleft() for _ in range(min(batch_size, len(inflight)))]
                try:
                    self._score_isolated([job for job in (self._prepared(*pair) for pair in pairs) if job])
                except _Stopped:
                    log.info("stopping with %d file(s) not committed; they stay in place",
                             len(pairs) + len(inflight))
                finally:
                    for item, _ in pairs:
                        self.tracker.release(item.path)
        finally:
            for item, future in inflight:
                future.cancel()
                self.tracker.release(item.path)
            pool.shutdown(wait=True, cancel_futures=True)
        self.heatmaps.drain(HEATMAP_DRAIN_SECONDS)  # verdicts are committed; evidence gets a bounded wait

    def _feed(self, pool: Any, inflight: deque, ahead: int) -> None:
        """Hand settled files to the pool, up to `ahead` in flight; waits a tick only when idle."""
        while len(inflight) < ahead and not self.reload.is_set():
            idle = not inflight and not len(self.heatmaps)
            try:
                item = self.ready.get(timeout=TICK_SECONDS) if idle else self.ready.get_nowait()
            except queue.Empty:
                return
            inflight.append((item, pool.submit(self._prepare, item, self.detector)))

    def _prepared(self, item: ReadyFile, future: Future) -> _Job | None:
        """A worker's result; a bug while preparing one file is logged, and the rescan offers it again."""
        try:
            return future.result()
        except _Stopped:
            raise
        except Exception:
            log.exception("unexpected error while preparing %s", self._shown(item.path))
            return None

    def _score_isolated(self, jobs: list[_Job]) -> None:
        """_score_and_commit, and when the batch fails unexpectedly, each file alone: one bad file never
        holds back the rest."""
        if not jobs:
            return
        try:
            self._score_and_commit(jobs)
            return
        except _Stopped:
            raise
        except Exception:  # a bug must not stop the station: log it, the rescan retries what stays unscored
            log.exception("unexpected error while scoring %d file(s)%s", len(jobs),
                          "; scoring them one by one" if len(jobs) > 1 else "")
        if len(jobs) == 1:
            return
        for job in jobs:
            try:
                self._score_and_commit([job])
            except _Stopped:
                raise
            except Exception:
                log.exception("unexpected error while scoring %s", self._shown(job.ready.path))

    def _reload_model(self) -> None:
        """SIGHUP: swap to the model at model.path only if it loads, verifies and passes self_check."""
        old = self.detector.sha256
        try:
            new = self.load(self.cfg)
        except Exception as exc:  # ModelError above all; anything else must not stop serving either
            log.error("model reload from %s failed, still serving %s: %s", self.cfg.model.path, old[:12], exc)
            return
        self._store_call(self.store.record_model, new.sha256, str(self.cfg.model.path), model_meta_json(new))
        self.detector = new
        self._recent.clear()
        log.info("model reloaded: %s -> %s", old[:12], new.sha256[:12])

    def _store_call(self, fn: Callable, *args: Any) -> Any:
        """A store write that waits out a full disk or a locked database (nothing is lost or moved)."""
        delay = 0.5
        while True:
            try:
                fault_point(f"store:{getattr(fn, '__name__', '')}")
                result = fn(*args)
            except StoreError as exc:
                if self.paused_reason is None:
                    log.error("database unavailable, pausing (files stay in place; retrying): %s", exc)
                self.paused_reason = str(exc).split(";")[0]
                if self.stop.wait(delay):
                    raise _Stopped() from exc
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            if self.paused_reason is not None:
                log.info("database available again; resuming")
                self.paused_reason = None
            return result

    def _prepare(self, item: ReadyFile, detector: Any) -> _Job | None:
        """A pool worker's part: skip what is known, hash, find an existing verdict, read, gate and convert.

        None: nothing to record now (known already, changed or gone meanwhile, or held as incomplete).
        """
        from inspector.imaging import file_sha256, read_image

        if not self._unchanged(item) or self._store_call(self.store.known_file, os.fsencode(item.path), *item.stamp):
            return None
        job = _Job(item)
        if item.problem:  # never opened: a FIFO could block, a link could lead anywhere
            job.rejection = ("unreadable", f"{item.problem}: inspector reads only regular files inside the "
                             "capture folder; put the image file itself there")
            return job
        t0 = time.perf_counter()
        try:
            with self.turns.worker():  # on the CPU: not while a forward pass has the cores
                job.sha256 = file_sha256(item.path)  # the identity is the content, hashed before decoding
                job.outcome = self._store_call(self.store.outcome_for, job.sha256, detector.sha256)
                if job.outcome is None:
                    job.img16 = read_image(item.path, self.cfg.imaging.max_height, self.cfg.imaging.max_width)
                    fault_point("after_read")
                    job.prepared = detector.prepare(job.img16)
        except ImageError as exc:
            if not os.path.lexists(item.path):
                return None  # moved or deleted meanwhile: nothing to record
            job.rejection = (exc.reason, exc.message)
        job.seconds = time.perf_counter() - t0
        if not self._unchanged(item):
            return None  # written to while we read it: judge it again once it settles
        if job.rejection is not None and job.rejection[0] == "truncated" and not item.final:
            self._hold(item, job.rejection[1])
            return None
        return job

    def _score_and_commit(self, jobs: list[_Job]) -> None:
        """Score the prepared files, commit every outcome of the batch in one transaction, then report and move."""
        model_sha = self.detector.sha256
        for job in jobs:  # prepared while an earlier batch with the same content was still being committed
            if job.outcome is None and job.sha256 in self._recent:
                job.outcome = self._recent[job.sha256]
        predictions = self._predict([j for j in jobs if j.prepared is not None and j.outcome is None])
        if predictions:
            fault_point("after_infer")
        kept, records = [], []
        inferred: set[str] = set()
        for job in jobs:
            first = job.sha256 not in inferred  # a second name for the same content costs no inference
            inferred.add(job.sha256 or "")
            if not self._unchanged(job.ready):
                continue  # deleted or rewritten while it was scored: nothing to record, or a new version to judge
            kept.append(job)
            records.append(self._record(job, predictions.get(job.sha256 or ""), first, model_sha))
        if not records:
            return
        results = self._store_call(self.store.record_outcomes, records)
        fault_point("after_commit")
        for job, record, result in zip(kept, records, results):
            if job.rejection is None and job.sha256:
                self._remember(job.sha256, record)
            self._report_and_move(job, record, result)

    def _remember(self, sha256: str, record: Any) -> None:
        """The outcomes of the last few batches, by content: a copy prepared meanwhile costs no inference."""
        self._recent[sha256] = {"p_abnormal": record.p_abnormal, "verdict": record.verdict, "reason": record.reason,
                                "threshold": record.threshold, "method": record.method}
        self._recent.move_to_end(sha256)
        while len(self._recent) > RECENT_OUTCOMES:
            self._recent.popitem(last=False)

    def _hold(self, item: ReadyFile, message: str) -> None:
        """A file read as cut short gets no outcome yet: its writer may only have paused."""
        retry = self.cfg.watch.incomplete_retry_seconds
        if self.once:
            log.info("incomplete %s (%s); left without an outcome for a later run", self._shown(item.path), message)
            return
        log.info("incomplete %s (%s); judged again when it changes, quarantined as truncated if it stays "
                 "like this for %g s (watch.incomplete_retry_seconds)", self._shown(item.path), message, retry)
        self.tracker.hold(item)

    def _unchanged(self, item: ReadyFile) -> bool:
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

    def _predict(self, jobs: list[_Job]) -> dict[str, Any]:
        """One inference per distinct content in the batch; sha256 -> Prediction."""
        unique: dict[str, _Job] = {}
        for job in jobs:
            unique.setdefault(job.sha256, job)
        if not unique:
            return {}
        chosen = list(unique.values())
        with self.turns.model():
            predictions = self.detector.score_prepared([j.prepared for j in chosen],
                                                       [display_path(j.ready.path) for j in chosen],
                                                       [j.seconds for j in chosen])
        return dict(zip(unique, predictions))

    def _record(self, job: _Job, pred: Any, first: bool, model_sha: str) -> Any:
        """The row a file's outcome is committed as."""
        from inspector.store import RejectionRecord, VerdictRecord

        item, stamp = job.ready, job.ready.stamp
        raw = os.fsencode(item.path)
        if job.rejection is not None:
            return RejectionRecord(raw, job.sha256, stamp.size, stamp.mtime_ns, *job.rejection,
                                   stamp.inode, stamp.ctime_ns)
        if job.outcome is not None:
            o = job.outcome
            fields = (o["p_abnormal"], o["verdict"], o["reason"], o["threshold"], o["method"], 0.0)
        else:
            fields = (pred.p_abnormal, pred.verdict, pred.reason, pred.threshold,
                      getattr(self.detector.meta, "method", ""), pred.seconds if first else 0.0)
        p_abnormal, verdict, reason, threshold, method, inference_seconds = fields
        return VerdictRecord(raw, job.sha256, stamp.size, stamp.mtime_ns, model_sha, p_abnormal, verdict, reason,
                             threshold, method, time.monotonic() - item.ready_at, inference_seconds,
                             stamp.inode, stamp.ctime_ns)

    def _report_and_move(self, job: _Job, record: Any, result: str) -> None:
        """After the batch's commit: count and log the outcome, queue a heat map, move the file."""
        item, shown = job.ready, self._shown(job.ready.path)
        if job.rejection is not None:
            if result == "new":  # "exists": recorded before (a restart, or another inspector on this folder)
                self.counts["rejected"] += 1
                log.warning("rejected %s %s: %s", record.reason, shown, record.message)
            self.mover.move(item, ("quarantine",), job.sha256, None)
            return
        if result != "exists":
            self.counts["scored"] += 1
            self.counts["abnormal"] += record.verdict == "abnormal"
            p_text = "-" if record.p_abnormal is None else f"{record.p_abnormal:.4f}"
            extra = f" ({record.reason})" if record.reason else ""
            dup = " duplicate content" if result == "duplicate" else ""
            log.info("verdict %s p=%s %s%s (%.2f s)%s", record.verdict, p_text, shown, dup,
                     record.ready_to_commit_seconds, extra)
            if record.verdict == "abnormal" and result == "new" and job.img16 is not None:
                self.heatmaps.submit(self.detector, job.img16, job.sha256)  # after the commit: never delays a verdict
        self.mover.move(item, ("processed", date.today().isoformat()), job.sha256, os.fsencode(item.path))

    def _shown(self, path: str) -> str:
        return display_path(os.path.join(os.path.basename(self.root), os.path.relpath(path, self.root)))


def folder_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def require_outside_capture(cfg: Config) -> None:
    """state.dir and the SQLite file must not lie inside the capture folder: the daemon would score its own files."""
    from inspector.store import sqlite_file

    capture = os.path.realpath(cfg.watch.capture_dir)
    places = [("state.dir", Path(cfg.state.dir))]
    db = sqlite_file(cfg.database.url)
    if db is not None:
        places.append(("database.url", db.parent))
    for key, folder in places:
        real = os.path.realpath(folder)
        if os.path.commonpath([real, capture]) == capture:
            raise ConfigError(f"{folder} lies inside watch.capture_dir ({capture}): the daemon would watch, score and "
                              "quarantine its own files; move it out of the capture folder", key, cfg.source)


def run_daemon(cfg: Config, once: bool = False) -> int:
    """`inspector watch`: start-up checks, signals, serve, clean exit code (0 after SIGTERM)."""
    from inspector.store import open_store

    with contextlib.ExitStack() as stack:
        stack.enter_context(log_to_stderr(cfg.log.level))
        cfg.require_dir("watch.capture_dir")
        require_outside_capture(cfg)
        detector = off_main_thread(load_detector, cfg)
        store = stack.enter_context(open_store(cfg.database.url, cfg.database.busy_timeout_seconds))
        store.record_model(detector.sha256, str(cfg.model.path), model_meta_json(detector))
        stack.enter_context(pid_file(Path(cfg.state.dir)))
        daemon = Daemon(cfg, detector, store)
        if threading.current_thread() is threading.main_thread():
            for sig, fn in ((signal.SIGTERM, daemon.request_stop), (signal.SIGINT, daemon.request_stop),
                            (signal.SIGHUP, daemon.request_reload)):
                stack.callback(signal.signal, sig, signal.signal(sig, fn))
            with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr without a fd (tests)
                faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` shows every thread
                stack.callback(faulthandler.unregister, signal.SIGUSR1)
        return daemon.run(once=once)


__all__ = ["Daemon", "run_daemon", "load_detector", "SKIP_DIRS"]
