"""The daemon's scoring side: the model's thread and the workers that prepare files for it.

A pool of `infer.workers` threads takes settled files (known already?, hash, read, quality gate,
conversion: `Scoring._prepare`); the model's thread (`Scoring._work`) takes them in arrival order in
batches of the files in flight, scores them, commits each batch's outcomes in one transaction, and
only then reports and moves each file. Mixed into daemon.Daemon, which owns the state it uses: cfg,
detector, load, store, tracker, mover, heatmaps, counts, events, rescan, stop, reload, ready,
leftovers, workers, turns, once, paused_reason, run_id, _recent and _shown().
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from itertools import islice
from datetime import date
from typing import Any, Callable

from inspector.errors import ImageError, StoreError
from inspector.paths import display_path
from inspector.pipeline import worker_pool
from inspector.watcher import ReadyFile, probe

log = logging.getLogger("inspector.daemon")

TICK_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 10.0  # a database back after an outage is used again within this
HEATMAP_DRAIN_SECONDS = 10.0  # on stop, heat maps still queued get this long; verdicts are already committed
RECENT_OUTCOMES = 256  # outcomes remembered by content, more than the files ever in flight
SLOW_PREPARE_SECONDS = 2.0  # a file in preparation longer than this holds back no batch behind it


def fault_point(point: str) -> None:
    """A named instant in a file's handling (after_read, after_infer, after_commit, mid_move, store:NAME).

    Does nothing. The reliability tests run the daemon through tests/fault_runner.py, which replaces this
    function to kill the process or fail a store write there; the service itself reads no test settings.
    """


class _Stopped(Exception):
    """A stop was requested while the database was unavailable: give up the batch, commit nothing."""


def file_version(item: ReadyFile) -> Any:
    """The store's FileVersion of a settled file: what its outcome and its claim are keyed on."""
    from inspector.store import FileVersion

    stamp = item.stamp
    return FileVersion(os.fsencode(item.path), stamp.size, stamp.mtime_ns, stamp.inode, stamp.ctime_ns)


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
    heat: Any = None  # the normal model's map from the verdict's own pass (None: no normal model), for a heat map
    rejection: tuple[str, str] | None = None
    incomplete: bool = False  # the rejection may be a file still being written (ImageError.incomplete)


