"""Nightly retraining: learn from reviewed images, promote the candidate only if it is not worse.

Both sides are scored on the same leave-one-bundle-out folds of the NEW set (base dataset plus
every reviewed image): the current model's settings trained on the set it was trained on, the
candidate's trained on the new set, each fold's held-out bundle excluded from training. The
candidate is promoted only if its pooled balanced accuracy and its abnormal recall, both at the
threshold chosen the same way for each side (out-of-fold at train.target_recall, else 0.5), are
not lower. A run that fails or refuses leaves the model file and the daemon untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from inspector.data import metrics
from inspector.base.config import OPTIMIZERS, Config
from inspector.data.dataset import LABELS_FILE, Dataset, leave_one_bundle_out, load_dataset, write_labels
from inspector.base.errors import ConfigError, InspectorError
from inspector.store.fleet import LockBusy, plant_lock
from inspector.loop.promote import MARKER, prune_work, reload_daemon, swap_in, work_to_keep
from inspector.store.store import Store, open_configured

if TYPE_CHECKING:
    import torch

EXIT_PROMOTED, EXIT_NOT_PROMOTED, EXIT_FAILED = 0, 3, 4
WORK_FOLDER = "retrain"
EPS = 1e-12


@dataclass
class Score:
    """One side's out-of-fold result: pooled counts at its chosen threshold, per fold at 0.5."""

    method: str
    threshold: float
    counts: metrics.Counts
    roc_auc: float | None
    folds: list[dict] = field(default_factory=list)
    oof: np.ndarray | None = None

    @property
    def balanced_accuracy(self) -> float:
        return self.counts.balanced_accuracy if self.counts.balanced_accuracy is not None else -1.0

    @property
    def recall(self) -> float:
        return self.counts.recall if self.counts.recall is not None else -1.0

    def to_dict(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "pooled": self.counts.to_dict(),
                "roc_auc": self.roc_auc, "folds": self.folds}

    def describe(self) -> str:
        return (f"{self.method}: pooled BA {pct(self.counts.balanced_accuracy)}, abnormal recall "
                f"{pct(self.counts.recall)} at threshold {self.threshold:.4g} "
                f"(TP {self.counts.tp}, FP {self.counts.fp}, TN {self.counts.tn}, FN {self.counts.fn})")


@dataclass
class RetrainResult:
    """What the command prints and the retrains table keeps."""

    decision: str  # promoted, not promoted, dry run: would promote, dry run: would not promote, failed
    exit_code: int
    reasons: list[str] = field(default_factory=list)
    current: Score | None = None
    candidate: Score | None = None
    candidate_path: Path | None = None
    candidate_sha256: str | None = None
    reload_message: str = ""
    retrain_id: int | None = None


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def chosen_threshold(y: np.ndarray, oof: np.ndarray, target_recall: float) -> float:
    """The same rule for both sides: out-of-fold at train.target_recall when set, else 0.5."""
    if target_recall > 0 and (y == 1).any():
        return metrics.threshold_for_recall(y, oof, target_recall)
    return 0.5


def make_score(method: str, y: np.ndarray, oof: np.ndarray, bundles: list[str], fold_idx: list[np.ndarray],
               target_recall: float) -> Score:
    threshold = chosen_threshold(y, oof, target_recall)
    folds = [{"bundle": b, "images": len(idx), **metrics.counts_at_threshold(y[idx], oof[idx], 0.5).to_dict()}
             for b, idx in zip(bundles, fold_idx)]
    return Score(method, threshold, metrics.counts_at_threshold(y, oof, threshold), metrics.roc_auc(y, oof), folds,
                 oof)


def compare(current: Score | None, candidate: Score) -> list[str]:
    """Reasons to refuse the candidate; empty means promote (equal is not lower)."""
    if current is None:
        return []
    def lower(name: str, new: float | None, old: float | None) -> str:
        digits = 1 if pct(new) != pct(old) else 3  # never print "85.2% < current 85.2%"
        return f"{name} {pct(new, digits)} < current {pct(old, digits)}"

    reasons = []
    if candidate.balanced_accuracy < current.balanced_accuracy - EPS:
        reasons.append(lower("pooled BA", candidate.counts.balanced_accuracy, current.counts.balanced_accuracy))
    if candidate.recall < current.recall - EPS:
        reasons.append(lower("abnormal recall", candidate.counts.recall, current.counts.recall)
                       + f" (thresholds {candidate.threshold:.4g} vs {current.threshold:.4g})")
    return reasons


