"""The synthetic electrode generator: realism, determinism, and hard enough to tell pipelines apart."""

from __future__ import annotations

import csv
import time

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from inspector.cli import cli
from inspector.dataset import ANOMALY_TYPES, load_dataset
from inspector.errors import DatasetError
from inspector.synth import draw_character, summarize, synth_electrode, synth_image, synthesize


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """12 bundles x 60 at scale 0.05 (~104 x 57 px), as the paper's set in miniature."""
    out = tmp_path_factory.mktemp("synth") / "set"
    start = time.perf_counter()
    ds = synthesize(out, bundles=12, per_bundle=60, scale=0.05, seed=0, progress=False)
    return ds, time.perf_counter() - start


def read_all(ds) -> list[np.ndarray]:
    return [tifffile.imread(s.path) for s in ds.samples]


def test_deterministic_bytes(tmp_path):
    a = synthesize(tmp_path / "a", bundles=2, per_bundle=4, scale=0.05, seed=3, progress=False)
    b = synthesize(tmp_path / "b", bundles=2, per_bundle=4, scale=0.05, seed=3, progress=False)
    c = synthesize(tmp_path / "c", bundles=2, per_bundle=4, scale=0.05, seed=4, progress=False)
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
    for sa, sb in zip(a.samples, b.samples):
        assert sa.rel == sb.rel and sa.path.read_bytes() == sb.path.read_bytes()
    assert any(sa.path.read_bytes() != sc.path.read_bytes() for sa, sc in zip(a.samples, c.samples))


def test_tiff_is_zlib_uint16(small_set):
    ds, _ = small_set
    with tifffile.TiffFile(ds.samples[0].path) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert len(tif.pages) == 1


def test_full_scale_sizes_and_speed(tmp_path):
    start = time.perf_counter()
    ds = synthesize(tmp_path / "full", bundles=2, per_bundle=1, scale=1.0, seed=1, progress=False)
    per_image = (time.perf_counter() - start) / 2
    for img in read_all(ds):
        h, w = img.shape
        assert 2053 <= h <= 2115 and 1119 <= w <= 1219, img.shape
    assert per_image < 1.0  # about 0.2 s on one core; generous for a shared CI machine


def test_sizes_follow_scale_and_method_means(small_set):
    ds, seconds = small_set
    info = summarize(ds)
    assert info["images"] == 720 and info["bundles"] == 12
    assert 2053 * 0.05 - 1 <= info["height"][0] and info["height"][2] <= 2115 * 0.05 + 1
    assert 1119 * 0.05 - 1 <= info["width"][0] and info["width"][2] <= 1219 * 0.05 + 1
    assert abs(info["height"][1] - 2072 * 0.05) < 1.5 and abs(info["width"][1] - 1145 * 0.05) < 1.5
    assert seconds < 15  # a few seconds on one core


