"""Exports people and scripts read: one row per image outcome (CSV/JSON) and a self-contained HTML report.

No torch here: the model's conversion is read from its stored metadata (plain JSON), so an
export runs on a machine without a GPU in well under a minute.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from inspector.data.cvruns import newest_run, runs_folder
from inspector.base.artifact import inspector_metadata, read_head
from inspector.base.config import Config
from inspector.store.counts import count_electrodes
from inspector.base.durable import write_atomic
from inspector.base.errors import InspectorError
from inspector.base.times import iso_time
from inspector.store.schema import WITHDRAWN
from inspector.store.store import Store

FORMATS = ("csv", "json", "html")
OUTCOME_FIELDS = ["time", "kind", "outcome", "p_abnormal", "threshold", "reason", "path", "path_raw_hex",
                  "sha256", "bundle", "status", "duplicate_of", "moved_to", "model_sha256", "method",
                  "heatmap_path", "review_status", "review_label", "review_anomalies", "reviewed_by",
                  "reviewed_at", "review_count", "station", "serial", "lot"]


def bundle_of(path: str, rule: str, capture_dir: str | os.PathLike) -> str:
    """The bundle of a captured file by review.bundle_rule, the same rule export-labels uses."""
    from inspector.loop.labelset import UNMATCHED_BUNDLE, bundle_for, parse_bundle_rule

    return bundle_for(path, parse_bundle_rule(rule), os.path.abspath(capture_dir)) or UNMATCHED_BUNDLE


def collect_outcomes(store: Store, cfg: Config, since: datetime | None = None,
                     until: datetime | None = None, station: str | None = None) -> list[dict]:
    """Verdicts and rejections in [since, until), newest first, each with its review status and bundle (station:
    only what that station recorded)."""
    verdict_rows = store.query_verdicts(since=since, until=until, station=station)
    rejection_rows = store.query_rejections(since=since, until=until, station=station)
    shas = {r["sha256"] for r in verdict_rows if r["sha256"]} | {r["sha256"] for r in rejection_rows if r["sha256"]}
    reviewed = store.review_states(shas)
    from inspector.loop.labelset import UNMATCHED_BUNDLE, bundle_for, parse_bundle_rule

    rule, capture_root = parse_bundle_rule(cfg.review.bundle_rule), os.path.abspath(cfg.watch.capture_dir)
    rows: list[dict] = []
    for r in verdict_rows:
        rows.append({"when": r["time"], "kind": "verdict", "outcome": r["verdict"] or "pending",
                     "p_abnormal": r["p_abnormal"], "threshold": r["threshold"], "reason": r["reason"],
                     "path": r["path"], "path_raw": r["path_raw"], "sha256": r["sha256"], "status": r["status"],
                     "duplicate_of": r["duplicate_of"], "moved_to": r["moved_to"], "moved_to_raw": r["moved_to_raw"],
                     "model_sha256": r["model_sha256"], "method": r["method"], "heatmap_path": r["heatmap_path"],
                     "heatmap_sha256": r["heatmap_sha256"], "station": r["station"], "peak_x": r["peak_x"],
                     "peak_y": r["peak_y"], "boxes": r["boxes"], "serial": r["serial"], "lot": r["lot"]})
    for r in rejection_rows:
        rows.append({"when": r["created_at"], "kind": "rejection", "outcome": "rejected", "p_abnormal": None,
                     "threshold": None, "reason": f"{r['reason']}: {r['message']}", "path": r["path"],
                     "path_raw": r["path_raw"], "sha256": r["sha256"], "status": "rejected", "duplicate_of": None,
                     "moved_to": None, "model_sha256": None, "method": None, "heatmap_path": None,
                     "station": r["station"]})
    for row in rows:
        review = reviewed.get(row["sha256"]) if row["sha256"] else None
        if review and review["label"] != WITHDRAWN:
            row["review_status"] = "reviewed"
        else:
            row["review_status"] = "pending" if row["outcome"] in ("abnormal", "rescan") else "not needed"
        row["review"] = review
        row["bundle"] = bundle_for(row["path"], rule, capture_root) or UNMATCHED_BUNDLE
    rows.sort(key=lambda r: (r["when"] or datetime.min.replace(tzinfo=timezone.utc)), reverse=True)
    return rows


def outcome_record(row: dict) -> dict:
    """A flat, JSON-ready record (UTC ISO times; path_raw_hex gives the exact name bytes back)."""
    review = row.get("review") or {}
    return {
        "time": iso_time(row["when"]), "kind": row["kind"], "outcome": row["outcome"], "p_abnormal": row["p_abnormal"],
        "threshold": row["threshold"], "reason": row["reason"], "path": row["path"],
        "path_raw_hex": row["path_raw"].hex(), "sha256": row["sha256"], "bundle": row["bundle"],
        "status": row["status"], "duplicate_of": row["duplicate_of"], "moved_to": row["moved_to"],
        "model_sha256": row["model_sha256"], "method": row["method"], "heatmap_path": row["heatmap_path"],
        "review_status": row["review_status"], "review_label": review.get("label"),
        "review_anomalies": review.get("anomalies") or None, "reviewed_by": review.get("reviewer"),
        "reviewed_at": iso_time(review.get("created_at")), "review_count": review.get("count", 0),
        "station": row["station"], "serial": row.get("serial"), "lot": row.get("lot"),
    }


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def inert_cell(value):
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading apostrophe (OWASP's
    advice for CSV injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def render_csv(rows: list[dict]) -> str:
    """The outcomes, one row each; no text cell starts a formula (a reviewer's own anomaly type, a note, a
    file name reach spreadsheets through this file)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=OUTCOME_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: inert_cell(v) for k, v in outcome_record(r).items()} for r in rows)
    return out.getvalue()


