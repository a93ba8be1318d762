"""Labeled datasets (labels.csv): anomaly type names, samples, loading, and leave-one-bundle-out folds.

A dataset is a folder holding labels.csv with the header ``path,bundle,label[,anomaly]``:
``path`` relative to the folder, ``label`` normal|abnormal, ``anomaly`` an optional
``;``-separated list of anomaly types (a normal electrode may list a minor one). The paper's
eleven types are ANOMALY_TYPES; a plant's own taxonomy may add any other name (see anomaly_name).
An abnormal image may have a defect mask, masks/<its path with .png> (see mask_rel, localize.py).
The synthetic electrode generator (synth.py) and `dataset check` (datasetcheck.py) build on this module,
never the reverse.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from inspector.base.durable import write_atomic
from inspector.base.errors import DatasetError

LABELS_FILE = "labels.csv"
MASKS_DIR = "masks"  # defect masks: MASKS_DIR/<the image's path, suffix .png>
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


_SEPARATORS = re.compile(r"[\s/\-_]+")
# refused inside a name besides "," and ";": characters that end a line or are invisible controls (tab, NUL)
_BREAKING_CATEGORIES = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


LABELS_HEADER = ("path", "bundle", "label", "anomaly")


def write_labels(path: Path, rows) -> None:
    """Write labels.csv (atomically): rows of (path, bundle, label, anomalies), anomalies a list or a ';' string."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABELS_HEADER)
    for rel, bundle, label, anomalies in rows:
        writer.writerow([rel, bundle, label, anomalies if isinstance(anomalies, str) else ";".join(anomalies)])
    write_atomic(path, buf.getvalue())


def mask_rel(rel: str) -> str:
    """Where an image's defect mask lies in its dataset folder: "b1/x_0001.tif" -> "masks/b1/x_0001.png"."""
    return str(PurePosixPath(MASKS_DIR, PurePosixPath(rel.replace("\\", "/")).with_suffix(".png")))


def _known(key: str) -> str | None:
    if key in ANOMALY_TYPES:
        return key
    for plural in ("s", "es"):
        if key.endswith(plural) and key[: -len(plural)] in ANOMALY_TYPES:
            return key[: -len(plural)]
    return None


def anomaly_name(name: str) -> str:
    """Any anomaly name -> its snake_case type; DatasetError for an empty name or one that breaks labels.csv.

    METHOD.md's spellings ("Scratches", "edge cuts", "ink entry/exit") map to the paper's eleven
    types (ANOMALY_TYPES). Another name is a plant's own type: lower-cased, with runs of spaces,
    '-', '/' and '_' turned into one '_' ("Edge Burr" -> "edge_burr"); no plural is dropped from it.
    A name holding ',' or ';' (the separators of labels.csv and of its anomaly column) or a control
    or line-breaking character (a newline, a tab) is refused, saying which character.
    """
    text = name.strip()
    for ch in text:
        if ch in ",;":
            raise DatasetError(f"anomaly type {text!r} contains {ch!r}; separate anomaly types with ';' "
                               f"(a name may not hold ',' or ';')")
        what = _BREAKING_CATEGORIES.get(unicodedata.category(ch))
        if what is not None:
            raise DatasetError(f"anomaly type {text!r} contains {what} ({ch!r}); an anomaly name must be one line "
                               "of visible text")
    key = _SEPARATORS.sub("_", unicodedata.normalize("NFC", text.lower())).strip("_")
    if not key:
        raise DatasetError(f"anomaly type {text!r} is empty once spaces, '-', '/' and '_' are dropped; "
                           "leave the anomaly empty when there is none")
    return _known(key) or key


def normalize_anomaly(name: str) -> str | None:
    """One of the paper's eleven types for METHOD.md's spellings ("Scratches", "edge cuts"); None for any other name."""
    try:
        return _known(anomaly_name(name))
    except DatasetError:
        return None


def close_known_anomaly(name: str) -> str | None:
    """The paper's type a new name is likely a typo of ("scrach" -> "scratch"), else None."""
    if name in ANOMALY_TYPES:
        return None
    match = difflib.get_close_matches(name, ANOMALY_TYPES, n=1, cutoff=0.8)
    return match[0] if match else None


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

    def mask_path(self, i: int) -> Path | None:
        """Sample i's defect mask (mask_rel) where that file exists, else None; the file is not read."""
        path = self.root / mask_rel(self.samples[i].rel)
        return path if path.is_file() else None

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


def _records(reader, path: Path):
    """(first line number, record) for each record after the header; a record may span lines."""
    end = reader.line_num
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"{path} line {reader.line_num}: {exc}; check the quotes") from None
        yield end + 1, record
        end = reader.line_num


def parse_labels(root: Path) -> tuple[list[tuple[int, Sample]], list[Problem]]:
    """Every row of labels.csv as a Sample, or as a Problem saying what to fix on which line."""
    path = _labels_path(root)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read: {exc.strerror}") from None
    reader = csv.reader(io.StringIO(text))  # a quoted field keeps its line break (split by lines, it lost it)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: {exc}; check the quotes") from None
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
    for lineno, record in _records(reader, path):
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
            try:
                norm = anomaly_name(name)
            except DatasetError as exc:
                hint = "; is a '\"' left open on this line?" if "\n" in name.strip() or "\r" in name.strip() else ""
                problems.append(Problem("bad_anomaly", f"{where}: {exc}{hint}", lineno, rel))
                bad = True
                continue
            if norm not in anomalies:
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
    rows, problems = parse_labels(root)
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
