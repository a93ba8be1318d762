"""Training, cross-validation and the cache on real tiny data: weights none, input 64x32, 1-2 epochs."""

from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from inspector.data import metrics
from inspector.base.config import Config
from inspector.imaging.convert import fit_window
from inspector.learn.build import train_model
from inspector.learn.crossval import cross_validate
from inspector.data.dataset import LABELS_FILE, Dataset, load_dataset
from inspector.data.synth import draw_character, draw_shape, synth_image, synthesize, write_tiff
from inspector.base.errors import DatasetError, InspectorError
from inspector.learn.features import EmbedStats, FeatureStore
from inspector.imaging.read import read_image
from inspector.learn.infer import Detector
from inspector.learn.train import build_net, check_two_classes, class_weight_tensor, draw_plan, fit, predict_proba
from inspector.data.views import ImageSource, fit_view

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """3 bundles x 4 images, both classes in each, ~82x45 px: a few seconds per run."""
    root = tmp_path_factory.mktemp("tiny") / "ds"
    ds = synthesize(root, bundles=3, per_bundle=4, abnormal_rate=0.5, scale=0.04, seed=7, progress=False)
    assert all(0 < sum(s.y for s in ds.samples if s.bundle == b) < 4 for b in ds.bundles)
    return root


def tiny_config(tmp_path, epochs: int = 2, **train) -> Config:
    """Exactly `epochs` epochs (min_steps 0), so pass counts below are exact."""
    cfg = Config()
    train = {"min_steps": 0, **train}
    return dataclasses.replace(
        cfg, convert=dataclasses.replace(cfg.convert, round_window=False),  # windows exactly as fitted
        model=dataclasses.replace(cfg.model, weights="none", input_size=(64, 32), device="cpu"),
        train=dataclasses.replace(cfg.train, epochs=epochs, batch_size=4, cache_dir=str(tmp_path / "cache"), **train),
        state=dataclasses.replace(cfg.state, dir=tmp_path / "var"))


def test_draw_plan_is_seeded_and_flips_both_axes():
    a, b = draw_plan(3, epochs=50, n=40), draw_plan(3, epochs=50, n=40)
    assert np.array_equal(a.orders, b.orders) and np.array_equal(a.flips, b.flips)
    assert not np.array_equal(a.flips, draw_plan(4, epochs=50, n=40).flips)
    assert all(sorted(row) == list(range(40)) for row in a.orders)
    h, v = a.flips % 2, a.flips // 2
    assert 0.4 < h.mean() < 0.6 and 0.4 < v.mean() < 0.6  # p = 0.5 each, 2000 draws


def test_class_weights_balanced_is_inverse_frequency():
    w = class_weight_tensor(np.array([0, 0, 0, 1]), "balanced")
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    assert class_weight_tensor(np.array([0, 1]), "none") is None


def test_training_set_without_abnormal_is_refused():
    with pytest.raises(DatasetError, match="the training set \\(3 images\\) holds no abnormal electrode"):
        check_two_classes(np.array([0, 0, 0]), "the training set (3 images)")


def test_fold_window_comes_from_training_images_only(tiny_root, tmp_path):
    ds = load_dataset(tiny_root)
    cfg = tiny_config(tmp_path)
    source = ImageSource(ds)
    train_idx = [i for i, s in enumerate(ds.samples) if s.bundle != "bundle01"]
    view = fit_view(source, train_idx, "global", cfg)
    expected = fit_window(read_image(ds.samples[i].path) for i in train_idx)
    assert view.window == (expected.lo, expected.hi)
    all_window = fit_window(read_image(s.path) for s in ds.samples)
    assert view.window != (all_window.lo, all_window.hi)  # bundle01's pixels did not leak in
    partial = fit_view(source, train_idx[:-1], "global", cfg)  # not whole bundles: per-image path
    expected = fit_window(read_image(ds.samples[i].path) for i in train_idx[:-1])
    assert partial.window == (expected.lo, expected.hi)
    assert fit_view(source, train_idx, "local", cfg).window is None


