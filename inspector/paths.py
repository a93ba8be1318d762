"""How a file name is shown in logs, STATUS, the database's readable path column and plain-text output.

A capture folder is written by other programs: a name may hold bytes that are not UTF-8 and
control characters (a newline in a name once forged a whole `INFO verdict ...` line in the log).
Both are shown as escapes, so one name is always one line; the exact bytes are kept elsewhere
(images.path_raw).
"""

from __future__ import annotations

import os
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def display_path(path: str | bytes) -> str:
    """Printable, single-line form of any file name: undecodable bytes as \\xNN, control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
