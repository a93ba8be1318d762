"""Read one 16-bit grayscale X-ray image (TIFF, 16-bit PNG, DICOM): sniff its format, hand it to that format's reader.

The readers are tiff.py, png.py and dicom.py; what they share is imagecheck.py.

A scanner station must never score zero-filled pixels or run out of memory on a lying
header, so every check that can be made from the header (format, pages, samples, dtype,
size, byte ranges against the file size) is made before a single pixel is decoded, and
any warning a decoder emits is an error.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from inspector.imaging.dicom import read_dicom
from inspector.base.errors import ImageError
from inspector.imaging.png import PNG_MAGIC, read_png
from inspector.imaging.tiff import TIFF_MAGICS, read_tiff

PathLike = str | bytes | os.PathLike

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
    from inspector.base.paths import display_path

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
    if not data.startswith(PNG_MAGIC):
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
    reader = {"tiff": read_tiff, "png": read_png, "dicom": read_dicom}[fmt]
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