# ---- the training set -------------------------------------------------------------------------
def build_training_set(cfg: Config, store, work: Path, say: Callable[[str], None]) -> tuple[Dataset, Dataset, int]:
    """work/ becomes a dataset: base/ (a link to the base dataset) plus reviewed/ (export-labels)."""
    from inspector.loop.labelset import export_labels

    base = load_dataset(cfg.retrain.base_dataset)
    summary = export_labels(store, work / "reviewed", cfg.review.bundle_rule, cfg.watch.capture_dir)
    for skipped in summary.skipped:
        say(f"  skipped reviewed image {skipped.path or skipped.sha256}: {skipped.reason}")
    reviewed = load_dataset(work / "reviewed").samples if summary.exported else ()
    (work / "base").symlink_to(base.root, target_is_directory=True)
    rows = [(f"base/{s.rel}", s.bundle, s.label, ";".join(s.anomalies)) for s in base.samples]
    rows += [(f"reviewed/{s.rel}", s.bundle, s.label, ";".join(s.anomalies)) for s in reviewed]
    write_labels(work / LABELS_FILE, rows)
    return base, load_dataset(work), len(reviewed)


def current_training_set(meta, base: Dataset, say: Callable[[str], None]) -> Dataset:
    """The set the current model learned from: its recorded retrain folder when still there, else the base."""
    recorded = ((meta.metrics or {}).get("retrain") or {}).get("dataset") if meta is not None else None
    if recorded:
        try:
            return load_dataset(recorded)
        except InspectorError as exc:
            say(f"  note: the current model's training set {recorded} is gone ({exc}); using the base dataset")
    if meta is not None and meta.train_fingerprint and meta.train_fingerprint != base.fingerprint():
        say("  note: the current model was not trained on the base dataset as it is now; its settings are "
            "retrained on the base dataset for the comparison")
    return base


def run_settings(cfg: Config, meta, epochs: int | None, cache_dir: Path) -> Config:
    """The current model's settings (input size, backbone, freeze, schedule) with a shared embedding cache."""
    model, train = cfg.model, cfg.train
    if meta is not None:
        m = meta.metrics or {}
        model = dataclasses.replace(model, input_size=tuple(meta.input_size), weights=meta.weights or model.weights,
                                    freeze=meta.freeze, features=meta.features, pooling=meta.pooling, head=meta.head)
        train = dataclasses.replace(train, epochs=int(m.get("epochs") or train.epochs),
                                    class_weights=m.get("class_weights") or train.class_weights,
                                    seed=int(m.get("seed", train.seed)),
                                    optimizer=m.get("optimizer") if m.get("optimizer") in OPTIMIZERS else "paper",
                                    learning_rate=float(m.get("learning_rate") or train.learning_rate),
                                    weight_decay=float(m.get("weight_decay", train.weight_decay)),
                                    min_steps=int(m.get("min_steps", train.min_steps)))
    if epochs is not None:
        train = dataclasses.replace(train, epochs=epochs)
    train = dataclasses.replace(train, cache_dir=str(cache_dir))
    return dataclasses.replace(cfg, model=model, train=train)


def shared_cache_dir(cfg: Config) -> Path:
    """train.cache_dir, else the base dataset's own cache (shared with `inspector train`), else state.dir."""
    from inspector.learn.features import CACHE_FOLDER

    if cfg.train.cache_dir:
        return Path(cfg.train.cache_dir)
    base = Path(cfg.retrain.base_dataset)
    if os.access(base, os.W_OK):
        return base / CACHE_FOLDER
    return Path(cfg.state.dir) / WORK_FOLDER / "cache"


# ---- cross-validation ---------------------------------------------------------------------------
def score_current(old: Dataset, new: Dataset, method: str, cfg: Config, device: torch.device,
                  stats) -> np.ndarray:
    """Out-of-fold P(abnormal) on the new set's folds, training each fold on the OLD set minus that bundle."""
    from inspector.learn.train import build_net_on, fit, predict_proba, resolve_cache
    from inspector.data.views import ImageSource, fit_view

    src_old = ImageSource.of(old, cfg)
    src_new = ImageSource.of(new, cfg)
    store, use_cache = resolve_cache(cfg, new, True, lambda m: None)
    net = build_net_on(cfg, device)
    fresh = {k: v.detach().clone() for k, v in net.state_dict().items()}
    old_bundles = np.array([s.bundle for s in old.samples])
    oof = np.full(len(new), np.nan)
    for fold in leave_one_bundle_out(new.samples):
        train_idx = np.flatnonzero(old_bundles != fold.bundle)
        view = fit_view(src_old, train_idx, method, cfg)
        net.load_state_dict(fresh)
        fit(net, src_old, train_idx, view, cfg, device, store, use_cache, stats, desc=f"current {fold.bundle}")
        oof[fold.test_idx] = predict_proba(net, src_new, fold.test_idx, view, cfg, device,
                                           store if use_cache else None, stats)
    return oof


