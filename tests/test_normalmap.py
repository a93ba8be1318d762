"""The normal model (normalmap.py) on real synthetic electrodes: a planted defect is found where it was drawn,
in the original image's pixels; held-out normal scans leave the frame and the image border cold; the
leave-one-bundle-out arithmetic against a direct computation; regions() on hand-made maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from inspector.learn import normalmap as nm
from inspector.imaging.convert import convert_image
from inspector.learn.explain import display_scale
from inspector.data.localize import dilate
from inspector.learn.model import preprocess_batch
from inspector.data.synth import draw_character, synth_image

SHAPE = (400, 230)  # rows, columns of the scans: not the network input's, so the scaling back is exercised
INPUT = (384, 192)  # the network input (rows, columns)
WINDOW = (1000, 4000)  # synth's coating and substrate lie within
BUNDLES, PER_BUNDLE = 4, 5
DISC = (150, 260, 8)  # x (column), y (row), radius in image pixels


def electrode(bundle: int, index: int) -> np.ndarray:
    """A normal synthetic electrode of a bundle (the bundle's coating character drawn once per bundle)."""
    character = draw_character(np.random.default_rng([5, 1, bundle]))
    return synth_image(np.random.default_rng([5, 2, bundle, index]), character, [], [], SHAPE)


def features(images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """The "input" stage's features as the detector computes them: the model's conversion, resized."""
    x = preprocess_batch([convert_image(a, "global", window=WINDOW) for a in images], INPUT)
    return {nm.INPUT: nm.stage_features(nm.INPUT, x, {})}


def with_disc(img16: np.ndarray, x: int, y: int, radius: int, depth: float = 400.0) -> tuple[np.ndarray, np.ndarray]:
    """The image with a dark disc drawn in (less X-ray absorbed: missing coating), and the disc's mask."""
    out = img16.astype(np.float32)
    mask = np.zeros(img16.shape, np.uint8)
    cv2.circle(mask, (x, y), radius, 1, -1)
    out[mask > 0] -= depth
    return np.clip(out, 0, 65535).astype(np.uint16), mask > 0


@pytest.fixture(scope="module")
def fitted():
    """A normal model of 4 bundles x 5 normals, with its leave-one-bundle-out calibration."""
    images = [electrode(b, i) for b in range(BUNDLES) for i in range(PER_BUNDLE)]
    groups = [f"bundle{b:02d}" for b in range(BUNDLES) for _ in range(PER_BUNDLE)]
    return nm.fit(nm.NormalFeatures(features(images), groups))


def heat_of(model: nm.NormalModel, img16: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.from_features(features([img16]))[0].numpy()


def test_the_map_has_the_input_grid_and_the_calibration_is_ordered(fitted):
    model, cal = fitted
    assert model.stages == (nm.INPUT,) and model.grid() == INPUT
    assert cal["normals"] == BUNDLES * PER_BUNDLE  # every normal scored once, against the other bundles
    assert 0 < cal["map_base"] < cal["box_threshold"]


def test_a_planted_disc_is_found_where_it_was_drawn_in_image_pixels(fitted):
    model, cal = fitted
    x, y, radius = DISC
    img, mask = with_disc(electrode(0, 20), x, y, radius)  # a new scan of a bundle the model knows
    heat = heat_of(model, img)
    where = nm.regions(heat, cal["box_threshold"], img.shape)
    px, py = where.peak
    assert 0 <= px < SHAPE[1] and 0 <= py < SHAPE[0]
    assert dilate(mask)[py, px], f"peak {where.peak} is not on the disc at ({x}, {y})"
    assert where.boxes, "the disc is above the normal threshold, yet no box"
    x0, y0, x1, y1 = where.boxes[0]  # the strongest box
    assert x0 <= x < x1 and y0 <= y < y1, f"the strongest box {where.boxes[0]} does not hold the disc centre"
    # it covers the disc (within a map cell or two of its rim), not the whole scan
    assert x0 <= x - radius + 3 and x1 >= x + radius - 3 and y0 <= y - radius + 3 and y1 >= y + radius - 3
    assert (x1 - x0) * (y1 - y0) < 0.02 * SHAPE[0] * SHAPE[1]
    # the same scan without the disc: no box, a far colder map
    clean = heat_of(model, electrode(0, 20))
    assert nm.regions(clean, cal["box_threshold"], img.shape).boxes == ()
    assert nm.image_score(heat[None])[0] > nm.image_score(clean[None])[0]


def test_held_out_normal_scans_leave_the_frame_and_the_border_cold(fitted):
    """New normal scans of the training bundles: no box anywhere, and the outer band of the image (where the
    substrate's rim and the coating's frame are, and where the margins differ from bundle to bundle) stays
    below the box threshold, nearly all of it at 0 on the displayed scale."""
    model, cal = fitted
    rows, cols = INPUT
    band = np.ones(INPUT, bool)
    band[round(0.03 * rows):-round(0.03 * rows), round(0.1 * cols):-round(0.1 * cols)] = False  # frame + rim
    for bundle in range(BUNDLES):
        for index in range(PER_BUNDLE, PER_BUNDLE + 3):
            heat = heat_of(model, electrode(bundle, index))
            where = nm.regions(heat, cal["box_threshold"], SHAPE)
            assert where.boxes == (), f"bundle {bundle} scan {index}: a normal scan boxed at {where.boxes}"
            shown = display_scale(heat, cal)
            assert shown[band].max() < 0.5, f"bundle {bundle} scan {index}: the border is as hot as a defect"
            assert shown[band].mean() < 0.05, f"bundle {bundle} scan {index}: the border is warm on average"


def test_a_disc_on_the_frame_is_still_found(fitted):
    """Cold border is not a blind border: a defect on the coating's edge is boxed there."""
    model, cal = fitted
    img, mask = with_disc(electrode(1, 21), 20, 200, 7, depth=600.0)
    where = nm.regions(heat_of(model, img), cal["box_threshold"], img.shape)
    assert dilate(mask)[where.peak[1], where.peak[0]]
    assert where.boxes and where.boxes[0][0] <= 20 < where.boxes[0][2]


def test_fit_on_one_bundle_calibrates_each_image_against_the_others():
    images = [electrode(2, i) for i in range(6)]
    model, cal = nm.fit(nm.NormalFeatures(features(images), ["bundle03"] * 6))
    assert cal["normals"] == 6  # leave-one-image-out: each image scored once
    assert 0 < cal["map_base"] < cal["box_threshold"]
    x, y, radius = DISC
    img, mask = with_disc(electrode(2, 30), x, y, radius)
    where = nm.regions(heat_of(model, img), cal["box_threshold"], img.shape)
    assert dilate(mask)[where.peak[1], where.peak[0]]
    assert where.boxes and where.boxes[0][0] <= x < where.boxes[0][2] and where.boxes[0][1] <= y < where.boxes[0][3]


def test_fit_needs_three_normals_and_says_so():
    with pytest.raises(ValueError, match="at least 3"):
        nm.fit(nm.NormalFeatures(features([electrode(0, 0), electrode(0, 1)]), ["b", "b"]))


def test_leave_one_group_out_variance_equals_a_direct_computation():
    rng = np.random.default_rng(3)
    data = {"a": rng.normal(0, 1, (3, 2, 2, 3)), "b": rng.normal(1, 2, (2, 2, 2, 3)), "c": rng.normal(-1, 1, (4, 2, 2, 3))}
    sums = {}
    for g, x in data.items():
        s = nm.Sums()
        s.add({"input": torch.from_numpy(x[:2])})  # added in two parts: the sums must add up
        s.add({"input": torch.from_numpy(x[2:])})
        sums[g] = s
    model = nm.fit_model(sums, shrink=0.0)
    everything = np.concatenate(list(data.values()))
    n = len(everything)
    res2 = np.zeros(everything.shape[1:])
    for g, x in data.items():
        others = np.concatenate([v for h, v in data.items() if h != g])
        for image in x:  # each image against the mean of the OTHER groups
            res2 += (image - others.mean(axis=0)) ** 2
    var = np.maximum(res2 / n, nm.VAR_FLOOR * (res2 / n).mean(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(model.mean_input.numpy(), everything.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.inv_std_input.numpy(), var ** -0.5, rtol=1e-4)
    # with shrinkage: towards the channel's variance over all positions, by `shrink` pseudo-images
    shrunk = nm.fit_model(sums, shrink=4.0)
    plain = res2 / n
    expected = (n * plain + 4.0 * plain.mean(axis=(1, 2), keepdims=True)) / (n + 4.0)
    np.testing.assert_allclose(shrunk.inv_std_input.numpy(), expected ** -0.5, rtol=1e-4)
    # one group: the plain (unbiased) variance
    single = nm.fit_model({"a": sums["a"] + sums["b"]}, shrink=0.0)
    ab = np.concatenate([data["a"], data["b"]])
    np.testing.assert_allclose(single.inv_std_input.numpy(), ab.var(axis=0, ddof=1) ** -0.5, rtol=1e-4)


def test_regions_scale_peak_and_boxes_to_the_image_and_sort_them_by_strength():
    heat = np.zeros((10, 20), np.float32)
    heat[2:4, 4:7] = 5.0  # weaker, larger
    heat[7, 15] = 9.0  # the peak
    where = nm.regions(heat, threshold=1.0, image_shape=(100, 40))  # 10 rows per cell, 2 columns per cell
    assert where.peak == (31, 75)  # the peak cell's centre: column 15.5 * 2, row 7.5 * 10
    assert where.boxes == ((30, 70, 32, 80), (8, 20, 14, 40))  # strongest first; x1, y1 exclusive
    assert where.to_json() == {"peak": [31, 75], "boxes": [[30, 70, 32, 80], [8, 20, 14, 40]]}
    # nothing above the threshold: a peak, no box
    assert nm.regions(heat, threshold=10.0, image_shape=(100, 40)).boxes == ()
    # a cell on the last row/column never maps outside the image
    corner = np.zeros((3, 3), np.float32)
    corner[2, 2] = 1.0
    edge = nm.regions(corner, 0.5, (10, 10))
    assert edge.peak == (8, 8) and edge.boxes == ((6, 6, 10, 10),)


def test_regions_keep_at_most_max_boxes_the_strongest():
    heat = np.zeros((4, 40), np.float32)
    for k in range(8):  # eight separate one-cell regions, strengths 1..8
        heat[1, 4 * k + 1] = 1.0 + k
    where = nm.regions(heat, threshold=0.5, image_shape=(4, 40))
    assert len(where.boxes) == nm.MAX_BOXES
    assert [b[0] for b in where.boxes] == [4 * k + 1 for k in range(7, 7 - nm.MAX_BOXES, -1)]


@pytest.mark.parametrize("shape", [(1, 384, 192), (3, 17, 9), (2, 3, 2)])
def test_smooth_is_a_separable_gaussian_with_replicated_borders(shape):
    """The shifted-view sums equal two 1-D convolutions of the padded map (and a flat map stays flat)."""
    import torch.nn.functional as F

    heat = torch.rand(*shape)
    k = nm._gaussian_kernel(nm.SMOOTH_SIGMA)
    r = (len(k) - 1) // 2
    x = F.conv2d(F.pad(heat[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[:, 0]
    assert torch.allclose(nm.smooth(heat), x, atol=1e-6)
    assert torch.allclose(nm.smooth(torch.full(shape, 2.5)), torch.full(shape, 2.5))
