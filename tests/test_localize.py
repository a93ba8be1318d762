"""Localization figures on hand-made maps and masks, and the mask file format (real PNGs)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.base.errors import DatasetError
from inspector.data.localize import DILATION, Hit, dilate, format_localization, read_mask, score_map, summarize, write_mask


def box_mask(shape=(80, 100), rows=(30, 40), cols=(40, 50)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def spike(shape, y, x, value=1.0) -> np.ndarray:
    heat = np.zeros(shape, np.float32)
    heat[y, x] = value
    return heat


def test_dilate_grows_by_a_share_of_the_width_with_a_round_kernel():
    mask = np.zeros((60, 100), bool)
    mask[30, 50] = True
    grown = dilate(mask)  # 0.02 x 100 = 2 px
    assert grown.dtype == bool and grown.shape == mask.shape
    assert grown[30, 48] and grown[30, 52] and grown[28, 50] and grown[32, 50] and grown[29, 48]
    assert not grown[30, 47] and not grown[27, 50]
    assert not grown[28, 48] and not grown[32, 52]  # the corners of a square kernel stay out
    assert dilate(mask, 0.05).sum() > grown.sum()
    assert np.array_equal(dilate(mask, 0.0), mask)
    assert np.array_equal(dilate(mask, 0.004), mask)  # round(0.4) = 0 px
    with pytest.raises(ValueError, match="cannot be negative"):
        dilate(mask, -0.1)


def test_peak_inside_outside_and_on_the_dilation_rim():
    mask = box_mask()  # rows 30-39, cols 40-49; dilated by 2 px
    shape = mask.shape
    inside = score_map(spike(shape, 35, 45), mask)
    assert inside.peak_in_defect and inside.mass_inside == 1.0
    outside = score_map(spike(shape, 5, 5), mask)
    assert not outside.peak_in_defect and outside.mass_inside == 0.0
    rim = score_map(spike(shape, 35, 51), mask)  # 2 px right of the last column: inside the dilation
    assert rim.peak_in_defect and rim.mass_inside == 1.0
    beyond = score_map(spike(shape, 35, 52), mask)  # 3 px right: outside
    assert not beyond.peak_in_defect and beyond.mass_inside == 0.0
    assert not score_map(spike(shape, 35, 51), mask, fraction=0.0).peak_in_defect  # undilated, the rim misses
    # the 10 x 10 box grown to 14 x 14, less 2 px at each corner (a round kernel)
    assert inside.area_share == pytest.approx(dilate(mask).mean()) == pytest.approx((14 * 14 - 8) / (80 * 100))


def test_peak_is_the_maximum_and_mass_counts_positive_values_only():
    mask = box_mask()
    heat = np.full(mask.shape, -5.0, np.float32)  # negative everywhere but two places
    heat[35, 45] = 1.0
    heat[5, 5] = 3.0
    hit = score_map(heat, mask)
    assert not hit.peak_in_defect and hit.mass_inside == pytest.approx(0.25)
    heat[35, 45] = 4.0
    assert score_map(heat, mask).peak_in_defect


def test_the_peak_is_the_maps_and_the_mass_the_shown_maps():
    """The peak a verdict reports is the map's maximum even where nothing is drawn; the mass is what is drawn."""
    mask = box_mask()
    heat = np.ones(mask.shape, np.float32)
    heat[35, 45] = 2.0  # the maximum, in the defect
    heat[5, 5] = 1.9
    drawn = np.zeros(mask.shape, np.float32)
    drawn[5, 5] = 1.0  # only a place outside the defect exceeds the normals' range
    hit = score_map(heat, mask, shown=drawn)
    assert hit.peak_in_defect and hit.mass_inside == 0.0
    nothing = score_map(heat, mask, shown=np.zeros(mask.shape, np.float32))
    assert nothing.peak_in_defect and nothing.mass_inside == 0.0
    assert score_map(heat, mask).mass_inside == pytest.approx(float(heat[dilate(mask)].sum() / heat.sum()))


def test_uniform_map_puts_the_chance_share_inside_and_a_flat_map_has_no_peak():
    mask = box_mask()
    uniform = score_map(np.ones(mask.shape, np.float32), mask)
    assert uniform.mass_inside == pytest.approx(uniform.area_share)
    assert not uniform.peak_in_defect  # a flat map points nowhere
    zero = score_map(np.zeros(mask.shape, np.float32), box_mask(rows=(0, 10), cols=(0, 10)))
    assert zero == Hit(False, 0.0, zero.area_share)  # argmax would be (0, 0), inside this mask: still no hit


