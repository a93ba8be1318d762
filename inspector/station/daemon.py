"""The inspection daemon: watch -> settled files -> workers that prepare them -> the model's thread -> store.

Signals only set flags; the main thread scans, settles files and supervises the observer and the
model's thread. The daemon is composed of typed collaborators, each handed what it uses: the workers'
`Intake` and the model's thread `Scoring` (scoring.py) prepare, score and commit; the `Mover` moves a file
only after its outcome is committed; one `StoreRetry` (retry.py) is the store-retry policy they share.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import queue
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from inspector.base.config import Config
from inspector.base.errors import ConfigError, ModelError, StoreError
from inspector.station.faults import NO_FAULTS, Faults
from inspector.station.intake import Claims, Intake, ScoringModel
from inspector.base.logsetup import log_to_stderr
from inspector.station.metrics import StationMetrics, serve_metrics
from inspector.station.mover import Mover
from inspector.station.notify import notify, pid_file, watchdog_interval_seconds
from inspector.base.paths import display_path
from inspector.base.pipeline import Turns, worker_count
from inspector.station.retry import StoreRetry
from inspector.station.scoring import TICK_SECONDS, Scoring, model_meta_json
from inspector.station.watcher import (CaptureFolder, EventHandler, FileStamp, ReadyFile, Scanner, Tracker,
                               build_observer)

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from inspector.store.store import Store

T = TypeVar("T")

log = logging.getLogger("inspector.daemon")

REBUILD_SECONDS = 2.0  # at most one observer rebuild attempt this often


def load_detector(cfg: Config) -> ScoringModel:
    """Load the model and score its check image; a missing or damaged file says how to get one."""
    from inspector.learn.infer import Detector

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


def off_main_thread(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) on a short-lived thread; its result, or its exception re-raised here.

    The daemon keeps every torch call on its worker thread. A model loaded (and self-checked) on
    the main thread would leave the main thread owning an OpenMP team of its own; with two teams
    libgomp has more threads than cores and stops spinning between parallel regions, and every
    forward pass of the worker ran slower (bench/torch_threads.py measures it). A thread that ends frees its team.
    """
    result: list[T] = []
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


class Daemon:
    """One capture folder, one model, one database; `run()` returns when stopped (or done, once=True).

    `faults`: the fault points' handler (faults.py); the service's does nothing.
    """

    def __init__(self, cfg: Config, detector: ScoringModel, store: Store,
                 load: Callable[[Config], ScoringModel] = load_detector, faults: Faults = NO_FAULTS):
        from inspector.station.heatmaps import HeatmapQueue  # torch and OpenCV: imported once a daemon is made

        self.cfg = cfg
        self.store = store
        self.root = os.path.realpath(cfg.watch.capture_dir)
        self.events: queue.Queue[tuple[str, bool]] = queue.Queue(maxsize=cfg.watch.queue_size)
        self.ready: queue.Queue[ReadyFile] = queue.Queue()
        self.rescan = threading.Event()
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.tracker = Tracker(self.root, cfg.watch.patterns, cfg.watch.settle_seconds, cfg.watch.queue_size,
                               cfg.watch.incomplete_retry_seconds)
        self.scanner = Scanner(self.tracker, self._known, cfg.watch.rescan_seconds)
        # files with a committed outcome still in the capture folder: a move a crash interrupted
        self.leftovers: queue.Queue[tuple[str, FileStamp]] = queue.Queue(maxsize=cfg.watch.queue_size)
        self.folder = CaptureFolder(self.root, self.events, self.rescan)
        self.run_id = uuid.uuid4().hex  # this run's claims on files (fleet.py): another run's are not ours
        self.retry = StoreRetry(self.stop, faults)
        claims = Claims(store, self.retry, self.run_id, cfg.station.claim_lease_seconds)
        self.mover = Mover(self.folder, cfg.watch.after == "move", store, self.retry, claims, self.leftovers, faults)
        self.heatmaps = HeatmapQueue(store, cfg.state.dir)  # drawn by the model's thread when no file waits
        turns = Turns.for_device(getattr(detector, "device", None))
        self.metrics = StationMetrics(cfg.station_name)  # served on metrics.port when set (run_daemon)
        self.intake = Intake(cfg, store, self.retry, claims, self.folder, self.tracker, turns, faults)
        self.scoring = Scoring(cfg, detector, store, load=load, intake=self.intake, mover=self.mover,
                               heatmaps=self.heatmaps, ready=self.ready, reload=self.reload,
                               workers=worker_count(cfg.infer.workers), metrics=self.metrics)
        self.metrics.watch(self)
        self.observer: BaseObserver | None = None
        self.worker: threading.Thread | None = None
        self.poll_seconds = 1.0
        self._rebuild_at = 0.0
        self._root_id = folder_identity(self.root)  # a deleted and re-created folder is another folder
        self.folder_note: str | None = None  # the capture folder's absence or re-creation, for STATUS

    @property
    def detector(self) -> ScoringModel:
        """The model served now (a reload swaps it on the model's thread)."""
        return self.scoring.detector

    @property
    def counts(self) -> dict[str, int]:
        return self.scoring.counts

    @property
    def paused_reason(self) -> str | None:
        """Why the daemon waits for its database, None while it does not."""
        return self.retry.paused_reason

    # ---- main thread: scan, settle, supervise -------------------------------------------------
    def run(self, once: bool = False) -> int:
        """Serve until stop is set (or, with once, until everything waiting has an outcome)."""
        handler = EventHandler(self.events, self.rescan)
        self.tracker.judge_by_mtime = once  # one pass has no earlier sight of a file: its mtime's age decides
        self.intake.once = once  # and leaves a cut-short file to a later run
        if not once:
            self.observer = build_observer(self.root, handler, self.cfg.watch.polling, self.poll_seconds)
        self.worker = threading.Thread(target=self.scoring.work, name="inspector-worker", daemon=True)
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
                self.mover.finish_interrupted()  # the worker has stopped: no other mover is left
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
            log.debug("ready %s (%d bytes)", self.folder.shown(item.path), item.size)
            self.ready.put(item)

    def queued(self) -> int:
        """Files seen and not yet given an outcome (the tracker's)."""
        return len(self.tracker)

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
            if self.observer is not None:
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

    def request_stop(self, *_: object) -> None:
        self.stop.set()

    def request_reload(self, *_: object) -> None:
        self.reload.set()

    def _known(self, path_raw: bytes, stamp: FileStamp) -> bool:
        """The scanner's test; with after = "move" a known file still here is a move to finish."""
        try:
            known = self.store.known_file(path_raw, *stamp)
        except StoreError:
            return True  # the database is away (the worker pauses and says so): the next rescan looks again
        if known and self.cfg.watch.after == "move":
            with contextlib.suppress(queue.Full):  # the next rescan offers it again
                self.leftovers.put_nowait((os.fsdecode(path_raw), stamp))
        return known


