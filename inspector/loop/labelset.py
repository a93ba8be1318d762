"""The reviewed images as a labeled dataset (`inspector export-labels`, the nightly retrain's new images): the
latest standing review of each content is its label, its file linked or copied into OUT/<bundle>/.

The bundle follows review.bundle_rule: the capture subfolder, or the first group of a regular expression
on the file name (report.py uses the same rule for its per-bundle totals).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from inspector.data.dataset import LABELS_FILE, write_labels
from inspector.base.durable import atomic_target
from inspector.imaging.read import file_sha256
from inspector.store.reviews import ReviewError
from inspector.store.store import Store

UNMATCHED_BUNDLE = "unmatched"
ROOT_BUNDLE = "capture"  # bundle of files directly in the capture folder under bundle_rule "subfolder"


@dataclass(frozen=True)
class ExportedImage:
    sha256: str
    source: str
    rel: str  # path inside the dataset folder, as written in labels.csv
    bundle: str
    label: str
    anomalies: tuple[str, ...]
    how: str  # "link", "copy" or "kept" (already there with the same content)


@dataclass(frozen=True)
class SkippedImage:
    sha256: str
    path: str | None
    reason: str


@dataclass
class ExportSummary:
    """What export_labels wrote; `unmatched` lists file names the regex rule found no bundle in."""

    out: Path
    labels_csv: Path
    exported: list[ExportedImage] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def count(self, how: str) -> int:
        return sum(e.how == how for e in self.exported)


def parse_bundle_rule(bundle_rule: str) -> re.Pattern | None:
    """'subfolder' -> None; 'regex:PATTERN' -> the compiled PATTERN (a bad pattern is a ReviewError)."""
    if bundle_rule == "subfolder":
        return None
    if bundle_rule.startswith("regex:"):
        pattern = bundle_rule[len("regex:"):]
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ReviewError(f"review.bundle_rule regex {pattern!r} does not compile ({exc}); fix it in config.toml")
    raise ReviewError(f"review.bundle_rule {bundle_rule!r} is neither 'subfolder' nor 'regex:PATTERN'")


def bundle_for(path: str, rule: re.Pattern | None, capture_root: str) -> str | None:
    """The bundle of an image by its ORIGINAL path (images.path survives a move); None: regex found none."""
    if rule is not None:
        match = rule.search(os.path.basename(path))
        if match is None:
            return None
        found = match.group(1) if rule.groups else match.group(0)
        return found or None
    folder = os.path.dirname(os.path.abspath(path))
    for root in {capture_root, os.path.realpath(capture_root)}:
        if os.path.commonpath([folder, root]) == root:
            rel = os.path.relpath(folder, root)
            return ROOT_BUNDLE if rel == "." else Path(rel).as_posix()
    return os.path.basename(folder) or ROOT_BUNDLE  # scored outside the capture folder: its own folder


def _safe_name(text: str) -> str:
    """A file or folder name that is portable and stays inside the dataset folder."""
    safe = re.sub(r"[^\w.\-]+", "_", text).strip("_") or "_"
    return "_" if set(safe) == {"."} else safe


def _find_source(store: Store, sha256: str) -> tuple[dict | None, str | None, list[str]]:
    """The first recorded file of this content that still holds it: moved_to first, then the original path."""
    from inspector.store.queries import moved_place

    rows = store.content_files(sha256)
    problems: list[str] = []
    for row in rows:
        for candidate, shown in ((moved_place(row), row["moved_to"]), (row["path_raw"], row["path"])):
            if not candidate:
                continue
            if not os.path.isfile(candidate):
                problems.append(f"{shown} is missing")
            elif file_sha256(candidate) != sha256:
                problems.append(f"{shown} holds other content now")
            else:
                return row, os.fsdecode(candidate), problems
    return (rows[0] if rows else None), None, problems or ["no image file was recorded"]


def _place(src: str, dest: Path, sha256: str) -> str:
    """Hard-link src to dest (same filesystem), else copy through a temp file; reuse an identical dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if dest.is_file() and file_sha256(dest) == sha256:
            return "kept"
        dest.unlink()
    try:
        os.link(src, dest)
        return "link"
    except OSError:  # EXDEV across filesystems, EPERM on some shares, or links unsupported
        pass
    with atomic_target(dest, durable=False, mode=None) as tmp:
        shutil.copy2(src, tmp)
    return "copy"


def export_labels(store: Store, out: str | os.PathLike, bundle_rule: str,
                  capture_dir: str | os.PathLike) -> ExportSummary:
    """Write the latest review of every reviewed image as a dataset folder (images + labels.csv).

    Files are hard-linked where possible, else copied, to OUT/<bundle>/<name>-<sha8><ext>. An image
    whose file is gone or changed is skipped with the reason. With no reviews, labels.csv holds only
    its header (load_dataset then refuses it: check summary.exported first).
    """
    rule = parse_bundle_rule(bundle_rule)
    out = Path(out)
    labels_csv = out / LABELS_FILE
    if labels_csv.exists():
        raise ReviewError(f"{out} already holds {LABELS_FILE}; export into a new or empty folder")
    if out.exists() and not out.is_dir():
        raise ReviewError(f"{out} is a file; give a folder for the exported dataset")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReviewError(f"cannot create {out}: {exc.strerror}") from exc
    summary = ExportSummary(out=out, labels_csv=labels_csv)
    capture_root = os.path.abspath(capture_dir)
    for review in store.reviews.latest():
        sha = review["sha256"]
        image, source, problems = _find_source(store, sha)
        if source is None or image is None:
            summary.skipped.append(SkippedImage(sha, image["path"] if image else None, "; ".join(problems)))
            continue
        bundle = bundle_for(image["path"], rule, capture_root)
        name = os.path.basename(image["path"])
        if bundle is None:
            bundle = UNMATCHED_BUNDLE
            summary.unmatched.append(name)
        stem, ext = os.path.splitext(name)
        rel = f"{_safe_name(bundle)}/{_safe_name(stem)}-{sha[:8]}{_safe_name(ext) if ext else ''}"
        try:
            how = _place(source, out / rel, sha)
        except OSError as exc:
            summary.skipped.append(SkippedImage(sha, image["path"], f"cannot write {out / rel}: {exc.strerror}"))
            continue
        anomalies = tuple(a for a in (review["anomalies"] or "").split(";") if a)
        summary.exported.append(ExportedImage(sha, source, rel, bundle, review["label"], anomalies, how))
    write_labels(labels_csv, [(r.rel, r.bundle, r.label, r.anomalies)
                              for r in sorted(summary.exported, key=lambda r: (r.bundle, r.rel))])
    return summary
