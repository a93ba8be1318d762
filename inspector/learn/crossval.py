"""Leave-one-bundle-out cross-validation, the paper's Table 1, and kept results to compare runs.

Per method and held-out bundle: fit the window on the other bundles, train, score the
held-out bundle at threshold 0.5, keep TP/FP/TN/FN. Pooled counts are sums over folds.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from inspector.data.cvruns import newest_run, runs_folder
from inspector.data import metrics, plots
from inspector.base.config import Config
from inspector.base.durable import write_atomic
from inspector.data.dataset import Dataset, leave_one_bundle_out
from inspector.data.metrics import Counts
from inspector.learn.heldout import SCORES, HeldOutMaps
from inspector.data.localize import summarize

if TYPE_CHECKING:
    import torch

RECALL_TARGETS = (0.95, 0.99)
DEFAULT_THRESHOLD = 0.5


@dataclass
class FoldResult:
    """One held-out bundle under one method."""

    bundle: str
    counts: Counts
    window: tuple[int, int] | None
    test_idx: list[int]
    steps: int = 0
    final_loss: float = float("nan")
    prior_loss: float = float("nan")
    seconds: float = 0.0


@dataclass
class MethodResult:
    """All folds of one method and its out-of-fold probabilities (one per image).

    `scores`: the out-of-fold P(abnormal) of each score (SCORES: the head, the normal model's map, their
    fusion); `oof` is the configured one's (model.score), the one the folds' counts are at.
    `localization`: where the held-out maps peaked against the defect masks (localize.summarize of `hits`),
    None when the dataset has no masks.
    """

    method: str
    folds: list[FoldResult] = field(default_factory=list)
    oof: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    localization: dict | None = None
    hits: list = field(default_factory=list)  # (anomaly types, localize.Hit) per held-out image with a mask

    @property
    def pooled(self) -> Counts:
        return metrics.pool_counts([f.counts for f in self.folds])

    @property
    def windows(self) -> list[tuple[int, int]]:
        """The distinct windows this method used (folds sharing one share cached features)."""
        return sorted({f.window for f in self.folds if f.window is not None})


@dataclass
class CvResult:
    """What `inspector cv` prints and writes."""

    dataset: Dataset
    methods: dict[str, MethodResult]
    settings: dict
    fingerprint: str
    passes: int = 0
    hits: int = 0
    seconds: float = 0.0
    backbone_seconds: float = 0.0


def cross_validate(dataset: Dataset, methods: list[str], cfg: Config, device: "torch.device", use_cache: bool,
                 warn: Callable[[str], None] | None = None, stats=None) -> CvResult:
    """Train on all bundles but one and test on it, for every bundle and method."""
    from inspector.learn.features import EmbedStats
    from inspector.learn.train import build_net_on, fit, predict_proba, require_method, resolve_cache
    from inspector.data.views import ImageSource, fit_view

    for m in methods:
        require_method(m)
    folds = leave_one_bundle_out(dataset.samples)
    source = ImageSource.of(dataset, cfg)
    store, use_cache = resolve_cache(cfg, dataset, use_cache, warn)
    stats = stats if stats is not None else EmbedStats()
    net = build_net_on(cfg, device)
    fresh = {k: v.detach().clone() for k, v in net.state_dict().items()}
    started = time.perf_counter()
    results: dict[str, MethodResult] = {}
    y = dataset.y
    maps = HeldOutMaps(dataset, source, cfg, device)
    for method in methods:
        mres = MethodResult(method, oof=np.full(len(dataset), np.nan))
        mres.scores = {name: np.full(len(dataset), np.nan) for name in SCORES}
        for fold in folds:
            view = fit_view(source, fold.train_idx, method, cfg)
            net.load_state_dict(fresh)
            t0 = time.perf_counter()
            fitted = fit(net, source, fold.train_idx, view, cfg, device, store, use_cache, stats,
                         desc=f"{method} {fold.bundle}")
            head = predict_proba(net, source, fold.test_idx, view, cfg, device, store if use_cache else None, stats)
            for name, p_fold in maps.score_fold(net, view, fold, head).items():
                mres.scores[name][fold.test_idx] = p_fold
            p = mres.scores[cfg.model.score][fold.test_idx]
            mres.oof[fold.test_idx] = p
            counts = metrics.counts_at_threshold(y[fold.test_idx], p, DEFAULT_THRESHOLD)
            mres.folds.append(FoldResult(fold.bundle, counts, view.window, [int(i) for i in fold.test_idx],
                                         fitted.steps, fitted.final_loss, fitted.prior_loss,
                                         time.perf_counter() - t0))
            if not fitted.learned:
                (warn or (lambda m: None))(f"warning: {method}, fold {fold.bundle}: training ended no better than "
                                           f"the class prior ({fitted.summary()})")
        mres.hits = maps.take_hits()
        mres.localization = summarize(mres.hits) if mres.hits else None
        results[method] = mres
    settings = run_settings(cfg, methods, use_cache)
    return CvResult(dataset, results, settings, dataset.fingerprint(), stats.passes, stats.hits,
                    time.perf_counter() - started, stats.backbone_seconds)


def run_settings(cfg: Config, methods: list[str], use_cache: bool) -> dict:
    """The settings a result depends on, recorded with it."""
    from inspector.learn.train import optimizer_label

    tc, mc, cc = cfg.train, cfg.model, cfg.convert
    paper = mc.head == "paper"
    return {"methods": list(methods), "epochs": tc.epochs, "input_size": list(mc.input_size),
            "weights": mc.weights, "freeze": mc.freeze, "class_weights": tc.class_weights,
            "features": ["layer4"] if paper else list(mc.features), "pooling": ["mean"] if paper else list(mc.pooling),
            "head": mc.head, "optimizer": tc.optimizer, "optimizer_settings": optimizer_label(cfg),
            "learning_rate": tc.learning_rate, "weight_decay": tc.weight_decay, "min_steps": tc.min_steps,
            "lr_step_epochs": tc.lr_step_epochs, "lr_gamma": tc.lr_gamma,
            "batch_size": tc.batch_size, "seed": tc.seed, "cache": use_cache,
            "low_percentile": cc.low_percentile, "high_percentile": cc.high_percentile,
            "round_window": cc.round_window, "clahe_clip_limit": cc.clahe_clip_limit,
            "clahe_tile_grid": cc.clahe_tile_grid, "threshold": DEFAULT_THRESHOLD, "score": mc.score,
            "map_stages": list(mc.map_stages)}


def score_summary(y: np.ndarray, p: np.ndarray) -> dict:
    """ROC AUC, pooled counts at 0.5 and normals passed at each recall target, of one out-of-fold score (over the
    images that have it: a fold without a normal model has no map score)."""
    have = np.isfinite(p)
    y, p = y[have], p[have]
    has_both = bool((y == 1).any() and (y == 0).any())
    return {"images": int(have.sum()), "roc_auc": metrics.roc_auc(y, p) if has_both else None,
            "pooled": metrics.counts_at_threshold(y, p, DEFAULT_THRESHOLD).to_dict(),
            "pass_rate_at_recall": {f"{t:g}": (metrics.pass_rate_at_recall(y, p, t) if has_both else None)
                                    for t in RECALL_TARGETS}}


def method_summary(y: np.ndarray, mres: MethodResult) -> dict:
    """Pooled counts and metrics of one method, JSON-ready."""
    p = mres.oof
    has_both = bool((y == 1).any() and (y == 0).any())
    return {
        "pooled": mres.pooled.to_dict(),
        "roc_auc": metrics.roc_auc(y, p),
        "pass_rate_at_recall": {f"{t:g}": (metrics.pass_rate_at_recall(y, p, t) if has_both else None)
                                for t in RECALL_TARGETS},
        "scores": {name: score_summary(y, scores) for name, scores in mres.scores.items()},
        "localization": mres.localization,
        "windows": [list(w) for w in mres.windows],
        "folds": [{"bundle": f.bundle, "images": len(f.test_idx), "window": list(f.window) if f.window else None,
                   "steps": f.steps, "final_loss": f.final_loss, "prior_loss": f.prior_loss,
                   "seconds": round(f.seconds, 3), **f.counts.to_dict()} for f in mres.folds],
    }


def result_to_json(res: CvResult) -> dict:
    """Everything of a run: config, dataset fingerprint, per-fold counts, pooled metrics, OOF scores."""
    y = res.dataset.y
    return {
        "kind": "inspector-cv",
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": res.settings,
        "dataset": {"root": str(res.dataset.root), "fingerprint": res.fingerprint, "images": len(res.dataset),
                    "bundles": res.dataset.bundles},
        "methods": {m: method_summary(y, r) for m, r in res.methods.items()},
        "oof": [{"path": s.rel, "bundle": s.bundle, "label": s.label,
                 "p_abnormal": {m: float(r.oof[i]) for m, r in res.methods.items()},
                 "scores": {m: {name: float(p[i]) for name, p in r.scores.items()} for m, r in res.methods.items()}}
                for i, s in enumerate(res.dataset.samples)],
        "backbone_passes": res.passes,
        "cache_hits": res.hits,
        "seconds": round(res.seconds, 3),
    }


MARKS = {metrics.BA_TNR_ONLY: "*", metrics.BA_TPR_ONLY: "+", metrics.BA_UNDEFINED: "?"}
MARK_NOTES = {"*": "TNR alone: the bundle has no abnormal electrode, so balanced accuracy is undefined",
              "+": "TPR alone: the bundle has no normal electrode, so balanced accuracy is undefined",
              "?": "no images"}


def ba_cell(c: Counts) -> str:
    return metrics.format_percent(c.balanced_accuracy) + MARKS.get(c.ba_basis, "")


def format_table(data: dict) -> str:
    """The paper's Table 1 (bundles x methods, balanced accuracy in %, Overall last) and the extras."""
    methods = list(data["methods"])
    bundles = [f["bundle"] for f in data["methods"][methods[0]]["folds"]]
    width = max([len("Test bundle"), len("Overall")] + [len(b) for b in bundles])
    col = max([9] + [len(m) + 1 for m in methods])
    lines = ["Balanced accuracy (%), leave-one-bundle-out, threshold 0.5",
             f"{'Test bundle':<{width}}" + "".join(f"{m:>{col}}" for m in methods)]
    used = set()
    for k, bundle in enumerate(bundles):
        cells = []
        for m in methods:
            f = data["methods"][m]["folds"][k]
            cell = ba_cell(Counts(f["tp"], f["fp"], f["tn"], f["fn"]))
            used.update(ch for ch in cell if ch in MARK_NOTES)
            cells.append(f"{cell:>{col}}")
        lines.append(f"{bundle:<{width}}" + "".join(cells))
    pooled = [Counts(*(data["methods"][m]["pooled"][k] for k in ("tp", "fp", "tn", "fn"))) for m in methods]
    lines.append(f"{'Overall':<{width}}" + "".join(f"{ba_cell(c):>{col}}" for c in pooled))
    lines.extend(f"{mark} {MARK_NOTES[mark]}; its counts still enter Overall" for mark in sorted(used))
    lines.append("")
    head = f"{'method':<8}{'TP':>5}{'FP':>5}{'TN':>5}{'FN':>5}{'precision':>11}{'recall':>8}{'F1':>8}{'ROC AUC':>9}"
    head += "".join(f"{'passed@' + format(t, '.0%'):>13}" for t in RECALL_TARGETS)
    lines.append(head)
    for m, c in zip(methods, pooled):
        s = data["methods"][m]
        row = (f"{m:<8}{c.tp:>5}{c.fp:>5}{c.tn:>5}{c.fn:>5}{metrics.format_percent(c.precision):>11}"
               f"{metrics.format_percent(c.recall):>8}{metrics.format_percent(c.f1):>8}"
               f"{metrics.format_percent(s['roc_auc']):>9}")
        row += "".join(f"{metrics.format_percent(s['pass_rate_at_recall'][f'{t:g}']):>13}" for t in RECALL_TARGETS)
        lines.append(row)
    lines.append("(precision, recall, F1, ROC AUC in %, pooled; passed@R = share of normal electrodes passed "
                 "automatically at a threshold giving abnormal recall >= R)")
    cfg = data["config"]
    lines.append(f"features {'+'.join(cfg['features'])} pooled by {'+'.join(cfg['pooling'])}, head {cfg['head']}, "
                 f"{cfg['optimizer_settings']}, class weights {cfg['class_weights']}")
    for m in methods:
        folds = data["methods"][m]["folds"]
        if folds and "steps" in folds[0]:
            lines.append(f"{m}: training per fold {int(np.median([f['steps'] for f in folds]))} steps, final loss "
                         f"median {np.median([f['final_loss'] for f in folds]):.4f} against "
                         f"{np.median([f['prior_loss'] for f in folds]):.4f} for the class prior; "
                         f"{np.median([f['seconds'] for f in folds]):.1f} s per fold")
    lines.extend(format_scores(data))
    for m in methods:
        windows = data["methods"][m]["windows"]
        if windows:
            shown = ", ".join(f"[{lo}, {hi}]" for lo, hi in windows[:6]) + (" ..." if len(windows) > 6 else "")
            lines.append(f"{m}: {len(windows)} distinct window(s) over {len(bundles)} folds: {shown}")
    return "\n".join(lines)