def pid_alive(pid: int) -> bool:
    """A process with this pid runs on this host (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def folder_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def require_outside_capture(cfg: Config) -> None:
    """state.dir and the SQLite file must not lie inside the capture folder: the daemon would score its own files."""
    from inspector.store.store import sqlite_file

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


def run_daemon(cfg: Config, once: bool = False, faults: Faults = NO_FAULTS) -> int:
    """`inspector watch`: start-up checks, signals, serve, clean exit code (0 after SIGTERM).

    `faults`: the reliability tests' fault points (tests/fault_runner.py, through start_watch); the service's do
    nothing."""
    from inspector.station.heartbeat import Heartbeat, refuse_taken_name
    from inspector.store.store import open_configured

    with contextlib.ExitStack() as stack:
        stack.enter_context(log_to_stderr(cfg.log.level))
        cfg.require_dir("watch.capture_dir")
        require_outside_capture(cfg)
        detector = off_main_thread(load_detector, cfg)
        store = stack.enter_context(open_configured(cfg))
        store.record_model(detector.sha256, str(cfg.model.path), model_meta_json(detector))
        stack.enter_context(pid_file(Path(cfg.state.dir)))
        refuse_taken_name(store, cfg.station_name, pid_alive)
        daemon = Daemon(cfg, detector, store, faults=faults)
        dropped = store.release_station_claims(cfg.station_name, daemon.run_id)
        if dropped:
            log.info("released %d claim(s) left by this station's previous run", dropped)
        if not once:  # one pass (cron) leaves the port to the service
            stack.enter_context(serve_metrics(cfg.metrics, daemon.metrics.registry))
        heartbeat = Heartbeat(daemon)
        heartbeat.start()
        stack.callback(heartbeat.close)
        if threading.current_thread() is threading.main_thread():
            for sig, fn in ((signal.SIGTERM, daemon.request_stop), (signal.SIGINT, daemon.request_stop),
                            (signal.SIGHUP, daemon.request_reload)):
                stack.callback(signal.signal, sig, signal.signal(sig, fn))
            with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr without a fd (tests)
                faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` shows every thread
                stack.callback(faulthandler.unregister, signal.SIGUSR1)
        return daemon.run(once=once)


def start_watch(cfg: Config, once: bool = False, faults: Faults = NO_FAULTS) -> int:
    """`inspector watch` (cli/watch.py; tests/fault_runner.py with its faults): the capture folder checked before
    torch's slow import (a typo fails at once), torch's threads (infer.threads, else every core), run_daemon."""
    cfg.require_dir("watch.capture_dir")
    import torch

    torch.set_num_threads(cfg.infer.threads or os.cpu_count() or 1)
    return run_daemon(cfg, once=once, faults=faults)


__all__ = ["Daemon", "run_daemon", "start_watch", "load_detector"]
