"""Dataset commands: `inspector synth` writes a synthetic set, `inspector dataset check` vets a folder."""

from __future__ import annotations

from pathlib import Path

import click

from inspector.cli import cli, with_config
from inspector.cli.output import JSON, echo_json, format_option
from inspector.base.config import Config


@cli.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--bundles", default=12, show_default=True, type=click.IntRange(1), help="Number of bundles.")
@click.option("--per-bundle", default=60, show_default=True, type=click.IntRange(1), help="Images per bundle.")
@click.option("--abnormal-rate", default=0.21, show_default=True, type=click.FloatRange(0, 1),
              help="Share of abnormal electrodes in each bundle.")
@click.option("--scale", default=1.0, show_default=True, type=float,
              help="Image size factor; 1.0 is real size (~2072 x 1145 px), 0.1 is fast for trials.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--force", is_flag=True, help="Write into OUT even when it is not empty.")
@with_config
def synth_command(cfg: Config, out: str, bundles: int, per_bundle: int, abnormal_rate: float,
                  scale: float, seed: int, force: bool) -> None:
    """Write a synthetic labeled set of 16-bit electrode X-rays (TIFF + labels.csv) to OUT.

    Bundles differ in coating level, grain and margins; abnormal electrodes carry 1-2 of the
    11 anomaly types, and a quarter of normal ones a minor, acceptable one. Each abnormal image
    gets a defect mask, masks/<bundle>/<name>.png (255 where the defect changed the counts).
    """
    from inspector.data.synth import summarize, synthesize

    path = Path(out)
    if path.exists() and any(path.iterdir()) and not force:
        raise click.ClickException(f"{path} is not empty; choose an empty folder or add --force to write into it")
    ds = synthesize(path, bundles=bundles, per_bundle=per_bundle, abnormal_rate=abnormal_rate,
                    scale=scale, seed=seed, progress=True)
    info = summarize(ds)
    h, w = info["height"], info["width"]
    click.echo(f"wrote {info['images']} images in {info['bundles']} bundles to {path}")
    click.echo(f"abnormal: {info['abnormal']} ({info['abnormal_share']:.1%}), "
               f"each with its defect mask: {info['masks']} in {path / 'masks'}")
    click.echo(f"size: height {h[0]}-{h[2]} (mean {h[1]}), width {w[0]}-{w[2]} (mean {w[1]}) px")
    click.echo("anomalies (in abnormal / in normal as minor):")
    for name, c in info["anomalies"].items():
        click.echo(f"  {name:<16} {c['abnormal']:>4} / {c['normal']:>4}")


@cli.group("dataset")
def dataset_group() -> None:
    """Inspect labeled dataset folders (labels.csv + images)."""


@dataset_group.command("check")
@click.argument("root", metavar="DIR", type=click.Path(file_okay=False))
@format_option(legacy_json="flag")
@with_config
def check_command(cfg: Config, root: str, fmt: str) -> None:
    """Check a dataset without training: labels, unreadable images, duplicates, bundle balance.

    Exit status 0 when it is ready for training, 1 when problems are listed (with --format json the
    report is one JSON object on standard output, the error line on standard error). Anomaly types
    outside the paper's eleven are a note (with how many samples carry each), not a problem.
    """
    from inspector.data.datasetcheck import check_dataset

    report = check_dataset(root, max_height=cfg.imaging.max_height, max_width=cfg.imaging.max_width)
    if fmt == JSON:
        echo_json(report.to_dict())
    else:
        click.echo(report.format_text())
    if not report.ok:
        n = len(report.problems) + len(report.duplicates)
        raise click.ClickException(f"dataset {root} has {n} problem(s), listed above; fix them before training")
