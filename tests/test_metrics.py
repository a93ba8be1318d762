"""Metrics against hand-computed cases and brute-force counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from inspector.data import metrics
from inspector.base.errors import InspectorError
from inspector.data.metrics import Counts


def test_confusion_counts_hand_case():
    y = [1, 1, 1, 0, 0, 0, 0]
    pred = [1, 0, 1, 1, 0, 0, 0]
    c = metrics.confusion_counts(y, pred)
    assert c == Counts(tp=2, fp=1, tn=3, fn=1)
    assert c.tpr == pytest.approx(2 / 3)
    assert c.tnr == pytest.approx(3 / 4)
    assert c.balanced_accuracy == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert c.ba_basis == metrics.BA_BOTH
    assert c.precision == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3)


def test_balanced_accuracy_paper_example():
    # the paper's example: 98 positives, 2 negatives, everything called positive -> 50%
    c = metrics.confusion_counts([1] * 98 + [0] * 2, [1] * 100)
    assert c.balanced_accuracy == pytest.approx(0.5)


def test_undefined_cases_are_explicit():
    no_abnormal = Counts(tp=0, fp=1, tn=3, fn=0)
    assert no_abnormal.tpr is None
    assert no_abnormal.balanced_accuracy == pytest.approx(0.75)
    assert no_abnormal.ba_basis == metrics.BA_TNR_ONLY
    assert no_abnormal.precision == 0.0 and no_abnormal.f1 is None
    no_normal = Counts(tp=1, fp=0, tn=0, fn=3)
    assert no_normal.balanced_accuracy == pytest.approx(0.25)
    assert no_normal.ba_basis == metrics.BA_TPR_ONLY
    empty = Counts()
    assert empty.balanced_accuracy is None and empty.ba_basis == metrics.BA_UNDEFINED
    assert empty.precision is None and empty.recall is None


def test_pooled_counts_are_sums_not_mean_of_fold_ba():
    folds = [Counts(tp=0, fp=2, tn=8, fn=0), Counts(tp=3, fp=1, tn=5, fn=1)]
    pooled = metrics.pool_counts(folds)
    assert pooled == Counts(tp=3, fp=3, tn=13, fn=1)
    assert pooled.balanced_accuracy == pytest.approx((3 / 4 + 13 / 16) / 2)
    mean_of_folds = np.mean([f.balanced_accuracy for f in folds])
    assert pooled.balanced_accuracy != pytest.approx(mean_of_folds)


def _brute_force_auc(y, p):
    pos = [s for s, t in zip(p, y) if t == 1]
    neg = [s for s, t in zip(p, y) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_with_ties_matches_pair_count():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = rng.integers(0, 6, 60) / 5.0  # many ties
    assert metrics.roc_auc(y, p) == pytest.approx(_brute_force_auc(y, p))
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_roc_auc_undefined_with_one_class():
    assert metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    with pytest.raises(InspectorError, match="both normal and abnormal"):
        metrics.roc_curve([1, 1], [0.1, 0.2])


def test_roc_curve_trapezoid_equals_auc():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40), 1)
    fpr, tpr, thr = metrics.roc_curve(y, p)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(thr) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(y, p))


def test_threshold_for_recall_hand_case():
    y = [1, 1, 1, 1, 0, 0, 0]
    p = [0.9, 0.7, 0.4, 0.2, 0.8, 0.3, 0.1]
    assert metrics.threshold_for_recall(y, p, 0.5) == pytest.approx(0.7)
    assert metrics.threshold_for_recall(y, p, 0.75) == pytest.approx(0.4)
    assert metrics.threshold_for_recall(y, p, 0.76) == pytest.approx(0.2)
    assert metrics.threshold_for_recall(y, p, 1.0) == pytest.approx(0.2)
    # at 0.75 recall, normals below 0.4 pass automatically: 0.3 and 0.1 of 0.8/0.3/0.1
    assert metrics.pass_rate_at_recall(y, p, 0.75) == pytest.approx(2 / 3)


def test_threshold_for_recall_is_highest_meeting_target():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 80)
    p = np.round(rng.random(80), 2)
    for target in (0.3, 0.5, 0.95, 0.99):
        t = metrics.threshold_for_recall(y, p, target)
        assert metrics.counts_at_threshold(y, p, t).recall >= target
        higher = p[p > t]
        if higher.size:
            assert metrics.counts_at_threshold(y, p, higher.min()).recall < target


def test_threshold_for_recall_errors():
    with pytest.raises(InspectorError, match="no abnormal electrode"):
        metrics.threshold_for_recall([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(InspectorError, match=r"target recall must be in \(0, 1\], got 1.5"):
        metrics.threshold_for_recall([0, 1], [0.1, 0.2], 1.5)
    with pytest.raises(InspectorError, match="3 labels but 2 scores"):
        metrics.confusion_counts([0, 1, 1], [0, 1])


def test_format_percent():
    assert metrics.format_percent(0.85184) == "85.18"
    assert metrics.format_percent(None) == "n/a"
