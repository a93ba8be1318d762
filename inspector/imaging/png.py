"""Read a 16-bit grayscale PNG: IHDR, every chunk's bounds and CRC and the inflated stream checked before decoding."""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

from inspector.base.errors import ImageError
from inspector.imaging.imagecheck import check_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(fh: BinaryIO, size: int, max_height: int, max_width: int) -> np.ndarray:
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