def render_json(rows: list[dict], since: datetime | None, until: datetime | None) -> str:
    data = {"kind": "inspector-export", "created": iso_time(datetime.now(timezone.utc)), "since": iso_time(since),
            "until": iso_time(until), "outcomes": [outcome_record(r) for r in rows]}
    return json.dumps(data, indent=1, ensure_ascii=False)


def summarize(rows: list[dict], key: Callable[[dict], str]) -> list[dict]:
    """Counts per group and the pass rate, as `inspector status` counts (counts.count_electrodes: one count per
    electrode, a duplicate file under `duplicates` only and not in `total`; a rejected file did not pass)."""
    counted = count_electrodes((key(r), r["outcome"], r["status"] == "duplicate", 1) for r in rows)
    return [{"group": name, **counted[name]} for name in sorted(counted)]


def local_day(row: dict) -> str:
    return row["when"].astimezone().strftime("%Y-%m-%d") if row["when"] else "unknown"


def latest_cv(state_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest readable run under state.dir/cv/ that `inspector cv` (or a retrain) kept."""
    return newest_run(runs_folder(state_dir))


def read_model_header(path: str | os.PathLike) -> dict | None:
    """The inspector metadata of a .safetensors file without torch; None when absent or unreadable."""
    try:
        text = inspector_metadata(*read_head(path))
        return json.loads(text) if text is not None else None
    except (OSError, ValueError):  # HeaderError is a ValueError
        return None


def model_in_use(store: Store, cfg: Config) -> dict:
    """The model of the newest verdict (from the database, as `inspector status` names it) and the file at
    model.path now."""
    counts_model = store.model_in_use()
    meta = None
    if counts_model and counts_model.get("meta_json"):
        try:
            meta = json.loads(counts_model["meta_json"])
        except ValueError:
            meta = None
    return {"last_used": counts_model, "last_used_meta": meta, "file": str(cfg.model.path),
            "file_meta": read_model_header(cfg.model.path)}


def model_conversions(store: Store) -> dict[str, dict]:
    """sha256 -> stored metadata of every model that scored, for thumbnails in its own conversion."""
    out = {}
    for sha, meta_json in store.model_metas().items():
        try:
            out[sha] = json.loads(meta_json)
        except (TypeError, ValueError):
            continue
    return out


def write_report(path: str | os.PathLike, text: str) -> Path:
    """Check --out, then write atomically: a reader (or a browser refresh) never sees half a report."""
    path = Path(path)
    if path.is_dir():
        raise InspectorError(f"--out {path} is a folder; give a file name such as report.html")
    if not path.parent.is_dir():
        raise InspectorError(f"folder {path.parent} for --out does not exist; create it first")
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise InspectorError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path

