"""The review station's users: a JSON file of names, roles and argon2id password hashes.

Written only by `inspector user ...` (private_file.PrivateFile: atomically, mode 0600, under a lock file); read by
the web server, which sees a change at its next request (the file's stamp). A user
without a password can only come in through the plant's reverse proxy (web.remote_user_header).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import logging
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone

from inspector.base.errors import InspectorError
from inspector.web.private_file import PrivateFile, Stamp

ROLES = ("viewer", "reviewer")  # viewer: reads everything; reviewer: also records reviews
MIN_PASSWORD = 8
USER_NAME = re.compile(r"[\w.@\\-]{1,64}")
FORMAT = "inspector-users"
log = logging.getLogger("inspector.web")


class UserError(InspectorError):
    """A users-file change that cannot be made as asked, or a users file that cannot be read."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str | None  # None: only through the reverse proxy's header
    created_at: str
    changed_at: str
    generation: int = 0  # counts the changes that end sessions: password, role, logout

    @property
    def can_review(self) -> bool:
        return self.role == "reviewer"

    @property
    def stamp(self) -> str:
        """Changes with every password, role or logout (the generation only grows) and with a user removed and
        added again: a session made before such a change is no longer valid, even when the role is changed back."""
        text = f"{self.role}\0{self.password_hash}\0{self.generation}\0{self.created_at}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a user name: 1 to 64 letters, digits or . _ @ - \\ (no spaces); it is "
                        "recorded as the reviewer of each decision")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if password != password.strip() or any(not c.isprintable() for c in password):
        raise UserError("the password has leading or trailing spaces or a character that does not print; "
                        "choose another")
    return password


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current defaults (RFC 9106 low-memory profile)


class UsersFile(PrivateFile[User]):
    """The users of one review station; `load` re-reads the file only when it changed on disk."""

    what, format, key, error = "users file", FORMAT, "users", UserError
    add_hint = "the users again with `inspector user add`"

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self._dummy_hash: str | None = None

    def changed(self, stamp: Stamp | None) -> None:
        """A file gone or opened to others is logged (once per change, not at every request)."""
        if stamp is None:
            log.warning("users file %s does not exist: no one can log in until `inspector user add` "
                        "writes it again", self.path)
        elif stat.S_IMODE(stamp[3]) & 0o077:
            log.warning("users file %s is readable or writable by other users (mode %04o): its password hashes "
                        "can be copied or its roles changed; `chmod 600 %s`", self.path, stat.S_IMODE(stamp[3]),
                        self.path)

    def parse(self, name: str, entry: object) -> User:
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise UserError(f"users file {self.path}: user {name!r} has no valid role")
        generation = entry.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise UserError(f"users file {self.path}: user {name!r} has no valid generation")
        return User(name, entry["role"], entry.get("password_hash"), entry.get("created_at", ""),
                    entry.get("changed_at", ""), generation)

    def unparse(self, user: User) -> dict:
        return dict(role=user.role, password_hash=user.password_hash, created_at=user.created_at,
                    changed_at=user.changed_at, generation=user.generation)

    def get(self, name: str) -> User | None:
        return self.load().get(name)

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is theirs; None otherwise (an unknown name costs the same hashing time)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        user = self.get(name)
        hasher = _hasher()
        if user is None or user.password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = hasher.hash("not a password of anyone")
            with contextlib.suppress(VerificationError):
                hasher.verify(self._dummy_hash, password)
            return None
        try:
            hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return user

    # ---- changes (`inspector user ...`) ---------------------------------------------------
    def add(self, name: str, role: str, password: str | None) -> None:
        check_name(name)
        _check_role(role)
        hashed = _hasher().hash(check_password(password)) if password is not None else None
        now = _now()
        with self.changing() as users:
            if name in users:
                raise UserError(f"user {name} exists already: `inspector user passwd {name}` sets a new password, "
                                f"`inspector user role {name} ROLE` another role")
            users[name] = dict(role=role, password_hash=hashed, created_at=now, changed_at=now)

    def set_password(self, name: str, password: str | None) -> None:
        hashed = _hasher().hash(check_password(password)) if password is not None else None
        with self.changing() as users:
            _next_generation(self._existing(users, name)).update(password_hash=hashed, changed_at=_now())

    def set_role(self, name: str, role: str) -> None:
        _check_role(role)
        with self.changing() as users:
            _next_generation(self._existing(users, name)).update(role=role, changed_at=_now())

    def end_sessions(self, name: str) -> None:
        """Every session of `name` ends (the web server's logout: a cookie saved before it is worth nothing)."""
        with self.changing() as users:
            _next_generation(self._existing(users, name))

    def remove(self, name: str) -> None:
        with self.changing() as users:
            self._existing(users, name)
            del users[name]

    def _existing(self, users: dict, name: str) -> dict:
        if name not in users:
            raise UserError(f"no user {name} in {self.path}; `inspector user list` shows them")
        return users[name]


def _next_generation(entry: dict) -> dict:
    entry["generation"] = entry.get("generation", 0) + 1
    return entry


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
