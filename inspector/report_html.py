"""The HTML report: one self-contained file (images as data: URIs, inline CSS, no scripts) for a browser.

Every text that comes from a file name, the database or a JSON file goes through html.escape.
"""

from __future__ import annotations

import base64
import html
import os
from datetime import datetime, timezone

import cv2
import numpy as np

from inspector import metrics
from inspector.plots import figure_png, pyplot, roc_figure
from inspector.config import Config
from inspector.errors import ImageError, InspectorError
from inspector.paths import display_path
from inspector.report import latest_cv, local_day, model_conversions, model_in_use, summarize

THUMB_HEIGHT_PX = 160
MAX_FLAGGED = 200  # thumbnails beyond this would make the file unwieldy; the rest are listed in csv/json
CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;
vertical-align:top}th{background:#f0f0f0}td.l,th.l{text-align:left}.muted{color:#777}
.abnormal{color:#b00020;font-weight:bold}.rescan{color:#a06000;font-weight:bold}.pending{color:#b00020}
.ph{display:inline-block;width:90px;min-height:60px;padding:4px;border:1px dashed #aaa;color:#777;font-size:.8em;
text-align:left}img{display:block}code{font-size:.9em}.regions{font-size:.8em;max-width:220px;margin-top:.3em}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str, cls: str) -> str:
    return f'<img class="{cls}" alt="{esc(alt)}" src="{png_uri(png)}">'


def placeholder(text: str) -> str:
    return f'<span class="ph">{esc(text)}</span>'


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
    from inspector.queries import add_places, moved_place

    places: list = []
    add_places(places, moved_place(row), row["path_raw"])
    return places


def thumbnail(row: dict, meta: dict | None, cfg: Config) -> str:
    """The scored image in its model's own conversion, small, only while its file still holds what was scored
    (imaging.read_recorded, as the review station reads it); a placeholder says why when it cannot be."""
    from inspector.convert import convert_recorded
    from inspector.imaging import read_recorded

    try:
        img16, _ = read_recorded(recorded_places(row), row["sha256"], cfg.imaging.max_height, cfg.imaging.max_width)
    except ImageError as exc:
        return placeholder(f"source image unavailable: {exc.message}")
    try:
        img8 = convert_recorded(img16, meta)
    except InspectorError as exc:
        return placeholder(f"cannot convert: {exc}")
    return img_tag(encode_png(img8), f"thumbnail of {display_path(row['path']).rsplit('/', 1)[-1]}", "thumb")


def heatmap(row: dict) -> str:
    """The Grad-CAM overlay stored with the verdict, small, checked as the review station checks it
    (imaging.load_heatmap); a placeholder when there is none or it fails the check."""
    from inspector.imaging import load_heatmap

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
    return img_tag(encode_png(img), f"heat map of {display_path(row['path']).rsplit('/', 1)[-1]}", "heat")


def regions_note(row: dict) -> str:
    """Where the normal model's map points for the verdict, in pixels of the original image: its boxes, or that
    none rose above the normal threshold; nothing for a verdict of a model without a normal model."""
    from inspector.schema import parse_boxes

    if row.get("peak_x") is None:
        return ""
    boxes = parse_boxes(row.get("boxes"))
    shown = " ".join(f"[{x0}, {y0}, {x1}, {y1}]" for x0, y0, x1, y1 in boxes)
    text = f"boxes: {shown}" if boxes else "no region above the normal threshold"
    return (f"<div class='regions'>{esc(text)}<br><span class='muted'>map peak at x={esc(row['peak_x'])}, "
            f"y={esc(row['peak_y'])}</span></div>")


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


def totals_table(title: str, summary: list[dict]) -> str:
    head = ("<tr><th class='l'>" + esc(title) + "</th><th>electrodes</th><th>normal</th><th>abnormal</th>"
            "<th>rescan</th><th>rejected</th><th>pass rate</th><th>duplicate files</th></tr>")
    body = "".join(
        f"<tr><td class='l'>{esc(s['group'])}</td><td>{s['total']}</td><td>{s['normal']}</td>"
        f"<td>{s['abnormal']}</td><td>{s['rescan']}</td><td>{s['rejected']}</td>"
        f"<td>{esc(metrics.format_percent(s['pass_rate'], 1))}%</td><td>{s['duplicates']}</td></tr>" for s in summary)
    return f"<table>{head}{body}</table>" if summary else "<p class='muted'>no images in this period</p>"


def section_totals(rows: list[dict]) -> str:
    every = summarize(rows, lambda r: "all")
    parts = ["<h2 id='totals'>Totals and pass rate</h2>",
             "<p>Pass rate: normal verdicts over every electrode (abnormal, rescan and rejected files did not pass). "
             "A duplicate file (a content recorded before under another name) is counted once, as a duplicate.</p>",
             totals_table("period", every), "<h3>Per day (local time)</h3>",
             totals_table("day", summarize(rows, local_day)), "<h3>Per bundle</h3>",
             totals_table("bundle", summarize(rows, lambda r: r["bundle"]))]
    return "\n".join(parts)


def review_cell(row: dict) -> str:
    review = row.get("review")
    if not review:
        return "<span class='pending'>pending</span>"
    when = review["created_at"].astimezone().strftime("%Y-%m-%d %H:%M") if review.get("created_at") else ""
    extra = f" ({esc(review['anomalies'])})" if review.get("anomalies") else ""
    more = f"; {review['count']} reviews" if review.get("count", 1) > 1 else ""
    return f"{esc(review['label'])}{extra}<br><span class='muted'>{esc(review['reviewer'])} {esc(when)}{more}</span>"


def section_flagged(store, rows: list[dict], cfg: Config) -> str:
    flagged = [r for r in rows if r["outcome"] in ("abnormal", "rescan") and r["status"] != "duplicate"]
    parts = [f"<h2 id='flagged'>Abnormal and rescan ({len(flagged)})</h2>"]
    copies = sum(r["outcome"] in ("abnormal", "rescan") and r["status"] == "duplicate" for r in rows)
    if copies:
        parts.append(f"<p class='muted'>{copies} duplicate file(s) of these electrodes not listed again "
                     "(`inspector verdicts` marks them dup).</p>")
    if not flagged:
        return parts[0] + "<p class='muted'>none in this period</p>"
    conversions = model_conversions(store)
    parts.append("<table><tr><th class='l'>time</th><th class='l'>file</th><th class='l'>bundle</th>"
                 "<th class='l'>verdict</th><th>p(abnormal)</th><th class='l'>review</th><th>image</th>"
                 "<th>heat map</th></tr>")
    for r in flagged[:MAX_FLAGGED]:
        when = r["when"].astimezone().strftime("%Y-%m-%d %H:%M:%S") if r["when"] else "-"
        p = "-" if r["p_abnormal"] is None else f"{r['p_abnormal']:.3f}"
        reason = f"<br><span class='muted'>{esc(r['reason'])}</span>" if r["reason"] else ""
        parts.append(
            f"<tr><td class='l'>{esc(when)}</td><td class='l'><code>{esc(display_path(r['path']))}</code></td>"
            f"<td class='l'>{esc(r['bundle'])}</td><td class='l'><span class='{esc(r['outcome'])}'>"
            f"{esc(r['outcome'])}</span>{reason}</td><td>{esc(p)}</td><td class='l'>{review_cell(r)}</td>"
            f"<td>{thumbnail(r, conversions.get(r['model_sha256']), cfg)}</td><td class='l'>{heatmap(r)}{regions_note(r)}</td></tr>")
    parts.append("</table>")
    if len(flagged) > MAX_FLAGGED:
        parts.append(f"<p>{len(flagged) - MAX_FLAGGED} more not shown; `inspector export --format csv` lists all.</p>")
    return "\n".join(parts)


def cv_table(cv: dict) -> str:
    """The paper's Table 1: held-out bundle x method, balanced accuracy in %, Overall last."""
    from inspector.crossval import MARK_NOTES, MARKS

    names = list(cv["methods"])
    bundles = [f["bundle"] for f in cv["methods"][names[0]]["folds"]]
    used: set[str] = set()

    def cell(c: dict) -> str:
        counts = metrics.Counts(c["tp"], c["fp"], c["tn"], c["fn"])
        mark = MARKS.get(counts.ba_basis, "")
        used.update(mark)
        return esc(metrics.format_percent(counts.balanced_accuracy) + mark)

    out = ["<table><tr><th class='l'>Test bundle</th>" + "".join(f"<th>{esc(m)}</th>" for m in names) + "</tr>"]
    for k, bundle in enumerate(bundles):
        out.append(f"<tr><td class='l'>{esc(bundle)}</td>"
                   + "".join(f"<td>{cell(cv['methods'][m]['folds'][k])}</td>" for m in names) + "</tr>")
    out.append("<tr><th class='l'>Overall</th>"
               + "".join(f"<th>{cell(cv['methods'][m]['pooled'])}</th>" for m in names) + "</tr></table>")
    out.extend(f"<p class='muted'>{esc(mark)} {esc(MARK_NOTES[mark])}</p>" for mark in sorted(used))
    out.append("<table><tr><th class='l'>method</th><th>TP</th><th>FP</th><th>TN</th><th>FN</th><th>precision %</th>"
               "<th>recall %</th><th>F1 %</th><th>ROC AUC %</th></tr>")
    for m in names:
        p, auc = cv["methods"][m]["pooled"], cv["methods"][m].get("roc_auc")
        fmt = metrics.format_percent
        out.append(f"<tr><td class='l'>{esc(m)}</td><td>{p['tp']}</td><td>{p['fp']}</td><td>{p['tn']}</td>"
                   f"<td>{p['fn']}</td><td>{fmt(p.get('precision'))}</td><td>{fmt(p.get('recall'))}</td>"
                   f"<td>{fmt(p.get('f1'))}</td><td>{fmt(auc)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def section_cv(cfg: Config) -> str:
    head = "<h2 id='cv'>Latest cross-validation</h2>"
    found = latest_cv(cfg.state.dir)
    if found is None:
        return head + f"<p class='muted'>no results under {esc(os.path.join(cfg.state.dir, 'cv'))}: run `inspector cv`</p>"
    path, cv = found
    ds, settings = cv.get("dataset", {}), cv.get("config", {})
    threshold = settings.get("threshold", 0.5)
    parts = [head, f"<p>{esc(path.name)}, {esc(cv.get('created', '?'))}: dataset <code>{esc(ds.get('root'))}</code>, "
             f"{esc(ds.get('images'))} images, {esc(len(ds.get('bundles', [])))} bundles, "
             f"{esc(settings.get('epochs'))} epochs, input {esc(settings.get('input_size'))}, "
             f"leave-one-bundle-out, balanced accuracy in % at threshold {esc(threshold)}.</p>"]
    try:
        parts.append(cv_table(cv))
        roc = roc_png(cv)
        parts.append(img_tag(roc, "ROC curve", "roc") if roc else "<p class='muted'>no ROC: one class only</p>")
        parts.append(img_tag(confusion_png(cv), "confusion matrix", "confusion"))
    except (KeyError, TypeError, ValueError, IndexError, InspectorError) as exc:
        parts.append(f"<p class='muted'>{esc(path.name)} is not a cross-validation result this report can read "
                     f"({esc(type(exc).__name__)}: {esc(exc)})</p>")
    return "\n".join(parts)


def meta_rows(meta: dict) -> str:
    keys = ("method", "window", "input_size", "features", "pooling", "head", "threshold", "threshold_source",
            "weights", "freeze", "trained", "created_at", "version", "quality")
    rows = [f"<tr><td class='l'>{esc(k)}</td><td class='l'>{esc(meta.get(k))}</td></tr>" for k in keys if k in meta]
    m = meta.get("metrics") or {}
    rows += [f"<tr><td class='l'>{esc(k)}</td><td class='l'>{esc(m.get(k))}</td></tr>"
             for k in ("epochs", "images", "bundles", "class_weights") if k in m]
    return "".join(rows)


def section_model(store, cfg: Config) -> str:
    info = model_in_use(store, cfg)
    parts = ["<h2 id='model'>Model in use</h2>"]
    used = info["last_used"]
    if used:
        parts.append(f"<p>Newest verdict by model <code>{esc(used['sha256'][:12])}</code> "
                     f"({esc(used.get('path') or 'path not recorded')}).</p>")
        if info["last_used_meta"]:
            parts.append(f"<table>{meta_rows(info['last_used_meta'])}</table>")
    else:
        parts.append("<p class='muted'>no verdicts yet</p>")
    file_meta = info["file_meta"]
    if file_meta is None:
        parts.append(f"<p class='muted'>model.path <code>{esc(info['file'])}</code>: no readable model file.</p>")
    elif not used or not info["last_used_meta"] or file_meta.get("tensors_sha256") != info["last_used_meta"].get(
            "tensors_sha256"):
        parts.append(f"<p>model.path <code>{esc(info['file'])}</code> now holds (the daemon uses it after a "
                     f"reload):</p><table>{meta_rows(file_meta)}</table>")
    return "\n".join(parts)


def render_html(store, cfg: Config, rows: list[dict], since: datetime | None, until: datetime | None) -> str:
    """The whole page as one string; sections #totals, #flagged, #cv, #model."""
    now = datetime.now(timezone.utc).astimezone()

    def show(when: datetime | None, default: str) -> str:
        return when.astimezone().strftime("%Y-%m-%d %H:%M") if when else default

    period = f"{show(since, 'the first image')} to {show(until, 'now')}"
    body = [f"<h1>inspector report</h1><p>Generated {esc(now.strftime('%Y-%m-%d %H:%M'))}; period "
            f"{esc(period)}; {len(rows)} outcomes; database <code>{esc(store.where)}</code>.</p>",
            "<p><a href='#totals'>Totals</a> · <a href='#flagged'>Abnormal and rescan</a> · "
            "<a href='#cv'>Cross-validation</a> · <a href='#model'>Model</a></p>",
            section_totals(rows), section_flagged(store, rows, cfg), section_cv(cfg), section_model(store, cfg)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>inspector report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
