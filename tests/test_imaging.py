"""read_image on real files written by tifffile, OpenCV and pydicom, good and broken."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
import tifffile
from image_files import (BAD_KINDS, DICOM_FIELD_MUTATIONS, make_bad_file, patch_tiff_tag, sample_image16,
                         write_dicom16, write_dicom_mutated, write_png16, write_tiff16)

from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import (UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, HTJ2KLossless, ImplicitVRLittleEndian,
                         JPEG2000, JPEG2000Lossless, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
                         JPEGLSLossless, JPEGLSNearLossless, RLELossless)

from inspector.imaging import dicom
from inspector.base.errors import IMAGE_REASONS, ImageError
from inspector.imaging.read import file_sha256, read_image

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
    # found from the header, before pydicom reads the data ("less than expected")
    assert err.reason == "truncated" and "declares 4096 bytes of pixel data from byte" in err.message


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


NOBODY = 65534

# Run by root in a child: imports and one read first, while still root (neither the repository nor
# Python's own lazily imported modules need be readable by nobody), then drops to nobody for good and
# reads again. Prints one JSON line.
READ_AS_NOBODY = r"""
import json, os, sys
from inspector.base.errors import ImageError
from inspector.imaging.read import read_image
read_image(sys.argv[2])
try:
    os.setgroups([])
    os.setgid(%(uid)d)
    os.setuid(%(uid)d)
