"""read_image on real files written by tifffile, OpenCV and pydicom, good and broken."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc

import numpy as np
import pytest
import tifffile
from image_files import (BAD_KINDS, make_bad_file, patch_tiff_tag, sample_image16, write_dicom16, write_png16,
                         write_tiff16)

from inspector.errors import ImageError
from inspector.imaging import file_sha256, read_image

PNG_KINDS = {"tiff_as_png", "huge_png", "png8", "png_rgb16", "truncated_png", "corrupt_png"}


def reason_of(path, **limits) -> ImageError:
    with pytest.raises(ImageError) as info:
        read_image(path, **limits)
    return info.value


@pytest.mark.parametrize("options", [
    {},
    {"compression": "zlib", "rowsperstrip": 8},
    {"compression": "deflate"},
    {"compression": "lzw"},
    {"tile": (16, 16)},
    {"tile": (16, 16), "compression": "zlib"},
    {"byteorder": ">"},
    {"byteorder": ">", "compression": "lzw", "rowsperstrip": 5},
], ids=["plain", "zlib-strips", "deflate", "lzw", "tiled", "tiled-zlib", "big-endian", "big-endian-lzw"])
def test_reads_tiff_variants(tmp_path, options):
    img16 = sample_image16(64, 32, seed=3)
    path = write_tiff16(tmp_path / "scan.tif", img16, **options)
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (64, 32)
    np.testing.assert_array_equal(out, img16)


def test_reads_12_bit_packed_tiff_as_uint16(tmp_path):
    img12 = (np.arange(64 * 32).reshape(64, 32) % 4096).astype(np.uint16)
    path = tmp_path / "scan12.tif"
    tifffile.imwrite(path, img12, bitspersample=12, photometric="minisblack")
    out = read_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img12)


def test_miniswhite_tiff_is_inverted_so_higher_is_brighter(tmp_path):
    img16 = sample_image16()
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, img16, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(path), 65535 - img16)


def test_reads_png16(tmp_path):
    img16 = sample_image16(40, 24, seed=5)
    out = read_image(write_png16(tmp_path / "scan.png", img16))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img16)


def test_format_comes_from_magic_when_the_name_has_no_known_extension(tmp_path):
    img16 = sample_image16()
    np.testing.assert_array_equal(read_image(write_tiff16(tmp_path / "scan_0001", img16)), img16)
    np.testing.assert_array_equal(read_image(write_png16(tmp_path / "scan.img", img16)), img16)
    np.testing.assert_array_equal(read_image(write_dicom16(tmp_path / "scan.bin", img16)), img16)


def test_odd_names_round_trip(tmp_path):
    img16 = sample_image16()
    raw_name = os.fsencode(tmp_path) + b"/\xff\xfe bad bytes \xc3\xa9.tif"
    write_tiff16(os.fsdecode(raw_name), img16)
    np.testing.assert_array_equal(read_image(raw_name), img16)
    np.testing.assert_array_equal(read_image(os.fsdecode(raw_name)), img16)
    long_name = tmp_path / ("é" * 100 + "x" * 51 + ".tif")  # 255 bytes
    assert len(os.fsencode(long_name.name)) == 255
    np.testing.assert_array_equal(read_image(write_tiff16(long_name, img16)), img16)


def test_dicom_monochrome2_12_bit(tmp_path):
    img16 = sample_image16()  # 1000-3999 fits 12 bits
    out = read_image(write_dicom16(tmp_path / "scan.dcm", img16, bits_stored=12))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img16)


def test_dicom_monochrome1_is_inverted(tmp_path):
    img16 = sample_image16()
    out = read_image(write_dicom16(tmp_path / "scan.dcm", img16, monochrome1=True, bits_stored=12))
    np.testing.assert_array_equal(out, 4095 - img16.astype(np.int64))


def test_dicom_rescale_slope_and_intercept(tmp_path):
    img16 = sample_image16()
    out = read_image(write_dicom16(tmp_path / "scan.dcm", img16, slope=2, intercept=100))
    np.testing.assert_array_equal(out, 2 * img16.astype(np.int64) + 100)
    # MONOCHROME1 with rescale: the stored range 0..4095 maps to -100..8090, reversed onto itself.
    out = read_image(write_dicom16(tmp_path / "inv.dcm", img16, monochrome1=True, slope=2, intercept=-100))
    np.testing.assert_array_equal(out, 8090 - 2 * img16.astype(np.int64))


def test_dicom_rescale_outside_uint16_is_refused(tmp_path):
    img16 = sample_image16()
    err = reason_of(write_dicom16(tmp_path / "scan.dcm", img16, slope=1, intercept=-2000))
    assert err.reason == "wrong_dtype"
    low = int(img16.min()) - 2000
    assert err.message == (f"after Rescale Slope 1 and Intercept -2000 the pixel values span {low} to "
                           f"{int(img16.max()) - 2000}, outside the 0-65535 a 16-bit image can hold")


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_every_bad_file_gets_its_reason(tmp_path, kind):
    suffix = ".png" if kind in PNG_KINDS else ".dcm" if "dicom" in kind else ".tif"
    path = make_bad_file(tmp_path / f"bad{suffix}", kind)
    err = reason_of(path)
    assert err.reason == BAD_KINDS[kind], str(err)
    assert err.path == str(path)
    assert str(err) == f"{path}: {err.message} [{err.reason}]"


def test_bad_file_messages_say_what_and_what_to_do(tmp_path):
    cases = {
        "empty": "the file is empty (0 bytes): the scanner wrote nothing; rescan it",
        "text": "the file holds text, not a 16-bit TIFF, PNG or DICOM image",
        "jpeg_as_tif": "the file holds a JPEG image, not a 16-bit TIFF, PNG or DICOM image",
        "png_as_tif": "the file is named .tif but holds a PNG image, not a TIFF: export it again in the format "
                      "its name says",
        "truncated_strip": "TIFF strip 1 of 1 ends at byte 4352 but the file has 2304 bytes: the file is truncated "
                           "(was it still being written?)",
        "truncated_tile_offsets": "the TIFF lists 4 tile offsets and 8 byte counts but its 32 x 64 image needs "
                                  "8 tiles: the file is damaged or cut short",
        "uint8": "the TIFF holds 8-bit unsigned integer pixels; inspector needs unsigned integers of 9 to 16 bits "
                 "(a 16-bit gray export)",
        "float32": "the TIFF holds 32-bit floating point pixels; inspector needs unsigned integers of 9 to 16 bits "
                   "(a 16-bit gray export)",
        "rgb": "the TIFF is RGB colour with 3 samples per pixel; inspector needs one gray value per pixel",
        "multi_page": "the TIFF holds 2 pages; inspector scores one image per file: save each page as its own file",
        "huge_tiff": "the header claims 200000 x 200000 pixels (width x height), more than the limit of "
                     "10000 x 10000 (imaging.max_width/max_height in config.toml)",
    }
    for kind, message in cases.items():
        assert reason_of(make_bad_file(tmp_path / f"{kind}.tif", kind)).message == message


def test_decoder_errors_keep_the_decoder_words(tmp_path):
    err = reason_of(make_bad_file(tmp_path / "z.tif", "corrupt_deflate"))
    assert err.message.startswith("the TIFF data cannot be decoded (") and "the file is corrupt" in err.message
    err = reason_of(make_bad_file(tmp_path / "t.dcm", "truncated_dicom"))
    assert err.reason == "truncated" and "less than expected" in err.message


def test_tifffile_logged_damage_is_an_error(tmp_path):
    """tifffile only logs an invalid tag and reads on; read_image must refuse the file."""
    err = reason_of(make_bad_file(tmp_path / "tag.tif", "damaged_tag"))
    assert err.reason == "corrupt"
    assert err.message.startswith("tifffile reported a problem while reading the TIFF header (")
    assert "invalid data type 99" in err.message


@pytest.mark.parametrize("kind", ["huge_tiff", "huge_png"])
def test_huge_header_is_rejected_without_allocating(tmp_path, kind):
    path = make_bad_file(tmp_path / ("huge.png" if kind == "huge_png" else "huge.tif"), kind)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = reason_of(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "too_large"
    assert err.message.startswith("the header claims 200000 x 200000 pixels")  # not a failed allocation
    assert peak_bytes < 5_000_000  # the claimed image would need 80 GB
    assert time.perf_counter() - started < 2.0


def test_claim_just_over_the_limit_allocates_nothing(tmp_path):
    """12000 x 12000 could be allocated (288 MB): it must be refused from the header all the same."""
    path = write_tiff16(tmp_path / "big.tif", sample_image16())
    patch_tiff_tag(path, 256, value=12_000)
    patch_tiff_tag(path, 257, value=12_000)
    tracemalloc.start()
    try:
        err = reason_of(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "too_large" and err.message.startswith("the header claims 12000 x 12000 pixels")
    assert peak_bytes < 5_000_000


def test_limits_are_the_callers(tmp_path):
    path = write_tiff16(tmp_path / "scan.tif", sample_image16(64, 32))
    assert reason_of(path, max_height=63).reason == "too_large"
    assert reason_of(path, max_width=31).reason == "too_large"
    assert read_image(path, max_height=64, max_width=32).shape == (64, 32)


def test_uncompressed_strip_shorter_than_its_rows_is_corrupt(tmp_path):
    path = write_tiff16(tmp_path / "scan.tif", sample_image16())
    patch_tiff_tag(path, 279, value=100)  # StripByteCounts: 100 of the 4096 bytes needed
    err = reason_of(path)
    assert err.reason == "corrupt" and "holds 100 bytes but needs 4096" in err.message


def test_missing_folder_and_fifo(tmp_path):
    err = reason_of(tmp_path / "gone.tif")
    assert (err.reason, err.message) == ("unreadable", "the file does not exist (was it moved or deleted?)")
    (tmp_path / "sub.tif").mkdir()
    err = reason_of(tmp_path / "sub.tif")
    assert err.reason == "not_an_image" and err.message.startswith("this is a folder, not an image file")
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    started = time.perf_counter()
    err = reason_of(fifo)  # would block forever if it were opened for reading
    assert err.reason == "not_an_image" and "a FIFO (named pipe)" in err.message
    assert time.perf_counter() - started < 2.0
    with pytest.raises(ImageError, match="FIFO"):
        file_sha256(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_unreadable(tmp_path):
    path = write_tiff16(tmp_path / "scan.tif", sample_image16())
    path.chmod(0)
    try:
        err = reason_of(path)
    finally:
        path.chmod(0o644)
    assert err.reason == "unreadable" and err.message.startswith("permission denied")


def test_file_sha256_is_the_content_digest(tmp_path):
    path = write_tiff16(tmp_path / "a.tif", sample_image16())
    copy = tmp_path / "copy of a.tif"
    copy.write_bytes(path.read_bytes())
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(copy)
    assert file_sha256(write_tiff16(tmp_path / "b.tif", sample_image16(seed=9))) != file_sha256(path)


@pytest.mark.parametrize("keyword,value", [
    ("RescaleSlope", "abc"), ("RescaleSlope", "1\\2"), ("RescaleIntercept", "x"), ("RescaleIntercept", "1\\2\\3"),
    ("RescaleSlope", "1e999"), ("RescaleSlope", "-0"), ("RescaleSlope", "0"), ("RescaleIntercept", "-1e300"),
    ("Rows", 0), ("Rows", 65535), ("Columns", 0), ("BitsStored", 0), ("BitsStored", 40), ("BitsAllocated", 12),
])
def test_dicom_header_fields_of_any_kind_become_a_rejection_of_that_file(tmp_path, keyword, value):
    """Text, several values, huge, zero or negative numbers in a header: an ImageError naming the file, nothing else."""
    import pydicom
    from pydicom import config

    slope, intercept = (7.25, 10) if keyword == "RescaleSlope" else (2, 7.25)
    path = write_dicom16(tmp_path / "scan.dcm", sample_image16(32, 16, seed=1), slope=slope, intercept=intercept)
    if isinstance(value, str):  # text where a number belongs: patch the bytes, as no DICOM library would write it
        data = path.read_bytes()
        assert data.count(b"7.25") == 1
        raw = value.encode()
        raw += b" " * (len(raw) % 2)  # DICOM values have even lengths
        at = data.index(b"7.25")
        data = data[:at - 2] + len(raw).to_bytes(2, "little") + raw + data[at + 4:]
        path.write_bytes(data)
    else:
        old = config.settings.writing_validation_mode
        config.settings.writing_validation_mode = config.IGNORE
        try:
            ds = pydicom.dcmread(path)
            ds[keyword].value = value
            ds.save_as(path)
        finally:
            config.settings.writing_validation_mode = old
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert err.value.reason in ("corrupt", "too_large", "wrong_dtype", "not_an_image"), err.value
    assert err.value.path == str(path)


def test_a_dicom_whose_preamble_holds_a_tiff_header_is_read_as_dicom(tmp_path):
    """Dual-personality files (TIFF magic in the preamble, DICM at 128) are valid DICOM (issue 12, case 2)."""
    img16 = sample_image16(40, 24, seed=6)
    path = write_dicom16(tmp_path / "dual.dcm", img16)
    data = bytearray(path.read_bytes())
    data[:8] = b"II*\x00\x08\x00\x00\x00"  # a little-endian TIFF header where the preamble was zeros
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_image(path), img16)
