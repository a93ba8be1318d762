"""The synthetic electrode's anomaly painters: one function per anomaly type, drawing on a Canvas (numpy + OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from inspector.data.dataset import ANOMALY_TYPES


@dataclass
class Canvas:
    """A float image being drawn, with its coated rectangle and the unit size of the scale."""

    img: np.ndarray
    x0: int
    x1: int
    y0: int
    y1: int
    coat: float
    substrate: float
    unit: float  # pixels per full-resolution pixel

    def px(self, full_px: float, least: float = 1.0) -> float:
        """A size given at full resolution, in this image's pixels, never below `least`."""
        return max(least, full_px * self.unit)


def _stamp(cv: Canvas, mask: np.ndarray, amount: float) -> None:
    cv.img += amount * mask


def _blob(cv: Canvas, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """A soft Gaussian blob (peak 1) as a full-size mask, computed on a local window only."""
    h, w = cv.img.shape
    mask = np.zeros((h, w), np.float32)
    xa, xb = max(0, int(cx - 3 * sx)), min(w, int(cx + 3 * sx) + 1)
    ya, yb = max(0, int(cy - 3 * sy)), min(h, int(cy + 3 * sy) + 1)
    if xa >= xb or ya >= yb:
        return mask
    xs = (np.arange(xa, xb, dtype=np.float32) - cx) / sx
    ys = (np.arange(ya, yb, dtype=np.float32) - cy) / sy
    mask[ya:yb, xa:xb] = np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
    return mask


def _point(rng: np.random.Generator, cv: Canvas, inset: float = 0.1) -> tuple[float, float]:
    """A random point inside the coated area, away from its border by `inset` of its size."""
    w, h = cv.x1 - cv.x0, cv.y1 - cv.y0
    return (float(rng.uniform(cv.x0 + inset * w, cv.x1 - inset * w)),
            float(rng.uniform(cv.y0 + inset * h, cv.y1 - inset * h)))


def _sign(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]))


