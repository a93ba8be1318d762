"""`inspector rescore`: recorded images scored again by another model, in bulk, beside their old verdicts.

Each recorded content (sha256) gets one verdict per model, as at capture: the new model's is added,
the capture verdict stays. The file is read where it was last recorded (its processed/ place, else
its capture path) and used only when its content still hashes to the recorded sha256. The position
is the database itself: what already has a verdict of the model is skipped, so a run stopped at any
point (Ctrl-C, a crash) resumes where it stopped, and a second run does nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from inspector.store.store import Store

COMMIT_EVERY = 64  # rescored verdicts per transaction: an interrupted run loses at most this many


@dataclass
class RescoreSummary:
    model_sha256: str
    todo: int = 0
    scored: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (sha256, why)
    changes: Counter = field(default_factory=Counter)  # (old verdict, new verdict) -> contents
    new_verdicts: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """What a process engineer reads after the run."""
        out = [f"model {self.model_sha256[:12]}: {self.scored} of {self.todo} recorded image(s) rescored"
               + (f", {len(self.missing)} not found" if self.missing else "")]
        if self.scored:
            out.append("new verdicts: " + ", ".join(f"{v} {n}" for v, n in sorted(self.new_verdicts.items())))
            changed = {k: n for k, n in self.changes.items() if k[0] != k[1]}
            kept = sum(n for k, n in self.changes.items() if k[0] == k[1])
            out.append(f"unchanged against the capture verdict: {kept}; changed: "
                       + (", ".join(f"{a} -> {b} {n}" for (a, b), n in sorted(changed.items())) or "none"))
        for sha, why in self.missing[:10]:
            out.append(f"not rescored {sha[:12]}: {why}")
        if len(self.missing) > 10:
            out.append(f"... and {len(self.missing) - 10} more not found")
        return out


def read_recorded(entry: dict, max_height: int, max_width: int) -> np.ndarray:
    """The image of a recorded content from the first place that still holds exactly that content."""
    from inspector.imaging.read import load_recorded, read_image_bytes

    data, place = load_recorded(entry["places"], entry["sha256"])
    return read_image_bytes(data, place, max_height, max_width)


def rescore(store: Store, detector: Any, since: datetime | None, until: datetime | None, max_height: int,
            max_width: int, workers: int, progress: Callable[[int], Any] | None = None) -> RescoreSummary:
    """Score every recorded content without a verdict of `detector`'s model; commit in batches."""
    from inspector.learn.bulk import score_items
    from inspector.base.paths import display_path
    from inspector.store.store import RescoreRecord, Verdict, region_fields

    store.record_model(detector.sha256, detector.path, detector.meta.to_json())
    todo = store.rescore_todo(detector.sha256, since, until)
    summary = RescoreSummary(detector.sha256, todo=len(todo))
    bar = progress(len(todo)) if progress else None
    pending: list[tuple[RescoreRecord, str]] = []

    def commit() -> None:
        store.record_outcomes([record for record, _ in pending])
        for record, old in pending:
            summary.scored += 1
            summary.new_verdicts[record.verdict.verdict] += 1
            summary.changes[(old, record.verdict.verdict)] += 1
        pending.clear()

    try:
        for scored in score_items(detector, todo, lambda e: read_recorded(e, max_height, max_width),
                                  lambda e: display_path(e["places"][0]) if e["places"] else e["sha256"], workers):
            entry, pred = scored.item, scored.prediction
            if scored.error is not None:
                summary.missing.append((entry["sha256"], scored.error.message))
            else:
                verdict = Verdict(entry["sha256"], detector.sha256, pred.p_abnormal, pred.verdict, pred.reason,
                                  pred.threshold, detector.meta.method, inference_seconds=pred.seconds,
                                  **region_fields(pred.regions))
                pending.append((RescoreRecord(verdict), entry["verdict"]))
                if len(pending) >= COMMIT_EVERY:
                    commit()
            if bar is not None:
                bar.update(1)
        commit()
    finally:
        if bar is not None:
            bar.close()
    return summary
