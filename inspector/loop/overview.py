"""What a station is doing now, as `inspector status` prints it and the web's status page shows it: the model in
use, today's and total counts, every station's heartbeat, files waiting in the capture folder, degraded folders."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime

from inspector.base.config import Config
from inspector.base.paths import display_path
from inspector.loop.trends import AbnormalCheck, AuditEstimate, abnormal_check, audit_estimate
from inspector.store.store import Store
from inspector.base.times import today_start_utc


@dataclass(frozen=True)
class Overview:
    """One consistent look at the database (and this host's capture folder); `station`: that station only."""

    counts: dict  # Queries.status_counts
    stations: list[dict]  # station_states, filtered to `station` when given
    plant_model: dict | None
    waiting: int | None  # files in this host's capture folder with no outcome; None: no such folder here
    degraded: list[str]
    station: str | None
    database: str
    to_review: int  # abnormal and rescan verdicts, and audits, without a standing decision (the review queue)
    abnormal: AbnormalCheck  # today's abnormal rate against the trailing days' (the alarm)
    audit: AuditEstimate  # the miss rate the audits of normal verdicts estimate (all of them)

    @property
    def model(self) -> dict | None:
        return self.counts["model"]


def station_overview(cfg: Config, store: Store, station: str | None = None) -> Overview:
    """Everything `inspector status` shows, read from the store (and the capture folder, when this host has it)."""
    today = today_start_utc()
    counts = store.status_counts(today, station)
    beats, now = store.station_rows()
    stations = [s for s in station_states(beats, now, counts) if station is None or s["name"] == station]
    return Overview(counts, stations, store.promoted_model(), count_waiting(cfg, store), degraded_folders(cfg),
                    station, store.where, store.reviews.count_pending(station),
                    abnormal_check(store, counts["verdicts_today"], today, station, cfg.alerts),
                    audit_estimate(store, station=station))


def count_waiting(cfg: Config, store: Store) -> int | None:
    """Files in the capture folder with no outcome yet; None when the folder does not exist.

    One query per few hundred files (a folder of thousands waiting answers in well under a second).
    """
    from inspector.station.watcher import iter_capture_files, probe

    if not os.path.isdir(cfg.watch.capture_dir):
        return None
    root = os.path.realpath(cfg.watch.capture_dir)  # the daemon records paths under the real path
    stats = []
    for path in iter_capture_files(root, cfg.watch.patterns):
        found = probe(path, root)
        if found is not None:
            stats.append((os.fsencode(path), found[0].size, found[0].mtime_ns))
    return len(set(stats) - store.known_files(stats))


def degraded_folders(cfg: Config) -> list[str]:
    """With after = "move": processed/ or quarantine/ that are not real folders (the daemon refuses to move there)."""
    if cfg.watch.after != "move":
        return []
    problems = []
    for name in ("processed", "quarantine"):
        folder = os.path.join(cfg.watch.capture_dir, name)
        try:
            mode = os.lstat(folder).st_mode
        except OSError:
            continue  # created on the first move
        if not stat.S_ISDIR(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a folder"
            problems.append(f"{display_path(folder)} is {kind}: files stay in the capture folder until it is "
                            "a real folder inside it")
    return problems


def station_states(rows: list[dict], now: datetime, counts: dict) -> list[dict]:
    """Each station's heartbeat as `status` shows it: running, not responding (no beat for 3 heartbeats) or
    stopped, with its files recorded today."""
    from inspector.station.heartbeat import is_live

    out = []
    for row in rows:
        state = "stopped" if row["stopped_at"] is not None else "running" if is_live(row, now) else "not responding"
        out.append(dict(row, state=state, seen_seconds_ago=max(0.0, (now - row["last_seen"]).total_seconds()),
                        scored_today=counts["images_today_by_station"].get(row["name"], 0),
                        rejected_today=counts["rejections_today_by_station"].get(row["name"], 0)))
    return out