def draw_scratch(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A thin bright or dark segment at a random angle."""
    cx, cy = _point(rng, cv)
    length = (0.05 + 0.30 * sev) * (cv.x1 - cv.x0) * 1.5
    angle = rng.uniform(0, np.pi)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    mask = np.zeros_like(cv.img)
    thick = max(1, round(cv.px(2 + 4 * sev)))
    cv2.line(mask, (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy)), 1.0, thick, cv2.LINE_AA)
    _stamp(cv, mask, _sign(rng) * (50 + 250 * sev))


def draw_line(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A long straight streak along the coating direction (vertical)."""
    x = rng.uniform(cv.x0 + 0.1 * (cv.x1 - cv.x0), cv.x1 - 0.1 * (cv.x1 - cv.x0))
    span = (0.4 + 0.6 * sev) * (cv.y1 - cv.y0)
    ya = rng.uniform(cv.y0, cv.y1 - span)
    mask = np.zeros_like(cv.img)
    thick = max(1, round(cv.px(3 + 8 * sev)))
    cv2.line(mask, (round(x), round(ya)), (round(x), round(ya + span)), 1.0, thick, cv2.LINE_AA)
    _stamp(cv, mask, _sign(rng) * (40 + 180 * sev))


def draw_edge_cut(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A notch of missing coating cut into a side edge: substrate level shows through."""
    depth = cv.px((15 + 90 * sev))
    half = cv.px((10 + 60 * sev))
    cy = rng.uniform(cv.y0 + 0.1 * (cv.y1 - cv.y0), cv.y1 - 0.1 * (cv.y1 - cv.y0))
    left = rng.random() < 0.5
    edge = cv.x0 if left else cv.x1 - 1
    tip = edge + depth if left else edge - depth
    pts = np.array([[edge, cy - half], [tip, cy], [edge, cy + half]], np.float32)
    mask = np.zeros_like(cv.img)
    cv2.fillConvexPoly(mask, np.round(pts).astype(np.int32), 1.0, cv2.LINE_AA)
    cv.img += mask * (cv.substrate - cv.img) * (0.6 + 0.4 * sev)


def draw_edge_tension(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A wavy, thickened band along a side edge (the coating pulled at the edge)."""
    h, w = cv.img.shape
    band = max(2, round(cv.px(10 + 40 * sev)))
    amp = cv.px(3 + 15 * sev)
    period = rng.uniform(0.05, 0.25) * h
    ys = np.arange(h, dtype=np.float32)
    offset = amp * np.sin(2 * np.pi * ys / period + rng.uniform(0, 2 * np.pi))
    left = rng.random() < 0.5
    xs = np.arange(w, dtype=np.float32)[None, :]
    inside = (xs - cv.x0) if left else (cv.x1 - 1 - xs)  # distance into the coating
    dist = inside - offset[:, None]
    rows = (ys >= cv.y0) & (ys < cv.y1)
    thick = ((dist >= 0) & (dist < band) & rows[:, None]).astype(np.float32)
    thick = cv2.GaussianBlur(thick, (0, 0), max(0.5, band / 4))
    _stamp(cv, thick, -(40 + 150 * sev))


def draw_smudge(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A soft, elongated offset of the coating level."""
    cx, cy = _point(rng, cv)
    s = cv.px(20 + 80 * sev, 1.5)
    mask = _blob(cv, cx, cy, s * rng.uniform(0.6, 1.6), s * rng.uniform(0.6, 1.6))
    _stamp(cv, mask, _sign(rng) * (30 + 140 * sev))


def draw_edge_ink_flow(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """Ink spreading from a side edge into the uncoated margin."""
    left = rng.random() < 0.5
    margin = cv.x0 if left else cv.img.shape[1] - cv.x1
    depth = max(1.0, (0.3 + 0.7 * sev) * margin)
    cy = rng.uniform(cv.y0 + 0.1 * (cv.y1 - cv.y0), cv.y1 - 0.1 * (cv.y1 - cv.y0))
    half = cv.px(20 + 120 * sev, 2)
    cx = cv.x0 if left else cv.x1 - 1
    mask = np.zeros_like(cv.img)
    cv2.ellipse(mask, (round(cx), round(cy)), (max(1, round(depth)), max(1, round(half))), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, depth / 4))
    xs = np.arange(cv.img.shape[1])
    outside = (xs < cv.x0) if left else (xs >= cv.x1)
    mask *= outside[None, :]
    level = cv.substrate - (cv.substrate - cv.coat) * (0.3 + 0.5 * sev)
    cv.img += mask * (level - cv.img)


def draw_bubble(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A few small rings (bubbles: less material, brighter rim) with dots among them."""
    mask = np.zeros_like(cv.img)
    cx, cy = _point(rng, cv)
    spread = cv.px(30 + 120 * sev, 3)
    for _ in range(int(rng.integers(1, 3 + round(4 * sev)))):
        x, y = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
        r = max(1, round(cv.px(rng.uniform(4, 8 + 12 * sev))))
        cv2.circle(mask, (round(x), round(y)), r, 1.0, 1 if r < 3 else max(1, r // 3), cv2.LINE_AA)
    _stamp(cv, mask, 60 + 220 * sev)


def draw_missing_ink(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """An irregular patch where coating is thin or absent (towards substrate level)."""
    cx, cy = _point(rng, cv)
    r = cv.px(12 + 60 * sev, 1.5)
    mask = np.zeros_like(cv.img)
    for _ in range(3):
        ox, oy = rng.normal(0, r / 2, 2)
        axes = (max(1, round(r * rng.uniform(0.5, 1.0))), max(1, round(r * rng.uniform(0.5, 1.0))))
        cv2.ellipse(mask, (round(cx + ox), round(cy + oy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(np.minimum(mask, 1.0), (0, 0), max(0.5, r / 6))
    cv.img += mask * (cv.substrate - cv.img) * (0.15 + 0.5 * sev)


def draw_agglomerate(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """A small dense cluster of dark (ink-rich) specks."""
    mask = np.zeros_like(cv.img)
    cx, cy = _point(rng, cv)
    spread = cv.px(8 + 30 * sev, 1.5)
    for _ in range(int(rng.integers(3, 6 + round(10 * sev)))):
        x, y = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
        cv2.circle(mask, (round(x), round(y)), max(1, round(cv.px(rng.uniform(2, 6)))), 1.0, -1, cv2.LINE_AA)
    _stamp(cv, np.minimum(mask, 1.0), -(80 + 260 * sev))


def draw_ink_fluctuation(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """Banding across the coated strip: the coating level rises and falls along its length."""
    h, _ = cv.img.shape
    period = rng.uniform(0.04, 0.15) * h
    ys = np.arange(h, dtype=np.float32)
    start = rng.uniform(cv.y0, cv.y0 + 0.5 * (cv.y1 - cv.y0))
    extent = (0.3 + 0.7 * sev) * (cv.y1 - cv.y0)
    window = ((ys >= start) & (ys < start + extent)).astype(np.float32)
    wave = np.sin(2 * np.pi * ys / period + rng.uniform(0, 2 * np.pi)) * window
    band = np.zeros_like(cv.img)
    band[:, cv.x0:cv.x1] = wave[:, None]
    _stamp(cv, band, 20 + 70 * sev)


def draw_ink_entry_exit(rng: np.random.Generator, cv: Canvas, sev: float) -> None:
    """Thicker or thinner coating where the applicator enters or leaves the strip."""
    h, _ = cv.img.shape
    length = (0.03 + 0.12 * sev) * (cv.y1 - cv.y0)
    ys = np.arange(h, dtype=np.float32)
    dist = (ys - cv.y0) if rng.random() < 0.5 else (cv.y1 - 1 - ys)
    profile = np.where(dist >= 0, np.exp(-np.maximum(dist, 0) / max(1.0, length)), 0.0).astype(np.float32)
    layer = np.zeros_like(cv.img)
    layer[:, cv.x0:cv.x1] = profile[:, None]
    _stamp(cv, layer, _sign(rng) * (40 + 160 * sev))


DRAWERS = {
    "scratch": draw_scratch,
    "line": draw_line,
    "edge_cut": draw_edge_cut,
    "edge_tension": draw_edge_tension,
    "smudge": draw_smudge,
    "edge_ink_flow": draw_edge_ink_flow,
    "bubble": draw_bubble,
    "missing_ink": draw_missing_ink,
    "agglomerate": draw_agglomerate,
    "ink_fluctuation": draw_ink_fluctuation,
    "ink_entry_exit": draw_ink_entry_exit,
}
assert tuple(DRAWERS) == ANOMALY_TYPES