def test_cache_and_full_loop_give_the_same_model(tiny_root, tmp_path):
    """Same seed and flips: fc + head trained on cached features == the full forward loop."""
    ds = load_dataset(tiny_root)
    cfg = tiny_config(tmp_path, epochs=2)
    source = ImageSource(ds)
    idx = np.arange(len(ds))
    view = fit_view(source, idx, "global", cfg)
    store = FeatureStore(tmp_path / "cache")
    out = {}
    for use_cache in (True, False):
        stats = EmbedStats()
        net = build_net(cfg)
        result = fit(net, source, idx, view, cfg, CPU, store if use_cache else None, use_cache, stats)
        p = predict_proba(net, source, idx, view, cfg, CPU, store if use_cache else None, stats)
        out[use_cache] = (result.losses, p, stats.passes)
    (loss_c, p_c, passes_c), (loss_f, p_f, passes_f) = out[True], out[False]
    assert np.allclose(loss_c, loss_f, atol=1e-5)
    assert np.allclose(p_c, p_f, atol=1e-5)
    assert np.ptp(p_c) > 0  # not a constant output that would match trivially
    # the standardizer's pass, every epoch through the backbone, then scoring
    assert passes_f == len(ds) + 2 * len(ds) + len(ds)
    assert passes_c <= 4 * len(ds)  # at most one pass per (image, flip)


def test_cross_validate_cache_equivalence_and_resume(tiny_root, tmp_path):
    ds = load_dataset(tiny_root)
    cfg = tiny_config(tmp_path, epochs=2)
    cached = cross_validate(ds, ["local"], cfg, CPU, use_cache=True)
    full = cross_validate(ds, ["local"], cfg, CPU, use_cache=False)
    assert np.allclose(cached.methods["local"].oof, full.methods["local"].oof, atol=1e-5)
    assert [f.counts for f in cached.methods["local"].folds] == [f.counts for f in full.methods["local"].folds]
    assert cached.passes < full.passes
    # local has no window: the features are shared by all folds, at most 4 passes per image
    assert cached.passes <= 4 * len(ds)
    again = cross_validate(ds, ["local"], cfg, CPU, use_cache=True)
    assert again.passes == 0 and again.hits > 0
    assert np.array_equal(again.methods["local"].oof, cached.methods["local"].oof)


def test_cv_is_repeatable_with_a_seed(tiny_root, tmp_path):
    ds = load_dataset(tiny_root)
    runs = []
    for name in ("a", "b"):  # separate cold caches: both compute everything
        cfg = tiny_config(tmp_path / name, epochs=1)
        runs.append(cross_validate(ds, ["naive"], cfg, CPU, use_cache=True))
    assert runs[0].passes == runs[1].passes > 0
    assert np.array_equal(runs[0].methods["naive"].oof, runs[1].methods["naive"].oof)


def test_train_writes_a_model_the_detector_scores(tiny_root, tmp_path):
    ds = load_dataset(tiny_root)
    cfg = tiny_config(tmp_path, epochs=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, score="head"))  # P(abnormal) is the head's
    out = tmp_path / "model.safetensors"
    outcome = train_model(ds, out, "global", cfg, CPU, target_recall=0.0)
    det = Detector.load(out, device="cpu")
    assert det.sha256 == outcome.sha256
    meta = det.meta
    assert meta.trained and meta.method == "global" and meta.input_size == (64, 32)
    expected = fit_window(read_image(s.path) for s in ds.samples)
    assert meta.window == (expected.lo, expected.hi)
    assert meta.threshold == 0.5 and meta.threshold_source == "default 0.5"
    assert meta.quality["clipped_fraction"] == cfg.quality.clipped_fraction and meta.quality["blur_min"] > 0
    assert meta.train_fingerprint == ds.fingerprint()
    heights = [read_image(s.path).shape[0] for s in ds.samples]
    assert meta.quality["height"] == [min(heights), max(heights)]
    # a 1x2, 2x2 or 1x10000 "image" is no electrode: sent back for a rescan, never given a verdict
    tiny = [np.array([[1000, 3000]], np.uint16), np.array([[1000, 3000], [2000, 2500]], np.uint16),
            np.arange(10000, dtype=np.uint16).reshape(1, 10000)]
    assert [(p.verdict, p.reason.split(":")[0]) for p in det.predict(tiny)] == [("rescan", "unexpected size")] * 3
    preds = det.predict([read_image(s.path) for s in ds.samples[:3]])
    assert all(p.verdict in ("normal", "abnormal") and 0 <= p.p_abnormal <= 1 for p in preds)
    # the saved net scores like the trained one
    source = ImageSource(ds)
    net = build_net(cfg)
    fit(net, source, np.arange(len(ds)), fit_view(source, np.arange(len(ds)), "global", cfg), cfg, CPU,
        FeatureStore(tmp_path / "cache"), True, EmbedStats())
    p = predict_proba(net, source, [0, 1, 2], fit_view(source, np.arange(len(ds)), "global", cfg), cfg, CPU, None,
                      EmbedStats())
    assert np.allclose(p, [pr.p_abnormal for pr in preds], atol=1e-5)
    assert meta.normal and all(pr.regions is not None for pr in preds)  # and its normal model came with it


