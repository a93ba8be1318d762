"""How a file name is shown in logs, STATUS, the database's readable path column and plain-text output.

A capture folder is written by other programs: a name may hold bytes that are not UTF-8 and
control characters (a newline in a name once forged a whole `INFO verdict ...` line in the log),
and the invisible characters that reorder text (U+202E shows "ok-\u202efit.lamron.tif" as
"ok-normal.tif"). All are shown as escapes, so one name is always one line and reads as it is;
the exact bytes are kept elsewhere (images.path_raw, images.moved_to_raw).
"""

from __future__ import annotations

import os
import re

# C0 and C1 controls, line and paragraph separators, and the bidirectional marks, embeddings, overrides and
# isolates (U+061C, U+200E-F, U+202A-E, U+2066-9).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def display_path(path: str | bytes) -> str:
    """Printable, single-line form of any file name: undecodable bytes as \\xNN, control and bidi characters
    escaped (\\n, \\u202e)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
