"""`inspector explain`, `review`, `reviews` and `export-labels`: evidence and the operator's final word."""

from __future__ import annotations

import click

from inspector.cli import cli, with_config
from inspector.cli.output import CSV, JSON, echo_json, emit_rows, format_option, render_table
from inspector.cli.station import SINCE, STATION, UNTIL, open_reader
from inspector.base.times import format_local, iso_time
from inspector.loop.record import review_record
from inspector.base.config import Config
from inspector.base.paths import display_path

REVIEW_FIELDS = ["id", "time", "sha256", "path", "label", "anomalies", "reviewer", "note", "model_verdict",
                 "model_sha256", "supersedes", "superseded", "station"]
PENDING_FIELDS = ["time", "verdict", "p_abnormal", "reason", "path", "sha256", "moved_to", "heatmap_path",
                  "model_sha256"]


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, exists=True))
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model artifact (default: model.path in config.toml).")
@click.option("--out", "out_png", type=click.Path(dir_okay=False), required=True,
              help="PNG to write: the heat map over the converted image, at the image's size.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: model.device in config.toml).")
@click.option("--method", type=click.Choice(["auto", "normal", "gradcam"]), default="auto", show_default=True,
              help="normal: where the scan differs from the normal electrodes the model learned (its normal model); "
                   "gradcam: where the head's evidence came from; auto: normal where the model has a normal model.")
@format_option(legacy_json="flag")
@with_config
def explain(cfg: Config, image: str, model_path: str | None, out_png: str, device: str | None, method: str,
            fmt: str) -> None:
    """Show where a scan is not normal, laid over IMAGE: the model's normal map (red: far from every normal
    electrode at that place; white boxes: regions above the threshold fitted on normal electrodes), or
    Grad-CAM of the head (--method gradcam, and models trained before the normal model).

    Prints P(abnormal), the verdict, the map's peak and boxes (pixels of IMAGE: x the column, y the row)
    and the PNG written.
    """
    from inspector.learn.explain import explain_image, save_overlay
    from inspector.imaging.read import read_image
    from inspector.learn.infer import Detector

    img16 = read_image(image, max_height=cfg.imaging.max_height, max_width=cfg.imaging.max_width)
    det = Detector.load(model_path or cfg.model.path, device=device or cfg.model.device)
    if not det.meta.trained:
        click.echo("warning: this model is UNTRAINED (written by `inspector model init`): its verdicts are random",
                   err=True)
    exp = explain_image(det, img16, method)
    where = exp.regions
    out = save_overlay(exp.img8, exp.cam, out_png, where.boxes if where is not None else ())
    if fmt == JSON:
        echo_json({"path": display_path(image), "verdict": exp.verdict, "p_abnormal": exp.p_abnormal,
                   "reason": exp.reason, "method": exp.method, "heatmap": str(out),
                   **(where.to_json() if where is not None else {"peak": None, "boxes": None})})
        return
    if exp.verdict == "rescan":
        click.echo(f"{display_path(image)}: rescan ({exp.reason}); P(abnormal)={exp.p_abnormal:.4f} for reference only")
    else:
        click.echo(f"{display_path(image)}: {exp.verdict} P(abnormal)={exp.p_abnormal:.4f} "
                   f"(threshold {det.meta.threshold:g})")
    if where is not None:
        shown = ", ".join(f"[{x0}, {y0}, {x1}, {y1}]" for x0, y0, x1, y1 in where.boxes) or "none"
        click.echo(f"map peak at x={where.peak[0]}, y={where.peak[1]}; boxes: {shown}")
    click.echo(f"heat map ({'normal model' if exp.method == 'normal' else 'Grad-CAM'}): {out}")


def describe_review(row: dict) -> str:
    kinds = f" [{', '.join(row['anomalies'])}]" if row["anomalies"] else ""
    return f"{row['label']}{kinds} by {row['reviewer']}"


