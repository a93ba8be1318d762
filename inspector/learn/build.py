"""Train the detector the station uses: the threshold from out-of-fold predictions (crossval), the
fit on every image (train), the quality gate, and the artifact (model).

Above crossval and train, so that neither imports the other the wrong way round.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from inspector.data import metrics

from inspector.imaging import quality
from inspector.base.config import Config
from inspector.learn.crossval import cross_validate
from inspector.data.dataset import Dataset
from inspector.base.errors import InspectorError
from inspector.learn.features import EmbedStats
from inspector.imaging.modelmeta import ModelMeta
from inspector.learn.normalmap import MIN_NORMALS
from inspector.base.pipeline import ordered_map
from inspector.learn.train import FitResult, build_net_on, fit, optimizer_label, require_method, resolve_cache
from inspector.data.views import ImageSource, View, fit_view


@dataclass
class TrainOutcome:
    """What `inspector train` reports: the file, its sha256, threshold and how it was chosen."""

    path: Path
    sha256: str
    meta: ModelMeta
    fit: FitResult
    oof: dict | None = None
    oof_p: np.ndarray | None = None  # out-of-fold P(abnormal) per image when a target recall was set


def fit_quality_gate(source: ImageSource, idx: Sequence[int], view: View, cfg: Config) -> dict:
    """The quality gate's limits over the training images (quality.fit); {} when the gate is off."""
    if not cfg.quality.enabled:
        return {}
    images = ordered_map(source.read16, [int(i) for i in idx], source.workers)
    return quality.fit(images, view.conversion.window, cfg.quality.clipped_fraction)


def train_model(dataset: Dataset, out: Path, method: str, cfg: Config, device: torch.device, target_recall: float,
                warn: Callable[[str], None] | None = None, normals_only: bool = False) -> TrainOutcome:
    """Train on every image; with target_recall, the threshold comes from out-of-fold predictions first.

    The normal model (normalmap.py) is fitted on the normals in every case; `normals_only` trains no head
    and scores by the map alone (model.score "map"): a new line with no abnormal electrode yet.
    """
    from inspector.learn.model import save_model
    from inspector.learn.normalfit import fit_normal

    if normals_only:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, score="map"))

    require_method(method)
    if not 0 <= target_recall <= 1:
        raise InspectorError(f"--target-recall must be between 0 and 1, got {target_recall}")
    normals = int((dataset.y == 0).sum())  # the count fit_normal checks, known before any image is read
    if normals_only and normals < MIN_NORMALS:
        raise InspectorError(f"--normals-only needs at least {MIN_NORMALS} normal images to fit the normal model; "
                             f"{dataset.root} has {normals}")
    warn = warn or (lambda m: print(m, file=sys.stderr))
    source = ImageSource.of(dataset, cfg)
    store, use_cache = resolve_cache(cfg, dataset, True, warn)
    stats = EmbedStats()
    threshold, threshold_source, oof_info, p = 0.5, "default 0.5", None, None
    if target_recall > 0 and normals_only and not (dataset.y == 1).any():
        warn(
            "note: no abnormal image to aim a recall at: the threshold stays at 0.5, the held-out normals' 99th "
            "percentile of the map score")
        target_recall = 0.0
    if target_recall > 0:
        res = cross_validate(dataset, [method], cfg, device, use_cache, warn=lambda m: None, stats=stats)
        y, p = dataset.y, res.methods[method].scores[cfg.model.score]
        threshold = metrics.threshold_for_recall(y, p, target_recall)
        at = metrics.counts_at_threshold(y, p, threshold)
        threshold_source = (f"out-of-fold recall >= {target_recall:g} (leave-one-bundle-out over "
                            f"{len(dataset.bundles)} bundles; achieved recall {at.recall:.4f})")
        oof_info = {"target_recall": target_recall, "threshold": threshold, "counts": at.to_dict(),
                    "roc_auc": metrics.roc_auc(y, p),
                    "pooled_at_0.5": res.methods[method].pooled.to_dict()}
    idx = np.arange(len(dataset))
    view = fit_view(source, idx, method, cfg)
    net = build_net_on(cfg, device)
    if normals_only:
        result = FitResult()
    else:
        result = fit(net, source, idx, view, cfg, device, store, use_cache, stats, desc=f"train {method}")
    normal = fit_normal(net, source, idx, view, cfg, device)
    score = cfg.model.score
    if not normal:  # not with normals_only: checked above
        warn(
            f"warning: fewer than {MIN_NORMALS} normal images: no normal model, so no maps or boxes, and the model "
            "scores by its head alone")
        score = "head"
    if not normals_only and not result.learned:
        warn(
            f"warning: training ended no better than the class prior ({result.summary()}); the detector has "
            "learned (almost) nothing: check the labels, or try model.features, convert.method or more steps")
    meta = ModelMeta(**view.conversion.to_meta(), input_size=tuple(cfg.model.input_size),
                     threshold=float(threshold), threshold_source=threshold_source, freeze=cfg.model.freeze,
                     weights=cfg.model.weights, features=net.embedding.stages, pooling=net.embedding.pooling,
                     head=net.head_kind, trained=True, train_fingerprint=dataset.fingerprint(),
                     normal=normal, score=score,
                     metrics={"epochs": cfg.train.epochs, "epochs_run": len(result.losses), "steps": result.steps,
                              "final_loss": result.final_loss, "prior_loss": result.prior_loss,
                              "class_weights": cfg.train.class_weights, "seed": cfg.train.seed,
                              "optimizer": cfg.train.optimizer, "optimizer_settings": optimizer_label(cfg),
                              "learning_rate": cfg.train.learning_rate, "weight_decay": cfg.train.weight_decay,
                              "min_steps": cfg.train.min_steps, "images": len(dataset), "bundles": dataset.bundles,
                              "out_of_fold": oof_info},
                     quality=fit_quality_gate(source, idx, view, cfg))
    sha = save_model(out, net.cpu(), meta)
    return TrainOutcome(Path(out), sha, meta, result, oof_info, p)
