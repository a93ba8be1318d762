"""What the trends are drawn from (`store.trends`): outcomes and scores over time, the standing reviews of the
verdicts of a period, and verdict counts per window, each one short read transaction. The grouping by local day
and ISO week is loop/trends.py's (a local calendar is the reader's, not the database's)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from inspector.store.database import Database
from inspector.store.queries import window
from inspector.store.schema import WITHDRAWN, images, rejections, reviews, verdicts


def anomaly_kinds(text: str | None) -> tuple[str, ...]:
    """A review's `anomalies` column (the types joined by ';') as the tuple of its types."""
    return tuple(a for a in (text or "").split(";") if a)


CAPTURED = images.join(verdicts, images.c.verdict_id == verdicts.c.id)
NOT_DUPLICATE = images.c.status != "duplicate"


class Trends:
    """The rows behind the report's and the status page's trends (store.trends)."""

    def __init__(self, db: Database):
        self.db = db

    def outcomes(self, since: datetime | None = None, until: datetime | None = None,
                 station: str | None = None) -> list[tuple[datetime, str, bool]]:
        """(when, outcome, duplicate file) of every file recorded in [since, until): its capture verdict (pending
        before one) or `rejected`, as counts.count_electrodes counts them."""
        outcome = sa.func.coalesce(verdicts.c.verdict, "pending")
        files = window(sa.select(images.c.first_seen, outcome, images.c.status == "duplicate")
                        .select_from(images.outerjoin(verdicts, images.c.verdict_id == verdicts.c.id)),
                        images.c.first_seen, since, until, images.c.station, station)
        rejected = window(sa.select(rejections.c.created_at), rejections.c.created_at, since, until,
                           rejections.c.station, station)
        with self.db.read() as conn:
            out = [(when, str(o), bool(d)) for when, o, d in conn.execute(files)]
            out += [(when, "rejected", False) for (when,) in conn.execute(rejected)]
        return out

    def scores(self, since: datetime | None = None, until: datetime | None = None,
               station: str | None = None) -> list[tuple[datetime, float, float]]:
        """(when, P(abnormal), threshold) of each electrode's capture verdict with a probability (a rescan for
        image quality has none), duplicates left out."""
        query = window(sa.select(images.c.first_seen, verdicts.c.p_abnormal, verdicts.c.threshold)
                        .select_from(CAPTURED).where(NOT_DUPLICATE, verdicts.c.p_abnormal.is_not(None)),
                        images.c.first_seen, since, until, images.c.station, station)
        with self.db.read() as conn:
            return [(when, float(p), float(t)) for when, p, t in conn.execute(query)]

    def reviewed(self, since: datetime | None = None, until: datetime | None = None,
                 station: str | None = None) -> list[dict]:
        """The standing review (the newest, not withdrawn) of each electrode captured in [since, until): `time` (of
        the capture), `model_verdict` (what the reviewer saw the model say), `label`, `anomalies` (a tuple)."""
        later = reviews.alias("later")  # queries.newest_review_id, on an alias: reviews is in this FROM already
        newest = sa.select(sa.func.max(later.c.id)).where(later.c.sha256 == images.c.sha256).scalar_subquery()
        query = window(sa.select(images.c.first_seen.label("time"), reviews.c.model_verdict, reviews.c.label,
                                  reviews.c.anomalies)
                        .select_from(images.join(reviews, reviews.c.id == newest))
                        .where(NOT_DUPLICATE, reviews.c.label != WITHDRAWN),
                        images.c.first_seen, since, until, images.c.station, station)
        with self.db.read() as conn:
            return [{"time": r.time, "model_verdict": r.model_verdict, "label": r.label,
                     "anomalies": anomaly_kinds(r.anomalies)} for r in conn.execute(query)]

    def verdict_counts(self, since: datetime | None = None, until: datetime | None = None,
                       station: str | None = None) -> dict[str, int]:
        """Capture verdicts of the electrodes recorded in [since, until) by verdict, duplicates left out."""
        query = window(sa.select(verdicts.c.verdict, sa.func.count()).select_from(CAPTURED).where(NOT_DUPLICATE)
                        .group_by(verdicts.c.verdict), images.c.first_seen, since, until, images.c.station, station)
        with self.db.read() as conn:
            return {str(v): int(n) for v, n in conn.execute(query)}
