"""A file of named entries that only the station's own user reads and writes: the review station's users and its
API tokens. JSON `{"format": FORMAT, KEY: {name: {...}}}`; `load` re-reads it only when it changed on disk (its
stamp, mode included); a change is a read-modify-write under an exclusive lock file beside it, written atomically
with mode 0600, so two admins cannot lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import ClassVar, Generic, Iterator, TypeVar

from inspector.base.durable import write_atomic
from inspector.base.errors import InspectorError

Entry = TypeVar("Entry")
Stamp = tuple[int, int, int, int]  # inode, size, mtime_ns, mode


class PrivateFile(Generic[Entry]):
    """Subclasses name the file (`what`, `format`, `key`, `error`, `add_hint`) and turn one stored entry into
    their record (`parse`, raising `error` for an invalid one) and back (`unparse`)."""

    what: ClassVar[str]  # "users file"
    format: ClassVar[str]
    key: ClassVar[str]  # the JSON member holding the entries
    error: ClassVar[type[InspectorError]]
    add_hint: ClassVar[str]  # how to write the entries again: "the users again with `inspector user add`"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cached: tuple[Stamp | None, dict[str, Entry]] = (None, {})
        self._loaded = False

    def parse(self, name: str, entry: object) -> Entry:
        raise NotImplementedError

    def unparse(self, entry: Entry) -> dict:
        raise NotImplementedError

    def changed(self, stamp: Stamp | None) -> None:
        """Called once per change of the file seen by `load` (None: the file is missing), before it is read."""

    # ---- reading --------------------------------------------------------------------------
    def _stamp(self) -> Stamp | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.error(f"{self.what} {self.path} cannot be examined ({exc.strerror})") from exc
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode

    def load(self) -> dict[str, Entry]:
        """The entries by name; re-read when the file changed (a missing file: none)."""
        stamp = self._stamp()
        with self._lock:
            if self._loaded and stamp == self._cached[0]:
                return self._cached[1]
            self._loaded = True
            self.changed(stamp)
            entries = self._read() if stamp is not None else {}
            self._cached = (stamp, entries)
            return entries

    def _read(self) -> dict[str, Entry]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise self.error(f"{self.what} {self.path} cannot be read ({exc.strerror}): the web server's user "
                             "needs read access to it") from exc
        except ValueError as exc:
            raise self.error(f"{self.what} {self.path} is not valid JSON ({exc}); restore it, or remove it and add "
                             f"{self.add_hint}") from exc
        if not isinstance(data, dict) or data.get("format") != self.format or not isinstance(data.get(self.key), dict):
            raise self.error(f"{self.what} {self.path} is not an inspector {self.what}")
        return {name: self.parse(name, entry) for name, entry in data[self.key].items()}

    # ---- changes ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def changing(self) -> Iterator[dict[str, dict]]:
        """The stored entries as dicts to change in place; written back when the block ends without an error."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as exc:
            raise self.error(f"cannot write beside {self.what} {self.path} ({exc.strerror})") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read() if self.path.exists() else {}
            entries = {name: self.unparse(entry) for name, entry in current.items()}
            yield entries
            text = json.dumps({"format": self.format, self.key: entries}, indent=1, sort_keys=True)
            try:
                write_atomic(self.path, text + "\n", mode=0o600)
            except OSError as exc:
                raise self.error(f"cannot write {self.what} {self.path} ({exc.strerror})") from exc
