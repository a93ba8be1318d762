"""prepare.py: the fast path gives exactly what convert_image + resize gave, and the same gate verdicts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.imaging import quality
from inspector.base.config import METHODS
from inspector.imaging.convert import Conversion, Window, convert_image
from inspector.base.errors import ImageError
from inspector.imaging.prepare import InputSpec, prepare, resize_to

from image_files import textured_scan as scan

WINDOW = Window(1700, 2800)



def reference(img16: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The slow path the station used before: convert at full size, then resize three channels."""
    h, w = spec.input_size
    c = spec.conversion
    img8 = convert_image(img16, c.method, c.window, *c.clahe)
    shrink = img8.shape[0] >= h and img8.shape[1] >= w
    return cv2.resize(img8, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("input_size", [(128, 64), (97, 211), (300, 560), (400, 700)])
def test_prepare_equals_convert_then_resize_for_every_method_and_size(method, input_size):
    img16 = scan()
    spec = InputSpec(Conversion(method, WINDOW, (2.0, 8)), input_size)
    got = prepare(img16, spec)
    assert got.reason is None
    assert got.img8.shape == (*input_size, 3) and got.img8.dtype == np.uint8
    assert np.array_equal(got.img8, reference(img16, spec))


def test_blur_in_16_bit_integers_equals_the_float64_laplacian_variance():
    for seed in range(3):
        gray = quality.gate_image(scan(seed=seed), WINDOW)
        assert quality.measure_blur(None, None, gray) == pytest.approx(cv2.Laplacian(gray, cv2.CV_64F).var(), rel=1e-12)


def test_prepare_gives_the_quality_gates_reason_and_no_image():
    limits = {"blur_min": 1e9, "clipped_fraction": 0.05, "height": [300, 300], "width": [560, 560]}
    spec = InputSpec(Conversion("global", WINDOW), (128, 64), quality=limits)
    img16 = scan()
    got = prepare(img16, spec)
    assert got.img8 is None and got.reason == quality.check(img16, limits, WINDOW) and got.reason.startswith("blurred")
    dark = np.full((300, 560), 100, np.uint16)
    dark[0, 0] = 101
    assert prepare(dark, spec).reason.startswith("badly exposed")
    assert prepare(np.zeros((300, 560), np.uint16), spec).reason.startswith("blank")


def test_a_conversion_that_cannot_be_made_is_a_rescan_not_an_error():
    flat = np.full((300, 560), 2000, np.uint16)
    flat[:3, :3] = 2001  # not blank, but the local window's percentiles are equal: nothing to stretch
    got = prepare(flat, InputSpec(Conversion("local", None), (128, 64)))
    assert got.img8 is None and got.reason.startswith("cannot convert")


def test_prepare_refuses_arrays_that_are_not_16_bit_gray():
    with pytest.raises(ImageError, match="16-bit"):
        prepare(np.zeros((10, 10), np.uint8), InputSpec(Conversion("naive", None), (8, 8)))
    with pytest.raises(ImageError, match="2-D"):
        prepare(np.zeros((10, 10, 3), np.uint16), InputSpec(Conversion("naive", None), (8, 8)))


def test_resize_to_keeps_an_image_already_at_the_input_size():
    img8 = np.zeros((8, 4, 3), np.uint8)
    assert resize_to(img8, (8, 4)) is img8
