"""Synthetic 16-bit X-ray electrodes: bundles with their own coating character and 11 anomaly types.

Built so a wrong pipeline scores visibly worse than a right one: anomaly contrast is tens to a
few hundred counts on a 1700-3600 image, which naive /257 conversion squeezes into 0-1 grey
levels while a fitted global window keeps it visible; bundles differ in level, grain and margins,
so a window or model fitted on one bundle is off for another. numpy + OpenCV only.
This module draws the electrode and writes the set (images, labels.csv, defect masks); each anomaly
type's painter is painter.py's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from inspector.data.dataset import ANOMALY_TYPES, LABELS_FILE, Dataset, load_dataset, mask_rel, write_labels
from inspector.base.errors import DatasetError
from inspector.data.localize import write_mask
from inspector.data.painter import DRAWERS, Canvas

FULL_HEIGHT = 2072  # mean height at scale 1.0; sizes below are in full-resolution pixels
MINOR_SHARE = 0.25  # share of normal electrodes that carry one minor, acceptable anomaly
# A minor instance keeps this share of its contrast against the electrode. Each drawer has a floor
# (an ink fluctuation at severity 0 is still a 20-count band across the whole strip, as plain under
# a window as an abnormal one), so severity alone cannot make an instance minor: an operator passes
# a minor flaw because it is faint, below the coating's own grain.
MINOR_GAIN = 0.25
# A defect mask marks where an abnormal anomaly moved the drawn image by at least this many counts
# before grain and noise: there the written count changed; elsewhere it moved by at most one count.
MASK_MIN_CHANGE = 1.0


@dataclass(frozen=True)
class Character:
    """What makes one bundle's electrodes look alike: drawn once per bundle."""

    coat_level: float  # mean coated-area value (counts)
    substrate_level: float  # uncoated margin value
    grain_sigma: float  # texture scale of the grain, full-resolution pixels
    grain_amp: float  # grain standard deviation (counts)
    noise_amp: float  # white pixel noise (counts)
    gradient: tuple[float, float]  # linear ramp amplitude across x and y (counts)
    bump_amp: float  # smooth low-frequency bump (counts, signed)
    side_margin: float  # uncoated margin at left/right, fraction of width
    end_margin: float  # uncoated margin at top/bottom, fraction of height
    hot_rate: float  # fraction of hot pixels (0 in some bundles)


def draw_character(rng: np.random.Generator) -> Character:
    """A bundle's coating character; ranges keep coated pixels mostly in 1700-2800."""
    return Character(
        coat_level=float(rng.uniform(2000, 2500)),
        substrate_level=float(rng.uniform(3000, 3600)),
        grain_sigma=float(rng.uniform(1.0, 6.0)),
        grain_amp=float(rng.uniform(12, 30)),
        noise_amp=float(rng.uniform(6, 14)),
        gradient=(float(rng.uniform(-90, 90)), float(rng.uniform(-90, 90))),
        bump_amp=float(rng.uniform(-80, 80)),
        side_margin=float(rng.uniform(0.03, 0.08)),
        end_margin=float(rng.uniform(0.015, 0.04)),
        hot_rate=float(rng.choice([0.0, rng.uniform(0.00001, 0.00008)])),
    )