def test_target_recall_threshold_comes_from_the_out_of_fold_scores(tiny_root, tmp_path):
    """The plumbing: the saved threshold is threshold_for_recall on the cross-validation's scores, and the
    model records what it achieved there. (Its recall there is >= 0.8 by construction; whether that holds
    for electrodes it never saw is the held-out test below.)"""
    ds = load_dataset(tiny_root)
    cfg = tiny_config(tmp_path, epochs=2)
    outcome = train_model(ds, tmp_path / "m.safetensors", "local", cfg, CPU, target_recall=0.8)
    meta = outcome.meta
    assert meta.threshold_source.startswith("out-of-fold recall >= 0.8 (leave-one-bundle-out over 3 bundles")
    oof = outcome.oof_p
    assert oof.shape == (len(ds),) and np.isfinite(oof).all()
    assert meta.threshold == pytest.approx(metrics.threshold_for_recall(ds.y, oof, 0.8))
    assert meta.metrics["out_of_fold"]["counts"] == metrics.counts_at_threshold(ds.y, oof, meta.threshold).to_dict()
    assert meta.metrics["out_of_fold"]["roc_auc"] == pytest.approx(metrics.roc_auc(ds.y, oof))


CLEAR = ("missing_ink", "edge_cut", "smudge", "line")  # flaws a random backbone sees at this scale


def clear_bundles(root, first: int, bundles: int, per_bundle: int) -> Dataset:
    """Bundles first+1.. with their own coating character; every other electrode has three clear flaws."""
    rows = []
    for b in range(first, first + bundles):
        name = f"bundle{b + 1:02d}"
        (root / name).mkdir(parents=True)
        character = dataclasses.replace(draw_character(np.random.default_rng([20, b])), grain_sigma=3.0,
                                        grain_amp=20.0, noise_amp=10.0, hot_rate=0.0)
        for i in range(per_bundle):
            rng = np.random.default_rng([20, b, i])
            anomalies = [CLEAR[(b + i + k) % len(CLEAR)] for k in range(3)] if i % 2 == 0 else []
            rel = f"{name}/{name}_{i:02d}.tif"
            write_tiff(root / rel, synth_image(rng, character, anomalies, 1.0, draw_shape(rng, 0.1)))
            rows.append((rel, name, "abnormal" if anomalies else "normal", ";".join(anomalies)))
    with open(root / LABELS_FILE, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "bundle", "label", "anomaly"), *rows])
    return load_dataset(root)


