"""An electrode's serial number and lot, read from its file name by `station.serial_pattern`.

The pattern is a Python regular expression with a named group `serial` (required) and `lot` (optional),
applied with `re.search` to the file's name relative to the capture folder as the station shows it: folders
joined by `/`, undecodable bytes as \\xNN and control characters escaped (paths.display_path), so a pattern
may read the lot from a subfolder (`(?P<lot>L\\d+)/(?P<serial>SN\\d+)`). Other named groups are refused: a
misspelt `(?P<seral>...)` must not pass silently, and a file's bundle is review.bundle_rule's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from inspector.base.paths import display_path

GROUPS = ("serial", "lot")  # the named groups a pattern may have; `serial` it must have


@dataclass(frozen=True)
class SerialFields:
    """What a file name says of its electrode: its serial number, and its lot when the pattern has one."""

    serial: str
    lot: str | None = None


def serial_pattern_problem(text: str) -> str | None:
    """Why `text` is no serial pattern (it does not compile, has no `serial` group, or has another named group);
    None when it is one."""
    try:
        pattern = re.compile(text)
    except re.error as exc:
        return f"is not a regular expression: {exc}"
    except RecursionError:  # nested deeper than the parser goes
        return "is not a regular expression: nested too deeply"
    names = set(pattern.groupindex)
    if "serial" not in names:
        return ("has no group named serial: write the serial number's part as (?P<serial>...), e.g. "
                r"'(?P<lot>L\d+)-(?P<serial>SN\d+)'")
    others = sorted(names - set(GROUPS))
    if others:
        return (f"has group(s) {', '.join(others)}: only serial and lot are recorded (a bundle comes from "
                "review.bundle_rule); make other groups unnamed, (?:...)")
    return None


def compile_serial_pattern(text: str) -> re.Pattern[str] | None:
    """The compiled pattern; None for "" (no serials). The config checked it when it was loaded."""
    if not text:
        return None
    problem = serial_pattern_problem(text)
    if problem is not None:
        raise ValueError(f"station.serial_pattern {problem}")
    return re.compile(text)


def capture_name(path: str | bytes, root: str | bytes) -> str | None:
    """A file's name relative to the capture folder, as the pattern sees it; None for a path outside it."""
    path, root = os.fsencode(path), os.fsencode(root)
    relative = os.path.relpath(path, root)
    if relative == b"." or relative.startswith(b"../") or relative == b"..":
        return None
    return display_path(relative)


def match_serial(pattern: re.Pattern[str] | None, name: str) -> SerialFields | None:
    """The serial and lot the pattern finds in `name` (capture_name's); None when there is no pattern, it does not
    match, or its serial group took part with nothing (an empty serial is none). An empty lot is no lot."""
    if pattern is None:
        return None
    found = pattern.search(name)
    if found is None or not found.group("serial"):
        return None
    lot = found.groupdict().get("lot") or None
    return SerialFields(found.group("serial"), lot)
