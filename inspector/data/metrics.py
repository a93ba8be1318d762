"""Confusion counts, balanced accuracy, ROC and thresholds; abnormal is the positive class.

Pure numpy. Undefined quantities (a rate over zero samples) are None, never a division by
zero, and balanced accuracy says which rates it rests on, so a table can mark them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from inspector.base.errors import InspectorError

# How a balanced accuracy was formed: both rates, or only the one that is defined.
BA_BOTH, BA_TNR_ONLY, BA_TPR_ONLY, BA_UNDEFINED = "both", "tnr_only", "tpr_only", "undefined"


@dataclass(frozen=True)
class Counts:
    """TP/FP/TN/FN with abnormal = positive; pooled counts are plain sums (the paper's way)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    @property
    def tpr(self) -> float | None:
        """Recall of abnormal electrodes; None when the set has no abnormal one."""
        return self.tp / self.positives if self.positives else None

    @property
    def tnr(self) -> float | None:
        """Share of normal electrodes called normal; None when the set has no normal one."""
        return self.tn / self.negatives if self.negatives else None

    @property
    def ba_basis(self) -> str:
        """Which rates the balanced accuracy rests on (a fold without abnormals has TNR only)."""
        if self.positives and self.negatives:
            return BA_BOTH
        if self.negatives:
            return BA_TNR_ONLY
        if self.positives:
            return BA_TPR_ONLY
        return BA_UNDEFINED

    @property
    def balanced_accuracy(self) -> float | None:
        """(TPR + TNR) / 2, or the one defined rate alone (see ba_basis), or None for no samples."""
        rates = [r for r in (self.tpr, self.tnr) if r is not None]
        return sum(rates) / len(rates) if rates else None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tpr

    @property
    def f1(self) -> float | None:
        """Harmonic mean of precision and recall; None when either is undefined or both are 0."""
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None
        return 2 * p * r / (p + r)

    def to_dict(self) -> dict:
        """Counts plus the derived rates, for JSON output."""
        return {**asdict(self), "balanced_accuracy": self.balanced_accuracy, "ba_basis": self.ba_basis,
                "precision": self.precision, "recall": self.recall, "f1": self.f1}


def _as_arrays(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise InspectorError(f"{y.size} labels but {p.size} scores; they must pair up one to one")
    if y.size and not np.isin(y, (0, 1)).all():
        raise InspectorError("labels must be 0 (normal) or 1 (abnormal)")
    return y, p


def confusion_counts(y_true, y_pred) -> Counts:
    """Counts from 0/1 labels and 0/1 predictions."""
    y, pred = _as_arrays(y_true, y_pred)
    pred = pred.astype(np.int64)
    return Counts(tp=int(((y == 1) & (pred == 1)).sum()), fp=int(((y == 0) & (pred == 1)).sum()),
                  tn=int(((y == 0) & (pred == 0)).sum()), fn=int(((y == 1) & (pred == 0)).sum()))


def counts_at_threshold(y_true, p_abnormal, threshold: float) -> Counts:
    """Counts when p_abnormal >= threshold means abnormal (the Detector's rule)."""
    y, p = _as_arrays(y_true, p_abnormal)
    return confusion_counts(y, (p >= threshold).astype(np.int64))


def pool_counts(per_fold: list[Counts]) -> Counts:
    """Sum of the folds' counts: the paper's pooled ("Overall") figure."""
    total = Counts()
    for c in per_fold:
        total = total + c
    return total


def roc_auc(y_true, p_abnormal) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U, ties averaged); None with one class."""
    y, p = _as_arrays(y_true, p_abnormal)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    # average rank (1-based) over each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_p)) + 1]
    ends = np.r_[starts[1:], p.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true, p_abnormal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending, starting at +inf (nothing flagged)."""
    y, p = _as_arrays(y_true, p_abnormal)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise InspectorError("a ROC curve needs both normal and abnormal electrodes in the set")
    thresholds = np.r_[np.inf, np.unique(p)[::-1]]
    tpr = np.array([((p >= t) & (y == 1)).sum() / n_pos for t in thresholds])
    fpr = np.array([((p >= t) & (y == 0)).sum() / n_neg for t in thresholds])
    return fpr, tpr, thresholds


def threshold_for_recall(y_true, p_abnormal, target: float) -> float:
    """The highest threshold whose abnormal recall (p >= threshold) is at least `target`."""
    y, p = _as_arrays(y_true, p_abnormal)
    if not 0 < target <= 1:
        raise InspectorError(f"target recall must be in (0, 1], got {target}")
    abnormal = np.sort(p[y == 1])[::-1]
    if abnormal.size == 0:
        raise InspectorError("cannot choose a threshold for a target recall: the set has no abnormal electrode")
    needed = max(1, math.ceil(target * abnormal.size - 1e-9))
    return float(abnormal[needed - 1])


def pass_rate_at_recall(y_true, p_abnormal, target: float) -> float | None:
    """Share of normal electrodes below the threshold_for_recall: those passed without a human."""
    y, p = _as_arrays(y_true, p_abnormal)
    if not (y == 0).any():
        return None
    threshold = threshold_for_recall(y, p, target)
    return float((p[y == 0] < threshold).mean())


def format_percent(value: float | None, digits: int = 2) -> str:
    """'85.18' for 0.8518, 'n/a' for an undefined value."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% by default): unlike the normal approximation it stays inside
    [0, 1] and is honest about 0 of n, the usual result of an audit; None for zero trials."""
    if trials <= 0:
        return None
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
