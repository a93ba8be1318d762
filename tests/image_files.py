"""Write real valid and broken test images (TIFF, PNG, DICOM) for any test module to use.

Import as `from image_files import ...` (pytest puts tests/ on sys.path). Every writer
uses the real library (tifffile, OpenCV, pydicom); the broken files are crafted from real
ones by truncating or patching bytes, so the readers meet what a scanner could produce.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import tifffile

# Every kind make_bad_file writes, with the ImageError.reason read_image must give.
BAD_KINDS: dict[str, str] = {
    "empty": "not_an_image",
    "text": "not_an_image",
    "jpeg_as_tif": "not_an_image",
    "png_as_tif": "not_an_image",
    "tiff_as_png": "not_an_image",
    "truncated_strip": "truncated",
    "corrupt_deflate": "corrupt",
    "corrupt_lzw": "corrupt",
    "truncated_tile_offsets": "truncated",
    "damaged_tag": "corrupt",
    "uint8": "wrong_dtype",
    "float32": "wrong_dtype",
    "int8": "wrong_dtype",
    "rgb": "not_grayscale",
    "multi_page": "multi_page",
    "huge_tiff": "too_large",
    "huge_png": "too_large",
    "png8": "wrong_dtype",
    "png_rgb16": "not_grayscale",
    "truncated_png": "truncated",
    "corrupt_png": "corrupt",
    "dicom_multiframe": "multi_page",
    "dicom_rgb": "not_grayscale",
    "dicom_8bit": "wrong_dtype",
    "truncated_dicom": "truncated",
}


def sample_image16(height: int = 64, width: int = 32, seed: int = 0) -> np.ndarray:
    """A small uint16 image with values across the electrode range (1700-2800) and beyond."""
    rng = np.random.default_rng(seed)
    return rng.integers(1000, 4000, size=(height, width), dtype=np.uint16)


def textured_scan(h: int = 300, w: int = 560, seed: int = 0) -> np.ndarray:
    """A textured 16-bit capture with edges, values around the window 1700-2800 (conversion tests)."""
    rng = np.random.default_rng(seed)
    img = 2250 + rng.normal(0, 180, (h, w))
    img[h // 3: h // 2, w // 4: w // 2] += 400
    img[:, ::37] -= 300
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def write_tiff16(path: str | Path, arr: np.ndarray, compression: str | None = None,
                 tile: tuple[int, int] | None = None, byteorder: str = "<",
                 rowsperstrip: int | None = None) -> Path:
    """Write `arr` as a single-page TIFF with tifffile (any dtype; used for bad ones too)."""
    path = Path(path)
    kwargs: dict = {"byteorder": byteorder, "photometric": "minisblack"}
    if arr.ndim == 3:
        kwargs["photometric"] = "rgb"
    if compression:
        kwargs["compression"] = compression
    if tile:
        kwargs["tile"] = tile
    if rowsperstrip:
        kwargs["rowsperstrip"] = rowsperstrip
    tifffile.imwrite(path, arr, **kwargs)
    return path


def write_png16(path: str | Path, arr: np.ndarray) -> Path:
    """Write `arr` (uint16 gray, or any array OpenCV takes) as PNG bytes, whatever the extension."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", arr)
    assert ok, "OpenCV could not encode the PNG"
    path.write_bytes(buf.tobytes())
    return path


