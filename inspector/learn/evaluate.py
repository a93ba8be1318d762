"""`inspector evaluate`: a trained model as it is (its window, threshold and quality gate) on a labeled set,
per bundle and pooled, with the images it got wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.data import metrics
from inspector.base.config import Config
from inspector.learn.crossval import MARK_NOTES, ba_cell
from inspector.data.dataset import Dataset
from inspector.data.metrics import Counts


def evaluate_model(model_path: Path, dataset: Dataset, cfg: Config) -> dict:
    """The model as it is (its window, threshold, quality gate) on a labeled set, per bundle and pooled."""
    from inspector.learn.bulk import score_items
    from inspector.imaging.read import read_image
    from inspector.learn.infer import Detector
    from inspector.base.pipeline import worker_count

    det = Detector.load(model_path, device=cfg.model.device, batch_size=cfg.infer.batch_size)
    samples = list(dataset.samples)
    preds = []
    for scored in score_items(det, samples, lambda s: read_image(s.path, cfg.imaging.max_height, cfg.imaging.max_width),
                              lambda s: s.rel, worker_count(cfg.infer.workers)):
        if scored.error is not None:  # load_dataset has read every image: one changed since
            raise scored.error
        preds.append(scored.prediction)
    images = [{"path": s.rel, "bundle": s.bundle, "label": s.label, "p_abnormal": p.p_abnormal,
               "verdict": p.verdict, "reason": p.reason,
               **(p.regions.to_json() if p.regions is not None else {"peak": None, "boxes": None})}
              for s, p in zip(samples, preds)]
    scored = [im for im in images if im["verdict"] != "rescan"]

    def summary(rows: list[dict]) -> dict:
        y = np.array([int(r["label"] == "abnormal") for r in rows], dtype=np.int64)
        p = np.array([r["p_abnormal"] for r in rows], dtype=np.float64)
        counts = metrics.counts_at_threshold(y, p, det.meta.threshold) if rows else Counts()
        return {"images": len(rows), **counts.to_dict(), "roc_auc": metrics.roc_auc(y, p) if rows else None}

    bundles = sorted({im["bundle"] for im in images})
    per_bundle = [{"bundle": b, **summary([r for r in scored if r["bundle"] == b])} for b in bundles]
    pooled = summary(scored)  # its counts equal the sum over bundles
    wrong = [im for im in scored if (im["verdict"] == "abnormal") != (im["label"] == "abnormal")]
    return {
        "kind": "inspector-evaluate",
        "model": {"path": str(model_path), "sha256": det.sha256, "method": det.meta.method,
                  "window": list(det.meta.window) if det.meta.window else None, "threshold": det.meta.threshold,
                  "threshold_source": det.meta.threshold_source, "trained": det.meta.trained},
        "dataset": {"root": str(dataset.root), "fingerprint": dataset.fingerprint(), "images": len(dataset)},
        "bundles": per_bundle,
        "pooled": pooled,
        "localization": localization(det, dataset, preds),
        "misclassified": sorted(wrong, key=lambda im: (im["bundle"], im["path"])),
        "rescan": [im for im in images if im["verdict"] == "rescan"],
        "images": images,
    }


def localization(det, dataset: Dataset, preds: list) -> dict | None:
    """Where the model's normal map peaks on the abnormal images that have a defect mask (localize.py), None
    without masks or without a normal model."""
    from inspector.learn.heldout import mask_hit
    from inspector.data.localize import summarize

    if not det.meta.normal:
        return None
    cal = det.meta.normal["calibration"]
    hits = [hit for i, pred in enumerate(preds) if pred.heat is not None and (hit := mask_hit(dataset, i, pred.heat, cal))]
    return summarize(hits) if hits else None


def format_evaluation(data: dict) -> str:
    """Per-bundle and pooled table, then the misclassified images with their probabilities."""
    m = data["model"]
    window = f"window {m['window']}" if m["window"] else "no window"
    lines = [f"model {m['path']} (sha256 {m['sha256'][:12]}, {m['method']}, {window}, "
             f"threshold {m['threshold']:.4g}: {m['threshold_source']})"]
    if not m["trained"]:
        lines.append("warning: this model was never trained (written by `inspector model init`)")
    rows = [(r["bundle"], r) for r in data["bundles"]] + [("Overall", data["pooled"])]
    width = max(len(name) for name, _ in rows)
    lines.append(f"{'bundle':<{width}}{'n':>5}{'TP':>5}{'FP':>5}{'TN':>5}{'FN':>5}{'BA %':>9}{'precision':>11}"
                 f"{'recall':>8}{'F1':>8}{'ROC AUC':>9}")
    for name, r in rows:
        c = Counts(r["tp"], r["fp"], r["tn"], r["fn"])
        lines.append(f"{name:<{width}}{r['images']:>5}{c.tp:>5}{c.fp:>5}{c.tn:>5}{c.fn:>5}{ba_cell(c):>9}"
                     f"{metrics.format_percent(c.precision):>11}{metrics.format_percent(c.recall):>8}"
                     f"{metrics.format_percent(c.f1):>8}{metrics.format_percent(r['roc_auc']):>9}")
    used = {ch for name, r in rows for ch in ba_cell(Counts(r["tp"], r["fp"], r["tn"], r["fn"])) if ch in MARK_NOTES}
    lines.extend(f"{mark} {MARK_NOTES[mark]}" for mark in sorted(used))
    wrong = data["misclassified"]
    lines.append(f"misclassified: {len(wrong)}")
    for im in wrong:
        lines.append(f"  {im['path']}  bundle {im['bundle']}  label {im['label']}  "
                     f"p_abnormal {im['p_abnormal']:.4f} -> {im['verdict']}")
    if data["rescan"]:
        lines.append(f"sent back for rescan (quality gate, not counted above): {len(data['rescan'])}")
        lines.extend(f"  {im['path']}: {im['reason']}" for im in data["rescan"])
    if data.get("localization"):
        from inspector.data.localize import localization_lines

        lines.extend(localization_lines(data["localization"], "where the map peaks"))
    return "\n".join(lines)