def cross_validate_both(cfg: Config, meta, old: Dataset, new: Dataset, methods: list[str], device: torch.device,
                        say: Callable[[str], None]) -> tuple[Score | None, Score, dict]:
    """The current model's settings on its own set vs each candidate method on the new set, same folds."""
    from inspector.learn.crossval import cross_validate, result_to_json
    from inspector.learn.features import EmbedStats

    stats = EmbedStats()
    folds = leave_one_bundle_out(new.samples)
    bundles, fold_idx = [f.bundle for f in folds], [f.test_idx for f in folds]
    y, target = new.y, cfg.train.target_recall
    current = None
    if meta is not None:
        say(f"stage 3/6: cross-validating the current model's settings ({meta.method}, {len(old)} images, "
            f"{len(folds)} folds)")
        oof = score_current(old, new, meta.method, cfg, device, stats)
        current = make_score(meta.method, y, oof, bundles, fold_idx, target)
        say(f"  current   {current.describe()}")
    say(f"stage 4/6: cross-validating the candidate ({', '.join(methods)}, {len(new)} images)")
    res = cross_validate(new, methods, cfg, device, True, warn=lambda m: None, stats=stats)
    scores = [make_score(m, y, res.methods[m].oof, bundles, fold_idx, target) for m in methods]
    for s in scores:
        say(f"  candidate {s.describe()}")
    best = max(scores, key=lambda s: (s.balanced_accuracy, s.recall))  # ties keep the earlier (current) method
    say(f"  embedding: {stats.passes} backbone passes, {stats.hits} cache hits")
    return current, best, result_to_json(res)


def train_candidate(cfg: Config, new: Dataset, best: Score, current: Score | None, work: Path, out: Path,
                    device: torch.device) -> str:
    """fit on all data, then stamp the OOF threshold and the comparison into the artifact's metadata."""
    from inspector.learn.infer import Detector
    from inspector.learn.model import load_model, resolve_device, save_model
    from inspector.learn.build import train_model

    train_model(new, out, best.method, cfg, device, 0.0, warn=lambda m: None)
    loaded = load_model(out, "cpu")
    target = cfg.train.target_recall
    source = (f"out-of-fold recall >= {target:g} (nightly retrain, leave-one-bundle-out over "
              f"{len(new.bundles)} bundles; achieved recall {best.counts.recall:.4f})") if target > 0 else "default 0.5"
    retrain = {"dataset": str(work), "candidate": best.to_dict(), "current": current.to_dict() if current else None}
    meta = dataclasses.replace(loaded.meta, threshold=float(best.threshold), threshold_source=source,
                               metrics={**loaded.meta.metrics, "retrain": retrain})
    sha = save_model(out, loaded.net, meta)
    Detector(loaded.net, meta, sha, resolve_device("cpu"), str(out)).self_check()  # a NaN net never goes live
    return sha


# ---- the whole run --------------------------------------------------------------------------------
def record_end(store: Store, retrain_id: int, result: RetrainResult, message: str) -> None:
    def dump(score: Score | None) -> str | None:
        return json.dumps(score.to_dict(), default=float) if score else None

    store.retrains.finish(retrain_id, result.decision, message, dump(result.current), dump(result.candidate),
                          str(result.candidate_path) if result.candidate_path else None)


