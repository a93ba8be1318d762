"""Issue 26, case 8: whoever can name files in the capture folder cannot hide a flagged scan from review. A
scan named with a newline or with bytes that are not UTF-8, moved by the daemon's own Mover, is still shown,
downloaded and decided on; no page answers 500 for such a name."""

from __future__ import annotations

import os
import queue
import threading

import pytest
import tifffile

from inspector.imaging.read import file_sha256
from inspector.station.faults import NO_FAULTS
from inspector.station.intake import Claims
from inspector.station.mover import Mover
from inspector.base.paths import display_path
from inspector.station.retry import StoreRetry
from inspector.store.store import open_store
from inspector.data.synth import synth_electrode
from inspector.station.watcher import CaptureFolder, FileStamp, ReadyFile
from inspector.web.app import create_app
from store_rows import record_verdict
from web_station import MODEL, PASSWORDS, build_station

from attack_helpers import TOKEN

HOSTILE = (b"flagged\nsecond line.tif", b"flagged-\xff\xfe-latin1.tif", b"flagged-\xe2\x80\xae-bidi.tif")


@pytest.fixture
def station(tmp_path):
    return build_station(tmp_path / "station", flagged=1, normal=0, scale=0.05)


def scored_and_moved(station, store, raw_name: bytes, seed: int) -> tuple[int, bytes]:
    """A flagged scan under a hostile name, scored and then moved into processed/ by the daemon's Mover."""
    capture = os.fsencode(station.root / "capture")
    path = os.path.join(capture, raw_name)
    tifffile.imwrite(os.fsdecode(path), synth_electrode(seed, scale=0.05, abnormal=True), compression="zlib")
    sha = file_sha256(path)
    st = os.stat(path)
    record_verdict(store, path, sha, st.st_size, st.st_mtime_ns, MODEL, 0.95, "abnormal", None, 0.5, "global",
                   inode=st.st_ino)
    retry = StoreRetry(threading.Event())
    folder = CaptureFolder(os.fsdecode(capture), queue.Queue(), threading.Event())
    mover = Mover(folder, True, store, retry, Claims(store, retry, "hostile-names", 60.0), queue.Queue(), NO_FAULTS)
    moved = mover.move(ReadyFile(os.fsdecode(path), FileStamp.of(st), 0.0), ("processed", "2026-12-01"), sha, path)
    assert moved is not None and not os.path.lexists(path)
    image_id = next(i for i in range(1, 50) if (d := store.image_detail(i)) and d["sha256"] == sha)
    with open(moved, "rb") as fh:
        return image_id, fh.read()


def test_a_hostile_name_does_not_hide_a_moved_scan(station):
    with open_store(station.cfg.database.url, station="line1") as store:
        moved = [scored_and_moved(station, store, name, 500 + i) for i, name in enumerate(HOSTILE)]
        client = create_app(station.cfg, store).test_client()
        page = client.get("/login").data.decode()
        client.post("/login", data={"name": "ann", "password": PASSWORDS["ann"],
                                    "csrf_token": TOKEN.search(page).group(1)})
        for (image_id, content), name in zip(moved, HOSTILE):
            for url in (f"/image/{image_id}/window.png", f"/image/{image_id}/original", f"/verdict/{image_id}",
                        f"/?at={image_id}"):
                answer = client.get(url)
                assert answer.status_code == 200, f"{name!r} {url}: {answer.status_code} {answer.data[:300]!r}"
            assert client.get(f"/image/{image_id}/original").data == content
            assert display_path(name).encode() in client.get(f"/verdict/{image_id}").data.replace(b"&#39;", b"'")


def test_an_error_about_a_non_utf8_name_is_an_answer_not_a_500(station):
    with open_store(station.cfg.database.url, station="line1") as store:
        image_id, _ = scored_and_moved(station, store, HOSTILE[1], 600)
        for path in (station.root / "capture" / "processed" / "2026-12-01").iterdir():
            path.unlink()  # the moved file is gone: the answer says so
        client = create_app(station.cfg, store).test_client()
        page = client.get("/login").data.decode()
        client.post("/login", data={"name": "ann", "password": PASSWORDS["ann"],
                                    "csrf_token": TOKEN.search(page).group(1)})
        for url in (f"/image/{image_id}/window.png", f"/image/{image_id}/original"):
            answer = client.get(url)
            assert answer.status_code == 404, (url, answer.status_code, answer.data[:300])
            assert b"\\xff\\xfe" in answer.data, answer.data
