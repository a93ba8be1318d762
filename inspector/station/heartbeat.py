"""The daemon's heartbeat: every station.heartbeat_seconds it writes its row in the stations table (seen by
`inspector status` on any host), renews its leases on the files it has claimed, and notices a model that
`inspector retrain` promoted for the plant (on any host) to reload it from model.path.

Its own thread: a network database that does not answer must not stall the scanner. A failed beat is
logged once and retried at the next one; the scoring side pauses on its own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Protocol

from inspector import __version__
from inspector.base.config import Config
from inspector.base.errors import InspectorError, StoreError
from inspector.base.paths import display_path

if TYPE_CHECKING:
    from inspector.station.intake import ScoringModel
    from inspector.store.store import Store

log = logging.getLogger("inspector.daemon")

STALE_BEATS = 3  # a station not seen for this many heartbeats is shown as not responding


def is_live(row: dict, now: datetime) -> bool:
    """A heartbeat row of a daemon still running: not stopped, seen within STALE_BEATS beats."""
    if row.get("stopped_at") is not None:
        return False
    return now - row["last_seen"] <= timedelta(seconds=STALE_BEATS * row["heartbeat_seconds"])


def refuse_taken_name(store: Store, name: str, pid_alive: Callable[[int], bool]) -> None:
    """Two running daemons under one station name would share their claims: refuse the second."""
    row, now = store.station_row(name)
    if row is None or not is_live(row, now):
        return
    same_host = row["host"] == socket.gethostname()
    if not same_host or (row["pid"] != os.getpid() and pid_alive(row["pid"])):
        age = (now - row["last_seen"]).total_seconds()
        raise InspectorError(f"station name {name!r} is in use by a running inspector on {row['host']} "
                             f"(pid {row['pid']}, last seen {age:.0f} s ago): give each daemon its own "
                             "station.name in config.toml")


class Station(Protocol):
    """What the heartbeat reads of its daemon (daemon.Daemon); `run_id` names its claims, `reload` asks it to
    reload its model."""

    cfg: Config
    store: Store
    run_id: str
    root: str
    reload: threading.Event

    @property
    def detector(self) -> ScoringModel: ...

    @property
    def counts(self) -> dict[str, int]: ...

    @property
    def paused_reason(self) -> str | None: ...

    def queued(self) -> int: ...

    def status_line(self) -> str: ...


class Heartbeat:
    """The heartbeat thread of one daemon."""

    def __init__(self, daemon: Station):
        self.daemon = daemon
        self.cfg = daemon.cfg
        self.store = daemon.store
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="inspector-heartbeat", daemon=True)
        self.failing = False
        self._model_stamp = self._stat_model()  # model.path's stat when it was last loaded or tried

    def start(self) -> None:
        self.beat()  # the station shows up at once
        self.thread.start()

    def close(self) -> None:
        """Stop beating and mark the station stopped (a clean exit; a killed daemon just stops beating)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        try:
            self.store.station_stopped(self.cfg.station_name, self.daemon.run_id)
        except StoreError as exc:
            log.warning("could not mark station %s stopped: %s", self.cfg.station_name, exc)

    def _run(self) -> None:
        while not self.stop.wait(self.cfg.station.heartbeat_seconds):
            self.beat()

    def beat(self) -> None:
        d = self.daemon
        try:
            self.store.beat(dict(
                name=self.cfg.station_name, host=socket.gethostname(), pid=os.getpid(), run_id=d.run_id,
                capture_dir=display_path(d.root), model_sha256=d.detector.sha256, inspector_version=__version__,
                heartbeat_seconds=self.cfg.station.heartbeat_seconds, scored=d.counts["scored"],
                rejected=d.counts["rejected"], queued=d.queued(), paused_reason=d.paused_reason,
                status=d.status_line()))
            self.store.renew_claims(d.run_id, self.cfg.station.claim_lease_seconds)
            self._follow_promotion()
        except StoreError as exc:
            if not self.failing:
                log.warning("heartbeat not written (retrying every %g s): %s", self.cfg.station.heartbeat_seconds, exc)
            self.failing = True
            return
        if self.failing:
            log.info("heartbeat written again")
            self.failing = False

    def _follow_promotion(self) -> None:
        """The plant's model changed (a retrain on any station): reload model.path once it has changed."""
        promoted = self.store.promoted_model()
        if promoted is None or promoted["sha256"] == self.daemon.detector.sha256:
            return
        stamp = self._stat_model()
        if stamp is None or stamp == self._model_stamp:
            return  # tried this file already: it is not (yet) the promoted model
        self._model_stamp = stamp
        log.info("the plant's model is now %s (promoted by %s); reloading %s", promoted["sha256"][:12],
                 promoted["station"] or "a retrain", self.cfg.model.path)
        self.daemon.reload.set()

    def _stat_model(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.cfg.model.path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino
