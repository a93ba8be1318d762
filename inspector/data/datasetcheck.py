"""`inspector dataset check`: every problem of a dataset folder found without training, as a CheckReport."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from inspector.data.dataset import (ANOMALY_TYPES, LABELS, LABELS_FILE, MASKS_DIR, Problem, Sample, close_known_anomaly,
                               mask_rel, parse_labels)
from inspector.base.errors import DatasetError, ImageError
from inspector.imaging.read import file_sha256, read_image
from inspector.data.localize import read_mask


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def unknown_anomalies_note(counts: dict[str, int]) -> str:
    """The `dataset check` note on types outside the paper's eleven, with the samples carrying each."""
    listed = ", ".join(f"{name} ({_plural(n, 'sample')})" for name, n in counts.items())
    text = f"{_plural(len(counts), 'anomaly type')} outside the paper's eleven: {listed}"
    typos = [(name, close) for name in counts if (close := close_known_anomaly(name)) is not None]
    if typos:
        text += "; " + ", ".join(f"{name} is close to {close}" for name, close in typos) + ": fix it if it is a typo"
    return text


@dataclass
class CheckReport:
    """What `inspector dataset check` found; `ok` is False when anything must be fixed before training."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown_anomalies: dict[str, int] = field(default_factory=dict)  # type outside the paper's eleven -> samples
    # defect masks: abnormal (readable) images, those with a mask, masks of normal images and of no image
    masks: dict = field(default_factory=lambda: {"abnormal": 0, "with_mask": 0, "for_normal": [], "without_image": []})

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
            "unknown_anomalies": self.unknown_anomalies,
            "masks": self.masks,
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
        lines.append(f"defect masks ({MASKS_DIR}/): {self.masks['with_mask']} of {self.masks['abnormal']} abnormal images")
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
    rows, problems = parse_labels(root)
    report = CheckReport(root=root.resolve(), problems=list(problems))
    by_digest: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, Counter] = defaultdict(Counter)
    for lineno, sample in rows:
        try:
            img = read_image(sample.path, max_height=max_height, max_width=max_width)
        except ImageError as exc:
            report.problems.append(Problem(
                "unreadable", f"{root / LABELS_FILE} line {lineno}: image {sample.rel} is unusable: "
                f"{exc.message} [{exc.reason}]; replace or remove it", lineno, sample.rel))
            continue
        if sample.label == "abnormal":
            _check_mask(report, root, lineno, sample, img.shape)
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
    _stray_masks(report, rows)
    unknown = Counter(a for _, sample in rows for a in sample.anomalies if a not in ANOMALY_TYPES)
    report.unknown_anomalies = {name: unknown[name] for name in sorted(unknown)}
    if unknown:
        report.notes.append(unknown_anomalies_note(report.unknown_anomalies))
    return report


def _check_mask(report: CheckReport, root: Path, lineno: int, sample: Sample, shape: tuple[int, ...]) -> None:
    """Count an abnormal image and its mask; a damaged mask or one of another size is a problem."""
    report.masks["abnormal"] += 1
    rel = mask_rel(sample.rel)
    if not (root / rel).is_file():
        return
    report.masks["with_mask"] += 1
    where = f"{root / LABELS_FILE} line {lineno}"
    try:
        mask = read_mask(root / rel)
    except DatasetError as exc:
        report.problems.append(Problem("mask_unreadable", f"{where}: {exc}", lineno, sample.rel))
        return
    if mask.shape != tuple(shape[:2]):
        report.problems.append(Problem(
            "mask_size", f"{where}: mask {rel} is {mask.shape[0]} x {mask.shape[1]} px but image {sample.rel} is "
            f"{shape[0]} x {shape[1]} (height x width); a mask must be as large as its image", lineno, sample.rel))
    elif not mask.any():
        report.notes.append(f"mask {rel} of image {sample.rel} marks no defect pixel; localization cannot be measured on it")


def _stray_masks(report: CheckReport, rows: list[tuple[int, Sample]]) -> None:
    """Masks under MASKS_DIR of images labelled normal, or of none in labels.csv: a note (a warning) for each kind."""
    folder = report.root / MASKS_DIR
    if not folder.is_dir():
        return
    labels = {mask_rel(s.rel): s.label for _, s in rows}
    found = sorted(str(PurePosixPath(MASKS_DIR, *p.relative_to(folder).parts)) for p in folder.rglob("*.png") if p.is_file())
    report.masks["for_normal"] = [m for m in found if labels.get(m, "abnormal") != "abnormal"]
    report.masks["without_image"] = [m for m in found if m not in labels]
    for key, what, fix in (("for_normal", "images labelled normal", "relabel each image or remove its mask"),
                           ("without_image", "images not listed in labels.csv", "remove each or add its image")):
        stray = report.masks[key]
        if stray:
            shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
            report.notes.append(f"{_plural(len(stray), 'mask')} for {what}: {shown}; {fix}")
