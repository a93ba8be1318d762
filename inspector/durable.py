"""Durable file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` survive a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_target(path: str | os.PathLike, *, durable: bool = True, mode: int | None = 0o644) -> Iterator[Path]:
    """A temp path beside `path` for the block to write (or link, or copy) as it likes; renamed onto
    `path` when the block ends without an error, removed when it raises.

    `durable` fsyncs the file and the folder; `mode` (None: leave as written) because mkstemp makes
    the file private, and reports and models are shared with the daemon's user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, durable: bool = True, mode: int = 0o644) -> Path:
    """Write to a temp file beside `path`, then rename onto it; `durable` also fsyncs file and folder.

    Caches pass durable=False: a lost entry is recomputed, and fsync per entry would dominate.
    """
    with atomic_target(path, durable=durable, mode=mode) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
