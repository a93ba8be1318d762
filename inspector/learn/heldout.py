"""Out-of-fold scores of the normal model beside the head's, and where its maps peak on held-out defects.

For each fold of `inspector cv`: the normal model is fitted on the fold's training normals (normalmap.fit,
through its sums: the features of every image are computed once per view), each held-out image gets its
map, its map score as a probability (normalmap.map_probability) and the fusion of that with the head's
P(abnormal) (their mean); a fold with fewer than MIN_NORMALS training normals has no map score (NaN, left out
of its figures) and its fusion is the head's. Held-out abnormal images with a defect mask (synth writes them) are scored for
localization (localize.score_map): does the map's peak lie on the defect, how much of its mass does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from inspector.data import localize

from inspector.learn import normalmap
from inspector.base.config import SCORES, Config
from inspector.data.dataset import Dataset

if TYPE_CHECKING:
    import torch

    from inspector.data.dataset import Fold
    from inspector.data.views import ImageSource, View


def fuse(p_head: np.ndarray, p_map: np.ndarray) -> np.ndarray:
    """The fusion score: the mean of the head's P(abnormal) and the map's."""
    return (np.asarray(p_head, dtype=np.float64) + np.asarray(p_map, dtype=np.float64)) / 2.0


def mask_hit(dataset: Dataset, i: int, heat: np.ndarray, cal: dict) -> tuple[str, localize.Hit] | None:
    """(anomaly types, localize.Hit) of image i's map against its defect mask: the peak the verdict reports (the map's
    maximum) and the mass of the map as shown (normalmap.excess);
    None for an image that is not abnormal or has no (or an empty) mask."""
    path = dataset.mask_path(i) if dataset.samples[i].label == "abnormal" else None
    if path is None:
        return None
    mask = localize.read_mask(path)
    if not mask.any():
        return None
    return ";".join(dataset.samples[i].anomalies), localize.score_map(heat, mask, shown=normalmap.excess(heat, cal))


class HeldOutMaps:
    """The normal model's side of a cross-validation: its scores per fold and the localization figures."""

    def __init__(self, dataset: Dataset, source: "ImageSource", cfg: Config, device: "torch.device"):
        self.dataset, self.source, self.cfg, self.device = dataset, source, cfg, device
        self.stages = tuple(s for s in normalmap.MAP_STAGES if s in cfg.model.map_stages)
        self._features: dict[tuple, normalmap.NormalFeatures] = {}
        self.hits: list[tuple[str, localize.Hit]] = []

    def features(self, net, view: "View") -> normalmap.NormalFeatures:
        """Every image's map features under `view` (computed once per distinct view)."""
        from inspector.learn.normalfit import map_features

        key = (view.method, view.window, view.clahe)
        if key not in self._features:
            self._features[key] = map_features(net, self.source, range(len(self.dataset)), view, self.cfg,
                                               self.device, self.stages, desc="map features")
        return self._features[key]

    def score_fold(self, net, view: "View", fold: "Fold", p_head: np.ndarray) -> dict[str, np.ndarray]:
        """{score name: P(abnormal) of the fold's held-out images}; records their localization."""
        import torch

        y = self.dataset.y
        train_normals = [int(i) for i in fold.train_idx if y[int(i)] == 0]
        p_head = np.asarray(p_head, dtype=np.float64)
        if len(train_normals) < normalmap.MIN_NORMALS:  # no normal model: the map has no score, fusion is the head
            return {"head": p_head, "map": np.full(len(p_head), np.nan), "fusion": p_head}
        feats = self.features(net, view)
        model, cal = normalmap.fit(feats, train_normals)
        test = [int(i) for i in fold.test_idx]
        with torch.no_grad():
            heat = model.from_features(feats.subset(test)).numpy()
        p_map = normalmap.map_probability(normalmap.image_score(heat), cal)
        self.hits.extend(hit for row, i in enumerate(test) if (hit := mask_hit(self.dataset, i, heat[row], cal)))
        return {"head": p_head, "map": p_map, "fusion": fuse(p_head, p_map)}

    def take_hits(self) -> list[tuple[str, localize.Hit]]:
        """The localization of the folds scored so far (then forgotten): (anomaly types, Hit) per image."""
        hits, self.hits = self.hits, []
        return hits
