"""Durable file writes: a reader (or a crash) sees the old file or the new one, never half of one; a rename
that never replaces a file another process put there first; and the free space left to write in."""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def disk_space(path: Path) -> tuple[int, int] | None:
    """(free bytes for an unprivileged user, size in bytes) of the file system holding `path` (or, before it is
    made, its nearest existing folder); None when none can be read."""
    for folder in (path, *path.absolute().parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return None


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


# ---- a rename that never replaces ----------------------------------------------------------------
_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100
# renameat2's flags are refused by file systems that lack them (NFS, SMB, FUSE: EINVAL), by old kernels
# (ENOSYS) and by seccomp filters (EPERM): each then falls back to a hard link, which is atomic there too.
_NO_RENAMEAT2 = {errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}
# a hard link refused by the file system itself (SMB without unix extensions, FAT, some FUSE mounts)
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 or musl >= 1.2.4; not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2_fn = _renameat2()


def rename_noreplace(src: str | bytes | os.PathLike, dst: str | bytes | os.PathLike) -> None:
    """Rename `src` (a file or a symlink's own entry) to `dst`, atomically refusing to replace anything.

    Raises FileExistsError when `dst` exists, whoever made it and however late: two processes that
    pick the same free name never destroy each other's file (os.rename would). Tries, in order:
    renameat2(RENAME_NOREPLACE) (ext4, xfs, btrfs, tmpfs); a hard link then the source unlinked (NFS,
    where link is atomic at the server); an exclusively created placeholder then renamed over (file
    systems without hard links). Each step refuses an existing `dst` by the file system's own atomic
    check, never by a look first.
    """
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    if _renameat2_fn is not None:
        if _renameat2_fn(_AT_FDCWD, src_b, _AT_FDCWD, dst_b, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in _NO_RENAMEAT2:
            raise OSError(err, os.strerror(err), os.fsdecode(src_b), None, os.fsdecode(dst_b))
    try:
        os.link(src_b, dst_b, follow_symlinks=False)
    except FileExistsError:
        # NFS: a retransmitted LINK whose first try succeeded answers EEXIST; then dst is src's own inode
        if not same_entry(src_b, dst_b):
            raise
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        _rename_over_placeholder(src_b, dst_b)
        return
    try:
        os.unlink(src_b)
    except FileNotFoundError:
        pass  # an NFS retransmission again: the unlink was done
    except OSError:
        os.unlink(dst_b)  # the source cannot go: undo the link, so the file is in one place
        raise


def same_entry(a: str | bytes, b: str | bytes) -> bool:
    """Both names are one directory entry's inode (hard links, or the same name); False if either is gone."""
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def _rename_over_placeholder(src: bytes, dst: bytes) -> None:
    """dst created exclusively (O_EXCL: atomic on SMB and NFSv3+), then src renamed over our own placeholder."""
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        os.rename(src, dst)
    except OSError:
        os.unlink(dst)
        raise
