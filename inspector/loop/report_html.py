"""The HTML report: one self-contained file (images as data: URIs, inline CSS, no scripts) for a browser.

This module gathers what the page shows; its markup is in Jinja2 templates beside the review station's
(inspector/web/templates/report/), loaded from the package folder without importing the web package. Autoescaping
is always on, so every text from a file name, the database or a JSON file is escaped where it is placed; the only
markup handed to a template ready-made is a section rendered from these same templates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import jinja2
import numpy as np
from markupsafe import Markup

import inspector
from inspector.data import metrics
from inspector.data.plots import figure_png, png_uri, pyplot, roc_figure
from inspector.base.config import Config
from inspector.base.errors import ImageError, InspectorError
from inspector.base.paths import display_path
from inspector.loop.report import latest_cv, local_day, model_conversions, model_in_use, summarize

THUMB_HEIGHT_PX = 160
MAX_FLAGGED = 200  # thumbnails beyond this would make the file unwieldy; the rest are listed in csv/json
TEMPLATES = Path(inspector.__file__).resolve().parent / "web" / "templates" / "report"
META_KEYS = ("method", "window", "input_size", "features", "pooling", "head", "threshold", "threshold_source",
             "weights", "freeze", "trained", "created_at", "version", "quality")
METRIC_KEYS = ("epochs", "images", "bundles", "class_weights")


def show_none_as_blank(value: object) -> object:
    """A missing value (None) shows as nothing, not as the word None."""
    return "" if value is None else value


TEMPLATE_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                  undefined=jinja2.StrictUndefined, finalize=show_none_as_blank,
                                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_template(name: str, **context: object) -> Markup:
    """One of the report's templates, rendered (and so escaped) into markup a section or the page places."""
    return Markup(TEMPLATE_ENV.get_template(name).render(**context))


@dataclass(frozen=True)
class Picture:
    """A PNG embedded as a data: URI (src), or, where src is None, a placeholder whose text says why there is none."""
    src: str | None
    alt: str
    cls: str = ""


def embedded_png(png: bytes, alt: str, cls: str) -> Picture:
    return Picture(png_uri(png), alt, cls)


def placeholder(text: str) -> Picture:
    return Picture(None, text)


