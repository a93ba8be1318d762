"""A plant of stations on one database: claims on files in flight, station heartbeats, plant-wide locks.

A mixin of store.Store (like queries.Queries). Every time compared across stations is the database's
clock (schema.db_now), so hosts whose clocks disagree still agree on who holds what.

Claims: a daemon claims a settled file (its path bytes, size, mtime and inode) before it hashes it:
INSERT ... ON CONFLICT DO NOTHING on the claims table's unique key, or, when the row is there and its
lease has run out, an UPDATE that takes it over only while it is still expired (one statement, so two
daemons cannot both take it). The daemon renews its leases every heartbeat; the transaction that commits
the file's outcome checks that the daemon still holds the claim (`holds_claim`), so a file a dead daemon's
claim was taken from is recorded once, by the daemon that took it; the claim is given up (its lease ended:
`drop_claim`) once the file is moved, so no other daemon finishes that move meanwhile. Nothing is ever deleted: a station's role needs only SELECT, INSERT and UPDATE. A row
stays per file version claimed (like its images row); a free claim is taken again by the next daemon,
which then finds the file's outcome recorded (store.known_file) and leaves it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from inspector.base.errors import InspectorError
from inspector.store.records import FileVersion
from inspector.store.schema import claims, db_now, insert_new, locks, models, stations, to_path_raw


def _claim_key(file: FileVersion) -> sa.ColumnElement:
    return sa.and_(claims.c.path_raw == to_path_raw(file.path_raw), claims.c.size == file.size,
                   claims.c.mtime_ns == file.mtime_ns, claims.c.inode == file.inode)


LOCK_LEASE_SECONDS = 60.0  # a plant lock whose holder died is free this long after its last renewal
FREE = datetime(1970, 1, 1, tzinfo=timezone.utc)  # the lease of a claim given up: expired for everyone


def holds_claim(conn: Connection, file: FileVersion, run_id: str) -> bool:
    """This daemon still holds its claim on the file: checked, and the row locked, in the transaction that records
    the file's outcome. The claim is kept until the file is moved (no other daemon finishes that move meanwhile),
    then given up with release_claims."""
    return conn.execute(sa.update(claims).where(_claim_key(file), claims.c.run_id == run_id)
                        .values(run_id=run_id)).rowcount == 1


def drop_claim(conn: Connection, file: FileVersion, run_id: str) -> bool:
    """Give up this daemon's claim on a file: False when the daemon no longer holds it (taken over after its lease
    ran out)."""
    return conn.execute(sa.update(claims).where(_claim_key(file), claims.c.run_id == run_id)
                        .values(run_id="", lease_until=FREE)).rowcount == 1


class Fleet:
    """Claims, heartbeats and locks; each method is one short transaction of the Store it is mixed into."""

    # ---- claims on files ----------------------------------------------------------------------
    def claim(self, file: FileVersion, run_id: str, lease_seconds: float) -> str | None:
        """Claim a file version for this daemon (run_id); None when it is ours now, else the station holding it.

        A claim of this same run (the file offered again) is renewed and stays ours.
        """
        with self.write() as conn:
            now = db_now(conn)
            until = now + timedelta(seconds=lease_seconds)
            key = _claim_key(file)
            if insert_new(conn, claims, path_raw=to_path_raw(file.path_raw), size=file.size, mtime_ns=file.mtime_ns,
                          inode=file.inode, station=self.station or "", run_id=run_id, claimed_at=now,
                          lease_until=until):
                return None
            taken = conn.execute(sa.update(claims).where(key, sa.or_(claims.c.lease_until < now,
                                                                     claims.c.run_id == run_id))
                                 .values(station=self.station or "", run_id=run_id, claimed_at=now,
                                         lease_until=until)).rowcount
            if taken:
                return None
            holder = conn.execute(sa.select(claims.c.station).where(key)).scalar()
            return holder if holder is not None else "another station"  # committed meanwhile: not ours

    def release_claims(self, files: list[FileVersion], run_id: str) -> None:
        """Give up claims on files this daemon leaves without an outcome (changed, gone, incomplete)."""
        if not files:
            return
        with self.write() as conn:
            for file in files:
                drop_claim(conn, file, run_id)

    def renew_claims(self, run_id: str, lease_seconds: float) -> int:
        """Push every lease of this daemon forward (its heartbeat); how many it holds."""
        with self.write() as conn:
            until = db_now(conn) + timedelta(seconds=lease_seconds)
            return conn.execute(sa.update(claims).where(claims.c.run_id == run_id)
                                .values(lease_until=until)).rowcount

    def release_station_claims(self, station: str, keep_run_id: str) -> int:
        """A restarted station's claims from its earlier, dead run (same name: its pid file proved it gone)."""
        with self.write() as conn:
            return conn.execute(sa.update(claims).where(claims.c.station == station, claims.c.run_id != keep_run_id,
                                                        claims.c.run_id != "")
                                .values(run_id="", lease_until=FREE)).rowcount

    # ---- heartbeats ---------------------------------------------------------------------------
    def beat(self, row: dict) -> None:
        """Write this station's heartbeat (row: the stations columns but last_seen); one row per station name."""
        with self.write() as conn:
            now = db_now(conn)
            values = dict(row, last_seen=now, stopped_at=None)
            if not insert_new(conn, stations, started_at=now, **values):
                conn.execute(sa.update(stations).where(stations.c.name == row["name"]).values(**values))

    def station_stopped(self, name: str, run_id: str) -> None:
        with self.write() as conn:
            conn.execute(sa.update(stations).where(stations.c.name == name, stations.c.run_id == run_id)
                         .values(stopped_at=db_now(conn), queued=0, status="stopped"))

    def station_rows(self) -> tuple[list[dict], datetime]:
        """Every station's heartbeat, by name, and the database's clock to age them against."""
        with self.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(stations).order_by(stations.c.name))]
            return rows, db_now(conn)

    def station_row(self, name: str) -> tuple[dict | None, datetime]:
        with self.read() as conn:
            row = conn.execute(sa.select(stations).where(stations.c.name == name)).first()
            return (dict(row._mapping) if row else None), db_now(conn)

    # ---- plant-wide locks ---------------------------------------------------------------------
    def take_lock(self, name: str, holder: str, host: str, pid: int, lease_seconds: float) -> dict | None:
        """Take the lock `name` (or one whose holder stopped renewing); None when taken, else the holder's row."""
        with self.write() as conn:
            now = db_now(conn)
            values = dict(holder=holder, station=self.station or host, host=host, pid=pid, since=now,
                          lease_until=now + timedelta(seconds=lease_seconds))
            if insert_new(conn, locks, name=name, **values):
                return None
            if conn.execute(sa.update(locks).where(locks.c.name == name, locks.c.lease_until < now)
                            .values(**values)).rowcount:
                return None
            row = conn.execute(sa.select(locks).where(locks.c.name == name)).first()
            return dict(row._mapping) if row else {"host": "another host", "since": now, "station": "?"}

    def renew_lock(self, name: str, holder: str, lease_seconds: float) -> bool:
        with self.write() as conn:
            until = db_now(conn) + timedelta(seconds=lease_seconds)
            return conn.execute(sa.update(locks).where(locks.c.name == name, locks.c.holder == holder)
                                .values(lease_until=until)).rowcount == 1

    def release_lock(self, name: str, holder: str) -> None:
        with self.write() as conn:
            conn.execute(sa.update(locks).where(locks.c.name == name, locks.c.holder == holder)
                         .values(holder="", lease_until=FREE))

    # ---- the plant's model --------------------------------------------------------------------
    def promoted_model(self) -> dict | None:
        """The model `inspector retrain` promoted last (sha256, path, promoted_at, station), None before any."""
        with self.read() as conn:
            row = conn.execute(sa.select(models.c.sha256, models.c.path, models.c.promoted_at, models.c.station)
                               .where(models.c.promoted_at.is_not(None))
                               .order_by(models.c.promoted_at.desc()).limit(1)).first()
            return dict(row._mapping) if row else None


class LockBusy(InspectorError):
    """A plant-wide job already runs elsewhere (the message names where and since when)."""


@contextlib.contextmanager
def plant_lock(store: Fleet, name: str, what: str, lease_seconds: float = LOCK_LEASE_SECONDS) -> Iterator[None]:
    """Hold the plant-wide lock `name` while the block runs (one `what` at a time for every station on this
    database): a row lease renewed every third of its length by a thread, given up at the end; a holder that
    died is taken over once its lease has run out. Raises LockBusy naming the host and time of the holder."""
    holder = uuid.uuid4().hex
    found = store.take_lock(name, holder, socket.gethostname(), os.getpid(), lease_seconds)
    if found is not None:
        since = found["since"].astimezone().strftime("%Y-%m-%d %H:%M:%S")
        raise LockBusy(f"another {what} is running on {found['host']} since {since} (station {found['station']}, "
                       f"pid {found['pid']}); this one exits without doing anything")
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_seconds / 3):
            try:
                store.renew_lock(name, holder, lease_seconds)
            except InspectorError:  # the database is away: try again; the lease covers two misses
                continue

    thread = threading.Thread(target=renew, name=f"inspector-lock-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(InspectorError):  # not released: it runs out after its lease
            store.release_lock(name, holder)