def unique_stamp(root: Path) -> str:
    """A local-time stamp naming this run's folder and candidate file; a suffix if one exists already."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    n, found = 1, stamp
    while (root / found).exists():
        n += 1
        found = f"{stamp}-{n}"
    return found


def check_config(cfg: Config) -> None:
    """Usage errors (exit 1) before anything runs."""
    if not cfg.retrain.base_dataset:
        raise ConfigError("is empty: set it to the labeled dataset folder that reviewed images are added to",
                          "retrain.base_dataset", cfg.source)


def retrain(cfg: Config, dry_run: bool = False, epochs: int | None = None,
            say: Callable[[str], None] = print) -> RetrainResult:
    """Build, cross-validate, compare, and (unless dry_run or refused) promote; never raises past a record."""
    check_config(cfg)
    model_path = Path(cfg.model.path)
    root = Path(cfg.state.dir) / WORK_FOLDER
    stamp = unique_stamp(root)
    work = root / stamp
    result = RetrainResult("failed", EXIT_FAILED)
    try:
        store = open_configured(cfg)
    except InspectorError as exc:  # nothing ran and nothing can be recorded: a failed run all the same
        result.reasons = [str(exc)]
        return result
    with contextlib.ExitStack() as stack:
        stack.enter_context(store)
        try:  # once for the plant: every station's nightly timer fires, the first one runs it
            stack.enter_context(plant_lock(store, "retrain", "retrain"))
        except LockBusy as exc:
            say(str(exc))
            return RetrainResult("skipped: another retrain is running", EXIT_NOT_PROMOTED, reasons=[str(exc)])
        result.retrain_id = store.retrains.start()
        out = model_path.with_name(f"{model_path.name.split('.')[0]}.{stamp}.safetensors")
        try:
            _compare_and_decide(cfg, store, work, out, dry_run, epochs, say, result)
        except Exception as exc:  # any failure: record it; the model file and the daemon stay untouched
            result.decision, result.exit_code = "failed", EXIT_FAILED
            result.reasons = [f"{type(exc).__name__}: {exc}" if not isinstance(exc, InspectorError) else str(exc)]
            if result.candidate_path is None:
                out.unlink(missing_ok=True)
        message = "; ".join(result.reasons) or result.decision
        try:
            record_end(store, result.retrain_id, result, message)
            if result.decision == "promoted":  # the plant's model now: every station's daemon follows it
                from inspector.imaging.modelmeta import read_meta

                store.record_model(result.candidate_sha256, str(model_path), read_meta(model_path).to_json(),
                                   promoted=True)
        except InspectorError as exc:
            say(f"warning: could not record the decision in the database: {exc}")
    if result.decision == "promoted":
        result.reload_message = reload_daemon(Path(cfg.state.dir))
        say(f"  {result.reload_message}")
    prune_work(root, work_to_keep(work, model_path))
    return result


def _compare_and_decide(cfg: Config, store, work: Path, out: Path, dry_run: bool, epochs: int | None,
                        say: Callable[[str], None], result: RetrainResult) -> None:
    """Stages 1-4: the training set, the current model, both cross-validated and compared; then decide."""
    from inspector.learn.crossval import save_run
    from inspector.imaging.modelmeta import read_meta
    from inspector.learn.model import resolve_device
    from inspector.learn.train import set_threads

    model_path = Path(cfg.model.path)
    say(f"stage 1/6: building the training set in {work}")
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by inspector retrain; pruned by later runs\n")
    base, new, n_reviewed = build_training_set(cfg, store, work, say)
    say(f"  {len(base)} base images + {n_reviewed} reviewed = {len(new)} images, {len(new.bundles)} bundles")
    say(f"stage 2/6: reading the current model {model_path}")
    meta = read_meta(model_path) if model_path.exists() else None
    if meta is None:
        say("  no current model: the candidate becomes the first one")
    old = current_training_set(meta, base, say)
    run_cfg = run_settings(cfg, meta, epochs, shared_cache_dir(cfg))
    set_threads(run_cfg.train.threads)
    device = resolve_device(run_cfg.model.device)
    methods = list(dict.fromkeys(([meta.method] if meta is not None else []) + list(cfg.retrain.methods)))
    current, best, cv_json = cross_validate_both(run_cfg, meta, old, new, methods, device, say)
    save_run(cv_json, cfg.state.dir)
    result.current, result.candidate = current, best
    result.reasons = compare(current, best)
    _decide(run_cfg, new, best, current, work, out, model_path, device, dry_run, say, result)


def _decide(run_cfg: Config, new: Dataset, best: Score, current: Score | None, work: Path, out: Path,
            model_path: Path, device, dry_run: bool, say: Callable[[str], None], result: RetrainResult) -> None:
    """Stages 5-6: refuse with the reasons, or train the candidate on everything and promote it."""
    say("stage 5/6: deciding")
    if result.reasons:
        result.decision = "dry run: would not promote" if dry_run else "not promoted"
        result.exit_code = EXIT_NOT_PROMOTED
        for reason in result.reasons:
            say(f"  not promoted: {reason}")
        return
    say(f"  the candidate ({best.method}) is not worse: training it on all {len(new)} images")
    sha = train_candidate(run_cfg, new, best, current, work, out, device)
    result.candidate_path, result.candidate_sha256 = out, sha
    say(f"  wrote {out} (sha256 {sha[:12]})")
    if dry_run:
        result.decision, result.exit_code = "dry run: would promote", EXIT_PROMOTED
        say(f"stage 6/6: dry run: {model_path} left as it is")
        return
    say(f"stage 6/6: promoting: {out.name} -> {model_path}")
    kept = swap_in(out, model_path)
    if kept:
        say(f"  previous model kept as {kept}")
    result.decision, result.exit_code = "promoted", EXIT_PROMOTED