def encode_png(img: np.ndarray, height_px: int = THUMB_HEIGHT_PX) -> bytes:
    """Downscale (never enlarge) to height_px and encode as PNG."""
    if img.shape[0] > height_px:
        width = max(1, round(img.shape[1] * height_px / img.shape[0]))
        img = cv2.resize(img, (width, height_px), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise InspectorError("OpenCV could not encode a thumbnail as PNG")
    return buf.tobytes()


def recorded_places(row: dict) -> list:
    """Where the image was recorded: where the daemon moved it, then its capture path (exact bytes)."""
    from inspector.store.queries import add_places, moved_place

    places: list = []
    add_places(places, moved_place(row), row["path_raw"])
    return places


def thumbnail(row: dict, meta: dict | None, cfg: Config) -> Picture:
    """The scored image in its model's own conversion, small, only while its file still holds what was scored
    (imaging.read_recorded, as the review station reads it); a placeholder says why when it cannot be."""
    from inspector.imaging.convert import convert_recorded
    from inspector.imaging.read import read_recorded

    try:
        img16, _ = read_recorded(recorded_places(row), row["sha256"], cfg.imaging.max_height, cfg.imaging.max_width)
    except ImageError as exc:
        return placeholder(f"source image unavailable: {exc.message}")
    try:
        img8 = convert_recorded(img16, meta)
    except InspectorError as exc:
        return placeholder(f"cannot convert: {exc}")
    return embedded_png(encode_png(img8), f"thumbnail of {display_path(row['path']).rsplit('/', 1)[-1]}", "thumb")


def heatmap(row: dict) -> Picture:
    """The Grad-CAM overlay stored with the verdict, small, checked as the review station checks it
    (imaging.load_heatmap); a placeholder when there is none or it fails the check."""
    from inspector.imaging.read import load_heatmap

    path = row.get("heatmap_path")
    if not path:
        return placeholder("no heat map")
    try:
        png = load_heatmap(path, row["sha256"], row.get("heatmap_sha256"))
    except ImageError as exc:
        return placeholder(f"heat map unavailable: {exc.message}")
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return placeholder("heat map unreadable: the PNG does not decode")
    return embedded_png(encode_png(img), f"heat map of {display_path(row['path']).rsplit('/', 1)[-1]}", "heat")


def regions_note(row: dict) -> dict | None:
    """Where the normal model's map points for the verdict, in pixels of the original image: its boxes, or that
    none rose above the normal threshold; None for a verdict of a model without a normal model."""
    from inspector.store.schema import parse_boxes

    if row.get("peak_x") is None:
        return None
    boxes = parse_boxes(row.get("boxes"))
    shown = " ".join(f"[{x0}, {y0}, {x1}, {y1}]" for x0, y0, x1, y1 in boxes)
    text = f"boxes: {shown}" if boxes else "no region above the normal threshold"
    return {"text": text, "peak_x": row["peak_x"], "peak_y": row["peak_y"]}


def roc_png(cv: dict) -> bytes | None:
    """ROC of each method's out-of-fold probabilities; None when a class is missing."""
    oof = cv.get("oof") or []
    y = np.array([int(r.get("label") == "abnormal") for r in oof], dtype=np.int64)
    curves = {}
    for method in cv["methods"]:
        p = np.array([float(r["p_abnormal"].get(method, np.nan)) for r in oof])
        if not np.isnan(p).any():
            curves[method] = p
    fig = roc_figure(y, curves, "ROC, out-of-fold", size=4.5, dpi=90, legend_size=8)
    return None if fig is None else figure_png(fig)


def confusion_png(cv: dict) -> bytes:
    """Pooled confusion matrix of each method at the cross-validation threshold."""
    plt = pyplot()
    names = list(cv["methods"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names), 2.8), dpi=90, squeeze=False)
    for ax, name in zip(axes[0], names):
        p = cv["methods"][name]["pooled"]
        grid = np.array([[p["tn"], p["fp"]], [p["fn"], p["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), n in np.ndenumerate(grid):
            ax.text(j, i, str(n), ha="center", va="center", color="black", fontsize=12)
        ax.set_xticks([0, 1], ["normal", "abnormal"])
        ax.set_yticks([0, 1], ["normal", "abnormal"])
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.tight_layout()
    return figure_png(fig)


def totals(summary: list[dict]) -> list[dict]:
    """summarize's groups with their pass rate written as the table shows it."""
    return [dict(s, pass_rate=metrics.format_percent(s["pass_rate"], 1)) for s in summary]


def section_totals(rows: list[dict]) -> Markup:
    return render_template("totals.html", every=totals(summarize(rows, lambda r: "all")),
                           per_day=totals(summarize(rows, local_day)),
                           per_bundle=totals(summarize(rows, lambda r: r["bundle"])))


def review_cell(row: dict) -> dict | None:
    """The newest review of the verdict as the flagged table shows it; None while none is recorded."""
    review = row.get("review")
    if not review:
        return None
    when = review["created_at"].astimezone().strftime("%Y-%m-%d %H:%M") if review.get("created_at") else ""
    more = f"; {review['count']} reviews" if review.get("count", 1) > 1 else ""
    return {"label": review["label"], "anomalies": review.get("anomalies"), "reviewer": review["reviewer"],
            "when": when, "more": more}


def flagged_row(row: dict, conversions: dict, cfg: Config) -> dict:
    when = row["when"].astimezone().strftime("%Y-%m-%d %H:%M:%S") if row["when"] else "-"
    return {"when": when, "path": display_path(row["path"]), "serial": row.get("serial"), "lot": row.get("lot"),
            "bundle": row["bundle"], "outcome": row["outcome"],
            "reason": row["reason"], "p": "-" if row["p_abnormal"] is None else f"{row['p_abnormal']:.3f}",
            "review": review_cell(row), "thumb": thumbnail(row, conversions.get(row["model_sha256"]), cfg),
            "heat": heatmap(row), "regions": regions_note(row)}


def section_flagged(store, rows: list[dict], cfg: Config) -> Markup:
    flagged = [r for r in rows if r["outcome"] in ("abnormal", "rescan") and r["status"] != "duplicate"]
    copies = sum(r["outcome"] in ("abnormal", "rescan") and r["status"] == "duplicate" for r in rows)
    conversions = model_conversions(store) if flagged else {}
    return render_template("flagged.html", count=len(flagged), copies=copies,
                           rows=[flagged_row(r, conversions, cfg) for r in flagged[:MAX_FLAGGED]],
                           more=max(0, len(flagged) - MAX_FLAGGED))


def cv_table(cv: dict) -> dict:
    """The paper's Table 1 (held-out bundle x method, balanced accuracy in %, Overall last), its marks' notes, and
    each method's pooled counts."""
    from inspector.learn.crossval import MARK_NOTES, MARKS

    names = list(cv["methods"])
    bundles = [f["bundle"] for f in cv["methods"][names[0]]["folds"]]
    used: set[str] = set()

    def cell(c: dict) -> str:
        counts = metrics.Counts(c["tp"], c["fp"], c["tn"], c["fn"])
        mark = MARKS.get(counts.ba_basis, "")
        used.update(mark)
        return metrics.format_percent(counts.balanced_accuracy) + mark

    folds = [(bundle, [cell(cv["methods"][m]["folds"][k]) for m in names]) for k, bundle in enumerate(bundles)]
    overall = [cell(cv["methods"][m]["pooled"]) for m in names]
    fmt = metrics.format_percent
    pooled = []
    for m in names:
        p, auc = cv["methods"][m]["pooled"], cv["methods"][m].get("roc_auc")
        pooled.append((m, [p["tp"], p["fp"], p["tn"], p["fn"], fmt(p.get("precision")), fmt(p.get("recall")),
                           fmt(p.get("f1")), fmt(auc)]))
    return {"names": names, "folds": folds, "overall": overall,
            "notes": [(mark, MARK_NOTES[mark]) for mark in sorted(used)], "pooled": pooled}


def section_cv(cfg: Config) -> Markup:
    found = latest_cv(cfg.state.dir)
    if found is None:
        return render_template("cv.html", cv=None, folder=os.path.join(cfg.state.dir, "cv"))
    path, cv = found
    ds, settings = cv.get("dataset", {}), cv.get("config", {})
    run = {"name": path.name, "created": cv.get("created", "?"), "root": ds.get("root"), "images": ds.get("images"),
           "bundles": len(ds.get("bundles", [])), "epochs": settings.get("epochs"),
           "input_size": settings.get("input_size"), "threshold": settings.get("threshold", 0.5)}
    table, plots, error = None, [], None  # plots: a Picture each, or the text of a note in its place
    try:
        table = cv_table(cv)
        roc = roc_png(cv)
        plots.append(embedded_png(roc, "ROC curve", "roc") if roc else "no ROC: one class only")
        plots.append(embedded_png(confusion_png(cv), "confusion matrix", "confusion"))
    except (KeyError, TypeError, ValueError, IndexError, InspectorError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return render_template("cv.html", cv=run, table=table, plots=plots, error=error)


def meta_rows(meta: dict) -> list[tuple[str, object]]:
    """The model metadata the report lists, key and value, with the training metrics it carries."""
    m = meta.get("metrics") or {}
    return [(k, meta.get(k)) for k in META_KEYS if k in meta] + [(k, m.get(k)) for k in METRIC_KEYS if k in m]


def section_model(store, cfg: Config) -> Markup:
    info = model_in_use(store, cfg)
    used, used_meta, file_meta = info["last_used"], info["last_used_meta"], info["file_meta"]
    file_differs = file_meta is not None and (not used or not used_meta or file_meta.get("tensors_sha256")
                                              != used_meta.get("tensors_sha256"))
    return render_template("model.html", used=bool(used), used_sha=used["sha256"][:12] if used else "",
                           used_path=(used.get("path") or "path not recorded") if used else "",
                           used_rows=meta_rows(used_meta) if used and used_meta else None,
                           file=info["file"], file_found=file_meta is not None,
                           file_rows=meta_rows(file_meta) if file_differs else None)


def section_trends(store, rows: list[dict], since: datetime | None, until: datetime | None,
                   station: str | None) -> Markup:
    """Pass rate per day, P(abnormal) per week, the anomaly types' Pareto, overturned verdicts, the audits: drawn
    from the page's own rows (only the audits are read again)."""
    from inspector.loop.trends import trend_view

    return render_template("trends.html", **trend_view(store, since, until, station, rows))


def render_html(store, cfg: Config, rows: list[dict], since: datetime | None, until: datetime | None,
                station: str | None = None) -> str:
    """The whole page as one string; sections #totals, #trends, #flagged, #cv, #model."""
    now = datetime.now(timezone.utc).astimezone()

    def show(when: datetime | None, default: str) -> str:
        return when.astimezone().strftime("%Y-%m-%d %H:%M") if when else default

    return str(render_template(
        "page.html", generated=now.strftime("%Y-%m-%d %H:%M"),
        period=f"{show(since, 'the first image')} to {show(until, 'now')}", outcomes=len(rows), database=store.where,
        sections=[section_totals(rows), section_trends(store, rows, since, until, station),
                  section_flagged(store, rows, cfg), section_cv(cfg), section_model(store, cfg)]))
