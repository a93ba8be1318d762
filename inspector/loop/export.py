"""`inspector export`: the outcomes of a period as CSV, JSON or the HTML report, written atomically.

Above both report.py (collecting, CSV, JSON) and report_html.py (the page), so that neither needs the other
the wrong way round.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from inspector.base.config import Config
from inspector.base.errors import InspectorError
from inspector.base.times import iso_time
from inspector.loop.report import FORMATS, collect_outcomes, render_csv, render_json, write_report
from inspector.loop.report_html import render_html
from inspector.store.store import Store


def render_report(store: Store, cfg: Config, fmt: str, since: datetime | None = None, until: datetime | None = None,
                  station: str | None = None) -> tuple[str, int]:
    """The export in `fmt` as text, and how many outcomes it holds (`inspector export`, the web's reports)."""
    if fmt not in FORMATS:
        raise InspectorError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if since is not None and until is not None and until <= since:
        raise InspectorError(f"--until ({iso_time(until)}) is not after --since ({iso_time(since)}); nothing can match")
    rows = collect_outcomes(store, cfg, since, until, station)
    if fmt == "csv":
        return render_csv(rows), len(rows)
    if fmt == "json":
        return render_json(rows, since, until), len(rows)
    return render_html(store, cfg, rows, since, until, station), len(rows)


def export_report(store: Store, cfg: Config, fmt: str, out: str | os.PathLike, since: datetime | None = None,
                  until: datetime | None = None, station: str | None = None) -> tuple[Path, int]:
    """Write the export in `fmt`; returns the file and how many outcomes it holds."""
    text, count = render_report(store, cfg, fmt, since, until, station)
    return write_report(out, text), count
