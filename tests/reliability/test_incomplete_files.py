"""Writers as C software writes files, and clocks that disagree (issue 25, cases 2, 3 and 4), against the real
daemon subprocess: a TIFF written the way libtiff writes it (the header with a zero directory offset first,
the image data, the directory last), a file created empty and written later, and a file server whose clock
is behind the station's. Each file must end with exactly one outcome, for its complete content."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon_helpers import write_config
from harness import running, wait_for
from image_files import sample_image16
from inspector.imaging.read import read_image
from soak import scaled
from test_writers import image_bytes, outcomes_of, places, sha

SETTLE = 0.5
RETRY = 4.0  # longer than any pause below: a paused writer is never judged final
PAUSE = 2.5 * SETTLE


def libtiff_layout(img: np.ndarray) -> tuple[bytes, bytes, bytes]:
    """(header, strip, directory) of an uncompressed 16-bit TIFF laid out as libtiff writes it: the strip right
    after the 8-byte header, the image directory after the strip. The header's directory offset is left 0."""
    height, width = img.shape
    strip = img.astype("<u2").tobytes()
    tags = [(256, 4, width), (257, 4, height), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, height), (279, 4, len(strip)), (284, 3, 1)]
    directory = struct.pack("<H", len(tags))
    for code, kind, value in tags:
        directory += struct.pack("<HHI", code, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                           else struct.pack("<I", value))
    return b"II*\0" + struct.pack("<I", 0), strip, directory + struct.pack("<I", 0)


def complete_tiff(img: np.ndarray) -> bytes:
    header, strip, directory = libtiff_layout(img)
    return header[:4] + struct.pack("<I", 8 + len(strip)) + strip + directory


def write_directory_last(path: Path, img: np.ndarray) -> None:
    """libtiff's order in one open file: header (directory offset 0), pause, strip, pause, directory, pause,
    and only then the header's offset patched in."""
    header, strip, directory = libtiff_layout(img)
    with open(path, "wb") as fh:
        for part in (header, strip, directory):
            fh.write(part)
            fh.flush()
            time.sleep(PAUSE)
        fh.seek(4)
        fh.write(struct.pack("<I", 8 + len(strip)))