def draw_shape(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    """(height, width): METHOD.md's 2053-2115 x 1119-1219 (means 2072 x 1145), times scale."""
    height = min(2115.0, 2053 + rng.gamma(2.0, 9.5))
    width = min(1219.0, 1119 + rng.gamma(1.3, 20.0))
    return max(16, round(height * scale)), max(8, round(width * scale))


def synth_image(rng: np.random.Generator, character: Character, anomalies: Sequence[str],
                severity: float | Sequence[float], shape: tuple[int, int], minor: bool = False) -> np.ndarray:
    """One electrode as 2-D uint16: substrate, coated strip with the bundle's look, then anomalies.

    minor: the anomalies are the acceptable kind a normal electrode may carry, drawn at MINOR_GAIN
    of their contrast.
    """
    return synth_image_with_mask(rng, character, anomalies, severity, shape, minor)[0]


def synth_image_with_mask(rng: np.random.Generator, character: Character, anomalies: Sequence[str],
                          severity: float | Sequence[float], shape: tuple[int, int],
                          minor: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """synth_image's electrode (the same pixels) and its defect mask: true where the anomalies changed
    the image by at least MASK_MIN_CHANGE counts before grain and noise (so the count changed there,
    bar a hot pixel, and by at most one count elsewhere); None for minor anomalies (not a defect) or
    none at all.
    """
    h, w = shape
    unit = h / FULL_HEIGHT
    noise_rng = np.random.default_rng(rng.integers(2**63))  # same noise with or without anomalies
    sm, em = max(1, round(character.side_margin * w)), max(1, round(character.end_margin * h))
    x0, x1 = sm + int(rng.integers(-1, 2) * (sm > 2)), w - sm
    y0, y1 = em, h - em
    img = np.full((h, w), character.substrate_level, np.float32)
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    bx, by = rng.uniform(-0.3, 0.3, 2)
    bump = np.exp(-((xs - bx) ** 2 / 0.08 + (ys - by) ** 2 / 0.12))
    coat = (character.coat_level + character.gradient[0] * xs + character.gradient[1] * ys
            + character.bump_amp * bump + rng.normal(0, 25))
    img[y0:y1, x0:x1] = coat[y0:y1, x0:x1]
    rim = max(1, x0 // 2)
    img[:, :rim] += 150  # the substrate's own outer rim, brighter still
    img[:, w - rim:] += 150
    cv = Canvas(img, x0, x1, y0, y1, float(character.coat_level), float(character.substrate_level), unit)
    sevs = [severity] * len(anomalies) if np.isscalar(severity) else list(severity)
    clean = img.copy() if anomalies and not minor else None
    for name, sev in zip(anomalies, sevs):
        if name not in DRAWERS:
            raise DatasetError(f"unknown anomaly type {name!r}; use one of {', '.join(ANOMALY_TYPES)} "
                               "(the generator draws only the paper's eleven types)")
        before = cv.img.copy() if minor else None
        DRAWERS[name](rng, cv, float(np.clip(sev, 0.0, 1.0)))
        if before is not None:
            cv.img -= (1.0 - MINOR_GAIN) * (cv.img - before)  # in place: img is the same array
    mask = None if clean is None else np.abs(img - clean) >= MASK_MIN_CHANGE
    grain = noise_rng.standard_normal((h, w), dtype=np.float32)
    sigma = character.grain_sigma * unit
    if sigma >= 0.3:
        grain = cv2.GaussianBlur(grain, (0, 0), sigma)
        grain *= 1.0 / max(float(grain.std()), 1e-6)
    img += character.grain_amp * grain
    img += character.noise_amp * noise_rng.standard_normal((h, w), dtype=np.float32)
    if character.hot_rate > 0:
        n_hot = int(noise_rng.binomial(h * w, character.hot_rate))
        idx = noise_rng.integers(0, h * w, n_hot)
        img.flat[idx] = noise_rng.uniform(3800, 6000, n_hot)
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16), mask


def _pick_anomalies(rng: np.random.Generator, abnormal: bool) -> tuple[list[str], list[float]]:
    """Abnormal: 1-2 anomalies, clear to subtle. Normal: a minor one in MINOR_SHARE of cases, else none."""
    if abnormal:
        k = 1 if rng.random() < 0.7 else 2
        names = [str(n) for n in rng.choice(ANOMALY_TYPES, size=k, replace=False)]
        return names, [float(rng.uniform(0.35, 1.0)) for _ in names]
    if rng.random() < MINOR_SHARE:
        return [str(rng.choice(ANOMALY_TYPES))], [float(rng.uniform(0.0, 0.12))]
    return [], []


def synth_electrode(seed: int, scale: float = 0.1, abnormal: bool = False) -> np.ndarray:
    """One synthetic electrode in one call (capture-folder tests, demos); deterministic per seed."""
    rng = np.random.default_rng([seed, 7])
    character = draw_character(rng)
    names, sevs = _pick_anomalies(rng, abnormal)
    if abnormal:
        sevs = [max(s, 0.6) for s in sevs]
    return synth_image(rng, character, names, sevs, draw_shape(rng, scale), minor=not abnormal)


def synth_bundle_electrode(dataset_seed: int, bundle: int, index: int, scale: float = 0.1,
                           abnormal: bool = False) -> np.ndarray:
    """A new electrode from bundle `bundle` (1-based) of the set `synthesize(seed=dataset_seed)` wrote.

    Production goes on with the same coating and ink mix: these are the scans a station sees next.
    """
    character = draw_character(np.random.default_rng([dataset_seed, 1, bundle - 1]))
    rng = np.random.default_rng([dataset_seed, 3, bundle - 1, index])
    names, sevs = _pick_anomalies(rng, abnormal)
    if abnormal:
        sevs = [max(s, 0.6) for s in sevs]
    return synth_image(rng, character, names, sevs, draw_shape(rng, scale), minor=not abnormal)


def _abnormal_count(rng: np.random.Generator, per_bundle: int, rate: float) -> int:
    """About per_bundle * rate, jittered by up to one image so bundles differ a little."""
    expected = per_bundle * rate
    n = int(round(expected + (rng.uniform(-1, 1) if per_bundle >= 10 else 0.0)))
    if expected >= 0.5:
        n = max(n, 1)
    if per_bundle >= 2 and rate < 1:
        n = min(n, per_bundle - 1)
    return max(0, min(n, per_bundle))


def write_tiff(path: Path, img16: np.ndarray) -> None:
    """zlib-compressed 16-bit TIFF with a horizontal predictor; byte-identical for equal input."""
    import tifffile

    tifffile.imwrite(path, img16, compression="zlib", compressionargs={"level": 3}, predictor=True, metadata=None)


def synthesize(out: str | Path, bundles: int = 12, per_bundle: int = 60, abnormal_rate: float = 0.21,
               scale: float = 1.0, seed: int = 0, progress: bool = True) -> Dataset:
    """Write bundleNN/bundleNN_XXXX.tif, labels.csv (with the anomaly column) and, for each abnormal
    image, its defect mask masks/bundleNN/bundleNN_XXXX.png (synth_image_with_mask); deterministic per seed.

    A mask left by an earlier run for an image now normal is removed.
    """
    if bundles < 1 or per_bundle < 1:
        raise DatasetError(f"need at least 1 bundle and 1 image per bundle, got {bundles} x {per_bundle}")
    if not 0 <= abnormal_rate <= 1:
        raise DatasetError(f"abnormal rate must be between 0 and 1, got {abnormal_rate}")
    if not 0.01 <= scale <= 4:
        raise DatasetError(f"scale must be between 0.01 and 4 (1.0 = real size ~2072x1145), got {scale}")
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    bar = tqdm(total=bundles * per_bundle, desc="synth", unit="img", disable=None if progress else True, file=sys.stderr)
    try:
        for b in range(bundles):
            name = f"bundle{b + 1:02d}"
            brng = np.random.default_rng([seed, 1, b])
            character = draw_character(brng)
            n_abn = _abnormal_count(brng, per_bundle, abnormal_rate)
            abnormal = set(brng.permutation(per_bundle)[:n_abn].tolist())
            (out / name).mkdir(exist_ok=True)
            for i in range(per_bundle):
                rng = np.random.default_rng([seed, 2, b, i])
                is_abn = i in abnormal
                names, sevs = _pick_anomalies(rng, is_abn)
                img16, mask = synth_image_with_mask(rng, character, names, sevs, draw_shape(rng, scale),
                                                    minor=not is_abn)
                rel = f"{name}/{name}_{i:04d}.tif"
                write_tiff(out / rel, img16)
                if mask is not None:
                    write_mask(out / mask_rel(rel), mask)
                else:
                    (out / mask_rel(rel)).unlink(missing_ok=True)
                rows.append((rel, name, "abnormal" if is_abn else "normal", ";".join(names)))
                bar.update(1)
    finally:
        bar.close()
    write_labels(out / LABELS_FILE, rows)
    return load_dataset(out)


def summarize(dataset: Dataset) -> dict:
    """Counts, abnormal share, image sizes (from TIFF headers only), anomaly and defect mask counts of a set."""
    import tifffile

    heights, widths = [], []
    for s in dataset.samples:
        with tifffile.TiffFile(s.path) as tif:
            h, w = tif.pages[0].shape[:2]
        heights.append(h)
        widths.append(w)
    y = dataset.y
    counts = {name: {"abnormal": 0, "normal": 0} for name in ANOMALY_TYPES}
    for s in dataset.samples:
        for a in s.anomalies:  # a plant's own type (a loaded set, not a synthetic one) follows the eleven
            counts.setdefault(a, {"abnormal": 0, "normal": 0})[s.label] += 1
    return {
        "images": len(dataset),
        "bundles": len(dataset.bundles),
        "abnormal": int(y.sum()),
        "abnormal_share": float(y.mean()) if len(y) else 0.0,
        "masks": sum(dataset.mask_path(i) is not None for i in range(len(dataset))),
        "height": [min(heights), round(float(np.mean(heights)), 1), max(heights)],
        "width": [min(widths), round(float(np.mean(widths)), 1), max(widths)],
        "anomalies": counts,
    }
