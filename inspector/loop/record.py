"""Records for scripts: a recorded file and its verdict, a review; what `inspector verdicts` and `inspector reviews`
print as csv or json and what the review station's API (/api/v1/, docs/API.md) answers, one shape for both."""

from __future__ import annotations

from inspector.base.times import iso_time

VERDICT_FIELDS = ["time", "verdict", "p_abnormal", "reason", "path", "path_raw_hex", "sha256", "size", "mtime_ns",
                  "status", "duplicate", "duplicate_of", "moved_to", "model_sha256", "threshold", "method",
                  "ready_to_commit_seconds", "inference_seconds", "heatmap_path", "station", "peak", "boxes", "id",
                  "serial", "lot"]


def verdict_record(row: dict) -> dict:
    """A query_verdicts row as a record: UTC ISO times; path_raw_hex gives the exact name bytes back; id is the
    recorded file's (the review station's /verdict/ID, the API's /api/v1/verdicts/ID); serial and lot what
    station.serial_pattern read from its name at capture (None: none)."""
    return {
        "time": iso_time(row["time"]), "verdict": row["verdict"], "p_abnormal": row["p_abnormal"],
        "reason": row["reason"], "path": row["path"], "path_raw_hex": row["path_raw"].hex(),
        "sha256": row["sha256"], "size": row["size"], "mtime_ns": row["mtime_ns"], "status": row["status"],
        "duplicate": row["duplicate"], "duplicate_of": row["duplicate_of"], "moved_to": row["moved_to"],
        "model_sha256": row["model_sha256"], "threshold": row["threshold"], "method": row["method"],
        "ready_to_commit_seconds": row["ready_to_commit_seconds"],
        "inference_seconds": row["inference_seconds"], "heatmap_path": row["heatmap_path"], "station": row["station"],
        **region_record(row), "id": row["id"], "serial": row["serial"], "lot": row["lot"],
    }


def region_record(row: dict) -> dict:
    """Where the normal model's map peaks and what it boxes: "peak": [x, y] and "boxes": [[x0, y0, x1, y1], ...]
    in pixels of the original image (x the column, y the row); null for a verdict without a normal model."""
    from inspector.store.schema import parse_boxes  # here: the schema imports SQLAlchemy, the CLI starts without it

    peak = [row["peak_x"], row["peak_y"]] if row.get("peak_x") is not None else None
    return {"peak": peak, "boxes": parse_boxes(row["boxes"]) if peak is not None else None}


def review_record(row: dict) -> dict:
    """A review row (Reviews.history) as a record; superseded: a later review replaced it."""
    return {
        "id": row["id"], "time": iso_time(row["created_at"]), "sha256": row["sha256"], "path": row["path"],
        "label": row["label"], "anomalies": row["anomalies"], "reviewer": row["reviewer"], "note": row["note"],
        "model_verdict": row["model_verdict"], "model_sha256": row["model_sha256"],
        "supersedes": row["supersedes"], "superseded": row["superseded"], "station": row["station"],
    }
