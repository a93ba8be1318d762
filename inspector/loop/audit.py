"""Audits of normal verdicts: `inspector review sample --normal N` draws N electrodes the model passed as normal
(not reviewed yet) at random and asks for an operator's review of each (store.audits); they wait in the review
queue beside the flagged ones. Their reviews estimate the share of defects the model misses on the line
(trends.AuditEstimate), which cross-validation alone cannot tell about today's production.

The draw is random.Random(seed).sample over the candidates in the order they were recorded, so a seed picks the
same electrodes again from the same candidates (`--dry-run` shows them first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from inspector.loop.review import ReviewError, default_reviewer
from inspector.store.store import Store


@dataclass(frozen=True)
class AuditSample:
    """The electrodes drawn (image_id, sha256, path, time, p_abnormal each), from how many candidates, with which
    seed, and how many were newly requested (0 for a dry run)."""

    picks: list[dict]
    candidates: int
    seed: int
    requested: int


def new_seed() -> int:
    return random.SystemRandom().randrange(1, 10**9)


def sample_normals(store: Store, count: int, since: datetime | None = None, until: datetime | None = None,
                   station: str | None = None, seed: int | None = None, requested_by: str | None = None,
                   dry_run: bool = False) -> AuditSample:
    """Draw `count` distinct normal, unreviewed, not yet requested electrodes of [since, until) and (unless
    dry_run) request an audit review of each. ReviewError when fewer than `count` are there to draw from:
    nothing is requested then (a smaller sample than planned would change what the estimate means)."""
    if count < 1:
        raise ReviewError("--normal must be at least 1")
    candidates = store.audits.candidates(since, until, station)
    if len(candidates) < count:
        raise ReviewError(f"only {len(candidates)} normal verdict(s) without a review or an audit request in this "
                          f"period; ask for at most {len(candidates)} or widen --since/--until")
    seed = new_seed() if seed is None else seed
    picks = sorted(random.Random(seed).sample(candidates, count), key=lambda c: c["image_id"])
    requested = 0 if dry_run else store.audits.request([p["sha256"] for p in picks],
                                                       requested_by or default_reviewer(), seed)
    return AuditSample(picks, len(candidates), seed, requested)
