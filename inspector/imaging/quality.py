"""The quality gate: captures a verdict would mean nothing for (blank, far off the training sizes, badly
exposed, blurred) are answered `rescan`; its limits are fitted on the training images and stored in the model.

Torch-free: infer and explain apply it, build fits it.
"""

from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from inspector.imaging.convert import Window, local_window, to_uint8
from inspector.base.errors import InspectorError

SIZE_SLACK = 0.5  # a capture under half the smallest, or over twice the largest, training size is sent back


def gate_image(img16: np.ndarray, window: Window | None) -> np.ndarray:
    """The 8-bit gray image the quality gate judges: the model's window, else the image's own."""
    if window is None:
        try:
            window = local_window(img16)
        except InspectorError:  # almost every pixel one value: nothing to stretch, nothing sharp
            return np.zeros(img16.shape, np.uint8)
    return to_uint8(img16, window)


def measure_blur(img16: np.ndarray, window: Window | None, gray: np.ndarray | None = None) -> float:
    """Variance of the Laplacian: low means few sharp edges, i.e. a blurred capture.

    gray: gate_image(img16, window) when the caller has it already. The Laplacian of 8-bit values is a
    whole number within +-1020, so 16-bit integers hold it exactly (a third of the time of float64).
    """
    lap = cv2.Laplacian(gray if gray is not None else gate_image(img16, window), cv2.CV_16S)
    _, std = cv2.meanStdDev(lap)
    return float(std[0, 0]) ** 2


def measure_clipping(img16: np.ndarray, window: Window) -> tuple[float, float]:
    """Shares of pixels at or below the window's low end and at or above its high end."""
    n = img16.size
    return float(np.count_nonzero(img16 <= window.lo)) / n, float(np.count_nonzero(img16 >= window.hi)) / n


def fit(images16: Iterable[np.ndarray], window: Window | None, clipped_fraction: float) -> dict:
    """The gate's limits from the training images: blur_min = half the 1st percentile of their Laplacian
    variance, their height and width range, and the configured clipped share."""
    variances, heights, widths = [], [], []
    for img16 in images16:
        variances.append(measure_blur(img16, window))
        heights.append(img16.shape[0])
        widths.append(img16.shape[1])
    return {"blur_min": 0.5 * float(np.percentile(variances, 1)), "clipped_fraction": clipped_fraction,
            "height": [min(heights), max(heights)], "width": [min(widths), max(widths)]}


def check(img16: np.ndarray, limits: dict, window: Window | None, gray: np.ndarray | None = None) -> str | None:
    """The reason a capture should be rescanned, or None; a gate is on only where the model sets its limit.

    gray: to_uint8(img16, window), when the caller has converted it already (prepare.py).
    The checks, in this order, and their texts are the functions below, shared with devprep.py (the same
    gate measured on a torch device).
    """
    lo, hi = int(img16.min()), int(img16.max())
    if lo == hi:  # always checked: no conversion can stretch it and no verdict about it means anything
        return blank_reason(lo)
    reason = size_reason(img16.shape, limits)
    if reason is not None:
        return reason
    if limits.get("clipped_fraction") is not None and window is not None:
        reason = clipping_reason(*measure_clipping(img16, window), limits["clipped_fraction"])
        if reason is not None:
            return reason
    blur_min = limits.get("blur_min")
    if blur_min is not None:
        return blur_reason(measure_blur(img16, window, gray if window is not None else None), blur_min)
    return None


def blank_reason(value: int) -> str:
    """The text for a capture whose every pixel is `value`."""
    return f"blank: every pixel has the value {value}; the capture holds no image"


def size_reason(shape: tuple[int, ...], limits: dict) -> str | None:
    """The text for an image size far from the training sizes (limits' height and width), or None."""
    sizes = limits.get("height"), limits.get("width")
    if not all(sizes):
        return None
    (h_lo, h_hi), (w_lo, w_hi) = sizes
    h, w = shape
    if SIZE_SLACK * h_lo <= h <= h_hi / SIZE_SLACK and SIZE_SLACK * w_lo <= w <= w_hi / SIZE_SLACK:
        return None
    return (f"unexpected size: {h} x {w} px, far from the {h_lo}-{h_hi} x {w_lo}-{w_hi} px of the images "
            "the model was trained on (a cropped or wrong capture?)")


def clipping_reason(low: float, high: float, clipped_max: float) -> str | None:
    """The text for clipped shares (measure_clipping's) above the model's clipped_fraction, or None."""
    if low > clipped_max or high > clipped_max:
        end, share = ("low", low) if low >= high else ("high", high)
        return f"badly exposed: {share:.0%} of pixels clipped at the window's {end} end"
    if low + high > clipped_max:
        return f"badly exposed: {low + high:.0%} of pixels clipped ({low:.0%} low, {high:.0%} high)"
    return None


def blur_reason(variance: float, blur_min: float) -> str | None:
    """The text for a Laplacian variance (measure_blur's) below the model's blur_min, or None."""
    if variance < blur_min:
        return f"blurred: variance of the Laplacian {variance:.1f} below the model's minimum {blur_min:.1f}"
    return None
