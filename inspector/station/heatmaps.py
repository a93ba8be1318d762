"""Heat maps for committed abnormal verdicts: drawn on the daemon's scoring thread in idle time and
recorded in the store (daemon scheduling; the maps themselves are explain.py's: the normal model's map from
the verdict's own pass, or Grad-CAM for a model without one)."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inspector.learn.explain import explain_image, heatmap_path, overlay_png, write_overlay

if TYPE_CHECKING:
    from inspector.station.intake import ScoringModel
    from inspector.store.store import Store

log = logging.getLogger("inspector.heatmaps")


def explain_and_record(detector: ScoringModel, store: Store, img16: np.ndarray, sha256: str,
                       state_dir: str | os.PathLike, heat: np.ndarray | None = None) -> Path:
    """Heat map for a committed verdict: compute, save under the state folder, attach to the verdict.

    Nothing on the network is modified, and concurrent Grad-CAM calls are serialized by a module
    lock, so a caller on another thread than the one scoring is safe (the daemon draws heat maps
    on its scoring thread, see HeatmapQueue). explain_image draws with an infer.Detector's network.
    """
    explanation = explain_image(detector, img16, heat=heat)  # heat: the verdict's own map, no second pass
    boxes = explanation.regions.boxes if explanation.regions is not None else ()
    png = overlay_png(explanation.img8, explanation.cam, boxes)
    out = write_overlay(png, heatmap_path(state_dir, sha256))
    store.set_heatmap(sha256, detector.sha256, str(out), hashlib.sha256(png).hexdigest())  # the PNG as drawn
    return out


class HeatmapQueue:
    """Heat maps owed to committed abnormal verdicts, drawn by the scoring thread when no file waits.

    No thread of its own: every torch call of the daemon stays on its worker thread (a second
    thread running torch slowed every forward pass, see daemon.off_main_thread and bench/torch_threads.py). Evidence
    waits for idle time instead; a full queue drops the heat map (logged), never the verdict:
    `inspector explain` redraws it.
    """

    def __init__(self, store: Store, state_dir: str | os.PathLike, maxsize: int = 32):
        self.store = store
        self.state_dir = state_dir
        self.maxsize = maxsize
        self.jobs: collections.deque[tuple[ScoringModel, np.ndarray, str, np.ndarray | None]] = collections.deque()
        self.done = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self.jobs)

    def submit(self, detector: ScoringModel, img16: np.ndarray, sha256: str, heat: np.ndarray | None = None) -> bool:
        """Owe a heat map; `heat`: the normal model's map from the verdict's pass (drawing it runs no network)."""
        if len(self.jobs) >= self.maxsize:
            log.warning("heat map queue full; no heat map for %s (run `inspector explain` for it)", sha256[:12])
            return False
        self.jobs.append((detector, img16, sha256, heat))
        return True

    def run_one(self) -> bool:
        """Draw the oldest heat map owed; False when none was waiting. Never raises for a bad one."""
        if not self.jobs:
            return False
        detector, img16, sha256, heat = self.jobs.popleft()
        try:
            out = explain_and_record(detector, self.store, img16, sha256, self.state_dir, heat)
            self.done += 1
            log.info("heat map %s for %s", out, sha256[:12])
        except Exception as exc:  # evidence is a courtesy: never let it stop the station
            self.failed += 1
            log.error("heat map for %s failed: %s", sha256[:12], exc)
        return True

    def drain(self, seconds: float) -> int:
        """Draw what is owed for up to `seconds` (on stop); returns how many were left undrawn."""
        deadline = time.monotonic() + seconds
        while self.jobs and time.monotonic() < deadline:
            self.run_one()
        if self.jobs:
            log.warning("stopping with %d heat map(s) not drawn; `inspector explain` draws them", len(self.jobs))
        return len(self.jobs)
