"""The one logging setup of `inspector watch` and `inspector serve`: one line per event on stderr.

On a terminal or in a file a line is `TIME LEVEL message`. When stderr is systemd's journal stream, the journal
adds the time, and every line starts with its syslog priority as sd-daemon(3) has it (`<3>` error, `<4>` warning,
`<6>` info, `<7>` debug), so `journalctl -p warning` finds the warnings; a traceback's lines carry its record's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, TextIO

JOURNAL_VAR = "JOURNAL_STREAM"
AUDIT_LOGGER = "inspector.audit"  # the review station's audit trail: kept at INFO whatever log.level says
# Python's levels down to the syslog priority each starts (a level between two takes the lower one's).
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


def syslog_priority(levelno: int) -> int:
    """A record level's syslog priority: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, DEBUG (and below) 7."""
    return next((prio for level, prio in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def is_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal's: $JOURNAL_STREAM names its device and inode (systemd.exec(5)). A child
    whose stderr was sent elsewhere inherits the variable, so the variable alone is not enough."""
    dev, _, ino = os.environ.get(JOURNAL_VAR, "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture, a closed stream)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """`<N>LEVEL message`, N the record's syslog priority, on every line of a record (the journal reads lines)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_handler(stream: TextIO | None = None) -> logging.Handler:
    """A handler writing one line per record to `stream` (stderr), in the journal's form where it is the journal."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if is_journal(stream):
        handler.setFormatter(JournalFormatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


@contextlib.contextmanager
def log_to_stderr(level: str) -> Iterator[logging.Handler]:
    """Every `inspector.*` logger's records at `level` and above on stderr while inside; the audit trail at INFO."""
    handler = stderr_handler()
    logger, audit = logging.getLogger("inspector"), logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(level)
    audit.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
