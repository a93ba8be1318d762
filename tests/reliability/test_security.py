"""Security: model files are never unpickled, FIFOs and devices are never opened, symlinks never lead
out of the capture folder; with the daemon, it writes only under its configured folders."""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
import threading
import time
from pathlib import Path

import pytest

from image_files import sample_image16, write_tiff16
from inspector.base.errors import ImageError, ModelError
from inspector.imaging.read import file_sha256, read_image
from inspector.station.watcher import Tracker, iter_capture_files, stat_candidate

PATTERNS = ("*.tif", "*.tiff", "*.png", "*.dcm")


class MarkerPayload:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def bounded_call(fn, *args, timeout: float = 5.0):
    """Run fn on a thread; fail if it has not returned within timeout (it would block on a FIFO)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn.__name__} blocked for more than {timeout} s"
    return result, time.monotonic() - start


# ---- model files: safetensors only, never a pickle ------------------------------------------------

@pytest.fixture(scope="module")
def model_bytes(model_file) -> bytes:
    """The bytes of a real tiny-input untrained model artifact (conftest's model_file)."""
    return model_file.read_bytes()


def load_every_way(path: Path) -> list[ModelError]:
    """load_model, read_meta and Detector.load must each refuse the file with a ModelError."""
    from inspector.learn.infer import Detector
    from inspector.imaging.modelmeta import read_meta
    from inspector.learn.model import load_model

    errors = []
    for fn in (lambda: load_model(path, "cpu"), lambda: read_meta(path), lambda: Detector.load(path, "cpu")):
        with pytest.raises(ModelError) as info:
            fn()
        errors.append(info.value)
    return errors


def test_pickle_payload_is_live_when_unpickled(tmp_path):
    """Control: the payload really runs code when something unpickles it."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps({"fc.weight": MarkerPayload(marker)}))
    assert marker.is_dir()


def test_pickle_renamed_safetensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "detector.safetensors"
    path.write_bytes(pickle.dumps({"fc.weight": MarkerPayload(marker)}, protocol=2))
    errors = load_every_way(path)
    assert not marker.exists(), "code from a model file was executed"
    assert all(str(path) in str(e) for e in errors)
    assert "damaged or was modified" in str(errors[0])


def test_torch_save_checkpoint_renamed_safetensors_is_refused_without_running_it(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "detector.safetensors"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2)}, "hook": MarkerPayload(marker)}, path)
    load_every_way(path)
    assert not marker.exists(), "code from a model file was executed"


def _with_header(model: bytes, edit) -> bytes:
    """Rewrite the JSON header of a real artifact through `edit(header_dict)`, keeping the tensor bytes."""
    (n,) = struct.unpack("<Q", model[:8])
    header = json.loads(model[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + model[8 + n:]


def _first_tensor(header: dict) -> dict:
    return header[next(k for k in sorted(header) if k != "__metadata__")]


@pytest.mark.parametrize("craft", [
    pytest.param(lambda m: struct.pack("<Q", 2**62) + m[8:], id="header-length-beyond-file"),
    pytest.param(lambda m: struct.pack("<Q", 5) + b"{bad}" + m[13:], id="header-not-json"),
    pytest.param(lambda m: _with_header(m, lambda h: h["__metadata__"].update(
        inspector=json.dumps({"py/object": "os.system", "method": "global"}))), id="metadata-object-hook"),
    pytest.param(lambda m: _with_header(m, lambda h: h.pop("__metadata__")), id="no-inspector-metadata"),
])
def test_crafted_safetensors_headers_are_refused(tmp_path, model_bytes, craft):
    path = tmp_path / "detector.safetensors"
    path.write_bytes(craft(model_bytes))
    load_every_way(path)


@pytest.mark.parametrize("craft", [
    pytest.param(lambda m: m[: len(m) // 2], id="truncated"),
    pytest.param(lambda m: _with_header(m, lambda h: _first_tensor(h).update(data_offsets=[0, 2**40])),
                 id="offsets-past-the-end"),
    pytest.param(lambda m: _with_header(m, lambda h: _first_tensor(h).update(shape=[10**6, 10**6])),
                 id="shape-lies-about-size"),
    pytest.param(lambda m: _with_header(m, lambda h: _first_tensor(h).update(dtype="O")), id="object-dtype"),
])
def test_crafted_safetensors_tensors_are_refused(tmp_path, model_bytes, craft):
    """The header parses (read_meta may show it), but no loader builds a net from these tensors."""
    from inspector.learn.infer import Detector
    from inspector.learn.model import load_model

    path = tmp_path / "detector.safetensors"
    path.write_bytes(craft(model_bytes))
    for fn in (lambda: load_model(path, "cpu"), lambda: Detector.load(path, "cpu")):
        with pytest.raises(ModelError, match="damaged or was modified"):
            fn()


def test_tampered_weights_fail_the_checksum(tmp_path, model_bytes):
    from inspector.learn.model import load_model

    data = bytearray(model_bytes)
    data[-100] ^= 0x01  # one bit of one weight
    path = tmp_path / "detector.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(path, "cpu")
    (tmp_path / "good.safetensors").write_bytes(model_bytes)
    assert load_model(tmp_path / "good.safetensors", "cpu").meta.input_size == (64, 32)  # control


# ---- FIFOs and devices are never opened ---------------------------------------------------------

def test_fifo_is_rejected_without_being_opened(tmp_path):
    fifo = tmp_path / "scan.tif"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:  # open(O_WRONLY) blocks until someone opens the FIFO for reading
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    for fn in (read_image, file_sha256):
        result, seconds = bounded_call(fn, fifo)
        assert isinstance(result.get("error"), ImageError), result
        assert result["error"].reason in ("not_an_image", "unreadable")
        assert "FIFO" in str(result["error"])
        assert seconds < 2.0
    assert not opened.is_set(), "read_image opened the FIFO for reading"
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # release the writer: the control that it was waiting
    assert opened.wait(5)
    os.close(fd)
    thread.join(5)


def test_device_is_rejected_without_being_read(tmp_path):
    result, seconds = bounded_call(read_image, "/dev/zero")
    assert isinstance(result.get("error"), ImageError)
    assert "a device" in str(result["error"]) and seconds < 2.0


def test_fifo_in_capture_folder_is_no_candidate(tmp_path):
    root = tmp_path / "capture"
    root.mkdir()
    os.mkfifo(root / "scan.tif")
    result, _ = bounded_call(stat_candidate, str(root / "scan.tif"), str(root))
    assert result["value"] == (None, "not a regular file")


# ---- symlinks never lead out of the capture folder ----------------------------------------------

@pytest.fixture
def capture_with_links(tmp_path) -> tuple[str, Path]:
    """capture/ with a real image, links inside, links out (absolute, relative, chained, to a folder)."""
    root = tmp_path / "capture"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    write_tiff16(outside / "outside.tif", sample_image16(seed=1))
    (outside / "nested").mkdir()
    write_tiff16(outside / "nested" / "deep.tif", sample_image16(seed=2))
    write_tiff16(root / "real.tif", sample_image16(seed=3))
    os.symlink(root / "real.tif", root / "inside-link.tif")
    os.symlink(outside / "outside.tif", root / "abs-out.tif")
    os.symlink("../secret/outside.tif", root / "rel-out.tif")
    os.symlink(root / "abs-out.tif", root / "sub" / "chain-out.tif")  # inside link -> link out
    os.symlink(outside / "nested", root / "linked-folder")
    os.symlink(outside / "nested", root / "folder.tif")  # a folder link with an image name
    os.symlink(tmp_path / "missing.tif", root / "dangling.tif")
    return os.path.realpath(root), outside


def test_links_out_of_the_capture_folder_are_not_followed(capture_with_links):
    root, outside = capture_with_links
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outside.rglob("*.tif")}
    found = sorted(os.path.relpath(p, root) for p in iter_capture_files(root, PATTERNS))
    assert "linked-folder/deep.tif" not in found  # folder links are never descended
    verdicts = {name: stat_candidate(os.path.join(root, name), root) for name in found}
    accepted = sorted(name for name, (st, _) in verdicts.items() if st is not None)
    assert accepted == ["inside-link.tif", "real.tif"]
    for name in ("abs-out.tif", "rel-out.tif", "sub/chain-out.tif", "folder.tif"):
        assert verdicts[name] == (None, "symlink pointing outside the capture folder"), name
    assert verdicts["dangling.tif"][0] is None
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outside.rglob("*.tif")} == before


def test_tracker_hands_a_link_out_on_only_as_a_problem_never_as_a_file_to_read(capture_with_links):
    """Links out, dangling links and folder links are handed on with their problem named (the worker records
    them `unreadable` without opening them); only the real file and the link inside are files to read."""
    root, _ = capture_with_links
    tracker = Tracker(root, PATTERNS, settle_seconds=0.0, capacity=16)
    for path in iter_capture_files(root, PATTERNS):
        assert tracker.note(path, closed=True, now=0.0)
    ready = {os.path.relpath(r.path, root): r.problem for r in tracker.settle(now=10.0)}
    assert sorted(name for name, problem in ready.items() if not problem) == ["inside-link.tif", "real.tif"]
    assert ready == {"inside-link.tif": "", "real.tif": "", "abs-out.tif": "symlink pointing outside the capture folder",
                     "rel-out.tif": "symlink pointing outside the capture folder",
                     "sub/chain-out.tif": "symlink pointing outside the capture folder",
                     "folder.tif": "symlink pointing outside the capture folder", "dangling.tif": "dangling symlink"}


# ---- the daemon itself: where it writes, what it opens --------------------------------------------

def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def beside(tmp_path: Path) -> set[str]:
    """Everything in tmp_path's parent (the other tests' folders) except tmp_path itself."""
    return {p for p in snapshot(tmp_path.parent) if p.split(os.sep)[0] != tmp_path.name}


@pytest.mark.slow
def test_daemon_writes_only_under_its_folders_and_never_follows_links_or_opens_fifos(tmp_path, model_bytes):
    from daemon_helpers import db_count, db_rows
    from harness import DaemonProcess, wait_for
    from image_files import make_bad_file

    station, run = tmp_path / "station", tmp_path / "run"
    capture, state, db = station / "capture", station / "var", station / "inspector.db"
    for folder in (capture, run, station / "models"):
        folder.mkdir(parents=True)
    (station / "models" / "detector.safetensors").write_bytes(model_bytes)
    config = station / "config.toml"
    config.write_text(f'[watch]\ncapture_dir = "{capture}"\nsettle_seconds = 0.2\nafter = "move"\n'
                      'incomplete_retry_seconds = 1.0\n'
                      f'[model]\npath = "{station}/models/detector.safetensors"\ndevice = "cpu"\n'
                      f'[database]\nurl = "sqlite:///{db}"\n[state]\ndir = "{state}"\n')
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_tiff16(outside / "secret.tif", sample_image16(seed=11))
    secret_before = (secret.stat().st_mtime_ns, secret.read_bytes())
    os.symlink(secret, capture / "abs-link.tif")
    os.symlink("../../outside/secret.tif", capture / "rel-link.tif")
    os.mkfifo(capture / "pipe.tif")
    try:
        os.mknod(capture / "zero.tif", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pass  # no CAP_MKNOD here: the FIFO stands for every special file
    opened = threading.Event()

    def fifo_writer() -> None:  # returns from open() only if someone opens the FIFO for reading
        fd = os.open(capture / "pipe.tif", os.O_WRONLY)
        opened.set()
        os.close(fd)

    writer = threading.Thread(target=fifo_writer, daemon=True)
    writer.start()
    parent_before, tree_before = beside(tmp_path), snapshot(tmp_path)
    daemon = DaemonProcess(run, config)
    try:
        daemon.wait_ready()
        os.symlink(secret, capture / "late-link.tif")  # through an inotify event, not the start-up scan
        write_tiff16(capture / "after.tif", sample_image16(seed=12))  # dropped after the FIFO: still scored
        make_bad_file(capture / "bad.tif", "truncated_strip")
        specials = {"abs-link.tif", "rel-link.tif", "late-link.tif", "pipe.tif"} | (
            {"zero.tif"} if os.path.lexists(capture / "zero.tif") else set())
        wait_for(lambda: db_count(db, "SELECT COUNT(*) FROM images") == 1
                 and db_count(db, "SELECT COUNT(*) FROM rejections") == 1 + len(specials), 60,
                 "after.tif, bad.tif, and an unreadable record for each link out and special file")
        wait_for(lambda: all(os.path.lexists(capture / "quarantine" / n) for n in specials | {"bad.tif"}), 10,
                 "bad.tif and the special entries quarantined")
        assert daemon.proc.poll() is None
        log = daemon.log()
    finally:
        daemon.close()
    assert not opened.is_set(), "the daemon opened the FIFO"
    fd = os.open(capture / "quarantine" / "pipe.tif", os.O_RDONLY | os.O_NONBLOCK)  # release the writer thread
    assert opened.wait(5)
    os.close(fd)
    writer.join(5)

    assert "symlink pointing outside the capture folder" in log
    for link in ("abs-link.tif", "rel-link.tif", "late-link.tif"):  # the link itself moved, never its target
        assert (capture / "quarantine" / link).is_symlink(), f"{link} was followed"
    assert stat.S_ISFIFO(os.lstat(capture / "quarantine" / "pipe.tif").st_mode)
    assert (secret.stat().st_mtime_ns, secret.read_bytes()) == secret_before
    assert snapshot(outside) == {"secret.tif"}
    assert {os.path.basename(p) for (p,) in db_rows(db, "SELECT path FROM images")} == {"after.tif"}
    rejected = {os.path.basename(p): r for p, r in db_rows(db, "SELECT path, reason FROM rejections")}
    assert rejected == {"bad.tif": "truncated", **{n: "unreadable" for n in specials}}

    # Everything new lies under capture/, state.dir or beside the database; nothing in the daemon's cwd
    # but the test's own log and notify socket; nothing beside tmp_path.
    new = snapshot(tmp_path) - tree_before
    allowed = ("station/capture/", "station/var", "station/inspector.db", "run/daemon-", "run/notify-")
    assert "station/inspector.db" in new and "station/capture/processed" in new
    assert new and all(p.startswith(allowed) for p in new), sorted(p for p in new if not p.startswith(allowed))
    assert beside(tmp_path) == parent_before, "wrote beside its tmp_path"