def recall_floor(n_chosen_on: int, n_held_out: int, target: float, risk: float = 0.01) -> float:
    """The held-out recall that a sound threshold falls below with probability at most `risk`.

    threshold_for_recall takes the k-th highest of n abnormal out-of-fold scores (k = ceil(target * n)).
    Were held-out scores drawn like the out-of-fold ones, the share of abnormal electrodes scoring at
    least that threshold would be Beta(k, n + 1 - k) (mean k / (n + 1), below the target), and the
    flagged count among m held-out ones beta-binomial. A few abnormal examples fix a threshold only
    loosely: this floor is what the numbers allow, far under the target.
    """
    n, m = n_chosen_on, n_held_out
    a = math.ceil(target * n - 1e-9)
    b = n + 1 - a
    log_beta = lambda x, y: math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)  # noqa: E731
    below = 0.0
    for flagged in range(m + 1):
        below += math.comb(m, flagged) * math.exp(log_beta(flagged + a, m - flagged + b) - log_beta(a, b))
        if below > risk:
            return flagged / m
    return 1.0


def test_recall_floor_is_the_beta_binomial_quantile():
    assert recall_floor(16, 20, 0.8) == 0.4  # P(fewer than 8 of 20 flagged) = 0.7%, P(fewer than 9) = 1.5%
    assert recall_floor(16, 20, 0.8, risk=0.05) == 0.5
    assert recall_floor(1000, 1000, 0.8) > 0.75  # many examples pin the threshold down: the floor nears the target


@pytest.mark.slow
def test_target_recall_threshold_holds_on_held_out_bundles(tmp_path):
    """A threshold chosen for recall 0.8 on out-of-fold scores, judged on 4 bundles training never saw.

    4 bundles x 8 electrodes (16 abnormal) train, leave-one-bundle-out choosing the threshold; 4 more
    bundles x 10 (20 abnormal), each with its own coating, are scored by the saved Detector. Their recall
    must reach recall_floor (0.4 here: the 1% quantile of what a sound threshold gives, see there; this
    set gives 0.45, nine other data seeds 0.65 to 1.0). It fails for a threshold set too high: chosen for
    recall 0.5 (0.35 here), on inverted scores (0.15) or at the top abnormal score (0.05). A threshold too
    low passes: it errs on the safe side. The detector must rank the held-out electrodes (ROC AUC >= 0.7,
    0.83 here) for the recall to mean anything.
    """
    train_set = clear_bundles(tmp_path / "train", 0, 4, 8)
    held_out = clear_bundles(tmp_path / "held-out", 4, 4, 10)
    cfg = Config()
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, weights="none", input_size=(128, 64), device="cpu"),
        train=dataclasses.replace(cfg.train, min_steps=100, cache_dir=str(tmp_path / "cache")),
        state=dataclasses.replace(cfg.state, dir=tmp_path / "var"))
    outcome = train_model(train_set, tmp_path / "m.safetensors", "local", cfg, CPU, target_recall=0.8)
    det = Detector.load(outcome.path, device="cpu")
    preds = det.predict([read_image(s.path) for s in held_out.samples])
    assert all(p.reason is None for p in preds), [p.reason for p in preds if p.reason]
    p = np.array([pr.p_abnormal for pr in preds])
    y = held_out.y
    assert metrics.roc_auc(y, p) >= 0.7
    flagged = np.array([pr.verdict == "abnormal" for pr in preds])
    recall = float(flagged[y == 1].mean())
    floor = recall_floor(int(train_set.y.sum()), int(y.sum()), 0.8)
    assert floor == 0.4
    assert recall >= floor, (f"held-out recall {recall:.2f} < {floor:.2f} at threshold {det.meta.threshold:.3f} "
                             f"(out-of-fold recall {outcome.oof['counts']['recall']:.2f})")


def test_quality_gate_off_and_bad_target(tiny_root, tmp_path):
    ds = load_dataset(tiny_root)
    cfg = tiny_config(tmp_path, epochs=1)
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, enabled=False))
    outcome = train_model(ds, tmp_path / "m.safetensors", "naive", cfg, CPU, target_recall=0.0)
    assert outcome.meta.quality == {} and outcome.meta.window is None
    with pytest.raises(InspectorError, match="--target-recall must be between 0 and 1, got 1.5"):
        train_model(ds, tmp_path / "m.safetensors", "naive", cfg, CPU, target_recall=1.5)