def test_coated_bulk_in_range_and_hot_pixels_above(small_set):
    ds, _ = small_set
    imgs = read_all(ds)
    centres = np.concatenate([i[i.shape[0] // 5: -i.shape[0] // 5, i.shape[1] // 5: -i.shape[1] // 5].ravel()
                              for i in imgs])
    p1, p50, p99 = np.percentile(centres, [1, 50, 99])
    assert 1700 <= p1 and p99 <= 2800 and 2000 <= p50 <= 2500
    pooled = np.concatenate([i.ravel() for i in imgs])
    lo, hi = np.percentile(pooled, [0.01, 99.99])
    assert hi > p99 + 300  # the uncoated margin and hot pixels sit above the coated bulk
    assert lo < p1
    levels = [np.median(i[i.shape[0] // 3: -i.shape[0] // 3, i.shape[1] // 3: -i.shape[1] // 3]) for i in imgs]
    by_bundle = {}
    for s, lev in zip(ds.samples, levels):
        by_bundle.setdefault(s.bundle, []).append(lev)
    medians = [np.median(v) for v in by_bundle.values()]
    assert max(medians) - min(medians) > 200  # bundles differ in coating level


def test_abnormal_rate_per_bundle_and_overall(small_set):
    ds, _ = small_set
    y = ds.y
    assert abs(y.mean() - 0.21) < 0.03
    for bundle in ds.bundles:
        yb = np.array([s.y for s in ds.samples if s.bundle == bundle])
        assert 0 < yb.sum() < len(yb), bundle  # both classes in every bundle
        assert abs(yb.mean() - 0.21) <= 1.5 / 60 + 1e-9


def test_every_anomaly_type_and_minor_ones_in_normals(small_set):
    ds, _ = small_set
    in_abnormal = {a for s in ds.samples if s.label == "abnormal" for a in s.anomalies}
    assert in_abnormal == set(ANOMALY_TYPES)
    assert all(1 <= len(s.anomalies) <= 2 for s in ds.samples if s.label == "abnormal")
    normals = [s for s in ds.samples if s.label == "normal"]
    minor = [s for s in normals if s.anomalies]
    assert 0.15 < len(minor) / len(normals) < 0.35
    assert all(len(s.anomalies) == 1 for s in minor)


def test_labels_csv_columns(small_set):
    ds, _ = small_set
    with open(ds.root / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "bundle", "label", "anomaly"]
    assert rows[1][:3] == ["bundle01/bundle01_0000.tif", "bundle01", ds.samples[0].label]


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted half."""
    pos, neg = scores[y == 1], scores[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def highpass_score(img8: np.ndarray) -> float:
    """99.5th percentile of |image - blur| in the central area: local defects raise it."""
    f = img8.astype(np.float32)
    hp = np.abs(f - cv2.GaussianBlur(f, (0, 0), 2))
    h, w = f.shape
    return float(np.percentile(hp[h // 10: h - h // 10, w * 3 // 20: w - w * 3 // 20], 99.5))


def test_hard_enough_global_window_beats_naive(small_set):
    """Anomalies survive a fitted global window but mostly vanish in naive /257 conversion."""
    ds, _ = small_set
    imgs = read_all(ds)
    lo, hi = np.percentile(np.concatenate([i.ravel() for i in imgs]), [0.01, 99.99])
    windowed = [np.rint((np.clip(i.astype(np.float32), lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8) for i in imgs]
    naive = [(i // 257).astype(np.uint8) for i in imgs]
    assert max(int(n.max()) for n in naive) <= 25 and np.median([np.median(n) for n in naive]) <= 10
    y = ds.y
    auc_global = auc(np.array([highpass_score(i) for i in windowed]), y)
    auc_naive = auc(np.array([highpass_score(i) for i in naive]), y)
    assert auc_global > auc_naive + 0.08, (auc_global, auc_naive)
    assert auc_global > 0.7 and auc_naive < 0.75  # visible, yet far from trivial


def test_synth_image_draws_each_type_visibly():
    """Each anomaly is an overlay on the same electrode: visible at full severity, fainter when minor."""
    shape = (104, 57)
    character = draw_character(np.random.default_rng(1))
    base = synth_image(np.random.default_rng(5), character, [], 0.0, shape).astype(np.int32)
    for name in ANOMALY_TYPES:
        minor, full = (np.abs(synth_image(np.random.default_rng(5), character, [name], sev, shape) - base)
                       for sev in (0.05, 1.0))
        assert full.max() > 60, name  # far above the noise (counts)
        assert 0 < minor.sum() < full.sum(), name
        assert full.max() < 2000, name  # a small fraction of the value range, not a saturated blot


def test_synth_image_rejects_unknown_type():
    with pytest.raises(DatasetError, match=r"^unknown anomaly type 'dent'; use one of scratch, "):
        synth_image(np.random.default_rng(0), draw_character(np.random.default_rng(0)), ["dent"], 0.5, (50, 30))


def test_synth_electrode_one_shot():
    a = synth_electrode(1, scale=0.1)
    assert a.dtype == np.uint16 and a.ndim == 2 and 200 <= a.shape[0] <= 215 and 110 <= a.shape[1] <= 125
    assert np.array_equal(a, synth_electrode(1, scale=0.1))
    assert not np.array_equal(a, synth_electrode(2, scale=0.1))
    assert not np.array_equal(a, synth_electrode(1, scale=0.1, abnormal=True))


@pytest.mark.parametrize("kwargs, message", [
    ({"bundles": 0}, "need at least 1 bundle and 1 image per bundle, got 0 x 60"),
    ({"abnormal_rate": 1.5}, "abnormal rate must be between 0 and 1, got 1.5"),
    ({"scale": 0}, "scale must be between 0.01 and 4 (1.0 = real size ~2072x1145), got 0"),
])
def test_synthesize_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DatasetError) as err:
        synthesize(tmp_path / "x", **kwargs)
    assert str(err.value) == message


def test_tiny_bundles_keep_both_classes(tmp_path):
    ds = synthesize(tmp_path / "t", bundles=3, per_bundle=3, abnormal_rate=0.21, scale=0.03, progress=False)
    for bundle in ds.bundles:
        labels = {s.label for s in ds.samples if s.bundle == bundle}
        assert labels == {"normal", "abnormal"}


def test_cli_synth_summary_and_refuses_non_empty(tmp_path):
    out = tmp_path / "out"
    args = ["synth", str(out), "--bundles", "2", "--per-bundle", "5", "--scale", "0.05", "--seed", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"wrote 10 images in 2 bundles to {out}" in result.output
    assert "abnormal: 2 (20.0%)" in result.output
    assert "size: height " in result.output and "scratch" in result.output
    assert len(load_dataset(out)) == 10
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output == f"Error: {out} is not empty; choose an empty folder or add --force to write into it\n"
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output


def test_new_electrodes_of_a_bundle_share_its_coating(small_set):
    """synth_bundle_electrode continues a bundle: its coating level is that bundle's, not another's."""
    from inspector.synth import synth_bundle_electrode

    def coated_median(img: np.ndarray) -> float:
        h, w = img.shape
        return float(np.median(img[h // 4: 3 * h // 4, w // 4: 3 * w // 4]))

    ds, _ = small_set
    seed, scale = 0, 0.05  # as small_set was written
    by_bundle: dict[str, list[float]] = {}
    for s in ds.samples:
        by_bundle.setdefault(s.bundle, []).append(coated_median(tifffile.imread(s.path)))
    for number, name in enumerate(sorted(by_bundle), start=1):
        new = [synth_bundle_electrode(seed, number, index=500 + i, scale=scale) for i in range(5)]
        assert np.array_equal(new[0], synth_bundle_electrode(seed, number, index=500, scale=scale))
        ours, theirs = np.array(by_bundle[name]), np.array([coated_median(img) for img in new])
        spread = max(ours.std(), 3.0)
        assert abs(np.median(theirs) - np.median(ours)) <= 3 * spread, (name, theirs, ours)
