"""Labeled datasets (labels.csv), bundles, leave-one-bundle-out folds and a pre-training check.

A dataset is a folder holding labels.csv with the header ``path,bundle,label[,anomaly]``:
``path`` relative to the folder, ``label`` normal|abnormal, ``anomaly`` an optional
``;``-separated list of anomaly types (a normal electrode may list a minor one).
The synthetic electrode generator (inspector/synth.py) builds on this module, never the reverse.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from inspector.errors import DatasetError, ImageError
from inspector.imaging import file_sha256, read_image

LABELS_FILE = "labels.csv"
LABELS = ("normal", "abnormal")
REQUIRED_COLUMNS = ("path", "bundle", "label")
ANOMALY_TYPES = (
    "scratch",
    "line",
    "edge_cut",
    "edge_tension",
    "smudge",
    "edge_ink_flow",
    "bubble",
    "missing_ink",
    "agglomerate",
    "ink_fluctuation",
    "ink_entry_exit",
)


def normalize_anomaly(name: str) -> str | None:
    """Map METHOD.md's spellings ("Scratches", "edge cuts", "ink entry/exit") to a snake_case type."""
    key = re.sub(r"[\s/\-]+", "_", name.strip().lower()).strip("_")
    if key in ANOMALY_TYPES:
        return key
    for plural in ("s", "es"):
        if key.endswith(plural) and key[: -len(plural)] in ANOMALY_TYPES:
            return key[: -len(plural)]
    return None


@dataclass(frozen=True)
class Sample:
    """One labeled image; `rel` is its path as written in labels.csv (defaults to the file name)."""

    path: Path
    bundle: str
    label: str
    anomalies: tuple[str, ...] = ()
    rel: str = ""

    def __post_init__(self) -> None:
        if not self.rel:
            object.__setattr__(self, "rel", Path(self.path).name)

    @property
    def y(self) -> int:
        """1 for abnormal (the positive class), 0 for normal."""
        return int(self.label == "abnormal")