def format_scores(data: dict) -> list[str]:
    """The head, the normal model's map score and their fusion side by side, and where the maps peaked."""
    from inspector.data.localize import localization_lines

    lines: list[str] = []
    for m, s in data["methods"].items():
        scores = s.get("scores") or {}
        if not scores:
            continue
        chosen = data["config"].get("score", "head")
        lines.append(f"{m}: scores out of fold (model.score = {chosen!r} decides)")
        lines.append(f"  {'score':<8}{'ROC AUC':>9}{'BA@0.5':>9}" + "".join(f"{'passed@' + format(t, '.0%'):>13}"
                                                                    for t in RECALL_TARGETS))
        for name, f in scores.items():
            c = f["pooled"]
            row = (f"  {name:<8}{metrics.format_percent(f['roc_auc']):>9}"
                   f"{metrics.format_percent(c.get('balanced_accuracy')):>9}")
            row += "".join(f"{metrics.format_percent(f['pass_rate_at_recall'][f'{t:g}']):>13}" for t in RECALL_TARGETS)
            lines.append(row)
        if s.get("localization"):
            lines.extend(localization_lines(s["localization"], f"{m}: where the held-out maps peak"))
    return lines


def save_run(data: dict, state_dir: Path) -> tuple[Path, dict | None]:
    """Keep the run under state_dir/cv/ and return it with the latest earlier run on the same dataset."""
    folder = runs_folder(state_dir)
    previous = latest_run(folder, data["dataset"]["fingerprint"])
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"cv-{stamp}.json"
    write_json(path, data)
    return path, previous