class Scoring:
    """The model's thread and its workers (the module's docstring lists the state it uses)."""

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
            item = ReadyFile(path, stamp, time.monotonic(), problem=found[1])
            if self._store_call(self.store.claim, file_version(item), self.run_id,
                                self.cfg.station.claim_lease_seconds) is not None:
                continue  # another daemon on this folder is moving it
            log.info("finishing an interrupted move of %s", self._shown(path))
            try:
                if outcome["kind"] == "rejection":
                    self.mover.move(item, ("quarantine",), outcome["sha256"], None)
                else:
                    self.mover.move(item, ("processed", date.today().isoformat()), outcome["sha256"], raw,
                                    recorded=outcome["moved_to"])
            finally:
                self._release([item])

    def _work(self) -> None:
        """The only thread that runs the model. A pool of workers prepares the files ahead of it (hash,
        read, quality gate, conversion); this thread takes them in order as they are prepared, in batches
        of the files in flight (a slow one is passed by: _take_prepared), scores them, commits each batch in one transaction and then moves the files. Heat maps are
        drawn here when no file waits."""
        batch_size = self.cfg.infer.batch_size
        ahead = 2 * batch_size + self.workers  # files being prepared or waiting for the model: memory stays flat
        inflight: deque[tuple[ReadyFile, Future, float]] = deque()  # (file, its preparation, since)
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
                pairs = self._take_prepared(inflight, batch_size)
                if not pairs:
                    continue
                try:
                    self._score_isolated([job for job in (self._prepared(item, future) for item, future, _ in pairs)
                                          if job])
                except _Stopped:
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

    def _feed(self, pool: Any, inflight: deque, ahead: int) -> None:
        """Hand settled files to the pool, up to `ahead` in flight; waits a tick only when idle."""
        while len(inflight) < ahead and not self.reload.is_set():
            idle = not inflight and not len(self.heatmaps)
            try:
                item = self.ready.get(timeout=TICK_SECONDS) if idle else self.ready.get_nowait()
            except queue.Empty:
                return
            inflight.append((item, pool.submit(self._prepare, item, self.detector), time.monotonic()))

    def _take_prepared(self, inflight: deque, batch_size: int) -> list[tuple[ReadyFile, Future, float]]:
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
        if new.sha256 == old:
            log.info("model reload: %s still holds %s", self.cfg.model.path, old[:12])
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
        """A pool worker's part: claim the file (no other daemon on this folder scores it meanwhile), then
        `_prepare_claimed`. None: nothing to record now (claimed elsewhere, known, changed, gone, incomplete);
        the claim is then given up."""
        if not self._unchanged(item):
            return None
        holder = self._store_call(self.store.claim, file_version(item), self.run_id,
                                  self.cfg.station.claim_lease_seconds)
        if holder is not None:
            log.debug("%s is being scored by station %s", self._shown(item.path), holder)
            return None
        job = None
        try:
            job = self._prepare_claimed(item, detector)
        finally:
            if job is None:
                self._release([item])
        return job

    def _release(self, items: list[ReadyFile]) -> None:
        """Give up claims on files left without an outcome; a failure only lets their leases run out."""
        try:
            self.store.release_claims([file_version(item) for item in items], self.run_id)
        except StoreError as exc:
            log.debug("claims not released (their leases run out): %s", exc)

    def _prepare_claimed(self, item: ReadyFile, detector: Any) -> _Job | None:
        """Skip what is known, hash, find an existing verdict, read, gate and convert."""
        from inspector.imaging import file_sha256, read_image

        if self._store_call(self.store.known_file, os.fsencode(item.path), *item.stamp):
            return None  # recorded meanwhile (by this daemon, or another before our claim)
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
            job.rejection, job.incomplete = (exc.reason, exc.message), exc.incomplete
        job.seconds = time.perf_counter() - t0
        if not self._unchanged(item):
            return None  # written to while we read it: judge it again once it settles
        if job.incomplete and not item.final:
            self._hold(item, *job.rejection)
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
        kept, records, dropped = [], [], []
        inferred: set[str] = set()
        for job in jobs:
            first = job.sha256 not in inferred  # a second name for the same content costs no inference
            inferred.add(job.sha256 or "")
            if not self._unchanged(job.ready):
                dropped.append(job.ready)  # deleted or rewritten while it was scored: nothing to record, or a new
                continue  # version to judge
            kept.append(job)
            records.append(self._record(job, predictions.get(job.sha256 or ""), first, model_sha))
        self._release(dropped)
        if not records:
            return
        results = self._store_call(self.store.record_outcomes, records, self.run_id)  # checks the claims
        held = [job.ready for job, result in zip(kept, results) if result != "lost"]
        try:
            for job, record, result in zip(kept, records, results):
                if result == "lost":
                    log.warning("%s was taken over by another station while this one scored it (its claim's lease "
                                "ran out: station.claim_lease_seconds); that station records and moves it",
                                self._shown(job.ready.path))
                    continue
                fault_point("after_commit")  # per file: its outcome is committed, it is not yet reported or moved
                if job.rejection is None and job.sha256:
                    self._remember(job.sha256, record)
                self._report_and_move(job, record, result)
        finally:
            self._release(held)  # moved (or left in place): only now may another daemon finish a move

    def _remember(self, sha256: str, record: Any) -> None:
        """The outcomes of the last few batches, by content: a copy prepared meanwhile costs no inference."""
        self._recent[sha256] = dataclasses.asdict(record.verdict)  # the fields outcome_for gives, by name
        self._recent.move_to_end(sha256)
        while len(self._recent) > RECENT_OUTCOMES:
            self._recent.popitem(last=False)

    def _hold(self, item: ReadyFile, reason: str, message: str) -> None:
        """A file read as cut short gets no outcome yet: its writer may only have paused."""
        retry = self.cfg.watch.incomplete_retry_seconds
        if self.once:
            log.info("incomplete %s (%s); left without an outcome for a later run", self._shown(item.path), message)
            return
        log.info("incomplete %s (%s); judged again when it changes, quarantined as %s if it stays "
                 "like this for %g s (watch.incomplete_retry_seconds)", self._shown(item.path), message, reason, retry)
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
        from inspector.store import RejectionRecord, Verdict, VerdictRecord, region_fields

        item = job.ready
        version = file_version(item)
        if job.rejection is not None:
            return RejectionRecord(version, job.sha256, *job.rejection)
        if job.outcome is not None:
            o = job.outcome
            fields = (o["p_abnormal"], o["verdict"], o["reason"], o["threshold"], o["method"], 0.0)
            where = {k: o.get(k) for k in ("peak_x", "peak_y", "boxes")}
        else:
            fields = (pred.p_abnormal, pred.verdict, pred.reason, pred.threshold,
                      getattr(self.detector.meta, "method", ""), pred.seconds if first else 0.0)
            where = region_fields(pred.regions)
            job.heat = pred.heat
        p_abnormal, verdict, reason, threshold, method, inference_seconds = fields
        return VerdictRecord(version, Verdict(job.sha256, model_sha, p_abnormal, verdict, reason, threshold, method,
                                              time.monotonic() - item.ready_at, inference_seconds, **where))

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
            v = record.verdict
            self.counts["scored"] += 1
            self.counts["abnormal"] += v.verdict == "abnormal"
            p_text = "-" if v.p_abnormal is None else f"{v.p_abnormal:.4f}"
            extra = f" ({v.reason})" if v.reason else ""
            dup = " duplicate content" if result == "duplicate" else ""
            log.info("verdict %s p=%s %s%s (%.2f s)%s", v.verdict, p_text, shown, dup, v.ready_to_commit_seconds, extra)
            if v.verdict == "abnormal" and result == "new" and job.img16 is not None:  # after the commit
                self.heatmaps.submit(self.detector, job.img16, job.sha256, job.heat)  # never delays a verdict
        raw, recorded = os.fsencode(item.path), None
        if result == "exists" and self.mover.enabled:  # recorded before: a move may have been cut short
            stamp = item.stamp
            found = self._store_call(self.store.file_outcome, raw, stamp.size, stamp.mtime_ns, stamp.inode)
            recorded = found and found.get("moved_to")
        self.mover.move(item, ("processed", date.today().isoformat()), job.sha256, raw, recorded=recorded)
