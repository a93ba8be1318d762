"""The detector learns: a random-init backbone (weights none) on a small set whose defects are plain.

Four bundles with their own coating level, gradient and margins (grain and detector noise alike,
no hot pixels: the defect, not the bundle's texture, is what differs), clear defects (three large
flaws at full severity) in four of every ten electrodes, real TIFF files, the project's own training, cross-validation and Detector:
what it learned is judged by ROC AUC, on the training images and held out bundle by bundle.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch

from inspector.data import metrics
from inspector.base.config import Config
from inspector.learn.crossval import cross_validate
from inspector.data.dataset import LABELS_FILE, load_dataset
from inspector.imaging.read import read_image
from inspector.learn.infer import Detector
from inspector.data.synth import draw_character, draw_shape, synth_image, write_tiff
from inspector.learn.build import train_model
from inspector.learn.train import FitResult, prior_loss

CPU = torch.device("cpu")
CLEAR = ("missing_ink", "edge_cut", "smudge", "line")  # large at this scale; specks and scratches are not


@pytest.fixture(scope="module")
def clear_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("clear") / "ds"
    rows = []
    for b in range(4):
        name = f"bundle{b + 1:02d}"
        (root / name).mkdir(parents=True)
        character = dataclasses.replace(draw_character(np.random.default_rng([11, b])), grain_sigma=3.0,
                                        grain_amp=20.0, noise_amp=10.0, hot_rate=0.0)
        for i in range(10):
            rng = np.random.default_rng([11, b, i])
            abnormal = i % 5 in (0, 3)
            anomalies = [CLEAR[(b + i + k) % len(CLEAR)] for k in range(3)] if abnormal else []
            img16 = synth_image(rng, character, anomalies, 1.0, draw_shape(rng, 0.15))
            rel = f"{name}/{name}_{i:02d}.tif"
            write_tiff(root / rel, img16)
            rows.append((rel, name, "abnormal" if abnormal else "normal", ";".join(anomalies)))
    with open(root / LABELS_FILE, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "bundle", "label", "anomaly"), *rows])
    return load_dataset(root)


def learning_config(tmp_path) -> Config:
    """The shipped defaults (features, optimizer, steps) at a small input, random backbone, on the CPU."""
    cfg = Config()
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, weights="none", input_size=(320, 176), device="cpu"),
        train=dataclasses.replace(cfg.train, cache_dir=str(tmp_path / "cache")),
        state=dataclasses.replace(cfg.state, dir=tmp_path / "var"))


def test_prior_loss_is_the_entropy_of_the_weighted_prior():
    y = np.array([0, 0, 0, 1])
    assert prior_loss(y, None) == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert prior_loss(y, torch.tensor([4 / 6, 4 / 2])) == pytest.approx(np.log(2))  # balanced: 50/50
    assert FitResult(losses=[0.2], prior_loss=0.69).learned
    assert not FitResult(losses=[0.68], prior_loss=0.69).learned
    assert not FitResult(losses=[float("nan")], prior_loss=0.69).learned
    assert "diverged" in FitResult(losses=[float("nan")], steps=3, prior_loss=0.69).summary()


@pytest.fixture(scope="module")
def trained(clear_set, tmp_path_factory):
    """The detector trained on every image of the clear set with the shipped defaults."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = learning_config(tmp)
    warnings: list[str] = []
    outcome = train_model(clear_set, tmp / "model.safetensors", "local", cfg, CPU, target_recall=0.0,
                          warn=warnings.append)
    return cfg, outcome, warnings


def test_training_learns_the_defect(clear_set, trained):
    cfg, outcome, warnings = trained
    assert outcome.fit.steps >= cfg.train.min_steps and outcome.fit.learned and not warnings
    assert outcome.fit.final_loss < 0.5 * outcome.fit.prior_loss
    det = Detector.load(outcome.path, device="cpu")
    preds = det.predict([read_image(s.path) for s in clear_set.samples])
    p = np.array([pr.p_abnormal for pr in preds])
    assert metrics.roc_auc(clear_set.y, p) >= 0.95
    assert det.meta.features == ("layer2", "layer3") and det.meta.head == "linear"
    assert torch.any(det.net.standardize.mean != 0)  # the statistics were fitted and saved


def test_held_out_bundles_are_judged_by_what_was_learned(clear_set, tmp_path):
    """Leave-one-bundle-out: every bundle's electrodes scored by a detector that never saw the bundle."""
    res = cross_validate(clear_set, ["local"], learning_config(tmp_path), CPU, use_cache=True)
    oof = res.methods["local"].oof
    assert metrics.roc_auc(clear_set.y, oof) >= 0.85
    assert res.methods["local"].pooled.balanced_accuracy >= 0.75


def test_the_daemon_records_the_p_that_score_reports(clear_set, trained, tmp_path):
    """One model, one image, one P: `inspector watch --once` (a real subprocess) and `inspector score`."""
    _, outcome, _ = trained
    capture = tmp_path / "capture"
    capture.mkdir()
    picked = [s for s in clear_set.samples if s.label == "abnormal"][:2] + \
        [s for s in clear_set.samples if s.label == "normal"][:3]
    for s in picked:
        shutil.copy(s.path, capture / f"{s.bundle}-{s.path.name}")
        os.utime(capture / f"{s.bundle}-{s.path.name}", (1e9, 1e9))  # settled long ago
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\npath = "{outcome.path}"\ndevice = "cpu"\n[watch]\ncapture_dir = "capture"\n'
                      '[database]\nurl = "sqlite:///inspector.db"\n[state]\ndir = "var"\n[infer]\nthreads = 1\n')
    exe = [sys.executable, "-m", "inspector", "--config", str(config)]
    watch = subprocess.run([*exe, "watch", "--once"], capture_output=True, text=True, timeout=300)
    assert watch.returncode == 0, watch.stderr
    with sqlite3.connect(tmp_path / "inspector.db") as con:
        recorded = dict(con.execute("SELECT i.path, v.p_abnormal FROM images i JOIN verdicts v "
                                    "ON v.id = i.verdict_id").fetchall())
    files = sorted(str(p) for p in capture.glob("*.tif"))
    score = subprocess.run([*exe, "score", "--format", "json", *files], capture_output=True, text=True, timeout=300)
    assert score.returncode == 0, score.stderr
    scored = {os.path.basename(r["path"]): r["p_abnormal"] for r in json.loads(score.stdout)}
    assert len(recorded) == len(scored) == len(picked)
    for path, p in recorded.items():
        assert p == pytest.approx(scored[os.path.basename(path)], abs=1e-5), path
    assert max(scored.values()) - min(scored.values()) > 0.5  # a detector that tells them apart
