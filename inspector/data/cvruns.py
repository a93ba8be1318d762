"""The cross-validation runs that `inspector cv` (and a retrain) keep under state.dir/cv/ as cv-<time>.json: the
one place that names their folder and finds the newest (of a dataset, by its fingerprint). torch-free."""

from __future__ import annotations

import json
import os
from pathlib import Path

CV_FOLDER = "cv"  # under state.dir


def runs_folder(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / CV_FOLDER


def newest_run(folder: str | os.PathLike, fingerprint: str | None = None) -> tuple[Path, dict] | None:
    """The newest readable run in `folder` (of the dataset with `fingerprint`, when given); unreadable files and
    files that hold no run are skipped."""
    for path in sorted(Path(folder).glob("cv-*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not data.get("methods"):
            continue
        if fingerprint is not None and data.get("dataset", {}).get("fingerprint") != fingerprint:
            continue
        return path, data
    return None
