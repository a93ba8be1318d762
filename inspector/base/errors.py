"""The few exception types inspector raises; each message says what went wrong and what to do."""

from __future__ import annotations


class InspectorError(Exception):
    """Base of every error a user may see as `Error: ...` (no traceback)."""


class ConfigError(InspectorError):
    """A configuration key is unknown, of the wrong type or impossible."""

    def __init__(self, message: str, key: str | None = None, file: str | None = None):
        where = []
        if key:
            where.append(key)
        if file:
            where.append(f"in {file}")
        prefix = f"{' '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.message = message
        self.key = key
        self.file = file


# Stable reason codes recorded for rejected images; scripts and the database rely on them.
IMAGE_REASONS = (
    "not_an_image",
    "truncated",
    "corrupt",
    "wrong_dtype",
    "not_grayscale",
    "multi_page",
    "too_large",
    "unreadable",
    "unsupported_encoding",  # a valid compression no installed decoder reads (the station's gap, not the file's)
)


class ImageError(InspectorError):
    """An image that cannot be scored, with a stable reason code.

    `incomplete`: the file may still be being written (cut short, empty): the daemon holds it and judges
    it again when it changes, and records this outcome only once it has stayed so for the retry time.
    """

    def __init__(self, reason: str, message: str, path: str | None = None, incomplete: bool | None = None):
        if reason not in IMAGE_REASONS:
            raise ValueError(f"unknown image reason code {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.path = path
        self.incomplete = reason == "truncated" if incomplete is None else incomplete

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message} [{self.reason}]"


class ModelError(InspectorError):
    """A model artifact that cannot be built, loaded or trusted."""


class DatasetError(InspectorError):
    """A dataset folder or labels.csv that cannot be used."""


class StoreError(InspectorError):
    """The verdict database cannot be opened, migrated or written."""
