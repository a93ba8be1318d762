"""The review station's API tokens (for the MES and other programs): a JSON file of names and token digests.

A token is `insp_` and 32 random bytes (secrets.token_urlsafe), shown once by `inspector token add`; the file keeps
only its SHA-256. A fast hash is enough here, unlike for passwords: argon2 slows down guessing a secret a person
chose, while 256 random bits cannot be guessed at any speed, and a hash per request must cost microseconds, not
the tenth of a second a password hash costs (which would let anyone load the server with bad tokens). The file
sits beside the users file and is written like it (`inspector token ...`, atomically, mode 0600, under a lock
file); the web server re-reads it when it changes, so a revoked token is refused from the next request on, and
notes each token's last use (at most once a minute per token).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from inspector.base.config import Config
from inspector.base.durable import write_atomic
from inspector.base.errors import InspectorError
from inspector.web.users import USER_NAME

FORMAT = "inspector-api-tokens"
PREFIX = "insp_"  # says what a token found in a script or a log is, and lets secret scanners find it
SCOPES = ("read",)  # every token reads; nothing in the API writes
LAST_USED_EVERY = timedelta(seconds=60)
log = logging.getLogger("inspector.web")


class TokenError(InspectorError):
    """A tokens-file change that cannot be made as asked, or a tokens file that cannot be read."""


@dataclass(frozen=True)
class ApiToken:
    name: str
    sha256: str  # of the whole token text
    scope: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None

    def to_json(self) -> dict:
        """What `inspector token list --format json` shows (never the digest)."""
        return {"name": self.name, "scope": self.scope, "created_at": self.created_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at}


def tokens_path(cfg: Config) -> Path:
    """api-tokens.json in the users file's folder (state.dir unless web.users_file says otherwise)."""
    return cfg.users_path.with_name("api-tokens.json")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise TokenError(f"{name!r} is not a token name: 1 to 64 letters, digits or . _ @ - \\ (no spaces), e.g. "
                         "the program that uses it (mes)")
    return name


class TokensFile:
    """The API tokens of one review station; `load` re-reads the file only when it changed on disk."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int, int] | None, dict[str, ApiToken]] = (None, {})
        self._write_failed = False  # the last-use note could not be written: logged once, not at every request

    # ---- reading --------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenError(f"tokens file {self.path} cannot be examined ({exc.strerror})") from exc
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode

    def load(self) -> dict[str, ApiToken]:
        """The tokens by name; re-read when the file changed (a missing file: no tokens)."""
        stamp = self._stamp()
        with self._lock:
            if stamp == self._cached[0] and stamp is not None:
                return self._cached[1]
            if stamp is not None and stat.S_IMODE(stamp[3]) & 0o022:
                log.warning("tokens file %s is writable by other users (mode %04o): they could add a token; "
                            "`chmod 600 %s`", self.path, stat.S_IMODE(stamp[3]), self.path)
            tokens = self._read() if stamp is not None else {}
            self._cached = (stamp, tokens)
            return tokens

    def _read(self) -> dict[str, ApiToken]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TokenError(f"tokens file {self.path} cannot be read ({exc.strerror}): the web server's user "
                             "needs read access to it") from exc
        except ValueError as exc:
            raise TokenError(f"tokens file {self.path} is not valid JSON ({exc}); restore it, or remove it and add "
                             "the tokens again with `inspector token add`") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tokens"), dict):
            raise TokenError(f"tokens file {self.path} is not an inspector API tokens file")
        tokens = {}
        for name, entry in data["tokens"].items():
            fields = ("sha256", "scope", "created_at", "last_used_at", "revoked_at")
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not all(
                    isinstance(entry.get(f), (str, type(None))) for f in fields):
                raise TokenError(f"tokens file {self.path}: token {name!r} is not a valid entry")
            tokens[name] = ApiToken(name, **{f: entry.get(f) for f in fields})
        return tokens

    def find(self, token: str) -> ApiToken | None:
        """The entry whose digest is the token's (revoked ones too: the caller says why it refuses), else None.
        Every entry is compared, each in constant time, so the time taken tells nothing about the digests."""
        digest = token_digest(token)
        found = None
        for entry in self.load().values():
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    # ---- changes (`inspector token ...`, and the server's last-use notes) -----------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict]:
        """Read-modify-write under an exclusive lock file beside the tokens file; written atomically, mode 0600."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as exc:
            raise TokenError(f"cannot write beside tokens file {self.path} ({exc.strerror})") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read() if self.path.exists() else {}
            tokens = {name: {k: v for k, v in vars(t).items() if k != "name"} for name, t in current.items()}
            yield tokens
            text = json.dumps({"format": FORMAT, "tokens": tokens}, indent=1, sort_keys=True)
            try:
                write_atomic(self.path, text + "\n", mode=0o600)
            except OSError as exc:
                raise TokenError(f"cannot write tokens file {self.path} ({exc.strerror})") from exc

    def add(self, name: str, scope: str = "read") -> str:
        """A new token named `name`: returned once, stored as its digest."""
        check_name(name)
        if scope not in SCOPES:
            raise TokenError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._changing() as tokens:
            if name in tokens:
                raise TokenError(f"a token named {name} exists already"
                                 + (" (revoked: names are kept for the record)" if tokens[name]["revoked_at"] else "")
                                 + "; choose another name (e.g. mes-2), then `inspector token revoke` the old one")
            tokens[name] = dict(sha256=token_digest(token), scope=scope, created_at=_now(), last_used_at=None,
                                revoked_at=None)
        return token

    def revoke(self, name: str) -> str | None:
        """Refuse the token `name` from now on; returns when it was revoked before, None when it is now."""
        with self._changing() as tokens:
            if name not in tokens:
                raise TokenError(f"no token {name} in {self.path}; `inspector token list` shows them")
            earlier = tokens[name]["revoked_at"]
            if earlier is None:
                tokens[name]["revoked_at"] = _now()
            return earlier

    def note_use(self, entry: ApiToken) -> None:
        """Record that `entry` was just used, at most every LAST_USED_EVERY; a file that cannot be written is
        logged (once) and does not refuse the request."""
        now = datetime.now(timezone.utc)
        try:
            if entry.last_used_at and now - datetime.fromisoformat(entry.last_used_at) < LAST_USED_EVERY:
                return
        except (ValueError, TypeError):  # not a time with a zone (edited by hand): written anew
            pass
        try:
            with self._changing() as tokens:
                if entry.name in tokens:
                    tokens[entry.name]["last_used_at"] = now.isoformat(timespec="seconds")
            self._write_failed = False
        except TokenError as exc:
            if not self._write_failed:
                log.warning("could not note the use of API token %s: %s", entry.name, exc)
            self._write_failed = True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
