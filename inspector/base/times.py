"""Times as people type and read them: --since/--until values, local day starts, local and relative display.

One place for the CLI and the web pages alike (torch- and click-free)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

TIME_FORMS = ("an ISO date or time (2026-11-22, 2026-11-22T08:00, 2026-11-22 08:00:30), "
              "an age (45s, 30m, 1h, 2d, 1w) or today/yesterday")
_AGE = re.compile(r"(\d+)\s*([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def local_midnight(now: datetime, days_back: int = 0) -> datetime:
    """Start of the local calendar day, as an aware datetime."""
    local = now.astimezone()
    midnight = datetime(local.year, local.month, local.day) - timedelta(days=days_back)
    return midnight.astimezone()  # naive local -> aware, DST-correct for that date


def today_start_utc(now: datetime | None = None) -> datetime:
    """This local day's start in UTC: what "today" counts from."""
    return local_midnight(now or datetime.now(timezone.utc)).astimezone(timezone.utc)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A --since/--until value -> aware UTC datetime; times without a zone are local."""
    now = now or datetime.now(timezone.utc)
    value = text.strip().lower()
    if value in ("today", "yesterday"):
        return local_midnight(now, 0 if value == "today" else 1).astimezone(timezone.utc)
    if value == "now":
        return now.astimezone(timezone.utc)
    age = _AGE.fullmatch(value)
    if age:
        try:
            return (now - timedelta(**{_AGE_UNITS[age.group(2)]: int(age.group(1))})).astimezone(timezone.utc)
        except OverflowError:
            raise ValueError(f"{text!r} reaches before the year 1") from None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {TIME_FORMS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # local wall time
    return parsed.astimezone(timezone.utc)


def iso_time(when: datetime | None) -> str | None:
    """A stored time as scripts read it: UTC ISO 8601 (None stays None)."""
    return when.astimezone(timezone.utc).isoformat() if when else None


def format_local(when: datetime | None) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def format_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"
