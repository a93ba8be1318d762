"""Atomic writes: the old content or the new, never a half-written file or a stray temp file."""

from __future__ import annotations

import os

import pytest

from inspector.durable import write_atomic


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
