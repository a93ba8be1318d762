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

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from inspector.base.config import Config
from inspector.base.errors import InspectorError
from inspector.web.private_file import PrivateFile, Stamp
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


class TokensFile(PrivateFile[ApiToken]):
    """The API tokens of one review station; `load` re-reads the file only when it changed on disk."""

    what, format, key, error = "tokens file", FORMAT, "tokens", TokenError
    add_hint = "the tokens again with `inspector token add`"
    FIELDS = ("sha256", "scope", "created_at", "last_used_at", "revoked_at")

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self._write_failed = False  # the last-use note could not be written: logged once, not at every request

    def changed(self, stamp: Stamp | None) -> None:
        if stamp is not None and stat.S_IMODE(stamp[3]) & 0o022:
            log.warning("tokens file %s is writable by other users (mode %04o): they could add a token; "
                        "`chmod 600 %s`", self.path, stat.S_IMODE(stamp[3]), self.path)

    def parse(self, name: str, entry: object) -> ApiToken:
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not all(
                isinstance(entry.get(f), (str, type(None))) for f in self.FIELDS):
            raise TokenError(f"tokens file {self.path}: token {name!r} is not a valid entry")
        return ApiToken(name, **{f: entry.get(f) for f in self.FIELDS})

    def unparse(self, token: ApiToken) -> dict:
        return {k: v for k, v in vars(token).items() if k != "name"}

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
    def add(self, name: str, scope: str = "read") -> str:
        """A new token named `name`: returned once, stored as its digest."""
        check_name(name)
        if scope not in SCOPES:
            raise TokenError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        token = PREFIX + secrets.token_urlsafe(32)
        with self.changing() as tokens:
            if name in tokens:
                raise TokenError(f"a token named {name} exists already"
                                 + (" (revoked: names are kept for the record)" if tokens[name]["revoked_at"] else "")
                                 + "; choose another name (e.g. mes-2), then `inspector token revoke` the old one")
            tokens[name] = dict(sha256=token_digest(token), scope=scope, created_at=_now(), last_used_at=None,
                                revoked_at=None)
        return token

    def revoke(self, name: str) -> str | None:
        """Refuse the token `name` from now on; returns when it was revoked before, None when it is now."""
        with self.changing() as tokens:
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
            with self.changing() as tokens:
                if entry.name in tokens:
                    tokens[entry.name]["last_used_at"] = now.isoformat(timespec="seconds")
            self._write_failed = False
        except TokenError as exc:
            if not self._write_failed:
                log.warning("could not note the use of API token %s: %s", entry.name, exc)
            self._write_failed = True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