def write_appending(path: Path, img: np.ndarray) -> None:
    """The same parts appended with a close after each (the header points past the end until the last)."""
    data = complete_tiff(img)
    for start, end in ((0, 8), (8, len(data) // 2), (len(data) // 2, len(data) - 20), (len(data) - 20, len(data))):
        with open(path, "ab") as fh:
            fh.write(data[start:end])
        time.sleep(PAUSE)


def station(tmp_path: Path, model_file: Path, **watch: object) -> Path:
    settings = {"settle_seconds": SETTLE, "incomplete_retry_seconds": RETRY, **watch}
    config = write_config(tmp_path, **settings, model=model_file)
    return config


def assert_one_verdict_each(tmp_path: Path, files: dict[str, bytes], after: str, log: str) -> None:
    capture, db = tmp_path / "capture", tmp_path / "inspector.db"
    for name, data in files.items():
        verdicts, rejections = outcomes_of(db, name)
        assert rejections == [], f"{name} was rejected while being written: {rejections}\n{log}"
        assert [(s, status) for s, status, _ in verdicts] == [(sha(data), "scored")], f"{name}: {verdicts}\n{log}"
        found = places(capture, name)
        assert len(found) == 1 and (found[0].parent.name != "quarantine"), f"{name} is in {found}"
        assert (after == "keep") == (found[0] == capture / name), found
        assert sha(found[0].read_bytes()) == sha(data)


def test_the_libtiff_layout_is_a_tiff_inspector_reads(tmp_path):
    img = sample_image16(90, 70, seed=5)
    path = tmp_path / "scan.tif"
    path.write_bytes(complete_tiff(img))
    np.testing.assert_array_equal(read_image(path), img)


@pytest.mark.slow
@pytest.mark.parametrize("after", ["keep", "move"])
def test_libtiff_style_writers_that_pause_get_one_verdict(tmp_path, model_file, after):
    """Case 2: while the directory is not written, the header's offset is 0 (or points past the end); that read
    `corrupt` ("the TIFF holds no image at all"), final: the scan was quarantined while still being written (move),
    or split into two rejected pieces (appending), or rejected and later scored (keep). It is incomplete."""
    config = station(tmp_path, model_file, after=after)
    capture = tmp_path / "capture"
    files, threads = {}, []
    with running(tmp_path, config) as daemon:
        for i in range(scaled(2, 8)):
            for k, (kind, writer) in enumerate((("directory_last", write_directory_last),
                                                 ("appending", write_appending))):
                img = sample_image16(120, 80, seed=20 + 2 * i + k)
                files[f"{kind}-{i}.tif"] = complete_tiff(img)
                threads.append(threading.Thread(target=writer, args=(capture / f"{kind}-{i}.tif", img)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        db = tmp_path / "inspector.db"
        wait_for(lambda: all(outcomes_of(db, n)[0] for n in files), 60, "a verdict for every written file")
        time.sleep(2 * SETTLE + 1)  # a second outcome would come from a later look at the same file
        log = daemon.log()
    assert_one_verdict_each(tmp_path, files, after, log)
    assert "does not point to an image directory yet" in log and "runs past the end of the file" in log


@pytest.mark.slow
def test_a_file_created_empty_and_written_later_gets_one_verdict(tmp_path, model_file):
    """Case 3: a file created empty (a close event) and written a few seconds later got `not_an_image (0 bytes)`
    as its only outcome and the complete scan went to quarantine. Empty is incomplete until it stays empty for
    watch.incomplete_retry_seconds; only then is it `not_an_image`."""
    config = station(tmp_path, model_file, after="move")
    capture, db = tmp_path / "capture", tmp_path / "inspector.db"
    files = {f"late-{i}.tif": image_bytes(tmp_path, seed=40 + i) for i in range(scaled(2, 10))}
    with running(tmp_path, config) as daemon:
        started = time.monotonic()
        (capture / "abandoned.tif").touch()  # created, never written
        for name in files:
            (capture / name).touch()
        time.sleep(PAUSE)  # longer than settle_seconds: each empty file is read
        for name, data in files.items():
            with open(capture / name, "ab") as fh:
                fh.write(data)
        wait_for(lambda: all(outcomes_of(db, n)[0] for n in files), 30, "a verdict for every written file")
        wait_for(lambda: outcomes_of(db, "abandoned.tif")[1], 30, "the empty file's rejection")
        waited = time.monotonic() - started
        wait_for(lambda: places(capture, "abandoned.tif") == [capture / "quarantine" / "abandoned.tif"], 10,
                 "the move to quarantine")
        log = daemon.log()
    assert_one_verdict_each(tmp_path, files, "move", log)
    assert [r for r, _ in outcomes_of(db, "abandoned.tif")[1]] == ["not_an_image"]
    assert waited >= RETRY, f"the empty file was rejected after {waited:.1f} s, before incomplete_retry_seconds"
    assert "incomplete" in log and "the file is empty (0 bytes)" in log


FAKETIME = shutil.which("faketime")
TEN_MINUTES = 600


def write_behind(path: Path, data: bytes, clock_behind: bool) -> None:
    """A slow writer on a share: chunks with pauses past settle_seconds, the file open throughout; with
    clock_behind, each chunk's mtime set as a file server 10 minutes behind the station would set it."""
    step = len(data) // 3 + 1
    with open(path, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start:start + step])
            fh.flush()
            if clock_behind:
                past = time.time() - TEN_MINUTES
                os.utime(path, (past, past))
            time.sleep(2.5)


@pytest.mark.slow
@pytest.mark.parametrize("clock", ["share_behind", "station_ahead"])
def test_clocks_that_disagree_never_settle_or_finalize_a_growing_file(tmp_path, model_file, clock):
    """Case 4: with the station's clock 10 minutes ahead of the file server's (polling on), a half-written file
    whose mtime looked old was settled at first sight and its cut-short read final at once: quarantined as
    `truncated`. Settling and the retry time now run on the station's monotonic clock. `station_ahead` runs the
    daemon under Debian's faketime +10m; `share_behind` sets the writer's mtimes 10 minutes in the past."""
    if clock == "station_ahead" and FAKETIME is None:
        pytest.skip("faketime is not installed (apt-get install faketime; scripts/install-test-tools.sh)")
    prefix = (FAKETIME, "-f", f"+{TEN_MINUTES // 60}m") if clock == "station_ahead" else ()
    config = station(tmp_path, model_file, after="move", polling=True, settle_seconds=1.0, incomplete_retry_seconds=10.0)
    capture, db = tmp_path / "capture", tmp_path / "inspector.db"
    files = {f"slow-{i}.tif": image_bytes(tmp_path, seed=60 + i, height=400) for i in range(scaled(2, 6))}
    # libfaketime shifts CLOCK_MONOTONIC too unless told not to, and Python's timed waits then never end; the
    # case is the wall clocks disagreeing
    env = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with running(tmp_path, config, prefix=prefix, extra_env=env) as daemon:
        threads = [threading.Thread(target=write_behind, args=(capture / name, data, clock == "share_behind"))
                   for name, data in files.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: all(outcomes_of(db, n)[0] or outcomes_of(db, n)[1] for n in files), 60, "an outcome each")
        time.sleep(2.5)
        log = daemon.log()
    assert_one_verdict_each(tmp_path, files, "move", log)
