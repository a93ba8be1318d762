"""Audit requests as the store keeps them (`store.audits`): normal verdicts drawn at random for an operator's review,
so the defects the model passes as normal can be counted on the line (`inspector review sample --normal N`).

A requested content waits in the review queue (store/reviews.py) until it has a standing review; the reviews of
the requested contents are the audit's results. A content is requested once (unique sha256).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from inspector.store.database import Database
from inspector.store.queries import is_reviewed, newest_review_label, window
from inspector.store.schema import audits, images, insert_new, utc_now, verdicts


@dataclass(frozen=True)
class AuditResults:
    """Audit requests of a period: how many were made, how many have a standing review, and how many of those the
    reviewer labelled abnormal (defects the model passed)."""

    requested: int
    reviewed: int
    abnormal: int


def _captured_in(since: datetime | None, until: datetime | None, station: str | None) -> sa.Select:
    """The contents of the electrodes (first files, duplicates left out) recorded in [since, until)."""
    return window(sa.select(images.c.sha256).where(images.c.status != "duplicate"), images.c.first_seen, since, until,
                  images.c.station, station)


class Audits:
    """The audit requests of one store (store.audits); each method is one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    def candidates(self, since: datetime | None = None, until: datetime | None = None,
                   station: str | None = None) -> list[dict]:
        """Electrodes recorded in [since, until) that the model judged normal at capture, whose content has no
        standing review and no audit request: one per content (`image_id`, `sha256`, `path`, `time`, `p_abnormal`),
        in the order they were recorded (so a seeded draw picks the same ones again)."""
        query = (sa.select(images.c.id.label("image_id"), images.c.sha256, images.c.path,
                           images.c.first_seen.label("time"), verdicts.c.p_abnormal)
                 .select_from(images.join(verdicts, images.c.verdict_id == verdicts.c.id))
                 .where(verdicts.c.verdict == "normal", images.c.sha256.in_(_captured_in(since, until, station)),
                        images.c.status != "duplicate", ~is_reviewed(images.c.sha256),
                        images.c.sha256.not_in(sa.select(audits.c.sha256)))
                 .order_by(images.c.id))
        seen: set[str] = set()
        out = []
        with self.db.read() as conn:
            for row in conn.execute(query):
                if row.sha256 not in seen:
                    seen.add(row.sha256)
                    out.append(dict(row._mapping))
        return out

    def request(self, shas: list[str], requested_by: str, seed: int) -> int:
        """Ask for an audit review of each content (one transaction); how many were new (a content already
        requested, by this or another operator meanwhile, is left as it is)."""
        now = utc_now()
        with self.db.write() as conn:
            return sum(insert_new(conn, audits, sha256=sha, requested_at=now, requested_by=requested_by, seed=seed,
                                  station=self.db.station) for sha in shas)

    def results(self, since: datetime | None = None, until: datetime | None = None,
                station: str | None = None) -> AuditResults:
        """The audits of the electrodes recorded in [since, until) and what their standing reviews say."""
        label = newest_review_label(audits.c.sha256)
        query = (sa.select(sa.func.count(), sa.func.count(sa.case((is_reviewed(audits.c.sha256), 1))),
                           sa.func.count(sa.case((label == "abnormal", 1))))
                 .where(audits.c.sha256.in_(_captured_in(since, until, station))))
        with self.db.read() as conn:
            requested, reviewed, abnormal = conn.execute(query).one()
        return AuditResults(int(requested), int(reviewed), int(abnormal))