@dataclass(frozen=True)
class Dataset:
    """A dataset folder and its samples in labels.csv order."""

    root: Path
    samples: tuple[Sample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def y(self) -> np.ndarray:
        return np.array([s.y for s in self.samples], dtype=np.int64)

    @property
    def bundles(self) -> list[str]:
        return sorted({s.bundle for s in self.samples})

    def fingerprint(self) -> str:
        """sha256 over sorted (rel, bundle, label, size, mtime_ns): cheap, so caches can key on it.

        Deliberately stat-based (hashing ~2 GB of images costs seconds): an image rewritten
        with the same size and a restored mtime is NOT detected; touch it or clear the cache.
        """
        digest = hashlib.sha256()
        rows = []
        for s in self.samples:
            st = s.path.stat()
            rows.append((s.rel, s.bundle, s.label, st.st_size, st.st_mtime_ns))
        for row in sorted(rows):
            digest.update(("\x1f".join(str(v) for v in row) + "\n").encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


@dataclass(frozen=True)
class Fold:
    """Leave-one-bundle-out fold: indices into the sample list."""

    bundle: str
    train_idx: np.ndarray
    test_idx: np.ndarray


@dataclass(frozen=True)
class Problem:
    """A labels.csv row or image that stops training; `line` is the labels.csv line (0: none)."""

    kind: str
    message: str
    line: int = 0
    rel: str = ""


def _labels_path(root: Path) -> Path:
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; give a folder holding {LABELS_FILE}")
    path = root / LABELS_FILE
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: a dataset folder needs {LABELS_FILE} with the header "
            f"path,bundle,label[,anomaly] (or run `inspector synth DIR` for a synthetic set)")
    return path


def _parse_labels(root: Path) -> tuple[list[tuple[int, Sample]], list[Problem]]:
    """Every row of labels.csv as a Sample, or as a Problem saying what to fix on which line."""
    path = _labels_path(root)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read: {exc.strerror}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{path} is empty; its first line must be the header path,bundle,label[,anomaly]")
    columns = [h.strip().lower() for h in header]
    for col in REQUIRED_COLUMNS:
        if col not in columns:
            raise DatasetError(f"{path} line 1: missing column '{col}'; the header must be path,bundle,label[,anomaly]")
    index = {c: columns.index(c) for c in (*REQUIRED_COLUMNS, "anomaly") if c in columns}
    rows: list[tuple[int, Sample]] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, record in enumerate(reader, start=2):
        if not record or all(not v.strip() for v in record):
            continue
        where = f"{path} line {lineno}"
        if len(record) < len(columns):
            record = record + [""] * (len(columns) - len(record))
        rel = record[index["path"]].strip()
        bundle = record[index["bundle"]].strip()
        label = record[index["label"]].strip().lower()
        if not rel or not bundle:
            problems.append(Problem("empty_field", f"{where}: empty {'path' if not rel else 'bundle'}; fill it in or remove the row", lineno, rel))
            continue
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            problems.append(Problem("bad_path", f"{where}: path {rel} must be relative to {root} and stay inside it", lineno, rel))
            continue
        if rel in seen:
            problems.append(Problem("duplicate_row", f"{where}: path {rel} already listed on line {seen[rel]}; remove one row", lineno, rel))
            continue
        seen[rel] = lineno
        if label not in LABELS:
            problems.append(Problem("unknown_label", f"{where}: label '{record[index['label']].strip()}' is not normal or abnormal; fix the label", lineno, rel))
            continue
        anomalies: list[str] = []
        raw_anomaly = record[index["anomaly"]] if "anomaly" in index else ""
        bad = False
        for name in (n for n in raw_anomaly.split(";") if n.strip()):
            norm = normalize_anomaly(name)
            if norm is None:
                problems.append(Problem("unknown_anomaly", f"{where}: unknown anomaly type '{name.strip()}'; use one of {', '.join(ANOMALY_TYPES)}", lineno, rel))
                bad = True
            elif norm not in anomalies:
                anomalies.append(norm)
        if bad:
            continue
        file = root / pure
        if not file.is_file():
            problems.append(Problem("missing_file", f"{where}: image {rel} does not exist in {root}; fix the path or remove the row", lineno, rel))
            continue
        rows.append((lineno, Sample(file.resolve(), bundle, label, tuple(anomalies), rel)))
    return rows, problems


def load_dataset(root: str | Path) -> Dataset:
    """Read labels.csv strictly: the first bad row raises DatasetError with its line number."""
    root = Path(root)
    rows, problems = _parse_labels(root)
    if problems:
        first = min(problems, key=lambda p: p.line)
        more = f" ({len(problems) - 1} more problem(s); run `inspector dataset check {root}` to list all)" if len(problems) > 1 else ""
        raise DatasetError(first.message + more)
    if not rows:
        raise DatasetError(f"{root / LABELS_FILE} has no data rows; add one row per image (path,bundle,label)")
    return Dataset(root.resolve(), tuple(s for _, s in rows))


def leave_one_bundle_out(samples: list[Sample] | tuple[Sample, ...]) -> list[Fold]:
    """One fold per bundle (sorted by name): images of one bundle look alike, so a whole bundle is held out."""
    bundles = np.array([s.bundle for s in samples])
    names = sorted(set(bundles.tolist()))
    if len(names) < 2:
        raise DatasetError(
            f"leave-one-bundle-out needs at least 2 bundles, found {len(names)}"
            f"{' (' + names[0] + ')' if names else ''}; label images from more bundles")
    return [Fold(b, np.flatnonzero(bundles != b), np.flatnonzero(bundles == b)) for b in names]


@dataclass
class CheckReport:
    """What `inspector dataset check` found; `ok` is False when anything must be fixed before training."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.duplicates

    def to_dict(self) -> dict:
        """Plain JSON-ready structure for --json."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "counts": self.counts,
            "totals": self.totals(),
            "problems": [{"kind": p.kind, "line": p.line, "path": p.rel, "message": p.message} for p in self.problems],
            "duplicate_content": self.duplicates,
            "notes": self.notes,
        }

    def totals(self) -> dict[str, int]:
        return {lab: sum(c[lab] for c in self.counts.values()) for lab in LABELS}

    def format_text(self) -> str:
        """A bundles x classes table, then problems and notes, for a person reading a terminal."""
        width = max([len("bundle"), len("total")] + [len(b) for b in self.counts])
        lines = [f"dataset {self.root}", f"{'bundle':<{width}}  {'normal':>7}  {'abnormal':>8}  {'total':>6}"]
        for bundle, c in self.counts.items():
            lines.append(f"{bundle:<{width}}  {c['normal']:>7}  {c['abnormal']:>8}  {c['normal'] + c['abnormal']:>6}")
        t = self.totals()
        lines.append(f"{'total':<{width}}  {t['normal']:>7}  {t['abnormal']:>8}  {t['normal'] + t['abnormal']:>6}")
        if self.problems or self.duplicates:
            lines.append("")
            lines.append(f"problems ({len(self.problems) + len(self.duplicates)}):")
            lines.extend(f"  {p.message}" for p in self.problems)
            lines.extend(f"  duplicate content (same sha256) under {len(d)} paths: {', '.join(d)}; "
                         "keep one, or it leaks between folds" for d in self.duplicates)
        if self.notes:
            lines.append("")
            lines.append("notes:")
            lines.extend(f"  {n}" for n in self.notes)
        lines.append("")
        lines.append("OK: ready for training" if self.ok else "NOT OK: fix the problems above before training")
        return "\n".join(lines)


def check_dataset(root: str | Path, max_height: int = 10_000, max_width: int = 10_000) -> CheckReport:
    """Find every problem in a dataset folder without training: reads and hashes each image once."""
    root = Path(root)
    rows, problems = _parse_labels(root)
    report = CheckReport(root=root.resolve(), problems=list(problems))
    by_digest: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, Counter] = defaultdict(Counter)
    for lineno, sample in rows:
        try:
            read_image(sample.path, max_height=max_height, max_width=max_width)
        except ImageError as exc:
            report.problems.append(Problem(
                "unreadable", f"{root / LABELS_FILE} line {lineno}: image {sample.rel} is unusable: "
                f"{exc.message} [{exc.reason}]; replace or remove it", lineno, sample.rel))
            continue
        counts[sample.bundle][sample.label] += 1
        by_digest[file_sha256(sample.path)].append(sample.rel)
    report.problems.sort(key=lambda p: p.line)
    report.duplicates = [paths for paths in by_digest.values() if len(paths) > 1]
    report.counts = {b: {lab: counts[b][lab] for lab in LABELS} for b in sorted(counts)}
    if not rows and not problems:
        report.problems.append(Problem("empty", f"{root / LABELS_FILE} has no data rows; add one row per image (path,bundle,label)"))
    if 0 < len(report.counts) < 2:
        report.problems.append(Problem("one_bundle", "only one bundle: leave-one-bundle-out cross-validation needs at least 2"))
    for bundle, c in report.counts.items():
        if c["abnormal"] == 0:
            report.notes.append(
                f"balanced accuracy is undefined for bundle {bundle} (no abnormal example); cross-validation "
                "reports its TNR alone and marks it; its counts still enter the pooled totals")
        if c["normal"] == 0:
            report.notes.append(
                f"balanced accuracy is undefined for bundle {bundle} (no normal example); cross-validation "
                "reports its TPR alone and marks it; its counts still enter the pooled totals")
    return report

