"""One 16-bit image -> the network's input: quality gate, conversion and resize, done once and cheaply.

Torch-free, so the daemon's worker pool and the bulk paths run it beside the model's thread without
a second OpenMP team. The result is exactly `resize(convert_image(img16, ...))` (tests/test_prepare.py
checks it for every method): the single-channel methods look up, and resize, one gray channel and
stack it afterwards, and the quality gate reuses the windowed gray image instead of converting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from inspector.imaging import quality
from inspector.imaging.convert import Conversion, local_window, to_uint8, to_uint8_naive
from inspector.base.errors import ImageError, InspectorError

if TYPE_CHECKING:
    from inspector.imaging.modelmeta import ModelMeta

GRAY_METHODS = ("naive", "global", "local")  # one channel, repeated three times


@dataclass(frozen=True)
class InputSpec:
    """What a model needs of an image: its conversion, input size and quality gate limits."""

    conversion: Conversion
    input_size: tuple[int, int]
    quality: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, meta: ModelMeta) -> "InputSpec":
        """The spec a model artifact's metadata describes."""
        return cls(meta.conversion, (int(meta.input_size[0]), int(meta.input_size[1])), dict(meta.quality or {}))


@dataclass
class Prepared:
    """One image ready for the network (`img8`, input size x 3, uint8) or the reason to rescan it.

    `img16` instead of `img8`: the raw image, for a detector that gates and converts on its device.
    """

    img8: np.ndarray | None
    reason: str | None = None
    img16: np.ndarray | None = None
    shape: tuple[int, int] | None = None  # the original image's (rows, columns): where a map's boxes are drawn


def check_image16(img16: object) -> None:
    """Arrays handed in directly (not via read_image) get the same dtype/shape rules."""
    if not isinstance(img16, np.ndarray) or img16.dtype != np.uint16:
        raise ImageError("wrong_dtype", f"the detector takes 16-bit images, got {getattr(img16, 'dtype', type(img16))}")
    if img16.ndim != 2:
        raise ImageError("not_grayscale", f"the detector takes 2-D gray images, got shape {img16.shape}")


def resize_to(img8: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """The network's input size: area averaging when shrinking both ways, bilinear otherwise."""
    h, w = (int(v) for v in input_size)
    if img8.shape[:2] == (h, w):
        return img8
    shrink = img8.shape[0] >= h and img8.shape[1] >= w
    return cv2.resize(img8, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def convert_resized(img16: np.ndarray, spec: InputSpec, gray: np.ndarray | None = None) -> np.ndarray:
    """resize_to(spec.conversion.apply(img16)) without converting or resizing three equal channels.

    gray: the image already looked up through the conversion's window (the quality gate's), reused by global.
    """
    conversion = spec.conversion
    if conversion.method in GRAY_METHODS:
        if conversion.method == "global":
            gray = gray if gray is not None else to_uint8(img16, conversion.window)
        elif conversion.method == "naive":
            gray = to_uint8_naive(img16)
        else:
            gray = to_uint8(img16, local_window(img16))
        small = resize_to(gray, spec.input_size)
        return np.repeat(small[:, :, None], 3, axis=2)
    if conversion.method == "mix":
        channels = (to_uint8_naive(img16), gray if gray is not None else to_uint8(img16, conversion.window),
                    to_uint8(img16, local_window(img16)))
        return resize_to(np.stack(channels, axis=-1), spec.input_size)
    return resize_to(conversion.apply(img16), spec.input_size)


def prepare(img16: np.ndarray, spec: InputSpec) -> Prepared:
    """The quality gate, then the conversion at the input size; a conversion that cannot be made is a rescan."""
    check_image16(img16)
    window = spec.conversion.window
    gray = to_uint8(img16, window) if window is not None and spec.conversion.method in ("global", "mix") else None
    reason = quality.check(img16, spec.quality, window, gray)
    if reason is not None:
        return Prepared(None, reason, shape=img16.shape[:2])
    try:
        return Prepared(convert_resized(img16, spec, gray), shape=img16.shape[:2])
    except InspectorError as exc:  # e.g. method local on an image without contrast
        return Prepared(None, f"cannot convert: {exc}", shape=img16.shape[:2])
