"""What the format readers share: the exceptions decoders raise on damaged input, how their words sort
into `truncated` or `corrupt`, and the size limit every header is checked against before decoding."""

from __future__ import annotations

import struct
import zlib

from inspector.base.errors import ImageError

# Exceptions tifffile, imagecodecs, zlib and pydicom raise on damaged input.
DECODE_ERRORS = (ValueError, RuntimeError, TypeError, KeyError, IndexError, EOFError, struct.error,
                 zlib.error, OSError, OverflowError, AttributeError)
TRUNCATION_WORDS = ("truncat", "incomplete", "failed to read", "end of file", "eof", "less than expected",
                    "segments", "count")


def check_size(height: int, width: int, max_height: int, max_width: int) -> None:
    """Refuse a header's image size before anything is allocated for it."""
    if height <= 0 or width <= 0:
        raise ImageError("corrupt", f"the header claims an image of {width} x {height} pixels: the file is damaged")
    if height > max_height or width > max_width:
        raise ImageError("too_large", f"the header claims {width} x {height} pixels (width x height), more than "
                         f"the limit of {max_width} x {max_height} (imaging.max_width/max_height in config.toml)")


def decode_error(fmt: str, exc: BaseException) -> ImageError:
    """Sort a decoder's exception into truncated or corrupt, keeping its words for the operator."""
    text = str(exc) or type(exc).__name__
    if any(w in text.lower() for w in TRUNCATION_WORDS):
        return ImageError("truncated", f"the {fmt} data ends early ({text}): the file is truncated "
                          "(was it still being written?)")
    return ImageError("corrupt", f"the {fmt} data cannot be decoded ({text}): the file is corrupt; rescan it")
