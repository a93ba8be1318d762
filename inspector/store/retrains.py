"""The retrains table as the store keeps it (`store.retrains`): one row per `inspector retrain` run, opened when
it starts and closed with its decision, so a run that died shows as started and never finished."""

from __future__ import annotations

import sqlalchemy as sa

from inspector.store.database import Database
from inspector.store.schema import retrains, utc_now


class Retrains:
    """The retrain runs of one store (store.retrains); each method is one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    def start(self) -> int:
        """A run begins here now: its id, for finish."""
        with self.db.write() as conn:
            return int(conn.execute(sa.insert(retrains).values(started_at=utc_now(), station=self.db.station))
                       .inserted_primary_key[0])

    def finish(self, retrain_id: int, decision: str, message: str, current_score_json: str | None,
               candidate_score_json: str | None, candidate_path: str | None) -> None:
        """The run's decision, the scores of both sides (JSON) and the candidate it wrote."""
        with self.db.write() as conn:
            conn.execute(sa.update(retrains).where(retrains.c.id == retrain_id).values(
                finished_at=utc_now(), decision=decision, current_score_json=current_score_json,
                candidate_score_json=candidate_score_json, candidate_path=candidate_path, message=message))
