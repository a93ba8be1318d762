"""The synthetic electrode generator: realism, determinism, and hard enough to tell pipelines apart."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import time

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from inspector.cli import cli
from inspector.data.dataset import ANOMALY_TYPES, load_dataset
from inspector.data.datasetcheck import check_dataset
from inspector.base.errors import DatasetError
from inspector.data.localize import read_mask
from inspector.data.synth import (draw_character, draw_shape, summarize, synth_electrode, synth_image,
                             synth_image_with_mask, synthesize)


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
    assert f"abnormal: 2 (20.0%), each with its defect mask: 2 in {out / 'masks'}" in result.output
    assert "size: height " in result.output and "scratch" in result.output
    assert len(load_dataset(out)) == 10
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output == f"Error: {out} is not empty; choose an empty folder or add --force to write into it\n"
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output


def test_new_electrodes_of_a_bundle_share_its_coating(small_set):
    """synth_bundle_electrode continues a bundle: its coating level is that bundle's, not another's."""
    from inspector.data.synth import synth_bundle_electrode

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


# sha256 over labels.csv and every image's rel, shape and pixels of synthesize(OUT, 2, 8, 0.5, 0.1, seed=13) as
# main wrote it before the defect masks (commit 64ae6be): writing masks must not change one pixel
PIXELS_BEFORE_MASKS = "03d85b27a390cba50df2c4a5e3c470f16870f646c62ac41dd336d4776c46aa9c"


def test_masks_leave_the_images_unchanged(tmp_path):
    ds = synthesize(tmp_path / "s", bundles=2, per_bundle=8, abnormal_rate=0.5, scale=0.1, seed=13, progress=False)
    digest = hashlib.sha256((ds.root / "labels.csv").read_bytes())
    for s in ds.samples:
        img = tifffile.imread(s.path)
        digest.update(f"{s.rel} {img.shape}".encode())
        digest.update(img.tobytes())
    assert digest.hexdigest() == PIXELS_BEFORE_MASKS
    kinds = {(s.label, len(s.anomalies)) for s in ds.samples}
    assert {("abnormal", 2), ("normal", 1)} <= kinds  # two defects on one image, minor flaws on normals


def test_a_mask_for_every_abnormal_image_and_none_for_normals(small_set):
    ds, _ = small_set
    for i, s in enumerate(ds.samples):
        path = ds.mask_path(i)
        if s.label == "normal":
            assert path is None and not (ds.root / "masks" / s.bundle / s.path.with_suffix(".png").name).exists()
            continue
        assert path == ds.root / "masks" / s.bundle / s.path.with_suffix(".png").name, s.rel
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and raw.shape == tifffile.imread(s.path).shape, s.rel
        assert set(np.unique(raw).tolist()) == {0, 255}, s.rel  # every mask marks some defect pixels
    assert summarize(ds)["masks"] == int(ds.y.sum()) == 150
    report = check_dataset(ds.root)
    assert report.ok and report.masks == {"abnormal": 150, "with_mask": 150, "for_normal": [], "without_image": []}


def plain_character(seed: int):
    """A bundle's look without hot pixels (a hot pixel overwrites a count, defect or not)."""
    return dataclasses.replace(draw_character(np.random.default_rng(seed)), hot_rate=0.0)


@pytest.mark.parametrize("anomalies", [[name] for name in ANOMALY_TYPES] + [["smudge", "line"], ["bubble", "edge_cut"]])
@pytest.mark.parametrize("scale", [0.05, 0.2])
def test_the_mask_is_exactly_where_the_defect_changed_the_counts(anomalies, scale):
    """The same electrode without the defect (same seed: same coating, grain and noise) differs from it at every
    mask pixel and by at most one count (rounding) outside the mask."""
    for seed in range(3):
        character, shape = plain_character(seed), draw_shape(np.random.default_rng(seed), scale)
        img, mask = synth_image_with_mask(np.random.default_rng([seed, 2]), character, anomalies, 0.35 + 0.3 * seed,
                                          shape)
        clean = synth_image(np.random.default_rng([seed, 2]), character, [], 0.0, shape)
        diff = np.abs(img.astype(np.int32) - clean)
        assert mask.shape == img.shape and mask.any()
        assert diff[~mask].max() <= 1, (anomalies, seed)
        assert diff[mask].min() >= 1, (anomalies, seed)
        assert np.array_equal(img, synth_image(np.random.default_rng([seed, 2]), character, anomalies,
                                               0.35 + 0.3 * seed, shape))  # the same pixels as synth_image


def test_a_planted_line_is_in_its_mask():
    """A vertical line seen in the pixels (the columns that changed most) is the mask's column band."""
    character, shape = plain_character(4), (208, 114)
    img, mask = synth_image_with_mask(np.random.default_rng(9), character, ["line"], 1.0, shape)
    clean = synth_image(np.random.default_rng(9), character, [], 1.0, shape)
    column_change = np.abs(img.astype(np.int32) - clean).sum(axis=0)
    cols = np.flatnonzero(mask.any(axis=0))
    assert cols.max() - cols.min() < 12 and np.argmax(column_change) in cols  # a thin band of columns
    rows = np.flatnonzero(mask.any(axis=1))
    assert len(rows) > 0.4 * 0.9 * shape[0]  # a line spans at least 40% of the coated length


def test_minor_anomalies_and_clean_images_have_no_mask():
    character, shape = plain_character(0), (104, 57)
    for anomalies, minor in ((["scratch"], True), ([], False), ([], True)):
        img, mask = synth_image_with_mask(np.random.default_rng(1), character, anomalies, 0.1, shape, minor=minor)
        assert mask is None and img.dtype == np.uint16


def test_synth_again_removes_the_masks_of_images_now_normal(tmp_path):
    out = tmp_path / "s"
    synthesize(out, bundles=2, per_bundle=6, abnormal_rate=0.5, scale=0.05, seed=1, progress=False)
    ds = synthesize(out, bundles=2, per_bundle=6, abnormal_rate=0.5, scale=0.05, seed=2, progress=False)
    written = sorted(str(p.relative_to(out)) for p in (out / "masks").rglob("*.png"))
    expected = sorted(f"masks/{s.rel.removesuffix('.tif')}.png" for s in ds.samples if s.label == "abnormal")
    assert written == expected
    assert all(read_mask(out / m).any() for m in written)

