"""after = "move": files with a committed outcome go to processed/DATE/ or quarantine/ inside the capture
folder, only while they are the version judged, never replacing a file (an atomic no-replace rename: two
daemons moving same-named files never destroy one), never through a symlink."""

from __future__ import annotations

import logging
import os
import queue
import stat
import time
from datetime import date
from typing import TYPE_CHECKING

from inspector.base.durable import rename_noreplace, same_entry
from inspector.station.faults import Faults
from inspector.station.intake import Claims
from inspector.station.retry import StoreRetry
from inspector.station.watcher import CaptureFolder, FileStamp, OutsideCapture, ReadyFile, probe, real_dir_inside

if TYPE_CHECKING:
    from inspector.store.store import Store

log = logging.getLogger("inspector.daemon")

MAX_TAKEN = 100  # destination names lost to other movers in a row before a move is given up (it is retried later)


class Mover:
    """Moves for the daemon's worker; `degraded` says which destination folders are refused and why.

    Store writes wait out an outage with the daemon's `retry`; `leftovers` are files with a committed
    outcome still in the capture folder (a move a crash interrupted), found by the daemon's scanner.
    """

    def __init__(self, folder: CaptureFolder, enabled: bool, store: Store, retry: StoreRetry, claims: Claims,
                 leftovers: queue.Queue[tuple[str, FileStamp]], faults: Faults):
        self.folder = folder
        self.root = folder.root
        self.enabled = enabled
        self.store = store
        self.retry = retry
        self.claims = claims
        self.leftovers = leftovers
        self.faults = faults
        self.degraded: dict[str, str] = {}  # folder -> why moves there are refused (not a real folder inside)

    def finish_interrupted(self) -> None:
        """Complete moves that a crash cut short (outcome committed, file not yet moved)."""
        while True:
            try:
                path, stamp = self.leftovers.get_nowait()
            except queue.Empty:
                return
            found = probe(path, self.root)
            if found is None or found[0] != stamp:
                continue  # already moved, or a new version under the old name (judged as new)
            raw = os.fsencode(path)
            outcome = self.retry.call(self.store.file_outcome, raw, stamp.size, stamp.mtime_ns, stamp.inode)
            if outcome is None:
                continue
            item = ReadyFile(path, stamp, time.monotonic(), problem=found[1])
            if self.claims.take(item) is not None:
                continue  # another daemon on this folder is moving it
            log.info("finishing an interrupted move of %s", self.folder.shown(path))
            try:
                if outcome["kind"] == "rejection":
                    self.move(item, ("quarantine",), outcome["sha256"], None)
                else:
                    self.move(item, ("processed", date.today().isoformat()), outcome["sha256"], raw,
                              recorded=outcome["moved_to"])
            finally:
                self.claims.release([item])

    def move(self, item: ReadyFile, parts: tuple[str, ...], sha256: str | None, image_raw: bytes | None,
             recorded: str | None = None) -> str | None:
        """after = "move": rename into processed/DATE or quarantine, never replacing anything.

        Only the version that was judged is moved, and the moved file is checked to be it. For a
        scored image (`image_raw`) the destination is committed before the rename, so the database
        always says where the file is or is about to be. The destination name is taken by the file
        system's own atomic no-replace rename: another daemon (or anything else) that took the same
        name first makes this one try the next free name, never destroys its file. `recorded` is
        where an earlier, interrupted move said the file was going.
        """
        if not self.enabled:
            return None
        path, shown = item.path, self.folder.shown(item.path)
        version = (item.stamp.mtime_ns, item.stamp.inode)
        try:
            folder = real_dir_inside(self.root, *parts)
        except OSError as exc:
            log.error("cannot move %s to %s (%s); it stays in place", shown, parts[0], exc.strerror or exc)
            if isinstance(exc, OutsideCapture):
                self.degraded[parts[0]] = f"{parts[0]}/ is not a real folder inside the capture folder, files stay in place"
            return None
        self.degraded.pop(parts[0], None)
        if not self.folder.unchanged(item):
            if os.path.lexists(path):
                log.warning("%s changed after it was read; it stays in place and is judged again", shown)
            return None
        if recorded and same_entry(recorded, path):  # a hard-link move (NFS) cut short before its unlink
            os.unlink(path)
            log.info("moved %s -> %s (finished)", shown, self.folder.shown(recorded))
            return recorded
        taken = 0  # names another process took between our look and our rename
        while True:
            dest = unique_destination(folder, os.path.basename(path))
            if image_raw is not None:
                self.retry.call(self.store.record_moved, image_raw, sha256, dest, *version)  # its exact bytes
            try:
                rename_noreplace(path, dest)
                self.faults.point("mid_move")  # renamed: the instant right after the most exposed step of a move
                break
            except FileExistsError:
                taken += 1
                if taken < MAX_TAKEN:
                    continue  # taken meanwhile (another daemon moving a same-named file): the next free name
                log.error("cannot move %s to %s: %d free names were taken before it could be renamed; "
                          "it stays in place", shown, parts[0], taken)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
                    log.info("%s is gone before it could be moved (deleted, or moved by another inspector)", shown)
                else:
                    log.error("cannot move %s to %s (%s); it stays in place", shown, parts[0], exc.strerror)
            if image_raw is not None:
                self.retry.call(self.store.record_moved, image_raw, sha256, None, *version)
            return None
        if not _is_version(dest, item.stamp, sha256):
            log.error("%s changed while it was being moved: it is not the content its outcome was recorded for; "
                      "putting it back to be judged again", shown)
            try:
                rename_noreplace(dest, path)
            except OSError as exc:  # a new file under the old name meanwhile: both kept, this one where it is
                log.error("cannot put %s back (%s); it stays at %s", shown, exc.strerror, self.folder.shown(dest))
            if image_raw is not None:
                self.retry.call(self.store.record_moved, image_raw, sha256, None, *version)
            return None
        log.info("moved %s -> %s", shown, self.folder.shown(dest))
        return dest


def _is_version(path: str, stamp: FileStamp, sha256: str | None) -> bool:
    """The file at path is the version with this stamp (a rename changes only its ctime) and content.

    A symlink's entry is what was moved (its target never is): it is not compared.
    """
    from inspector.imaging.read import file_sha256

    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return True
    if (st.st_size, st.st_mtime_ns, st.st_ino) != (stamp.size, stamp.mtime_ns, stamp.inode):
        return False
    if sha256 is None or not stat.S_ISREG(st.st_mode):
        return True
    try:
        return file_sha256(path) == sha256
    except Exception:  # unreadable now: not what was recorded
        return False


def unique_destination(folder: str, name: str) -> str:
    """folder/name, or folder/stem-N.ext for the first N free now; the name stays within 255 bytes.

    Free now, not reserved: only rename_noreplace takes it (another process may take it first).
    """
    stem, ext = os.path.splitext(name)
    candidate, n = name, 0
    while os.path.lexists(os.path.join(folder, candidate)):
        n += 1
        suffix = os.fsencode(f"-{n}{ext}")
        stem_raw = os.fsencode(stem)[: 255 - len(suffix)]
        candidate = os.fsdecode(stem_raw + suffix)
    return os.path.join(folder, candidate)