class ReviewCommand(click.Command):
    """`inspector review IMAGE|SHA ...` records a decision; `inspector review sample ...` is the audit's draw (an
    image file named `sample` is given as ./sample)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra) -> click.Context:
        if args and args[0] == "sample":
            return review_sample.make_context(f"{info_name} sample", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@cli.command(cls=ReviewCommand)
@click.argument("ref", metavar="IMAGE|SHA")
@click.option("--label", type=click.Choice(["normal", "abnormal"]), default=None,
              help="The final decision on the electrode (or --withdraw).")
@click.option("--withdraw", is_flag=True,
              help="Take back the image's current review instead (an undo): it waits in the review queue again.")
@click.option("--anomaly", "anomalies", multiple=True, metavar="TYPE",
              help="Anomaly seen (repeatable): scratch, line, edge_cut, edge_tension, smudge, edge_ink_flow, "
                   "bubble, missing_ink, agglomerate, ink_fluctuation, ink_entry_exit (METHOD.md spellings too), "
                   "or a plant's own type (any other name, recorded as a new type with a note).")
@click.option("--by", "reviewer", default=None, help="Who decided (default: $USER, else 'unknown').")
@click.option("--note", default="", help="Free text kept with the review.")
@with_config
def review(cfg: Config, ref: str, label: str | None, withdraw: bool, anomalies: tuple[str, ...],
           reviewer: str | None, note: str) -> None:
    """Record the final decision on a scored image.

    IMAGE|SHA is an image file (matched by its content), a path the station recorded (also
    after the file was moved), or its sha256 (a unique prefix of at least 8 digits). Reviews
    are never overwritten: a new review supersedes the previous one and both are kept;
    --withdraw supersedes it with a withdrawal, so the image is unreviewed again.

    `inspector review sample --normal N` picks normal verdicts at random for an audit review
    (see `inspector review sample --help`).
    """
    from inspector.data.dataset import ANOMALY_TYPES, close_known_anomaly
    from inspector.loop.review import ReviewError, newest_review, parse_anomalies, record_review, resolve_image, \
        withdraw_review

    if (label is None) == (not withdraw):
        raise click.UsageError("give --label normal|abnormal, or --withdraw to take back the current review")
    if withdraw and anomalies:
        raise click.UsageError("--anomaly goes with --label, not with --withdraw")
    kinds = parse_anomalies(list(anomalies))  # a typo fails before the database is touched
    from inspector.store.store import open_configured

    with open_configured(cfg, create=False) as store:
        sha = resolve_image(store, ref)
        if withdraw:
            current = newest_review(store, sha)
            if current is None:
                raise ReviewError(f"{display_path(ref)} has no review to withdraw")
            rec = withdraw_review(store, current["id"], reviewer, note)
        else:
            rec = record_review(store, sha, label, kinds, reviewer, note)
    p_text = "" if rec.p_abnormal is None else f" P(abnormal)={rec.p_abnormal:.4f}"
    click.echo(f"review {rec.id}: {display_path(rec.path or rec.sha256)} (sha256 {rec.sha256[:12]}) "
               f"{describe_review({'label': rec.label, 'anomalies': rec.anomalies, 'reviewer': rec.reviewer})}; "
               f"model said {rec.model_verdict}{p_text} (model {(rec.model_sha256 or '-')[:12]})")
    if rec.previous is not None:
        prev = rec.previous
        prev_kinds = tuple(a for a in (prev["anomalies"] or "").split(";") if a)
        click.echo(f"supersedes review {prev['id']}: "
                   f"{describe_review(dict(prev, anomalies=prev_kinds))} at {format_local(prev['created_at'])}")
    for kind in rec.anomalies:
        if kind not in ANOMALY_TYPES:
            close = close_known_anomaly(kind)
            hint = f" (did you mean {close}? record the review again to correct it)" if close else ""
            click.echo(f"note: {kind} is not one of the paper's eleven anomaly types; recorded as a new type{hint}",
                       err=True)


def pending_record(row: dict) -> dict:
    return {"time": iso_time(row["time"]), **{k: row[k] for k in PENDING_FIELDS if k != "time"}}


@cli.command()
@click.option("--pending", is_flag=True,
              help="List abnormal and rescan verdicts nobody has reviewed yet, oldest first.")
@click.option("--sha", "ref", default=None, metavar="SHA",
              help="Only this image (a sha256, a unique prefix of 8+ digits, or a path).")
@click.option("--station", default=None, metavar="NAME",
              help="Only images this station recorded (reviews entered anywhere).")
@format_option(CSV, text_help="(a table) for people")
@with_config
def reviews(cfg: Config, pending: bool, ref: str | None, station: str | None, fmt: str) -> None:
    """List the review history, latest first (superseded reviews marked), or with --pending the work left."""
    from inspector.loop.review import pending_reviews, query_reviews, resolve_image

    with open_reader(cfg) as store:
        sha = resolve_image(store, ref) if ref else None
        rows = pending_reviews(store, sha, station) if pending else query_reviews(store, sha, station)
    if pending:
        cells = [[format_local(r["time"]), r["verdict"], "-" if r["p_abnormal"] is None else f"{r['p_abnormal']:.3f}",
                  display_path(r["path"]), display_path(r["heatmap_path"] or "-")] for r in rows]
        emit_rows([pending_record(r) for r in rows], PENDING_FIELDS, fmt,
                  ["TIME", "VERDICT", "P(ABNORMAL)", "PATH", "HEAT MAP"], cells, None, "no verdicts wait for review")
        return
    cells = [[str(r["id"]), format_local(r["created_at"]), r["sha256"][:12], r["label"],
              (r["anomalies"] or "-").replace(";", ","), display_path(r["reviewer"]), r["model_verdict"] or "-",
              str(r["supersedes"] or "-"), "superseded" if r["superseded"] else "current",
              display_path(r["path"] or "-")] for r in rows]
    emit_rows([review_record(r) for r in rows], REVIEW_FIELDS, fmt,
              ["ID", "TIME", "SHA256", "LABEL", "ANOMALIES", "BY", "MODEL SAID", "SUPERSEDES", "STATE", "PATH"], cells,
              None, "no reviews recorded yet")


@cli.command("export-labels")
@click.argument("out", type=click.Path(file_okay=False))
@with_config
def export_labels_command(cfg: Config, out: str) -> None:
    """Write the reviewed images as a dataset folder OUT (labels.csv + images) for training.

    The latest review of each image is its label; images nobody reviewed are left out. The
    bundle column follows review.bundle_rule: the capture subfolder, or the first group of a
    regular expression on the file name. Images are hard-linked when OUT is on the same
    filesystem, else copied; a file that is gone or changed is skipped with the reason.
    """
    from inspector.loop.labelset import export_labels
    from inspector.loop.review import ReviewError, latest_reviews

    with open_reader(cfg) as store:
        if not latest_reviews(store):
            raise ReviewError("no reviews recorded yet: record some with `inspector review IMAGE --label ...` "
                              "(`inspector reviews --pending` lists what waits)")
        summary = export_labels(store, out, cfg.review.bundle_rule, cfg.watch.capture_dir)
    for skip in summary.skipped:
        click.echo(f"skipped {display_path(skip.path or skip.sha256)}: {skip.reason}", err=True)
    if summary.unmatched:
        click.echo(f"warning: {len(summary.unmatched)} file name(s) did not match review.bundle_rule "
                   f"and got bundle 'unmatched': {', '.join(display_path(n) for n in summary.unmatched)}", err=True)
    click.echo(f"exported {len(summary.exported)} reviewed image(s) to {summary.out} "
               f"({summary.count('link')} hard-linked, {summary.count('copy')} copied, "
               f"{summary.count('kept')} already there; {len(summary.skipped)} skipped); "
               f"labels in {summary.labels_csv}")


@click.command("sample")
@click.option("--normal", "count", type=click.IntRange(min=1), required=True, metavar="N",
              help="How many electrodes the model judged normal to pick for an audit review.")
@SINCE
@UNTIL
@STATION
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the random draw: the same seed picks the same electrodes from the same candidates "
                   "(default: a new one, printed).")
@click.option("--by", "requested_by", default=None, help="Who asks for the audit (default: $USER).")
@click.option("--dry-run", is_flag=True, help="Print the picks; request nothing.")
@with_config
def review_sample(cfg: Config, count: int, since, until, station: str | None, seed: int | None,
                  requested_by: str | None, dry_run: bool) -> None:
    """Pick N random normal verdicts (of electrodes recorded in the period, not reviewed yet) for an audit review.

    They join the review queue (the review station, `inspector reviews --pending`) beside the
    flagged ones. Once reviewed, `inspector status` and the report's trends estimate the share
    of defects the model passes as normal, with its 95% Wilson interval. Fewer candidates than N:
    exit 1, nothing requested.
    """
    from inspector.loop.audit import sample_normals
    from inspector.store.store import open_configured

    with (open_reader(cfg) if dry_run else open_configured(cfg, create=False)) as store:
        drawn = sample_normals(store, count, since, until, station, seed, requested_by, dry_run)
    cells = [[format_local(p["time"]), "-" if p["p_abnormal"] is None else f"{p['p_abnormal']:.3f}",
              p["sha256"][:12], display_path(p["path"])] for p in drawn.picks]
    click.echo(render_table(["TIME", "P(ABNORMAL)", "SHA256", "PATH"], cells))
    what = "would be requested (dry run)" if dry_run else f"requested ({drawn.requested} new)"
    click.echo(f"{len(drawn.picks)} of {drawn.candidates} normal verdict(s) {what}; seed {drawn.seed}")