except OSError as exc:
    print(json.dumps({"cannot_drop": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
out = {"euid": os.geteuid(), "readable_shape": list(read_image(sys.argv[2]).shape)}
os.stat(sys.argv[1])  # its folder lets nobody look it up: only the file's own mode stands in the way
try:
    read_image(sys.argv[1])
except ImageError as exc:
    out.update(reason=exc.reason, message=exc.message, path=exc.path)
print(json.dumps(out))
""" % {"uid": NOBODY}


def read_as_nobody(folder, denied: str, readable: str) -> dict:
    """read_image on two files of `folder` in a child that is no longer root (uid/gid 65534, no groups)."""
    proc = subprocess.run([sys.executable, "-c", READ_AS_NOBODY, denied, readable], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "cannot_drop" in out:
        pytest.skip(f"running as root, and this machine does not let a child drop to uid {NOBODY} "
                    f"({out['cannot_drop']}): root reads files whatever their mode")
    return out


def test_permission_denied_is_unreadable(tmp_path):
    """A file the station's user may not read is 'unreadable', 'permission denied ...'.

    Root reads every file whatever its mode (CAP_DAC_OVERRIDE), so as root (containers, CI) the read is
    made by a child that has dropped to nobody; a second, readable file in the same folder shows that
    only the denied file's mode stops that child.
    """
    inbox = tmp_path / "inbox"  # tmp_path is 0700 root's when root: the child works from inside inbox
    inbox.mkdir()
    inbox.chmod(0o755)
    path = write_tiff16(inbox / "scan.tif", sample_image16())
    readable = write_tiff16(inbox / "ok.tif", sample_image16(seed=1))
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            err = reason_of(path)
            reason, message = err.reason, err.message
        else:
            out = read_as_nobody(inbox, path.name, readable.name)
            assert out["euid"] == NOBODY and out["readable_shape"] == list(sample_image16(seed=1).shape)
            assert out.get("path") == path.name, out  # read_image raised ImageError naming the file
            reason, message = out["reason"], out["message"]
    finally:
        path.chmod(0o644)
    assert reason == "unreadable" and message.startswith("permission denied"), (reason, message)


def test_file_sha256_is_the_content_digest(tmp_path):
    path = write_tiff16(tmp_path / "a.tif", sample_image16())
    copy = tmp_path / "copy of a.tif"
    copy.write_bytes(path.read_bytes())
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(copy)
    assert file_sha256(write_tiff16(tmp_path / "b.tif", sample_image16(seed=9))) != file_sha256(path)


@pytest.mark.parametrize("keyword,value", DICOM_FIELD_MUTATIONS)
def test_dicom_header_fields_of_any_kind_become_a_rejection_of_that_file(tmp_path, keyword, value):
    """Text, several values, huge, zero or negative numbers in a header: an ImageError naming the file, nothing else."""
    path = write_dicom_mutated(tmp_path / "scan.dcm", keyword, value)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert err.value.reason in ("corrupt", "too_large", "wrong_dtype", "not_an_image", "not_grayscale"), err.value
    assert err.value.path == str(path)


def test_a_dicom_whose_preamble_holds_a_tiff_header_is_read_as_dicom(tmp_path):
    """Dual-personality files (TIFF magic in the preamble, DICM at 128) are valid DICOM (issue 12, case 2)."""
    img16 = sample_image16(40, 24, seed=6)
    path = write_dicom16(tmp_path / "dual.dcm", img16)
    data = bytearray(path.read_bytes())
    data[:8] = b"II*\x00\x08\x00\x00\x00"  # a little-endian TIFF header where the preamble was zeros
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_image(path), img16)


# --- DICOM transfer syntaxes: every compression pydicom ships test data for, and the decoders behind them ----

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel; no download
MR_SMALL = "MR_small.dcm"  # Explicit VR Little Endian; every MR_small_<syntax>.dcm holds this same image
# What read_image must answer for the bundled files that do not read to an image; the others must.
BUNDLED_REJECTIONS = {
    "MR_truncated.dcm": "truncated",
    "JPEG2000-embedded-sequence-delimiter.dcm": "corrupt",  # a delimiter cuts its J2K codestream short
    # signed pixels that stay below zero after Rescale Slope/Intercept: decoded, then refused for their values
    "CT_small.dcm": "wrong_dtype",
    "693_J2KI.dcm": "wrong_dtype",
    "J2K_pixelrep_mismatch.dcm": "wrong_dtype",
    "JPEG2000.dcm": "wrong_dtype",
    # 12-bit JPEG Extended: GDCM and Pillow read it only at 8 bits; the one decoder left is GPL
    "JPEG-lossy.dcm": "unsupported_encoding",
    "JPGExtended.dcm": "unsupported_encoding",
}


def _bundled_16bit_monochrome() -> list[str]:
    """Names of pydicom's bundled single-frame, 16-bit allocated MONOCHROME images (read from their headers)."""
    names = []
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - pydicom ships deliberately unreadable files too
            continue
        if (ds.get("BitsAllocated") == 16 and ds.get("SamplesPerPixel") == 1
                and str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
                and int(ds.get("NumberOfFrames", 1) or 1) == 1 and "TransferSyntaxUID" in ds.file_meta):
            names.append(path.name)
    return names


BUNDLED = _bundled_16bit_monochrome()


def _syntax(path) -> UID:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def _rescaled(path, pixels: np.ndarray) -> np.ndarray:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def _pydicom_default_decode(path) -> np.ndarray:
    """pydicom's own choice of plugin (GDCM first), in this process: a second decoder for known-good files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pixel_array(str(path))


def test_the_bundled_files_cover_every_syntax_inspector_decodes():
    syntaxes = {_syntax(PYDICOM_TEST_FILES / name) for name in BUNDLED}
    assert syntaxes >= {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless,
                        JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, JPEGExtended12Bit}, syntaxes
    assert set(BUNDLED_REJECTIONS) <= set(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_16_bit_monochrome_dicoms_read_in_every_transfer_syntax(name):
    path = PYDICOM_TEST_FILES / name
    syntax = _syntax(path)
    if name not in BUNDLED_REJECTIONS:
        out = read_image(path)
        assert out.dtype == np.uint16 and out.ndim == 2, syntax.name
        if name.startswith("MR_small"):  # lossless: the very same pixels as the uncompressed reference
            np.testing.assert_array_equal(out, read_image(PYDICOM_TEST_FILES / MR_SMALL), err_msg=syntax.name)
        elif syntax == JPEGLSNearLossless:  # no original ships; CharLS through imagecodecs decodes it alike
            frame = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
            np.testing.assert_array_equal(out, imagecodecs.jpegls_decode(frame))
        else:
            np.testing.assert_array_equal(out, _rescaled(path, _pydicom_default_decode(path)))
        return
    err = reason_of(path)
    assert err.reason == BUNDLED_REJECTIONS[name], str(err)
    if err.reason == "wrong_dtype":  # fully decoded (by Pillow) before the values were refused; GDCM agrees
        values = np.floor(_rescaled(path, _pydicom_default_decode(path)) + 0.5)
        assert f"span {values.min():g} to {values.max():g}," in err.message
    if err.reason == "unsupported_encoding":
        assert f"{syntax.name} (transfer syntax {syntax})" in err.message
        assert "12-bit samples" in err.message and "export it uncompressed" in err.message


# Encoders for a lossless 16-bit frame in each compressed syntax (imagecodecs: libjpeg-turbo, CharLS, OpenJPEG).
NEAR = 3  # the JPEG-LS near-lossless bound: every decoded value within NEAR of the original
ENCODERS = {
    JPEGLossless: lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=6, bitspersample=16),
    JPEGLosslessSV1: lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1, bitspersample=16),
    JPEGLSLossless: lambda a: imagecodecs.jpegls_encode(a),
    JPEGLSNearLossless: lambda a: imagecodecs.jpegls_encode(a, level=NEAR),
    JPEG2000Lossless: lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True),
    JPEG2000: lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True),
    RLELossless: lambda a: RLELosslessEncoder.encode(  # pydicom's own RLE encoder
        a, rows=a.shape[0], columns=a.shape[1], samples_per_pixel=1, bits_allocated=16, bits_stored=16,
        pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1),
    HTJ2KLossless: lambda a: imagecodecs.htj2k_encode(a),
    JPEGExtended12Bit: lambda a: imagecodecs.jpeg8_encode(a, level=95, bitspersample=12),
}


def write_dicom_encoded(path, img16: np.ndarray, syntax: str, bits_stored: int = 16) -> Path:
    """A single-frame DICOM whose pixel data is `img16` compressed in `syntax`, encapsulated by pydicom."""
    path = write_dicom16(path, img16, bits_stored=bits_stored)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([ENCODERS[syntax](img16)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def full_range_image16(height: int = 48, width: int = 40, seed: int = 11) -> np.ndarray:
    """Every bit of 16 in use: smooth gradient plus noise, with 0 and 65535 present."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 65535, height * width).reshape(height, width)
    img = np.clip(ramp + rng.normal(0, 900, (height, width)), 0, 65535).astype(np.uint16)
    img[0, 0], img[-1, -1] = 0, 65535
    return img


@pytest.mark.parametrize("syntax", [JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
                                    JPEG2000Lossless, JPEG2000, RLELossless], ids=lambda uid: uid.keyword)
def test_every_compressed_syntax_reads_back_the_16_bit_image(tmp_path, syntax):
    img16 = full_range_image16()
    out = read_image(write_dicom_encoded(tmp_path / "scan.dcm", img16, syntax))
    assert out.dtype == np.uint16 and out.shape == img16.shape
    if syntax == JPEGLSNearLossless:
        assert np.abs(out.astype(np.int64) - img16).max() <= NEAR
    else:
        np.testing.assert_array_equal(out, img16)


def test_12_bit_jpeg_extended_is_an_unsupported_encoding_not_a_corrupt_file(tmp_path):
    img12 = full_range_image16() >> 4
    path = write_dicom_encoded(tmp_path / "scan.dcm", img12, JPEGExtended12Bit, bits_stored=12)
    if "pylibjpeg" in get_decoder(JPEGExtended12Bit).available_plugins:
        pytest.skip("pylibjpeg-libjpeg is installed here and decodes 12-bit JPEG Extended")
    err = reason_of(path)
    assert err.reason == "unsupported_encoding"
    assert err.message.startswith("the DICOM pixel data is encoded as JPEG Extended (Process 2 and 4) (transfer "
                                  "syntax 1.2.840.10008.1.2.4.51) with 12-bit samples, which no installed decoder "
                                  "reads")


_WITHOUT_DECODERS = """
import json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` now raises ImportError: the package is not installed
from inspector.base.errors import ImageError
from inspector.imaging.read import read_image
answers = {}
for path in sys.argv[2:]:
    try:
        read_image(path)
        answers[path] = ["read", ""]
    except ImageError as exc:
        answers[path] = [exc.reason, exc.message]
print(json.dumps(answers))
"""


def read_without(modules: list[str], *paths) -> dict[str, tuple[str, str]]:
    """read_image in a fresh Python where `modules` cannot be imported: decoders missing for real."""
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_DECODERS, ",".join(modules), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {Path(p).name: tuple(answer) for p, answer in json.loads(proc.stdout.splitlines()[-1]).items()}


def test_a_missing_decoder_is_unsupported_encoding_naming_the_syntax_and_the_package(tmp_path):
    """GDCM, pyjpegls and Pillow not installed: JPEG-LS, JPEG Lossless and JPEG 2000 are refused as what they
    are (the station's gap), not as corrupt files; RLE and uncompressed data need no plugin and still read."""
    img16 = full_range_image16()
    paths = [write_dicom_encoded(tmp_path / f"{uid.keyword}.dcm", img16, uid)
             for uid in (JPEGLSLossless, JPEGLosslessSV1, JPEG2000Lossless, RLELossless)]
    paths.append(write_dicom16(tmp_path / "plain.dcm", img16, bits_stored=16))
    answers = read_without(["gdcm", "jpeg_ls", "PIL"], *paths)
    advice = ("and no decoder for it is installed: the file may well be fine; install {} into inspector's Python "
              "environment (inspector depends on them: `pip install -e .` installs them), or have the scanner "
              "export it uncompressed (Explicit VR Little Endian), JPEG-LS, JPEG 2000 or JPEG Lossless")
    assert answers == {
        "JPEGLSLossless.dcm": ("unsupported_encoding", "the DICOM pixel data is encoded as JPEG-LS Lossless Image "
                               "Compression (transfer syntax 1.2.840.10008.1.2.4.80) "
                               + advice.format("pyjpegls or python-gdcm")),
        "JPEGLosslessSV1.dcm": ("unsupported_encoding", "the DICOM pixel data is encoded as JPEG Lossless, "
                                "Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]) "
                                "(transfer syntax 1.2.840.10008.1.2.4.70) " + advice.format("python-gdcm")),
        "JPEG2000Lossless.dcm": ("unsupported_encoding", "the DICOM pixel data is encoded as JPEG 2000 Image "
                                 "Compression (Lossless Only) (transfer syntax 1.2.840.10008.1.2.4.90) "
                                 + advice.format("pillow or python-gdcm")),
        "RLELossless.dcm": ("read", ""),
        "plain.dcm": ("read", ""),
    }


def test_a_syntax_no_installed_plugin_decodes_is_unsupported_encoding(tmp_path):
    """HTJ2K: pydicom decodes it only through pylibjpeg-openjpeg, which inspector does not install."""
    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("a HTJ2K decoder is installed here")
    err = reason_of(write_dicom_encoded(tmp_path / "scan.dcm", full_range_image16(), HTJ2KLossless))
    assert err.reason == "unsupported_encoding"
    assert err.message.startswith("the DICOM pixel data is encoded as High-Throughput JPEG 2000 Image Compression "
                                  "(Lossless Only) (transfer syntax 1.2.840.10008.1.2.4.201) and no decoder for it "
                                  "is installed: the file may well be fine; install a decoder pydicom can use for "
                                  "it (pylibjpeg - requires pylibjpeg")


def patch_transfer_syntax(path: Path, uid: str) -> Path:
    """Write `uid` as the file's Transfer Syntax UID, byte for byte, as no DICOM library would let us."""
    data = bytearray(path.read_bytes())
    tag = b"\x02\x00\x10\x00UI"
    at = data.index(tag)
    old_length = int.from_bytes(data[at + 6:at + 8], "little")
    value = uid.encode() + b"\0" * (len(uid) % 2)
    data[at + 6:at + 8 + old_length] = len(value).to_bytes(2, "little") + value
    group = data.index(b"\x02\x00\x00\x00UL")  # File Meta Information Group Length
    length = int.from_bytes(data[group + 8:group + 12], "little") + len(value) - old_length
    data[group + 8:group + 12] = length.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("uid,reason,words", [
    ("1.2.840.10008.1.2.4.100", "unsupported_encoding",
     "encoded as MPEG2 Main Profile / Main Level (transfer syntax 1.2.840.10008.1.2.4.100), which pydicom has no "
     "decoder for"),
    ("1.2.826.0.1.3680043.9.7", "unsupported_encoding",
     "encoded in transfer syntax 1.2.826.0.1.3680043.9.7, a private or newer syntax the installed pydicom does "
     "not know"),
    ("1.2.840.10008.5.1.4.1.1.7", "corrupt",
     "names 1.2.840.10008.5.1.4.1.1.7 (Secondary Capture Image Storage, a SOP Class UID) as its transfer syntax"),
    ("1.2.840.10008.1.2.4.x9", "corrupt", "transfer syntax '1.2.840.10008.1.2.4.x9' is not a valid UID"),
], ids=["known-no-decoder", "private", "not-a-syntax", "not-a-uid"])
def test_transfer_syntaxes_pydicom_cannot_decode(tmp_path, uid, reason, words):
    path = write_dicom_encoded(tmp_path / "scan.dcm", full_range_image16(), JPEGLSLossless)
    err = reason_of(patch_transfer_syntax(path, uid))
    assert (err.reason, words in err.message) == (reason, True), str(err)


def _damaged_jpeg_ls(tmp_path, damage: str) -> Path:
    """MR_small's JPEG-LS stream, damaged; re-encapsulated by pydicom so that only the codestream is wrong."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_jpeg_ls_lossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    frame = {"cut_in_half": frame[:len(frame) // 2],
             "cut_before_end_marker": frame[:-2],
             "zero_tail": frame[:2000] + bytes(len(frame) - 2000),
             "garbled": frame[:1000] + bytes(range(64)) + frame[1064:],
             "garbled_header": frame[:6] + b"\x00\x00" + frame[8:],  # sample precision 0
             "cut_end_marker_kept": frame[:len(frame) // 2] + b"\xff\xd9"}[damage]
    ds.PixelData = encapsulate([frame])
    ds.save_as(tmp_path / "scan.dcm")
    return tmp_path / "scan.dcm"


@pytest.mark.parametrize("damage", ["garbled", "garbled_header", "cut_end_marker_kept"])
def test_a_garbled_jpeg_ls_stream_with_its_decoder_present_is_corrupt(tmp_path, damage):
    assert "pyjpegls" in get_decoder(JPEGLSLossless).available_plugins  # a dependency of inspector
    err = reason_of(_damaged_jpeg_ls(tmp_path, damage))
    assert err.reason == "corrupt", str(err)
    assert err.message.startswith("the DICOM data cannot be decoded (pyjpegls: Decoding error: Invalid JPEG-LS "
                                  "stream")


@pytest.mark.parametrize("damage", ["cut_in_half", "cut_before_end_marker", "zero_tail"])
def test_a_jpeg_ls_stream_cut_short_is_truncated_at_once(tmp_path, damage):
    """Without its end marker the stream was cut short (a file still being written): `truncated`, found
    before CharLS would spend seconds failing on it."""
    path = _damaged_jpeg_ls(tmp_path, damage)
    started = time.perf_counter()
    err = reason_of(path)
    assert err.reason == "truncated", str(err)
    assert err.message.startswith("the DICOM's JPEG-LS Lossless Image Compression data (")
    assert err.message.endswith("bytes) ends without its end-of-image marker: the file is truncated (was it still "
                                "being written?)")
    assert time.perf_counter() - started < 1.0


def test_a_decoder_crash_costs_the_file_not_the_process(tmp_path):
    """GDCM (the one permissive JPEG Lossless decoder) dies with SIGSEGV on this damaged SOF3 header (sample
    precision 17): it runs in a child process, so the file is corrupt and the reader lives on."""
    path = write_dicom_encoded(tmp_path / "scan.dcm", sample_image16(64, 32, seed=3), JPEGLosslessSV1)
    data = bytearray(path.read_bytes())
    sof3 = data.index(b"\xff\xc3\x00\x0b\x10")
    data[sof3 + 4] = 0x11
    path.write_bytes(bytes(data))
    err = reason_of(path)
    assert err.reason == "corrupt", str(err)
    assert err.message.startswith("the DICOM data cannot be decoded (the gdcm decoder crashed (SIG")
    assert read_image(write_dicom_encoded(tmp_path / "good.dcm", sample_image16(), JPEGLosslessSV1)).shape == (64, 32)


@pytest.mark.parametrize("child,reason,words", [
    ("import os; os.abort()", "corrupt", "the gdcm decoder crashed (SIGABRT) on the compressed data"),
    ("import time; time.sleep(30)", "corrupt", "the gdcm decoder took more than 1 s on the DICOM pixel data"),
    ("import os; os.write(1, b'BROKEN ImportError: no module gdcm')", "unsupported_encoding",
     "the gdcm decoder cannot be loaded (ImportError: no module gdcm): the file may well be fine"),
    ("import os; os.write(1, b'FAILED GDCM could not decode the data')", "corrupt",
     "the DICOM data cannot be decoded (GDCM could not decode the data): the file is corrupt"),
    ("import sys; sys.exit(5)", "corrupt", "the gdcm decoder process failed (exit status 5: no output)"),
], ids=["abort", "hang", "broken-install", "failed", "exit"])
def test_every_end_of_the_child_decoder_is_a_rejection(tmp_path, monkeypatch, child, reason, words):
    path = write_dicom_encoded(tmp_path / "scan.dcm", sample_image16(), JPEGLossless)
    monkeypatch.setattr(dicom, "_CHILD_DECODER", child)
    monkeypatch.setattr(dicom, "CHILD_DECODE_SECONDS", 1.0)
    started = time.perf_counter()
    err = reason_of(path)
    assert (err.reason, words in err.message) == (reason, True), str(err)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("syntax", [JPEGLSLossless, RLELossless], ids=lambda uid: uid.keyword)
def test_a_compressed_dicom_cut_short_is_truncated(tmp_path, syntax):
    """A file still being written ends inside its encapsulated pixel data: pydicom warns and reads on (it
    raised a TypeError on files opened by descriptor); read_image says truncated."""
    path = write_dicom_encoded(tmp_path / "scan.dcm", full_range_image16(), syntax)
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 9):
        path.write_bytes(data[:keep])
        err = reason_of(path)
        assert err.reason == "truncated", str(err)
        assert err.message == ("the DICOM file ends inside its data (End of file reached before delimiter "
                               "(FFFE,E0DD) found): the file is truncated (was it still being written?)")


@pytest.mark.parametrize("syntax,cases", [(JPEGLSLossless, 60), (JPEG2000Lossless, 60), (RLELossless, 60),
                                          (JPEGLosslessSV1, 12)], ids=lambda v: getattr(v, "keyword", str(v)))
def test_mutated_compressed_dicoms_end_as_image_or_known_rejection(tmp_path, syntax, cases):
    """Bits flipped in the codestream header or anywhere, bytes garbled, the file cut: every read ends as a
    uint16 image or an ImageError with a known reason, quickly, and never takes the process down."""
    base = write_dicom_encoded(tmp_path / "base.dcm", full_range_image16(96, 80), syntax).read_bytes()
    start = base.index(b"\xfe\xff\x00\xe0", base.index(b"\xe0\x7f\x10\x00")) + 8  # after the offset table item
    rng = random.Random(f"{syntax}-7")
    outcomes: dict[str, int] = {}
    for i in range(cases):
        data = bytearray(base)
        if i % 4 == 0:
            data[rng.randrange(start, start + 120)] ^= 1 << rng.randrange(8)
        elif i % 4 == 1:
            data[rng.randrange(start, len(data))] ^= 1 << rng.randrange(8)
        elif i % 4 == 2:
            at = rng.randrange(start, len(data) - 16)
            data[at:at + 16] = rng.randbytes(16)
        else:
            del data[rng.randrange(start, len(data)):]
        path = tmp_path / "case.dcm"
        path.write_bytes(bytes(data))
        started = time.perf_counter()
        try:
            out = read_image(path)
            assert out.dtype == np.uint16 and out.shape == (96, 80)
            outcome = "image"
        except ImageError as exc:
            assert exc.reason in IMAGE_REASONS
            outcome = exc.reason
        assert time.perf_counter() - started < 5.0, f"case {i}: {outcome}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("corrupt", 0) and outcomes.get("truncated", 0), outcomes


def _padded_after_end_marker(tmp_path, source: Path, padding: bytes) -> Path:
    """`source` with `padding` after its codestream's end marker, re-encapsulated by pydicom."""
    ds = pydicom.dcmread(source)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.rstrip(b"\0").endswith(b"\xff\xd9")
    ds.PixelData = encapsulate([frame.rstrip(b"\0") + padding])
    ds.save_as(tmp_path / f"padded-{source.name}")
    return tmp_path / f"padded-{source.name}"


@pytest.mark.parametrize("source", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", JPEGLosslessSV1])
def test_0xff_padding_after_the_end_marker_is_read_like_the_unpadded_file(tmp_path, source):
    """Issue 25, case 6: JPEG Lossless and JPEG 2000 DICOMs from real devices whose fragment is padded with 0xFF
    after the FF D9 end marker (legal: fill bytes) were quarantined as `truncated`. pydicom ships the JPEG 2000
    and JPEG-LS files; the JPEG Lossless one is encoded by libjpeg-turbo (imagecodecs) and decoded by GDCM."""
    if source == JPEGLosslessSV1:
        source = write_dicom_encoded(tmp_path / "jpeg-lossless.dcm", full_range_image16(), JPEGLosslessSV1)
    else:
        source = PYDICOM_TEST_FILES / source
    expected = read_image(source)
    for padding in (b"\xff", b"\xff\xff", b"\xff" * 7):
        np.testing.assert_array_equal(read_image(_padded_after_end_marker(tmp_path, source, padding)), expected)
    cut = _padded_after_end_marker(tmp_path, source, b"")
    ds = pydicom.dcmread(cut)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1)).rstrip(b"\0")
    ds.PixelData = encapsulate([frame[:-2] + b"\xff\xff"])  # no end marker, only fill bytes: still cut short
    ds.save_as(cut)
    assert reason_of(cut).reason == "truncated"
