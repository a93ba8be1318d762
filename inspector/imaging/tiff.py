"""Read a 16-bit grayscale TIFF, its header, segments and tail checked (a file still being written is `truncated`)."""

from __future__ import annotations

import logging
import math
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Iterator

import numpy as np

from inspector.base.errors import ImageError
from inspector.imaging.imagecheck import DECODE_ERRORS, TRUNCATION_WORDS, check_size, decode_error

if TYPE_CHECKING:
    from tifffile import TiffPage

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


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


def read_tiff(fh: BinaryIO, size: int, max_height: int, max_width: int) -> np.ndarray:
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


def _check_tiff_header(page: TiffPage, pages: int, max_height: int, max_width: int) -> None:
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


def _check_tiff_segments(page: TiffPage, size: int) -> None:
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


def _check_tiff_zero_tail(fh: BinaryIO, page: TiffPage) -> None:
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

