"""Read one 16-bit grayscale X-ray image (TIFF, 16-bit PNG, DICOM), validating its header before decoding.

A scanner station must never score zero-filled pixels or run out of memory on a lying
header, so every check that can be made from the header (format, pages, samples, dtype,
size, byte ranges against the file size) is made before a single pixel is decoded, and
any warning a decoder emits is an error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from inspector.dicom import read_dicom
from inspector.errors import ImageError
from inspector.imagecheck import DECODE_ERRORS, TRUNCATION_WORDS, check_size, decode_error

PathLike = str | bytes | os.PathLike

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
EXTENSION_FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".dcm": "dicom", ".dicom": "dicom"}
FORMAT_NAMES = {"tiff": "TIFF", "png": "PNG", "dicom": "DICOM"}


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of the file content: the identity of an image, whatever its name."""
    with _open_regular(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_image(path: PathLike, max_height: int = 10_000, max_width: int = 10_000) -> np.ndarray:
    """Return the image as a 2-D uint16 array, or raise ImageError with a stable reason code."""
    where = os.fsdecode(path)
    with _open_regular(path) as fh:
        return _read_open(fh, os.fstat(fh.fileno()).st_size, where, max_height, max_width)


def read_image_bytes(data: bytes, where: str, max_height: int = 10_000, max_width: int = 10_000) -> np.ndarray:
    """read_image of a file's content already in memory (`where` names it in errors and decides the extension)."""
    return _read_open(io.BytesIO(data), len(data), where, max_height, max_width)


def load_recorded(places: list[PathLike], sha256: str) -> tuple[bytes, str]:
    """The content of a recorded image from the first of its places that still holds exactly it (read once:
    what is hashed is what is used), and that place; ImageError `unreadable` naming each place tried."""
    from inspector.paths import display_path

    tried = []
    for place in places:
        shown = display_path(place)  # for messages: one line, always encodable
        try:
            with _open_regular(place) as fh:
                data = fh.read()
        except ImageError as exc:
            tried.append(f"{shown}: {exc.message}")
            continue
        if hashlib.sha256(data).hexdigest() != sha256:
            tried.append(f"{shown}: now holds other content")
            continue
        return data, os.fsdecode(place)
    raise ImageError("unreadable", "; ".join(tried) or "no place recorded")


def read_recorded(places: list[PathLike], sha256: str, max_height: int = 10_000,
                  max_width: int = 10_000) -> tuple[np.ndarray, str]:
    """The scored image (load_recorded: only while a place still holds exactly the recorded content), decoded;
    what every reader that shows a scan uses (the review station, the report's thumbnails)."""
    data, place = load_recorded(places, sha256)
    return read_image_bytes(data, place, max_height, max_width), place


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_heatmap(path: PathLike, sha256: str, png_sha256: str | None = None) -> bytes:
    """The PNG of the heat map drawn for content `sha256`, as every reader shows one (the review station, the
    report): only a file named for that content (explain.heatmap_path: <sha256>.png), a regular file reached
    without a symbolic link at its end, holding a PNG, and (where the verdict recorded it: schema 5) the very
    PNG drawn (`png_sha256`); ImageError `unreadable` saying which check failed."""
    where = os.fsdecode(path)
    if os.path.basename(where) != f"{sha256}.png":
        raise ImageError("unreadable", "the heat map recorded is not the one drawn for this content", where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if os.path.islink(path):
            raise ImageError("unreadable", "the heat map is a symbolic link, not the file the daemon drew",
                             where) from None
        raise ImageError("unreadable", f"the heat map cannot be read here ({exc.strerror})", where) from None
    with os.fdopen(fd, "rb") as fh:
        _require_regular(os.fstat(fd).st_mode, where)
        data = fh.read()
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError("unreadable", "the heat map file is not a PNG", where)
    if png_sha256 is not None and hashlib.sha256(data).hexdigest() != png_sha256:
        raise ImageError("unreadable", "the heat map file was changed after it was drawn (its sha256 is not the one "
                         "recorded); `inspector explain` draws it again", where)
    return data


def _read_open(fh: BinaryIO, size: int, where: str, max_height: int, max_width: int) -> np.ndarray:
    if size == 0:
        # a file is often created first and written a moment later: empty is incomplete until it stays empty
        raise ImageError("not_an_image", "the file is empty (0 bytes): the scanner wrote nothing; rescan it", where,
                         incomplete=True)
    head = fh.read(132)
    fmt = _sniff_format(head)
    fh.seek(0)
    if fmt not in FORMAT_NAMES and not head.strip(b"\0"):
        raise ImageError("truncated", "the file starts with zero bytes where its header belongs: a writer has "
                         "reserved the space but not written it yet", where)
    expected = EXTENSION_FORMATS.get(Path(where).suffix.lower())
    if fmt not in FORMAT_NAMES:
        raise ImageError("not_an_image", f"the file holds {fmt}, not a 16-bit TIFF, PNG or DICOM image", where)
    if expected and expected != fmt:
        raise ImageError("not_an_image", f"the file is named {Path(where).suffix} but holds a {FORMAT_NAMES[fmt]} "
                         f"image, not a {FORMAT_NAMES[expected]}: export it again in the format its name says", where)
    reader = {"tiff": _read_tiff, "png": _read_png, "dicom": read_dicom}[fmt]
    try:
        return reader(fh, size, max_height, max_width)
    except ImageError as exc:
        exc.path = where
        raise
    except MemoryError:
        raise ImageError("too_large", "there is not enough memory to decode the image", where) from None
    except Exception as exc:  # anything else a header or decoder throws is this file's fault, not the batch's
        raise ImageError("corrupt", f"the {FORMAT_NAMES[fmt]} could not be read "
                         f"({type(exc).__name__}: {exc}); export it again", where) from None


@contextmanager
def _open_regular(path: PathLike) -> Iterator[BinaryIO]:
    """Open only regular files: a FIFO or device is never opened (it could block or have side effects)."""
    where = os.fsdecode(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError("unreadable", "the file does not exist (was it moved or deleted?)", where) from None
    except PermissionError:
        raise ImageError("unreadable", "permission denied: give the inspector user read access to the file", where) from None
    except OSError as exc:
        raise ImageError("unreadable", f"the file cannot be examined ({exc.strerror})", where) from None
    _require_regular(st.st_mode, where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise ImageError("unreadable", "permission denied: give the inspector user read access to the file", where) from None
    except OSError as exc:
        raise ImageError("unreadable", f"the file cannot be opened ({exc.strerror})", where) from None
    fh = os.fdopen(fd, "rb")
    try:
        _require_regular(os.fstat(fd).st_mode, where)  # it may have been swapped since the stat
        yield fh
    except OSError as exc:
        raise ImageError("unreadable", f"the file cannot be read ({exc.strerror or exc})", where) from None
    finally:
        fh.close()


def _require_regular(mode: int, where: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise ImageError("not_an_image", f"this is {kind}, not an image file: inspector reads only regular files", where)


def _sniff_format(head: bytes) -> str:
    """Name the content from its magic bytes; extensions lie, magic numbers rarely do.

    DICM at offset 128 wins: the standard lets the 128-byte preamble hold anything, and dual-personality
    files from CR/DR devices carry a TIFF header there.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"BM"):
        return "a BMP image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith((b"\x00\x00\x00\x0cjP", b"\xff\x4f\xff\x51")):
        return "a JPEG 2000 image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text"
    return "data of an unknown format"


# --- TIFF ---------------------------------------------------------------------------------------

class _LogRecorder(logging.Handler):
    """Collect tifffile's WARNING+ records from this thread: tifffile logs (not raises) some damage."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def _tifffile_strict() -> Iterator[_LogRecorder]:
    """Turn warnings into exceptions and record tifffile's logged complaints for the caller to check."""
    logger = logging.getLogger("tifffile")
    recorder = _LogRecorder()
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(recorder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(old_level)


def _read_tiff(fh: BinaryIO, size: int, max_height: int, max_width: int) -> np.ndarray:
    import tifffile

    _check_tiff_directory_written(fh, size)
    try:
        with _tifffile_strict() as log, tifffile.TiffFile(fh, name="image.tif") as tif:
            pages = len(tif.pages)
            if pages == 0:
                raise ImageError("corrupt", "the TIFF holds no image at all: the file is damaged; rescan it")
            page = tif.pages.first
            _check_tiff_header(page, pages, max_height, max_width)
            _raise_logged(log.messages, "reading the TIFF header")
            _check_tiff_segments(page, size)
            _check_tiff_zero_tail(fh, page)
            img = page.asarray(maxworkers=1)
            _raise_logged(log.messages, "decoding the TIFF")
    except ImageError:
        raise
    except MemoryError:
        raise
    except Warning as exc:
        raise decode_error("TIFF", exc) from None
    except DECODE_ERRORS as exc:  # TiffFileError and imagecodecs' errors are ValueError/RuntimeError
        raise decode_error("TIFF", exc) from None
    if img.ndim != 2 or img.dtype != np.uint16:
        raise ImageError("wrong_dtype", f"the TIFF decodes to a {img.dtype} array of shape {img.shape}, "
                         "not a 2-D 16-bit image")
    if page.photometric == 0:  # MINISWHITE: invert so that a higher value is always brighter
        img = ((1 << page.bitspersample) - 1 - img).astype(np.uint16)
    return img


def _check_tiff_directory_written(fh: BinaryIO, size: int) -> None:
    """libtiff (and OpenCV, Pillow, most C scanner software) writes the header with a zero directory offset,
    then the image data, and the image directory last: until then the file is incomplete (`truncated`,
    provisional), not damaged. So is a directory that starts or ends past the end of the file."""
    fh.seek(0)
    head = fh.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\0", b"\0+")
    offset_at, offset_size, count_size, entry_size = (8, 8, 8, 20) if big else (4, 4, 2, 12)
    if len(head) < offset_at + offset_size:
        raise ImageError("truncated", f"the TIFF header is cut short ({size} bytes): the file is incomplete "
                         "(was it still being written?)")
    offset = int.from_bytes(head[offset_at:offset_at + offset_size], "little" if order == "<" else "big")
    if offset == 0:
        raise ImageError("truncated", "the TIFF header does not point to an image directory yet (offset 0): its "
                         "writer (libtiff and the software built on it write the directory last) has not finished; "
                         "it is judged again when it changes")
    fh.seek(offset)
    count_bytes = fh.read(count_size)
    count = int.from_bytes(count_bytes, "little" if order == "<" else "big") if len(count_bytes) == count_size else 0
    end = offset + count_size + count * entry_size + offset_size
    if len(count_bytes) < count_size or end > size:
        raise ImageError("truncated", f"the TIFF's image directory at byte {offset} runs past the end of the file "
                         f"({size} bytes): its writer has not finished writing it; it is judged again when it changes")
    fh.seek(0)


def _check_tiff_header(page, pages: int, max_height: int, max_width: int) -> None:
    """Reject from the first page's tags alone: nothing has been allocated yet."""
    if pages > 1:
        raise ImageError("multi_page", f"the TIFF holds {pages} pages; inspector scores one image per file: "
                         "save each page as its own file")
    if page.imagedepth > 1:
        raise ImageError("multi_page", f"the TIFF is a volume of {page.imagedepth} slices; inspector scores one "
                         "2-D image per file")
    height, width = page.imagelength, page.imagewidth
    check_size(height, width, max_height, max_width)
    if page.samplesperpixel != 1 or page.photometric not in (0, 1):
        kind = {2: "RGB colour", 3: "palette colour", 6: "YCbCr colour"}.get(int(page.photometric), "not grayscale")
        raise ImageError("not_grayscale", f"the TIFF is {kind} with {page.samplesperpixel} samples per pixel; "
                         "inspector needs one gray value per pixel")
    bits, fmt = page.bitspersample, page.sampleformat
    if fmt != 1 or not 9 <= bits <= 16:
        kind = {1: "unsigned integer", 2: "signed integer", 3: "floating point"}.get(int(fmt), "unknown")
        raise ImageError("wrong_dtype", f"the TIFF holds {bits}-bit {kind} pixels; inspector needs unsigned "
                         "integers of 9 to 16 bits (a 16-bit gray export)")


def _check_tiff_segments(page, size: int) -> None:
    """Every strip or tile must be listed and lie inside the file; else tifffile would fill zeros."""
    offsets, counts = page.dataoffsets, page.databytecounts
    height, width, bits = page.imagelength, page.imagewidth, page.bitspersample
    if page.is_tiled:
        unit, tile_h, tile_w = "tile", page.tilelength, page.tilewidth
        if tile_h <= 0 or tile_w <= 0:
            raise ImageError("corrupt", f"the TIFF declares {tile_w} x {tile_h} pixel tiles: the file is damaged; "
                             "rescan it")
        needed = math.ceil(height / tile_h) * math.ceil(width / tile_w)

        def raw_size(i: int) -> int:
            return tile_h * math.ceil(tile_w * bits / 8)
    else:
        unit = "strip"
        rows = page.rowsperstrip if 0 < page.rowsperstrip < height else height
        needed = math.ceil(height / rows)
        row_bytes = math.ceil(width * bits / 8)

        def raw_size(i: int) -> int:
            return min(rows, height - i * rows) * row_bytes
    # compared before anything is sized by `needed`: a 1 x 1 tile on a huge image must cost nothing
    if len(offsets) != needed or len(counts) != needed:
        raise ImageError("truncated", f"the TIFF lists {len(offsets)} {unit} offsets and {len(counts)} byte counts "
                         f"but its {width} x {height} image needs {needed} {unit}s: the file is damaged or cut short")
    for i, (offset, count) in enumerate(zip(offsets, counts), start=1):
        if offset == 0 or count == 0:
            raise ImageError("truncated", f"TIFF {unit} {i} of {needed} has no data: the file is incomplete; rescan it")
        if offset + count > size:
            raise ImageError("truncated", f"TIFF {unit} {i} of {needed} ends at byte {offset + count} but the file "
                             f"has {size} bytes: the file is truncated (was it still being written?)")
        if page.compression == 1 and count < raw_size(i - 1):
            raise ImageError("corrupt", f"uncompressed TIFF {unit} {i} of {needed} holds {count} bytes but needs "
                             f"{raw_size(i - 1)}: the file is damaged; rescan it")


ZERO_TAIL_MIN_BYTES = 512  # an uncompressed tail this long (and at least one row) of exact zeros is unwritten space
ZERO_TAIL_COMPRESSED_BYTES = 64  # no deflate, LZW or JPEG stream ends in this many zero bytes


def _check_tiff_zero_tail(fh: BinaryIO, page) -> None:
    """Image data that ends in zero-filled space is a file still being filled in (SMB clients set the
    full size first): `truncated`, which the daemon treats as provisional, never a verdict on zeros.

    The last segment in file order is read back from its end; uncompressed data must end in at
    least a whole row (and 512 bytes) of exact zeros, compressed data in 64 zero bytes.
    """
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets:
        return
    last = max(range(len(offsets)), key=lambda i: offsets[i])
    if page.compression == 1:
        row_bytes = math.ceil((page.tilewidth if page.is_tiled else page.imagewidth) * page.bitspersample / 8)
        needed = max(row_bytes, ZERO_TAIL_MIN_BYTES)
    else:
        needed = ZERO_TAIL_COMPRESSED_BYTES
    if counts[last] < needed:
        return
    fh.seek(offsets[last] + counts[last] - needed)
    if fh.read(needed).strip(b"\0"):
        return
    zeros, end = needed, offsets[last] + counts[last]  # measure the whole zero run, for the message
    while zeros < counts[last]:
        step = min(1 << 16, counts[last] - zeros)
        fh.seek(end - zeros - step)
        chunk = fh.read(step)
        kept = len(chunk.rstrip(b"\0"))
        zeros += step - kept
        if kept:
            break
    raise ImageError("truncated", f"the TIFF's image data ends in {zeros} zero bytes: the file has its full size "
                     "but is still being filled in (or its writer stopped); it is judged again when it changes")


def _raise_logged(messages: list[str], stage: str) -> None:
    if messages:
        text = "; ".join(messages)
        reason = "truncated" if any(w in text.lower() for w in TRUNCATION_WORDS) else "corrupt"
        raise ImageError(reason, f"tifffile reported a problem while {stage} ({text}): the file is "
                         f"{'incomplete' if reason == 'truncated' else 'damaged'}; rescan it")


# --- PNG ----------------------------------------------------------------------------------------

def _read_png(fh: BinaryIO, size: int, max_height: int, max_width: int) -> np.ndarray:
    import cv2

    head = fh.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13:
        raise ImageError("corrupt", "the PNG does not start with a valid IHDR header: the file is damaged")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", head[16:29])
    check_size(height, width, max_height, max_width)
    if colour != 0:
        kind = {2: "RGB colour", 3: "palette colour", 4: "gray with an alpha channel",
                6: "RGB colour with alpha"}.get(colour, f"colour type {colour}")
        raise ImageError("not_grayscale", f"the PNG is {kind}; inspector needs a 16-bit grayscale PNG")
    if depth != 16:
        raise ImageError("wrong_dtype", f"the PNG is {depth}-bit grayscale; inspector needs 16-bit grayscale")
    if compression or filtering or interlace not in (0, 1):
        raise ImageError("corrupt", "the PNG header has invalid compression/filter/interlace fields")
    raw_bytes = height * (1 + 2 * width)
    if size > 2 * raw_bytes + (16 << 20):
        raise ImageError("too_large", f"the PNG file has {size} bytes, far more than a {width} x {height} image needs")
    fh.seek(0)
    data = fh.read()
    idat = _walk_png_chunks(data)
    _check_png_stream(idat, raw_bytes if interlace == 0 else None)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError("corrupt", "OpenCV cannot decode the PNG: the file is corrupt; rescan it")
    if img.dtype != np.uint16 or img.shape != (height, width):
        raise ImageError("wrong_dtype", f"the PNG decodes to {img.dtype} {img.shape}, not {height} x {width} uint16")
    return img


def _walk_png_chunks(data: bytes) -> bytes:
    """Check every chunk's bounds and CRC up to IEND; return the joined IDAT payload."""
    pos, idat = 8, []
    while True:
        if pos + 8 > len(data):
            raise ImageError("truncated", f"the PNG ends at byte {len(data)} before its IEND chunk: the file is "
                             "truncated (was it still being written?)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        name = ctype.decode("latin-1")
        if end > len(data):
            raise ImageError("truncated", f"PNG chunk {name} ends at byte {end} but the file has {len(data)} bytes: "
                             "the file is truncated (was it still being written?)")
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            raise ImageError("corrupt", f"PNG chunk {name} at byte {pos} fails its checksum: the file is corrupt; "
                             "rescan it")
        if ctype == b"acTL":
            raise ImageError("multi_page", "the PNG is animated (several frames); inspector scores one image per file")
        if ctype == b"IDAT":
            idat.append(data[pos + 8:end - 4])
        if ctype == b"IEND":
            return b"".join(idat)
        pos = end


def _check_png_stream(idat: bytes, raw_bytes: int | None) -> None:
    """Inflate the pixel stream with a bound, so a short or broken stream never becomes zero pixels."""
    if not idat:
        raise ImageError("corrupt", "the PNG has no pixel data (no IDAT chunk): the file is damaged")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(idat, (raw_bytes or (1 << 31)) + 1)
    except zlib.error as exc:
        raise ImageError("corrupt", f"the PNG pixel data cannot be inflated ({exc}): the file is corrupt") from None
    if not inflater.eof:
        raise ImageError("corrupt", "the PNG pixel stream stops before its end: the file is corrupt; rescan it")
    if raw_bytes is not None and len(out) != raw_bytes:
        raise ImageError("corrupt", f"the PNG pixel stream holds {len(out)} bytes but the image needs {raw_bytes}")
