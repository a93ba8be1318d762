"""A settled file's way to the model's thread: claimed (no other daemon on the folder scores it meanwhile), known
already?, hashed, an existing verdict looked up, read, gated and converted, by a pool of `infer.workers` threads.

`ScoringModel` is what the daemon asks of its detector (infer.Detector is the one it loads; tests hand it
stand-ins); `Claims` is this run's claims on files (fleet.py), which the mover uses too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Protocol, Sequence

from inspector.base.config import Config
from inspector.base.errors import ImageError, StoreError
from inspector.station.faults import Faults
from inspector.base.pipeline import Turns
from inspector.base.serial import SerialFields, capture_name, compile_serial_pattern, match_serial
from inspector.station.retry import StoreRetry
from inspector.station.watcher import CaptureFolder, ReadyFile, Tracker

if TYPE_CHECKING:
    import numpy as np

    from inspector.learn.infer import Prediction
    from inspector.imaging.modelmeta import ModelMeta
    from inspector.imaging.prepare import Prepared
    from inspector.store.store import FileVersion, Store

log = logging.getLogger("inspector.daemon")


class ScoringModel(Protocol):
    """What the daemon asks of its detector: an identity, its metadata, the CPU part and the network's part."""

    sha256: str
    meta: ModelMeta

    def prepare(self, img16: np.ndarray) -> Prepared: ...

    def score_prepared(self, prepared: Sequence[Prepared], paths: Sequence[str | None] | None = None,
                       seconds: Sequence[float] | None = None) -> list[Prediction]: ...


@dataclasses.dataclass
class Job:
    """One file through the pipeline: prepared by a pool worker, scored and committed by the model's thread."""

    ready: ReadyFile
    sha256: str | None = None
    img16: np.ndarray | None = None  # kept until the commit, for a heat map
    prepared: Prepared | None = None  # what the network takes (or the gate's rescan reason)
    seconds: float = 0.0  # spent preparing it
    outcome: dict | None = None  # existing verdict for this content and model
    heat: np.ndarray | None = None  # the normal model's map from the verdict's own pass (None: no normal model)
    rejection: tuple[str, str] | None = None
    incomplete: bool = False  # the rejection may be a file still being written (ImageError.incomplete)
    serial: SerialFields | None = None  # what its name says of the electrode (station.serial_pattern)


def file_version(item: ReadyFile) -> FileVersion:
    """The store's FileVersion of a settled file: what its outcome and its claim are keyed on."""
    from inspector.store.store import FileVersion

    stamp = item.stamp
    return FileVersion(os.fsencode(item.path), stamp.size, stamp.mtime_ns, stamp.inode, stamp.ctime_ns)


class Claims:
    """This run's claims on files (`run_id`): another run's are not ours; a lease runs out if not renewed."""

    def __init__(self, store: Store, retry: StoreRetry, run_id: str, lease_seconds: float):
        self.store = store
        self.retry = retry
        self.run_id = run_id
        self.lease_seconds = lease_seconds

    def take(self, item: ReadyFile) -> str | None:
        """Claim the file; None when it is ours now, else the station that holds it."""
        return self.retry.call(self.store.claim, file_version(item), self.run_id, self.lease_seconds)

    def release(self, items: list[ReadyFile]) -> None:
        """Give up claims on files left without an outcome; a failure only lets their leases run out."""
        try:
            self.store.release_claims([file_version(item) for item in items], self.run_id)
        except StoreError as exc:
            log.debug("claims not released (their leases run out): %s", exc)


class Intake:
    """A pool worker's part: `prepare(item, detector)` -> a Job for the model's thread, or None."""

    def __init__(self, cfg: Config, store: Store, retry: StoreRetry, claims: Claims, folder: CaptureFolder,
                 tracker: Tracker, turns: Turns, faults: Faults):
        self.cfg = cfg
        self.store = store
        self.retry = retry
        self.claims = claims
        self.folder = folder
        self.tracker = tracker
        self.turns = turns
        self.faults = faults
        self.serial_pattern = compile_serial_pattern(cfg.station.serial_pattern)
        self.once = False  # one pass (`watch --once`): Daemon.run sets it, as the tracker's judge_by_mtime

    def serial_of(self, path: str) -> SerialFields | None:
        """The serial number and lot the file's name gives, by station.serial_pattern (None: none)."""
        if self.serial_pattern is None:  # the default: no pattern, so no name to work out
            return None
        name = capture_name(path, self.folder.root)
        return match_serial(self.serial_pattern, name) if name is not None else None

    def prepare(self, item: ReadyFile, detector: ScoringModel) -> Job | None:
        """Claim the file, then `_prepare_claimed`. None: nothing to record now (claimed elsewhere, known,
        changed, gone, incomplete); the claim is then given up."""
        if not self.folder.unchanged(item):
            return None
        holder = self.claims.take(item)
        if holder is not None:
            log.debug("%s is being scored by station %s", self.folder.shown(item.path), holder)
            return None
        job = None
        try:
            job = self._prepare_claimed(item, detector)
        finally:
            if job is None:
                self.claims.release([item])
        return job

    def _prepare_claimed(self, item: ReadyFile, detector: ScoringModel) -> Job | None:
        """Skip what is known, hash, find an existing verdict, read, gate and convert."""
        from inspector.imaging.read import file_sha256, read_image

        if self.retry.call(self.store.known_file, os.fsencode(item.path), *item.stamp):
            return None  # recorded meanwhile (by this daemon, or another before our claim)
        job = Job(item, serial=self.serial_of(item.path))
        if item.problem:  # never opened: a FIFO could block, a link could lead anywhere
            job.rejection = ("unreadable", f"{item.problem}: inspector reads only regular files inside the "
                             "capture folder; put the image file itself there")
            return job
        t0 = time.perf_counter()
        try:
            with self.turns.worker():  # on the CPU: not while a forward pass has the cores
                job.sha256 = file_sha256(item.path)  # the identity is the content, hashed before decoding
                job.outcome = self.retry.call(self.store.outcome_for, job.sha256, detector.sha256)
                if job.outcome is None:
                    job.img16 = read_image(item.path, self.cfg.imaging.max_height, self.cfg.imaging.max_width)
                    self.faults.point("after_read")
                    job.prepared = detector.prepare(job.img16)
        except ImageError as exc:
            if not os.path.lexists(item.path):
                return None  # moved or deleted meanwhile: nothing to record
            job.rejection, job.incomplete = (exc.reason, exc.message), exc.incomplete
        job.seconds = time.perf_counter() - t0
        if not self.folder.unchanged(item):
            return None  # written to while we read it: judge it again once it settles
        if job.incomplete and not item.final:
            self._hold(item, *job.rejection)
            return None
        return job

    def _hold(self, item: ReadyFile, reason: str, message: str) -> None:
        """A file read as cut short gets no outcome yet: its writer may only have paused (with `once`, a later run
        judges it)."""
        shown = self.folder.shown(item.path)
        if self.once:
            log.info("incomplete %s (%s); left without an outcome for a later run", shown, message)
            return
        log.info("incomplete %s (%s); judged again when it changes, quarantined as %s if it stays "
                 "like this for %g s (watch.incomplete_retry_seconds)", shown, message, reason,
                 self.cfg.watch.incomplete_retry_seconds)
        self.tracker.hold(item)