def write_dicom16(path: str | Path, arr: np.ndarray, monochrome1: bool = False,
                  slope: float = 1, intercept: float = 0, bits_stored: int = 12,
                  frames: int = 1, samples: int = 1, bits_allocated: int = 16) -> Path:
    """Write a DICOM file with pydicom (Explicit VR Little Endian, Secondary Capture)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Electrode^Test"
    if frames > 1:
        ds.NumberOfFrames = frames
        rows, cols = arr.shape[1], arr.shape[2]
    else:
        rows, cols = arr.shape[0], arr.shape[1]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if slope != 1 or intercept != 0:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
    ds.PixelData = np.ascontiguousarray(arr).astype("u1" if bits_allocated == 8 else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# Header fields a scanner or a broken export could get wrong, as (keyword, value): text where a number
# belongs, several values, huge, zero or negative numbers, an unknown photometric interpretation.
DICOM_FIELD_MUTATIONS: list[tuple[str, object]] = [
    ("RescaleSlope", "abc"), ("RescaleSlope", "1\\2"), ("RescaleIntercept", "x"), ("RescaleIntercept", "1\\2\\3"),
    ("RescaleSlope", "1e999"), ("RescaleSlope", "-0"), ("RescaleSlope", "0"), ("RescaleIntercept", "-1e300"),
    ("RescaleSlope", "-5"), ("Rows", 0), ("Rows", 65535), ("Rows", [16, 16]), ("Columns", 0), ("BitsStored", 0),
    ("BitsStored", 40), ("BitsAllocated", 12), ("PhotometricInterpretation", "abc"),
    ("PhotometricInterpretation", "RGB"), ("SamplesPerPixel", 3),
]


def write_dicom_mutated(path: str | Path, keyword: str, value: object, seed: int = 1) -> Path:
    """A 16-bit DICOM with one header element set to `value`, however invalid (see DICOM_FIELD_MUTATIONS).

    Text for a Rescale value is patched into the bytes, as no DICOM library would write it; other
    values are written by pydicom with its validation switched off.
    """
    import pydicom
    from pydicom import config

    slope, intercept = (7.25, 10) if keyword == "RescaleSlope" else (2, 7.25)
    path = write_dicom16(path, sample_image16(32, 16, seed=seed), slope=slope, intercept=intercept)
    if keyword in ("RescaleSlope", "RescaleIntercept"):
        data = path.read_bytes()
        assert data.count(b"7.25") == 1
        raw = str(value).encode()
        raw += b" " * (len(raw) % 2)  # DICOM values have even lengths
        at = data.index(b"7.25")
        path.write_bytes(data[:at - 2] + len(raw).to_bytes(2, "little") + raw + data[at + 4:])
        return path
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom's "invalid value" warning: invalid on purpose
            ds[keyword].value = value
        ds.save_as(path)
    finally:
        config.settings.writing_validation_mode = old
    return path


def patch_tiff_tag(path: str | Path, code: int, count: int | None = None, value: int | None = None,
                   type_code: int | None = None) -> None:
    """Overwrite the count, inline value or data type of a tag in the first IFD of a little-endian TIFF."""
    data = bytearray(Path(path).read_bytes())
    assert data[:4] == b"II*\0", "patch_tiff_tag handles classic little-endian TIFF only"
    ifd = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, ifd)[0]
    for i in range(entries):
        pos = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", data, pos)
        if tag != code:
            continue
        if count is not None:
            struct.pack_into("<I", data, pos + 4, count)
        if value is not None:
            struct.pack_into("<H" if typ == 3 else "<I", data, pos + 8, value)
        if type_code is not None:
            struct.pack_into("<H", data, pos + 2, type_code)
        Path(path).write_bytes(bytes(data))
        return
    raise AssertionError(f"tag {code} not found in {path}")


def _patch_png_ihdr(path: Path, width: int, height: int) -> None:
    """Set IHDR width/height and fix its CRC, so only the size claim is wrong."""
    import zlib

    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _flip_bytes(path: Path, start: int, length: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + length, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def make_bad_file(path: str | Path, kind: str) -> Path:
    """Write a broken or unsuitable image of `kind` (a key of BAD_KINDS) at `path`; returns path."""
    path = Path(path)
    img16 = sample_image16()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("scanner log: exposure 42 ms\nthis is not an image\n")
    elif kind == "jpeg_as_tif":
        ok, buf = cv2.imencode(".jpg", (img16 >> 4).astype(np.uint8))
        path.write_bytes(buf.tobytes())
    elif kind == "png_as_tif":
        write_png16(path, img16)
    elif kind == "tiff_as_png":
        write_tiff16(path, img16)
    elif kind == "truncated_strip":
        write_tiff16(path, img16)
        path.write_bytes(path.read_bytes()[: 256 + img16.nbytes // 2])
    elif kind == "corrupt_deflate":
        write_tiff16(path, img16, compression="zlib", rowsperstrip=8)
        _flip_bytes(path, path.stat().st_size // 2)
    elif kind == "corrupt_lzw":
        write_tiff16(path, img16, compression="lzw")
        _flip_bytes(path, path.stat().st_size // 2)
    elif kind == "truncated_tile_offsets":
        write_tiff16(path, img16, compression="zlib", tile=(16, 16))
        patch_tiff_tag(path, 324, count=4)  # TileOffsets: 4 of the 8 tiles listed
    elif kind == "damaged_tag":  # tifffile only logs this one; read_image must still refuse
        write_tiff16(path, img16)
        patch_tiff_tag(path, 296, type_code=99)  # ResolutionUnit with a data type that does not exist
    elif kind == "uint8":
        write_tiff16(path, (img16 >> 4).astype(np.uint8))
    elif kind == "float32":
        write_tiff16(path, img16.astype(np.float32))
    elif kind == "int8":
        write_tiff16(path, (img16 % 100).astype(np.int8))
    elif kind == "rgb":
        write_tiff16(path, np.stack([img16] * 3, axis=-1))
    elif kind == "multi_page":
        tifffile.imwrite(path, np.stack([img16, img16]), photometric="minisblack")
    elif kind == "huge_tiff":
        write_tiff16(path, img16)
        patch_tiff_tag(path, 256, value=200_000)  # ImageWidth
        patch_tiff_tag(path, 257, value=200_000)  # ImageLength
    elif kind == "huge_png":
        write_png16(path, img16)
        _patch_png_ihdr(path, 200_000, 200_000)
    elif kind == "png8":
        write_png16(path, (img16 >> 4).astype(np.uint8))
    elif kind == "png_rgb16":
        write_png16(path, np.stack([img16] * 3, axis=-1))
    elif kind == "truncated_png":
        write_png16(path, img16)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "corrupt_png":
        write_png16(path, img16)
        _flip_bytes(path, path.stat().st_size // 2)
    elif kind == "dicom_multiframe":
        write_dicom16(path, np.stack([img16, img16]), frames=2)
    elif kind == "dicom_rgb":
        write_dicom16(path, np.stack([img16 >> 8] * 3, axis=-1).astype(np.uint8), samples=3,
                      bits_allocated=8, bits_stored=8)
    elif kind == "dicom_8bit":
        write_dicom16(path, (img16 >> 4).astype(np.uint8), bits_allocated=8, bits_stored=8)
    elif kind == "truncated_dicom":
        write_dicom16(path, img16)
        path.write_bytes(path.read_bytes()[: path.stat().st_size - img16.nbytes // 2])
    else:
        raise ValueError(f"unknown bad file kind {kind!r} (known: {', '.join(BAD_KINDS)})")
    return path