def test_a_smaller_map_is_stretched_over_the_whole_image():
    """An 8 x 10 map (a feature grid) for an 80 x 100 image: each cell covers 10 x 10 pixels."""
    mask = box_mask()  # rows 30-39, cols 40-49: cell (3, 4)
    grid = np.zeros((8, 10), np.float32)
    grid[3, 4] = 1.0
    hit = score_map(grid, mask)
    assert hit.peak_in_defect and hit.mass_inside > 0.6
    grid = np.zeros((8, 10), np.float32)
    grid[7, 9] = 1.0  # the bottom-right cell: its peak lies in the image's bottom-right corner
    far = score_map(grid, mask)
    assert not far.peak_in_defect and far.mass_inside == 0.0
    assert score_map(grid, box_mask(rows=(72, 80), cols=(92, 100))).peak_in_defect
    tall = np.zeros((16, 5), np.float32)  # another aspect ratio: cells of 5 x 20 px
    tall[6:8, 2] = 1.0  # rows 30-39, cols 40-59
    assert score_map(tall, mask).peak_in_defect


def test_score_map_refuses_an_empty_mask_and_a_broken_map():
    with pytest.raises(ValueError, match="marks no defect pixel"):
        score_map(np.ones((8, 8)), np.zeros((80, 100), bool))
    heat = np.ones((8, 8), np.float32)
    heat[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        score_map(heat, box_mask())
    with pytest.raises(ValueError, match="2-D"):
        score_map(np.ones((3, 8, 8)), box_mask())


def test_summarize_per_type_and_pooled():
    hits = [
        ("line", Hit(True, 0.5, 0.05)),
        ("line", Hit(False, 0.1, 0.05)),
        ("bubble", Hit(True, 0.3, 0.01)),
        ("bubble;smudge", Hit(False, 0.2, 0.03)),  # one image, two types
        ("", Hit(True, 0.4, 0.02)),
    ]
    s = summarize(hits)
    pooled = s["pooled"]
    assert pooled["n"] == 5 and pooled["hits"] == 3 and pooled["hit_rate"] == pytest.approx(0.6)
    assert pooled["mass_inside"] == pytest.approx(0.3) and pooled["area_share"] == pytest.approx(0.032)
    assert pooled["mass_ratio"] == pytest.approx(0.3 / 0.032)
    assert list(s["by_type"]) == ["bubble", "line", "smudge", "unspecified"]
    line = s["by_type"]["line"]
    assert (line["n"], line["hits"], line["hit_rate"]) == (2, 1, 0.5)
    assert line["mass_inside"] == pytest.approx(0.3) and line["mass_ratio"] == pytest.approx(6.0)
    assert s["by_type"]["bubble"]["n"] == 2 and s["by_type"]["smudge"]["n"] == 1
    assert s["by_type"]["smudge"]["hits"] == 0
    empty = summarize([])
    assert empty == {"pooled": {"n": 0, "hits": 0, "hit_rate": 0.0, "mass_inside": 0.0, "area_share": 0.0,
                                "mass_ratio": 0.0}, "by_type": {}}


def test_format_localization_table():
    text = format_localization(summarize([("line", Hit(True, 0.5, 0.05)), ("edge_cut", Hit(False, 0.1, 0.02))]))
    lines = text.splitlines()
    assert lines[0].split() == ["type", "n", "peak", "in", "defect", "mass", "inside", "chance", "ratio"]
    assert lines[1].split() == ["edge_cut", "1", "0/1", "(0%)", "0.10", "0.02", "5.0x"]
    assert lines[2].split() == ["line", "1", "1/1", "(100%)", "0.50", "0.05", "10.0x"]
    assert lines[3].split() == ["pooled", "2", "1/2", "(50%)", "0.30", "0.04", "8.6x"]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_mask_png_round_trip_and_bytes(tmp_path):
    mask = box_mask()
    write_mask(tmp_path / "masks" / "b1" / "a.png", mask)  # makes the folders
    raw = cv2.imread(str(tmp_path / "masks" / "b1" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.shape == mask.shape and set(np.unique(raw)) == {0, 255}
    assert np.array_equal(read_mask(tmp_path / "masks" / "b1" / "a.png"), mask)
    write_mask(tmp_path / "b.png", mask)
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "masks" / "b1" / "a.png").read_bytes()
    cv2.imwrite(str(tmp_path / "other.png"), np.where(mask, 1, 0).astype(np.uint8))  # another tool's 0/1 mask
    assert np.array_equal(read_mask(tmp_path / "other.png"), mask)


def test_read_mask_errors_say_what_is_wrong(tmp_path):
    write_mask(tmp_path / "good.png", box_mask())
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"mask .*cut.png is a damaged PNG \(it does not decode"):
        read_mask(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DatasetError, match=r"mask .*text.png is not a PNG file \(12 bytes without the PNG signature\)"):
        read_mask(tmp_path / "text.png")
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"rgb.png has 3 channels; a mask is a grayscale PNG"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"mask .*gone.png does not exist"):
        read_mask(tmp_path / "gone.png")
    assert DILATION == 0.02
