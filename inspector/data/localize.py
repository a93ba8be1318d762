"""Localization as a measured property: does a heat map point at the defect its mask marks?

A defect mask is an 8-bit PNG as large as its image, 255 where the defect changed the counts and 0
elsewhere (`inspector synth` writes one per abnormal image; dataset.mask_rel gives its place). A map
is scored against the mask dilated by DILATION of the image width (a map a few pixels beside a thin
line still points at it): is its peak inside (`peak_in_defect`), and which share of its positive mass
lies inside (`mass_inside`), each against the dilated mask's share of the image (`area_share`), the
chance level of both. numpy + OpenCV only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from inspector.base.errors import DatasetError

DILATION = 0.02  # the mask is dilated by this share of the image width
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Hit:
    """One map scored against one mask; area_share is the chance level of the other two."""

    peak_in_defect: bool
    mass_inside: float
    area_share: float


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """An 8-bit PNG, 255 where `mask` is true; byte-identical for equal input; parent folders made."""
    from inspector.base.durable import write_atomic

    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a mask is a non-empty 2-D array, got shape {mask.shape}")
    ok, png = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
    if not ok:
        raise DatasetError(f"cannot encode the mask for {os.fsdecode(path)} as PNG")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    write_atomic(path, png.tobytes(), durable=False)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A defect mask as a 2-D bool array (true where nonzero); DatasetError saying what is wrong with a
    missing, damaged or colour file."""
    where = os.fsdecode(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DatasetError(f"mask {where} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"mask {where} cannot be read: {exc.strerror}") from None
    if not data.startswith(_PNG_SIGNATURE):
        raise DatasetError(f"mask {where} is not a PNG file ({len(data)} bytes without the PNG signature); "
                           "write masks as 8-bit grayscale PNG, 255 on the defect")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"mask {where} is a damaged PNG (it does not decode: truncated or corrupt); "
                           "write it again")
    if img.ndim != 2:
        raise DatasetError(f"mask {where} has {img.shape[2]} channels; a mask is a grayscale PNG "
                           "(0 background, 255 defect)")
    return img > 0


def dilate(mask: np.ndarray, fraction: float = DILATION) -> np.ndarray:
    """The bool mask grown by round(fraction * width) pixels with an elliptical (round) kernel."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    if fraction < 0:
        raise ValueError(f"the dilation fraction cannot be negative, got {fraction}")
    radius = round(fraction * mask.shape[1])
    if radius == 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _whole(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"a heat map is a non-empty 2-D array, got shape {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("the heat map holds NaN or infinite values")
    h, w = shape
    return heat if heat.shape == (h, w) else cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)


def score_map(heat: np.ndarray, mask: np.ndarray, fraction: float = DILATION, shown: np.ndarray | None = None) -> Hit:
    """Score a heat map covering the whole image, at any size (it is resized bilinearly to the mask's),
    against the mask dilated by `fraction` of its width: its peak (its maximum, the point a verdict reports) and
    the mass of `shown` (the map as drawn, e.g. only what exceeds the normals' range; default: the map itself).

    A flat map (all values equal, e.g. all zero) has no peak: never a hit; the mass inside of an all-zero (or
    all-negative) shown map is 0. ValueError for an empty mask or a map holding NaN.
    """
    mask = np.asarray(mask, dtype=bool)
    grown = dilate(mask, fraction)
    if not grown.any():
        raise ValueError("the mask marks no defect pixel: localization cannot be measured on it")
    heat = _whole(heat, mask.shape)
    drawn = heat if shown is None else _whole(shown, mask.shape)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    flat = float(heat.max()) == float(heat.min())
    positive = np.maximum(drawn, 0.0, dtype=np.float64)
    total = float(positive.sum())
    mass = float(positive[grown].sum()) / total if total > 0 else 0.0
    return Hit(bool(grown[peak]) and not flat, mass, float(grown.mean()))


def _figures(hits: list[Hit]) -> dict:
    n = len(hits)
    peaks = sum(h.peak_in_defect for h in hits)
    mass = float(np.mean([h.mass_inside for h in hits])) if n else 0.0
    area = float(np.mean([h.area_share for h in hits])) if n else 0.0
    return {"n": n, "hits": peaks, "hit_rate": peaks / n if n else 0.0, "mass_inside": mass,
            "area_share": area, "mass_ratio": mass / area if area > 0 else 0.0}


def summarize(hits: Iterable[tuple[str, Hit]]) -> dict:
    """Per anomaly type and pooled: n, hits, hit_rate, mean mass_inside, mean area_share (chance) and
    mass_ratio (mean mass_inside / mean area_share).

    Each entry is one image: its anomaly type, or its types joined by ';' as labels.csv writes them
    (the image counts once in "pooled" and once under each of its types; no type: "unspecified").
    """
    pooled: list[Hit] = []
    by_type: dict[str, list[Hit]] = {}
    for types, hit in hits:
        pooled.append(hit)
        names = [t.strip() for t in types.split(";") if t.strip()] or ["unspecified"]
        for name in dict.fromkeys(names):
            by_type.setdefault(name, []).append(hit)
    return {"pooled": _figures(pooled), "by_type": {t: _figures(by_type[t]) for t in sorted(by_type)}}


def format_localization(summary: dict) -> str:
    """summarize()'s figures as a plain-text table: type, n, hit rate, mass inside, chance (area share)."""
    rows = [*summary["by_type"].items(), ("pooled", summary["pooled"])]
    width = max(len("type"), *(len(name) for name, _ in rows))
    lines = [f"{'type':<{width}}  {'n':>4}  {'peak in defect':>17}  {'mass inside':>11}  {'chance':>6}  {'ratio':>5}"]
    for name, f in rows:
        hits = f"{f['hits']}/{f['n']} ({f['hit_rate']:.0%})"
        lines.append(f"{name:<{width}}  {f['n']:>4}  {hits:>17}  {f['mass_inside']:>11.2f}  "
                     f"{f['area_share']:>6.2f}  {f['mass_ratio']:>4.1f}x")
    return "\n".join(lines)


def localization_lines(summary: dict, title: str) -> list[str]:
    """A titled, indented format_localization table, as `inspector cv` and `inspector evaluate` print it."""
    return [f"{title}, abnormal images with a defect mask (the mask dilated by {DILATION:.0%} of the width; chance = "
            "its share of the image):", *("  " + line for line in format_localization(summary).splitlines())]
