"""Atomic writes: the old content or the new, never a half-written file or a stray temp file; and a rename
that never replaces another file."""

from __future__ import annotations

import ctypes
import errno
import os
import threading

import pytest

from inspector.base import durable
from inspector.base.durable import rename_noreplace, write_atomic


def test_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "report.html"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["report.html"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "labels.csv"
    write_atomic(target, "old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["labels.csv"]


# ---- rename_noreplace: the move that never destroys another process's file --------------------------------
STRATEGIES = ("renameat2", "link", "placeholder")


@pytest.fixture(params=STRATEGIES)
def strategy(request, monkeypatch):
    """Each of rename_noreplace's ways in turn: renameat2 where this kernel and file system have it, a hard link
    (NFS: renameat2's flags refused), an exclusive placeholder (SMB/FAT: no hard links either). The fallbacks
    are reached as on such a file system, by what it answers: EINVAL, then EPERM."""
    if request.param == "renameat2" and durable._renameat2_fn is None:
        pytest.skip("this C library has no renameat2")
    if request.param in ("link", "placeholder"):
        monkeypatch.setattr(durable, "_renameat2_fn", lambda *args: _fail(errno.EINVAL))
    if request.param == "placeholder":
        def no_hard_links(*args, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_hard_links)
    return request.param


def _fail(err: int) -> int:
    ctypes.set_errno(err)
    return -1


def test_rename_noreplace_moves_and_refuses_an_existing_name(tmp_path, strategy):
    src, dst = tmp_path / "scan.tif", tmp_path / "processed.tif"
    src.write_bytes(b"mine")
    inode = src.stat().st_ino
    rename_noreplace(src, dst)
    assert not src.exists() and dst.read_bytes() == b"mine" and dst.stat().st_ino == inode
    other = tmp_path / "other.tif"
    other.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        rename_noreplace(other, dst)
    assert dst.read_bytes() == b"mine" and other.read_bytes() == b"theirs", "nothing replaced, nothing lost"
    assert sorted(os.listdir(tmp_path)) == ["other.tif", "processed.tif"]


def test_rename_noreplace_moves_a_symlinks_own_entry(tmp_path, strategy):
    target = tmp_path / "target.tif"
    target.write_bytes(b"x")
    (tmp_path / "link.tif").symlink_to(target)
    rename_noreplace(tmp_path / "link.tif", tmp_path / "moved.tif")
    assert (tmp_path / "moved.tif").is_symlink() and os.readlink(tmp_path / "moved.tif") == str(target)
    assert target.read_bytes() == b"x"


def test_racing_renames_to_one_name_keep_every_file(tmp_path, strategy):
    """Many threads moving distinct files to the same free name: exactly one takes it, every other is refused
    and keeps its file (os.rename here leaves one file of the eight)."""
    rounds, racers = 40, 8
    for r in range(rounds):
        sources = []
        for i in range(racers):
            sources.append(tmp_path / f"r{r}-s{i}.tif")
            sources[-1].write_bytes(f"{r}-{i}".encode())
        dst = tmp_path / f"dest-{r}.tif"
        barrier = threading.Barrier(racers)
        won: list[int] = []

        def race(i: int) -> None:
            barrier.wait()
            try:
                rename_noreplace(sources[i], dst)
                won.append(i)
            except FileExistsError:
                pass

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert dst.read_bytes() == f"{r}-{won[0]}".encode()
        assert [s.exists() for s in sources] == [i != won[0] for i in range(racers)]
