"""The daemon's model's thread: it takes the files its workers prepared (intake.py) in arrival order, in
batches of the files in flight, scores them, commits each batch's outcomes in one transaction, and only then
reports and moves each file (mover.py); heat maps (heatmaps.py) are drawn here when no file waits.

`Scoring` is one of the daemon's collaborators, built from the objects it is handed: the detector (swapped by
a reload), the store and its retry policy, the workers' `Intake`, the tracker, the mover and the heat map queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import date
from itertools import islice
from typing import TYPE_CHECKING, Callable

from inspector.base.config import Config
from inspector.station.intake import Intake, Job, ScoringModel, file_version
from inspector.station.metrics import StationMetrics
from inspector.station.mover import Mover
from inspector.base.paths import display_path
from inspector.base.pipeline import worker_pool
from inspector.station.retry import Stopped
from inspector.station.watcher import ReadyFile

if TYPE_CHECKING:
    from inspector.station.heatmaps import HeatmapQueue
    from inspector.learn.infer import Prediction
    from inspector.store.store import RejectionRecord, Store, VerdictRecord

log = logging.getLogger("inspector.daemon")

TICK_SECONDS = 0.1
HEATMAP_DRAIN_SECONDS = 10.0  # on stop, heat maps still queued get this long; verdicts are already committed
RECENT_OUTCOMES = 256  # outcomes remembered by content, more than the files ever in flight
SLOW_PREPARE_SECONDS = 2.0  # a file in preparation longer than this holds back no batch behind it

InFlight = deque[tuple[ReadyFile, Future, float]]  # (file, its preparation, since)


def model_meta_json(detector: ScoringModel) -> str:
    meta = detector.meta
    if hasattr(meta, "to_json"):
        return meta.to_json()
    return json.dumps(dataclasses.asdict(meta), default=str, sort_keys=True)


def outcome_record(job: Job, pred: Prediction | None, first: bool, model_sha: str,
                   method: str) -> VerdictRecord | RejectionRecord:
    """The row a file's outcome is committed as (`first`: this content's inference is counted here)."""
    from inspector.store.store import RejectionRecord, Verdict, VerdictRecord, region_fields

    item = job.ready
    version = file_version(item)
    if job.rejection is not None:
        return RejectionRecord(version, job.sha256, *job.rejection)
    if job.outcome is not None:
        o = job.outcome
        fields = (o["p_abnormal"], o["verdict"], o["reason"], o["threshold"], o["method"], 0.0)
        where = {k: o.get(k) for k in ("peak_x", "peak_y", "boxes")}
    else:
        assert pred is not None  # a prepared file without an outcome was scored
        fields = (pred.p_abnormal, pred.verdict, pred.reason, pred.threshold, method, pred.seconds if first else 0.0)
        where = region_fields(pred.regions)
        job.heat = pred.heat
    p_abnormal, verdict, reason, threshold, method, inference_seconds = fields
    serial = job.serial
    return VerdictRecord(version, Verdict(job.sha256, model_sha, p_abnormal, verdict, reason, threshold, method,
                                          time.monotonic() - item.ready_at, inference_seconds, **where),
                         serial.serial if serial else None, serial.lot if serial else None)


class Scoring:
    """The only thread that runs the model (`work`); `counts` are its outcomes, `detector` the model it serves.

    It shares the intake's store retry (whose `stop` it heeds), claims, folder, tracker, turns and faults."""

    def __init__(self, cfg: Config, detector: ScoringModel, store: Store, *, load: Callable[[Config], ScoringModel],
                 intake: Intake, mover: Mover, heatmaps: HeatmapQueue, ready: queue.Queue[ReadyFile],
                 reload: threading.Event, workers: int, metrics: StationMetrics):
        self.cfg = cfg
        self.detector = detector
        self.store = store
        self.load = load
        self.intake = intake
        self.retry, self.claims, self.folder = intake.retry, intake.claims, intake.folder
        self.tracker, self.turns, self.faults = intake.tracker, intake.turns, intake.faults
        self.stop = self.retry.stop
        self.mover = mover
        self.heatmaps = heatmaps
        self.ready = ready  # settled files, from the main thread
        self.reload = reload  # SIGHUP or a promoted model: swap once no file is in flight
        self.workers = workers
        self.metrics = metrics  # the same outcomes, for Prometheus (metrics.py)
        self.counts = {"scored": 0, "abnormal": 0, "rejected": 0}
        self._recent: OrderedDict[str, dict] = OrderedDict()  # sha256 -> outcome of this model, newest last

    def work(self) -> None:
        """The model's thread. A pool of workers prepares the files ahead of it (intake.py); this thread takes
        them in order as they are prepared, in batches of the files in flight (a slow one is passed by:
        _take_prepared), scores them, commits each batch in one transaction and then moves the files. Heat maps
        are drawn here when no file waits."""
        batch_size = self.cfg.infer.batch_size
        ahead = 2 * batch_size + self.workers  # files being prepared or waiting for the model: memory stays flat
        inflight: InFlight = deque()
        pool = worker_pool(self.workers)
        try:
            while not self.stop.is_set():
                if not inflight and self.reload.is_set():  # every file in flight was prepared for the old model
                    self.reload.clear()
                    self._reload_model()
                self.mover.finish_interrupted()
                self._feed(pool, inflight, ahead)
                if not inflight:
                    self.heatmaps.run_one()  # nothing waits to be scored: draw evidence owed
                    continue
                pairs = self._take_prepared(inflight, batch_size)
                if not pairs:
                    continue
                try:
                    self.score_isolated([job for job in (self._prepared(item, future) for item, future, _ in pairs)
                                         if job])
                except Stopped:
                    log.info("stopping with %d file(s) not committed; they stay in place",
                             len(pairs) + len(inflight))
                finally:
                    for item, _, _ in pairs:
                        self.tracker.release(item.path)
        finally:
            for item, future, _ in inflight:
                future.cancel()
                self.tracker.release(item.path)
            pool.shutdown(wait=True, cancel_futures=True)
        self.heatmaps.drain(HEATMAP_DRAIN_SECONDS)  # verdicts are committed; evidence gets a bounded wait

    def _feed(self, pool: ThreadPoolExecutor, inflight: InFlight, ahead: int) -> None:
        """Hand settled files to the pool, up to `ahead` in flight; waits a tick only when idle."""
        while len(inflight) < ahead and not self.reload.is_set():
            idle = not inflight and not len(self.heatmaps)
            try:
                item = self.ready.get(timeout=TICK_SECONDS) if idle else self.ready.get_nowait()
            except queue.Empty:
                return
            inflight.append((item, pool.submit(self.intake.prepare, item, self.detector), time.monotonic()))

    def _take_prepared(self, inflight: InFlight, batch_size: int) -> list[tuple[ReadyFile, Future, float]]:
        """Up to a batch of the prepared files in flight, oldest first; [] after a tick when none is ready.

        A lone file is taken at once and a burst in full batches (waiting for files already being prepared
        costs no throughput; small batches would), but no file in preparation for longer than
        SLOW_PREPARE_SECONDS is waited for: one huge or slow file (a share that reads slowly, a header over
        gigabytes) holds back neither the files behind it nor a stop.
        """
        now = time.monotonic()
        oldest = [future for _, future, since in islice(inflight, batch_size)
                  if not future.done() and now - since < SLOW_PREPARE_SECONDS]
        if oldest:
            wait(oldest, timeout=TICK_SECONDS)
            if not all(future.done() for future in oldest):
                return []  # the next round looks again (and feeds the pool meanwhile)
        else:
            wait([future for _, future, _ in inflight], timeout=TICK_SECONDS, return_when=FIRST_COMPLETED)
        taken = [entry for entry in inflight if entry[1].done()][:batch_size]
        for entry in taken:
            inflight.remove(entry)
        return taken

    def _prepared(self, item: ReadyFile, future: Future) -> Job | None:
        """A worker's result; a bug while preparing one file is logged, and the rescan offers it again."""
        try:
            return future.result()
        except Stopped:
            raise
        except Exception:
            log.exception("unexpected error while preparing %s", self.folder.shown(item.path))
            return None

    def score_isolated(self, jobs: list[Job]) -> None:
        """_score_and_commit, and when the batch fails unexpectedly, each file alone: one bad file never
        holds back the rest."""
        if not jobs:
            return
        try:
            self._score_and_commit(jobs)
            return
        except Stopped:
            raise
        except Exception:  # a bug must not stop the station: log it, the rescan retries what stays unscored
            log.exception("unexpected error while scoring %d file(s)%s", len(jobs),
                          "; scoring them one by one" if len(jobs) > 1 else "")
        if len(jobs) == 1:
            return
        for job in jobs:
            try:
                self._score_and_commit([job])
            except Stopped:
                raise
            except Exception:
                log.exception("unexpected error while scoring %s", self.folder.shown(job.ready.path))

    def _reload_model(self) -> None:
        """SIGHUP: swap to the model at model.path only if it loads, verifies and passes self_check."""
        old = self.detector.sha256
        try:
            new = self.load(self.cfg)
        except Exception as exc:  # ModelError above all; anything else must not stop serving either
            log.error("model reload from %s failed, still serving %s: %s", self.cfg.model.path, old[:12], exc)
            return
        if new.sha256 == old:
            log.info("model reload: %s still holds %s", self.cfg.model.path, old[:12])
            return
        self.retry.call(self.store.record_model, new.sha256, str(self.cfg.model.path), model_meta_json(new))
        self.detector = new
        self._recent.clear()
        log.info("model reloaded: %s -> %s", old[:12], new.sha256[:12])

    def _score_and_commit(self, jobs: list[Job]) -> None:
        """Score the prepared files, commit every outcome of the batch in one transaction, then report and move."""
        detector = self.detector
        for job in jobs:  # prepared while an earlier batch with the same content was still being committed
            if job.outcome is None and job.sha256 in self._recent:
                job.outcome = self._recent[job.sha256]
        predictions = self._predict([j for j in jobs if j.prepared is not None and j.outcome is None])
        if predictions:
            self.faults.point("after_infer")
        kept, records, dropped = [], [], []
        inferred: set[str] = set()
        method = getattr(detector.meta, "method", "")
        for job in jobs:
            first = job.sha256 not in inferred  # a second name for the same content costs no inference
            inferred.add(job.sha256 or "")
            if not self.folder.unchanged(job.ready):
                dropped.append(job.ready)  # deleted or rewritten while it was scored: nothing to record, or a new
                continue  # version to judge
            kept.append(job)
            records.append(outcome_record(job, predictions.get(job.sha256 or ""), first, detector.sha256, method))
        self.claims.release(dropped)
        if not records:
            return
        results = self.retry.call(self.store.record_outcomes, records, self.claims.run_id)  # checks the claims
        held = [job.ready for job, result in zip(kept, results) if result != "lost"]
        try:
            for job, record, result in zip(kept, records, results):
                if result == "lost":
                    log.warning("%s was taken over by another station while this one scored it (its claim's lease "
                                "ran out: station.claim_lease_seconds); that station records and moves it",
                                self.folder.shown(job.ready.path))
                    continue
                self.faults.point("after_commit")  # per file: its outcome is committed, not yet reported or moved
                if job.rejection is None and job.sha256:
                    self._remember(job.sha256, record)
                self._report_and_move(job, record, result)
        finally:
            self.claims.release(held)  # moved (or left in place): only now may another daemon finish a move

    def _remember(self, sha256: str, record: VerdictRecord) -> None:
        """The outcomes of the last few batches, by content: a copy prepared meanwhile costs no inference."""
        self._recent[sha256] = dataclasses.asdict(record.verdict)  # the fields outcome_for gives, by name
        self._recent.move_to_end(sha256)
        while len(self._recent) > RECENT_OUTCOMES:
            self._recent.popitem(last=False)

    def _predict(self, jobs: list[Job]) -> dict[str, Prediction]:
        """One inference per distinct content in the batch; sha256 -> Prediction."""
        unique: dict[str, Job] = {}
        for job in jobs:
            unique.setdefault(job.sha256 or "", job)
        if not unique:
            return {}
        chosen = list(unique.values())
        with self.turns.model():
            predictions = self.detector.score_prepared([j.prepared for j in chosen],
                                                       [display_path(j.ready.path) for j in chosen],
                                                       [j.seconds for j in chosen])
        return dict(zip(unique, predictions))

    def _report_and_move(self, job: Job, record: VerdictRecord | RejectionRecord, result: str) -> None:
        """After the batch's commit: count and log the outcome, queue a heat map, move the file."""
        item, shown = job.ready, self.folder.shown(job.ready.path)
        if job.rejection is not None:
            if result == "new":  # "exists": recorded before (a restart, or another inspector on this folder)
                self.counts["rejected"] += 1
                self.metrics.rejection(record.reason)
                log.warning("rejected %s %s: %s", record.reason, shown, record.message)
            self.mover.move(item, ("quarantine",), job.sha256, None)
            return
        if result != "exists":
            v = record.verdict
            self.counts["scored"] += 1
            self.counts["abnormal"] += v.verdict == "abnormal"
            self.metrics.verdict(v.verdict, v.ready_to_commit_seconds)
            p_text = "-" if v.p_abnormal is None else f"{v.p_abnormal:.4f}"
            extra = f" ({v.reason})" if v.reason else ""
            dup = " duplicate content" if result == "duplicate" else ""
            log.info("verdict %s p=%s %s%s (%.2f s)%s", v.verdict, p_text, shown, dup, v.ready_to_commit_seconds, extra)
            if record.serial is None and self.intake.serial_pattern is not None:  # once per file: at its record
                log.warning("no serial in the name %s: it does not match station.serial_pattern; recorded without "
                            "a serial and lot", shown)
            if v.verdict == "abnormal" and result == "new" and job.img16 is not None:  # after the commit
                self.heatmaps.submit(self.detector, job.img16, job.sha256, job.heat)  # never delays a verdict
        raw, recorded = os.fsencode(item.path), None
        if result == "exists" and self.mover.enabled:  # recorded before: a move may have been cut short
            stamp = item.stamp
            found = self.retry.call(self.store.file_outcome, raw, stamp.size, stamp.mtime_ns, stamp.inode)
            recorded = found and found.get("moved_to")
        self.mover.move(item, ("processed", date.today().isoformat()), job.sha256, raw, recorded=recorded)
