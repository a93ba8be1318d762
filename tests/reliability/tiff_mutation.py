"""Seeded mutations of real tifffile-written TIFFs: truncation, flipped header/IFD bytes, lying strip
offsets and byte counts, garbage in compressed data. Each case is reproducible from (variant, seed)."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_files import sample_image16, write_tiff16

# Base files the mutations start from: name -> write_tiff16 keyword arguments.
VARIANTS: dict[str, dict] = {
    "plain": {"rowsperstrip": 8},
    "plain_big_endian": {"rowsperstrip": 8, "byteorder": ">"},
    "zlib": {"compression": "zlib", "rowsperstrip": 8},
    "lzw": {"compression": "lzw", "rowsperstrip": 8},
    "zlib_tiled": {"compression": "zlib", "tile": (16, 16)},
}
COMPRESSED = ("zlib", "lzw", "zlib_tiled")
MUTATIONS = ("truncate", "flip_header", "lie_segments", "garbage_data", "flip_anywhere")
SEGMENT_TAGS = {273: "StripOffsets", 279: "StripByteCounts", 324: "TileOffsets", 325: "TileByteCounts"}
TYPE_SIZES = {3: 2, 4: 4, 16: 8}


@dataclass(frozen=True)
class Layout:
    """Where the parts of a classic TIFF lie: IFD span, segment tag entries, segment data spans."""
    order: str
    ifd_start: int
    ifd_end: int
    segment_entries: dict[int, tuple[int, int, int, int]]  # tag -> (entry pos, type, count, value field/offset)
    data_spans: list[tuple[int, int]]


def write_base(folder: Path, variant: str) -> bytes:
    """The unmutated file of a variant (64 x 40 px) as bytes."""
    path = folder / f"base-{variant}.tif"
    write_tiff16(path, sample_image16(64, 40, seed=3), **VARIANTS[variant])
    return path.read_bytes()


def parse_layout(data: bytes) -> Layout:
    """Parse the first IFD of a classic TIFF (the base files only; they are well formed)."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    n = struct.unpack_from(order + "H", data, ifd)[0]
    entries: dict[int, tuple[int, int, int, int]] = {}
    for i in range(n):
        pos = ifd + 2 + 12 * i
        tag, typ, count = struct.unpack_from(order + "HHI", data, pos)
        if tag in SEGMENT_TAGS:
            size = TYPE_SIZES.get(typ, 4) * count
            value = pos + 8 if size <= 4 else struct.unpack_from(order + "I", data, pos + 8)[0]
            entries[tag] = (pos, typ, count, value)
    offsets_tag, counts_tag = (324, 325) if 324 in entries else (273, 279)
    spans = list(zip(_read_values(data, order, entries[offsets_tag]), _read_values(data, order, entries[counts_tag])))
    return Layout(order, ifd, ifd + 2 + 12 * n + 4, entries, [(o, o + c) for o, c in spans])


def _read_values(data: bytes, order: str, entry: tuple[int, int, int, int]) -> list[int]:
    _, typ, count, at = entry
    code = {3: "H", 4: "I", 16: "Q"}[typ]
    return list(struct.unpack_from(f"{order}{count}{code}", data, at))


def mutate(data: bytes, layout: Layout, mutation: str, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of `data`; returns the bytes and a human-readable description of what changed."""
    out = bytearray(data)
    if mutation == "truncate":
        cut = rng.randrange(0, len(data))
        return bytes(out[:cut]), f"truncated to {cut} of {len(data)} bytes"
    if mutation == "flip_header":
        spans = [(0, 8), (layout.ifd_start, layout.ifd_end)]
        done = []
        for _ in range(rng.randint(1, 4)):
            lo, hi = rng.choice(spans)
            pos, bits = rng.randrange(lo, hi), rng.randint(1, 255)
            out[pos] ^= bits
            done.append(f"byte {pos} ^= {bits:#04x}")
        return bytes(out), "header: " + ", ".join(done)
    if mutation == "lie_segments":
        return _lie_segments(out, layout, rng)
    if mutation == "garbage_data":
        lo, hi = rng.choice(layout.data_spans)
        start = rng.randrange(lo, hi)
        length = rng.randint(1, max(1, min(64, hi - start)))
        out[start:start + length] = bytes(rng.randrange(256) for _ in range(length))
        return bytes(out), f"garbage at {start}..{start + length} in segment {lo}..{hi}"
    if mutation == "flip_anywhere":
        done = []
        for _ in range(rng.randint(1, 8)):
            pos, bits = rng.randrange(len(out)), rng.randint(1, 255)
            out[pos] ^= bits
            done.append(f"byte {pos} ^= {bits:#04x}")
        return bytes(out), ", ".join(done)
    raise ValueError(f"unknown mutation {mutation!r}")


def _lie_segments(out: bytearray, layout: Layout, rng: random.Random) -> tuple[bytes, str]:
    """Change a strip/tile offset or byte count, or the count of listed segments, to a plausible lie."""
    tag = rng.choice(sorted(layout.segment_entries))
    pos, typ, count, at = layout.segment_entries[tag]
    name = SEGMENT_TAGS[tag]
    if rng.random() < 0.25:
        new_count = rng.choice([0, 1, count - 1, count + 1, count * 2, 0xFFFF, 0x7FFFFFFF])
        struct.pack_into(layout.order + "I", out, pos + 4, max(0, new_count))
        return bytes(out), f"{name} count {count} -> {new_count}"
    size = TYPE_SIZES.get(typ, 4)
    index = rng.randrange(count)
    old = int.from_bytes(out[at + index * size: at + (index + 1) * size], "little" if layout.order == "<" else "big")
    top = (1 << (8 * size)) - 1
    new = rng.choice([0, 1, old + 1, old - 1, old * 2, old + 4096, top, rng.randrange(top + 1)])
    new = max(0, min(new, (1 << (8 * size)) - 1))
    code = {2: "H", 4: "I", 8: "Q"}[size]
    struct.pack_into(layout.order + code, out, at + index * size, new)
    return bytes(out), f"{name}[{index}] {old} -> {new}"


def plan_case(seed: int) -> tuple[str, str]:
    """The variant and mutation of case `seed` (garbage_data only where the data is compressed)."""
    rng = random.Random(seed)
    variant = rng.choice(sorted(VARIANTS))
    choices = MUTATIONS if variant in COMPRESSED else tuple(m for m in MUTATIONS if m != "garbage_data")
    return variant, rng.choice(choices)


def build_case(bases: dict[str, bytes], seed: int) -> tuple[bytes, str]:
    """The mutated bytes of case `seed` and a reproducer line."""
    variant, mutation = plan_case(seed)
    data = bases[variant]
    rng = random.Random(seed * 7919 + 1)
    mutated, what = mutate(data, parse_layout(data), mutation, rng)
    return mutated, f"seed={seed} variant={variant} mutation={mutation}: {what}"


def is_uint16_image(arr: object) -> bool:
    return isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype == np.uint16 and arr.size > 0