def latest_run(folder: Path, fingerprint: str) -> dict | None:
    """The newest kept run whose dataset fingerprint matches, with its file as `_path`."""
    found = newest_run(folder, fingerprint)
    if found is None:
        return None
    path, data = found
    data["_path"] = str(path)
    return data


def format_comparison(data: dict, previous: dict) -> str:
    """Per-method change in pooled balanced accuracy against an earlier run on the same dataset."""
    lines = [f"compared with {previous['_path']} ({previous.get('created', '?')}), same dataset:"]
    for m, s in data["methods"].items():
        before = previous["methods"].get(m, {}).get("pooled", {}).get("balanced_accuracy")
        now = s["pooled"]["balanced_accuracy"]
        if before is None or now is None:
            lines.append(f"  {m}: no earlier pooled balanced accuracy")
        else:
            lines.append(f"  {m}: {100 * before:.2f}% -> {100 * now:.2f}% ({100 * (now - before):+.2f} points)")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write, so a reader never sees half a file."""
    write_atomic(path, json.dumps(data, indent=1, default=float))


def save_roc_png(path: Path, y: np.ndarray, curves: dict[str, np.ndarray], title: str) -> Path | None:
    """ROC curve per method in one PNG; None when a class is missing."""
    fig = plots.roc_figure(y, curves, title)
    if fig is None:
        return None
    path.write_bytes(plots.figure_png(fig))
    return path
