"""The header of a model file (safetensors), read without torch: `report` and `model` both use it.

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON; inspector
keeps its own metadata as a JSON string under `__metadata__["inspector"]`.
"""

from __future__ import annotations

import json
import os
import struct

META_KEY = "inspector"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger claim means a damaged file


class HeaderError(ValueError):
    """The header is damaged (its words say how); the file is not a model to trust."""


def head_length(data: bytes) -> int:
    """The JSON header's length the first 8 bytes claim (0 when there are fewer)."""
    return struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0


def read_head(path: str | os.PathLike) -> tuple[bytes, int]:
    """(the length prefix and the JSON header, at most MAX_HEADER_BYTES + 1 of it; the file size)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) == 8:
            head += fh.read(min(head_length(head), MAX_HEADER_BYTES + 1))
    return head, size


def inspector_metadata(head: bytes, size: int) -> str | None:
    """inspector's metadata text from a header (see read_head); None for a safetensors file without it."""
    if len(head) < 8:
        raise HeaderError("too short for a safetensors header")
    n = head_length(head)
    if n > MAX_HEADER_BYTES or 8 + n > size or len(head) < 8 + n:
        raise HeaderError("header length does not fit the file")
    try:
        header = json.loads(head[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeaderError("header is not valid JSON") from None
    text = header.get("__metadata__", {}).get(META_KEY) if isinstance(header, dict) else None
    return text if isinstance(text, str) else None
