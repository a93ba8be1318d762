"""16-bit -> 8-bit conversion against hand-computed values, exact percentiles, and `inspector convert`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from image_files import make_bad_file, sample_image16, write_png16, write_tiff16

from inspector.cli import cli
from inspector.base.config import ConvertConfig
from inspector.imaging.convert import (METHODS, Conversion, Window, WindowHistogram, convert_image, convert_recorded,
                               fit_window, local_window, to_uint8, to_uint8_naive)
from inspector.base.errors import InspectorError, ModelError
from inspector.imaging.read import read_image


def u16(values) -> np.ndarray:
    return np.array(values, dtype=np.uint16).reshape(1, -1)


def test_window_stretch_hand_computed_with_clipping_at_both_ends():
    # window 100..200: (x - 100) * 255 / 100
    img16 = u16([0, 99, 100, 101, 150, 199, 200, 201, 65535])
    # 101 -> 2.55 -> 3; 150 -> 127.5 -> 128 (half up); 199 -> 252.45 -> 252
    assert to_uint8(img16, Window(100, 200)).tolist() == [[0, 0, 0, 3, 128, 252, 255, 255, 255]]


def test_halves_round_up_not_to_even():
    # window 0..510: x / 2 exactly, so odd x lands on .5; np.rint would give 0, 2, 2, 4
    assert to_uint8(u16([1, 3, 5, 7, 509, 510]), Window(0, 510)).tolist() == [[1, 2, 3, 4, 255, 255]]
    assert to_uint8(u16([1]), (0, 2)).tolist() == [[128]]  # 127.5


def test_naive_is_round_x_over_257():
    img16 = u16([0, 128, 129, 257, 385, 386, 2000, 2800, 65535])
    # 128/257 = 0.498 -> 0; 129/257 = 0.502 -> 1; 385/257 = 1.498 -> 1; 2000/257 = 7.78 -> 8; 2800/257 = 10.89 -> 11
    assert to_uint8_naive(img16).tolist() == [[0, 0, 1, 1, 1, 2, 8, 11, 255]]


def test_convert_image_methods_hand_computed():
    img16 = np.array([[10, 20], [30, 40]], dtype=np.uint16)
    naive = convert_image(img16, "naive")
    assert naive.shape == (2, 2, 3) and naive.dtype == np.uint8
    assert naive[..., 0].tolist() == [[0, 0], [0, 0]]
    glob = convert_image(img16, "global", Window(0, 60))  # x * 255 / 60
    assert glob[..., 1].tolist() == [[43, 85], [128, 170]]  # 42.5 -> 43, 127.5 -> 128
    local = convert_image(img16, "local")  # own window 10..40 (min and max of 4 pixels)
    assert local[..., 2].tolist() == [[0, 85], [170, 255]]
    for img8 in (naive, glob, local):
        assert (img8[..., 0] == img8[..., 1]).all() and (img8[..., 1] == img8[..., 2]).all()
    mix = convert_image(img16, "mix", (0, 60))
    assert mix[..., 0].tolist() == naive[..., 0].tolist()
    assert mix[..., 1].tolist() == glob[..., 0].tolist()
    assert mix[..., 2].tolist() == local[..., 0].tolist()


def test_clahe_is_opencv_clahe_on_the_global_image():
    img16 = sample_image16(64, 64, seed=2)
    window = Window(1500, 3500)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(to_uint8(img16, window))
    out = convert_image(img16, "clahe", window, clahe_clip_limit=3.0, clahe_tile_grid=4)
    assert out.shape == (64, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)
    assert not np.array_equal(expected, to_uint8(img16, window))


@pytest.mark.parametrize("method", ["global", "mix", "clahe"])
def test_window_methods_need_a_window(method):
    with pytest.raises(InspectorError) as info:
        convert_image(sample_image16(), method)
    assert str(info.value) == f"method '{method}' needs a window: pass --window LO HI or a model"


def test_conversion_applies_convert_image_with_its_settings():
    img16 = sample_image16(64, 64, seed=3)
    for method in METHODS:
        conversion = Conversion(method, (1500, 3500), (3.0, 4))
        assert conversion.window == Window(1500, 3500)
        expected = convert_image(img16, method, Window(1500, 3500), clahe_clip_limit=3.0, clahe_tile_grid=4)
        np.testing.assert_array_equal(conversion.apply(img16), expected)
    assert Conversion.from_config(ConvertConfig(clahe_clip_limit=3, clahe_tile_grid=4), "local").clahe == (3.0, 4)
    assert Conversion.from_config(ConvertConfig(method="naive")) == Conversion("naive")
    with pytest.raises(InspectorError, match="^method 'global' needs a window: pass --window LO HI or a model$"):
        Conversion("global")
    with pytest.raises(InspectorError, match="unknown conversion method 'sharp'"):
        Conversion("sharp")
    with pytest.raises(InspectorError, match="tile grid must be at least 1"):
        Conversion("clahe", (1, 2), (2.0, 0))


@pytest.mark.parametrize("meta, error", [
    ({}, "model names no conversion method; use one of naive, global, local, mix, clahe"),
    ({"method": "sharp"}, "model method 'sharp' is unknown; use one of naive, global, local, mix, clahe"),
    ({"method": "global"}, "model method 'global' needs a window [lo, hi] fitted on the training images"),
    ({"method": "global", "window": [3000, 1000]}, "model window [3000, 1000] is empty: hi must be above lo"),
    ({"method": "global", "window": [1000, 70000]}, "model window [1000, 70000] must lie within 0-65535"),
    ({"method": "global", "window": "wide"}, "model window must be two whole numbers, got 'wide'"),
    ({"method": "global", "window": [1.5, 3000]}, "model window must be two whole numbers, got [1.5, 3000]"),
    ({"method": "clahe", "window": [1, 2], "clahe": [2, 8]}, "model clahe [2, 8] must be an object with clip_limit "
                                                              "and tile_grid"),
    ({"method": "clahe", "window": [1, 2], "clahe": {"tile_grid": "x"}}, "model clahe {'tile_grid': 'x'} is invalid: "
     "CLAHE settings are a clip limit and a tile grid, got (2.0, 'x')"),
])
def test_conversion_from_meta_names_what_is_missing_or_invalid(meta, error):
    with pytest.raises(ModelError) as info:
        Conversion.from_meta(meta)
    assert str(info.value) == error


def test_conversion_from_meta_and_back():
    meta = {"method": "clahe", "window": [1200, 3800], "clahe": {"clip_limit": 3.0, "tile_grid": 4}, "other": 1}
    conversion = Conversion.from_meta(meta)
    assert conversion == Conversion("clahe", Window(1200, 3800), (3.0, 4))
    assert conversion.to_meta() == {"method": "clahe", "window": (1200, 3800),
                                    "clahe": {"clip_limit": 3.0, "tile_grid": 4}}
    assert Conversion.from_meta({"method": "local", "clahe": {}}) == Conversion("local", None, (2.0, 8))
    img16 = sample_image16(seed=4)
    np.testing.assert_array_equal(convert_recorded(img16, meta), conversion.apply(img16))
    np.testing.assert_array_equal(convert_recorded(img16, None), convert_image(img16, "local"))
    np.testing.assert_array_equal(convert_recorded(img16, {}, "naive"), convert_image(img16, "naive"))


def test_local_window_of_a_constant_image_is_an_error_not_a_division_by_zero():
    flat = np.full((8, 8), 2000, dtype=np.uint16)
    with pytest.raises(InspectorError) as info:
        convert_image(flat, "local")
    assert str(info.value) == ("method 'local' cannot stretch this image: the image has no contrast: the 0.01th and "
                               "99.99th percentiles are 2000 and 2000, so there is no window to stretch (check for "
                               "blank or saturated captures)")
    with pytest.raises(InspectorError, match="no contrast"):
        convert_image(flat, "mix", (0, 4000))


def test_bad_inputs():
    with pytest.raises(InspectorError, match="unknown conversion method 'sharp'"):
        convert_image(sample_image16(), "sharp")
    with pytest.raises(InspectorError, match=r"needs a 2-D uint16 image .* got float32 \(2, 2\)"):
        convert_image(np.zeros((2, 2), np.float32), "naive")
    with pytest.raises(InspectorError, match=r"window \[200, 100\] is empty"):
        Window(200, 100)
    with pytest.raises(InspectorError, match="from 0 to 65535, got 70000"):
        Window(0, 70000)
    with pytest.raises(InspectorError, match="two whole numbers"):
        to_uint8(sample_image16(), (5,))


def test_histogram_percentiles_equal_numpy_inverted_cdf():
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 65536, size=(rng.integers(1, 40), rng.integers(1, 40)), dtype=np.uint16)
              for _ in range(4)]
    images.append(rng.normal(2200, 150, size=(50, 30)).clip(0, 65535).astype(np.uint16))
    hist = WindowHistogram()
    for img16 in images:
        hist.add(img16)
    pooled = np.concatenate([img.ravel() for img in images])
    assert hist.pixels == pooled.size and hist.images == 5
    for q in (0, 0.01, 0.5, 1, 12.5, 33.3, 50, 99, 99.99, 100):
        assert hist.percentile(q) == int(np.percentile(pooled, q, method="inverted_cdf")), q


def test_fit_window_and_rounding_to_hundreds():
    rng = np.random.default_rng(11)
    images = [rng.normal(2200, 200, size=(60, 40)).clip(0, 65535).astype(np.uint16) for _ in range(3)]
    pooled = np.concatenate([img.ravel() for img in images])
    lo = int(np.percentile(pooled, 0.01, method="inverted_cdf"))
    hi = int(np.percentile(pooled, 99.99, method="inverted_cdf"))
    assert fit_window(iter(images)) == Window(lo, hi)
    assert fit_window(images, 1, 99) == Window(int(np.percentile(pooled, 1, method="inverted_cdf")),
                                               int(np.percentile(pooled, 99, method="inverted_cdf")))
    rounded = fit_window(images, round_window=True)
    assert rounded == Window(int(np.floor(lo / 100 + 0.5)) * 100, int(np.floor(hi / 100 + 0.5)) * 100)
    assert rounded.lo % 100 == 0 and rounded.hi % 100 == 0
    halves = WindowHistogram()
    halves.add(u16([1750, 2850]))
    assert halves.window(0, 100, round_window=True) == Window(1800, 2900)  # halves go up


def test_windows_without_contrast_explain_why():
    hist = WindowHistogram()
    with pytest.raises(InspectorError, match="add at least one image"):
        hist.window()
    hist.add(u16([1760, 1790]))
    assert hist.window(0, 100) == Window(1760, 1790)
    assert hist.window(0, 100, round_window=True) == Window(1700, 1800)  # outwards, never empty
    with pytest.raises(InspectorError, match="0.01th and 99.99th percentiles are 5 and 5"):
        fit_window([np.full((4, 4), 5, np.uint16), np.full((2, 2), 5, np.uint16)])


def test_local_window_uses_the_papers_percentiles():
    img16 = sample_image16(100, 100, seed=4)
    pixels = img16.ravel()
    assert local_window(img16) == Window(int(np.percentile(pixels, 0.01, method="inverted_cdf")),
                                         int(np.percentile(pixels, 99.99, method="inverted_cdf")))


# --- inspector convert ------------------------------------------------------------------------------

def read_png_rgb(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    return img[:, :, ::-1]


def test_convert_help():
    result = CliRunner().invoke(cli, ["convert", "--help"])
    assert result.exit_code == 0
    assert "--window LO HI" in result.output and "--model" in result.output
    for method in METHODS:
        assert method in result.output


def test_convert_global_writes_the_network_view(tmp_path):
    img16 = sample_image16(40, 24, seed=1)
    src = write_tiff16(tmp_path / "scan.tif", img16, compression="zlib")
    out = tmp_path / "view.png"
    result = CliRunner().invoke(cli, ["convert", str(src), str(out), "--method", "global", "--window", "1500", "3500"])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}: method global, window 1500-3500, 24 x 40 px, 3 channels\n"
    rgb = read_png_rgb(out)
    expected = to_uint8(img16, Window(1500, 3500))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_convert_mix_keeps_channel_order_and_reads_png16(tmp_path):
    img16 = sample_image16(20, 30, seed=6)
    src = write_png16(tmp_path / "scan.png", img16)
    out = tmp_path / "mix.png"
    result = CliRunner().invoke(cli, ["convert", str(src), str(out), "--method", "mix", "--window", "1000", "4000"])
    assert result.exit_code == 0, result.output
    rgb = read_png_rgb(out)
    np.testing.assert_array_equal(rgb, convert_image(img16, "mix", Window(1000, 4000)))
    assert not np.array_equal(rgb[..., 0], rgb[..., 1])  # red = naive, green = global


def test_convert_default_method_comes_from_config(tmp_path):
    (tmp_path / "config.toml").write_text('[convert]\nmethod = "naive"\n')
    src = write_tiff16(tmp_path / "scan.tif", sample_image16(8, 8))
    out = tmp_path / "n.png"
    result = CliRunner().invoke(cli, ["convert", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}: method naive, 8 x 8 px, 3 channels\n"
    np.testing.assert_array_equal(read_png_rgb(out), convert_image(read_image(src), "naive"))


def test_convert_takes_method_and_window_from_the_model(tmp_path):
    from safetensors.numpy import save_file

    from inspector.base.artifact import META_KEY
    from inspector.imaging.modelmeta import ModelMeta

    meta = ModelMeta(method="global", window=(1200, 3800), input_size=(64, 32))
    model = tmp_path / "detector.safetensors"
    save_file({"probe": np.zeros(1, np.float32)}, str(model), metadata={META_KEY: meta.to_json()})
    img16 = sample_image16(16, 12, seed=8)
    src = write_tiff16(tmp_path / "scan.tif", img16)
    out = tmp_path / "m.png"
    result = CliRunner().invoke(cli, ["convert", str(src), str(out), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}: method global, window 1200-3800, 12 x 16 px, 3 channels\n"
    np.testing.assert_array_equal(read_png_rgb(out)[..., 1], to_uint8(img16, Window(1200, 3800)))


def test_convert_without_window_is_one_error_line(tmp_path):
    src = write_tiff16(tmp_path / "scan.tif", sample_image16())
    result = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "o.png"), "--method", "global"])
    assert result.exit_code == 1
    assert result.output == "Error: method 'global' needs a window: pass --window LO HI or a model\n"
    assert not (tmp_path / "o.png").exists()


def test_convert_bad_image_is_one_error_line(tmp_path):
    bad = make_bad_file(tmp_path / "empty.tif", "empty")
    result = CliRunner().invoke(cli, ["convert", str(bad), str(tmp_path / "o.png"), "--method", "naive"])
    assert result.exit_code == 1
    assert result.output == f"Error: {bad}: the file is empty (0 bytes): the scanner wrote nothing; rescan it [not_an_image]\n"
    wide = make_bad_file(tmp_path / "rgb.tif", "rgb")
    result = CliRunner().invoke(cli, ["convert", str(wide), str(tmp_path / "o.png"), "--method", "naive"])
    assert result.exit_code == 1
    assert result.output == (f"Error: {wide}: the TIFF is RGB colour with 3 samples per pixel; inspector needs one "
                             "gray value per pixel [not_grayscale]\n")


def test_convert_out_must_be_png(tmp_path):
    src = write_tiff16(tmp_path / "scan.tif", sample_image16())
    result = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "o.jpg"), "--method", "naive"])
    assert result.exit_code == 2
    assert "must end in .png" in result.output


def test_rounding_never_empties_a_narrow_window():
    """A range under a hundred counts would round to one value: the window is rounded outwards instead."""
    img = np.linspace(1710, 1760, 4096).astype(np.uint16).reshape(64, 64)
    assert fit_window([img], round_window=True) == Window(1700, 1800)
    assert fit_window([img], round_window=False) == Window(1710, 1760)
