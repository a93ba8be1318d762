"""`inspector score` and `inspector model info/init`: the detector by hand, outside the daemon."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from inspector.cli import cli, with_config
from inspector.cli.output import JSON, echo_json, format_option
from inspector.base.config import METHODS, WINDOWED_METHODS, Config, parse_input_size
from inspector.base.paths import display_path

if TYPE_CHECKING:
    from inspector.imaging.modelmeta import ModelMeta

UNTRAINED_WARNING = "warning: this model is UNTRAINED (written by `inspector model init`): its verdicts are random"


def format_prediction(pred) -> str:
    if pred.verdict == "rescan":
        return f"{display_path(pred.path)}: rescan ({pred.reason}) {pred.seconds:.3f}s"
    return f"{display_path(pred.path)}: {pred.verdict} P(abnormal)={pred.p_abnormal:.4f} {pred.seconds:.3f}s"


@cli.command("score")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model artifact (default: model.path in config.toml).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: model.device in config.toml).")
@format_option(legacy_json="flag")
@with_config
def score_command(images: tuple[str, ...], model_path: str | None, fmt: str, device: str | None,
                  cfg: Config) -> None:
    """Score 16-bit IMAGES with the detector: verdict, P(abnormal) and seconds per image.

    An image that cannot be read is reported as rejected and the others are still scored;
    the exit code is then 1. --format json prints one list, an object per image (rejected ones too).
    """
    as_json = fmt == JSON
    from inspector.learn.bulk import score_items
    from inspector.imaging.read import read_image
    from inspector.learn.infer import Detector
    from inspector.base.pipeline import worker_count

    det = Detector.load(model_path or cfg.model.path, device=device or cfg.model.device,
                        batch_size=cfg.infer.batch_size)
    if not det.meta.trained:
        click.echo(UNTRAINED_WARNING, err=True)
    det.self_check()  # a model that cannot score a known image must not give verdicts; also warms up
    records: list[dict] = []
    failed = 0
    read = lambda path: read_image(path, max_height=cfg.imaging.max_height, max_width=cfg.imaging.max_width)  # noqa: E731
    for scored in score_items(det, images, read, lambda path: path, worker_count(cfg.infer.workers)):
        path, exc, pred = scored.item, scored.error, scored.prediction
        if exc is not None:
            failed += 1
            records.append({"path": display_path(path), "verdict": "rejected", "reason": exc.reason,
                            "message": exc.message})
            if not as_json:
                click.echo(f"{display_path(path)}: rejected: {exc.message} [{exc.reason}]")
            continue
        where = pred.regions.to_json() if pred.regions is not None else {"peak": None, "boxes": None}
        records.append({"path": display_path(path), "verdict": pred.verdict, "p_abnormal": pred.p_abnormal,
                        "threshold": pred.threshold, "seconds": round(pred.seconds, 4), "reason": pred.reason,
                        "model_sha256": det.sha256, **where})
        if not as_json:
            click.echo(format_prediction(pred))
    if as_json:
        echo_json(records)
    if failed:
        raise click.exceptions.Exit(1)


@cli.group("model")
def model_group() -> None:
    """Inspect a model artifact or write an untrained one."""


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def describe_score(meta: ModelMeta) -> str:
    """What P(abnormal) is, and the normal model behind the maps, in one line."""
    normal = meta.normal or {}
    if not normal:
        return "the head (no normal model: trained before inspector fitted one; heat maps are Grad-CAM, retrain for maps)"
    cal = normal.get("calibration", {})
    what = {"head": "the head (the classifier)", "map": "the normal model's map alone (no head: normals only)",
            "fusion": "the mean of the head's and the normal model's map score"}[meta.score]
    note = ("; held-out bundles saturate its map (few training bundles), so boxes are drawn against normal scans "
            "of the bundles it has seen" if cal.get("saturated") else "")
    return (f"{what}; normal model on {'+'.join(normal.get('stages', []))} from {normal.get('images', '?')} normal "
            f"images in {normal.get('bundles', '?')} bundle(s), boxes above map value {cal.get('box_threshold', 0):.3g}"
            + note)


def describe_quality(quality: dict) -> str:
    limits = {k: v for k, v in (quality or {}).items() if v is not None}

    def show(v: object) -> str:  # a limit, or a [low, high] range of the training images
        return "-".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else f"{v:g}"

    return ", ".join(f"{k} {show(v)}" for k, v in sorted(limits.items())) if limits else "off"


def describe_metrics(metrics: dict) -> str:
    if not metrics:
        return "none"
    def show(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)

    return ", ".join(f"{k} {show(v)}" for k, v in sorted(metrics.items()))


@model_group.command("info")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@format_option(legacy_json="flag")
@with_config
def info_command(model_path: str, fmt: str, cfg: Config) -> None:
    """Show what MODEL was trained with: conversion, window, input size, threshold, metrics, provenance.

    --format json prints the metadata as one JSON object, with the model's path and sha256.
    """
    from inspector.imaging.modelmeta import read_meta

    meta = read_meta(model_path)
    sha = file_sha256(Path(model_path))
    if fmt == JSON:
        data = json.loads(meta.to_json())
        data.update(path=model_path, sha256=sha)
        echo_json(dict(sorted(data.items())))
        return
    h, w = meta.input_size
    conversion = meta.conversion
    rows = [
        ("model", model_path),
        ("sha256", sha),
        ("trained", "yes" if meta.trained else "NO: untrained, written by `inspector model init`; verdicts are random"),
        ("method", conversion.method),
        ("window", f"{conversion.window.lo}-{conversion.window.hi}" if conversion.window
         else "none (not needed by this method)"),
        ("input size", f"{h} x {w} px (height x width)"),
        ("threshold", f"{meta.threshold:g} ({meta.threshold_source})"),
        ("scores by", describe_score(meta)),
        ("quality gate", describe_quality(meta.quality)),
        ("clahe", f"clip_limit {conversion.clahe[0]}, tile_grid {conversion.clahe[1]}"),
        ("weights", meta.weights),
        ("freeze", meta.freeze),
        ("metrics", describe_metrics(meta.metrics)),
        ("fingerprint", meta.train_fingerprint or "none"),
        ("created", meta.created_at),
        ("version", f"inspector {meta.version}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@model_group.command("init")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the model (.safetensors).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Conversion (default: convert.method in config.toml).")
@click.option("--window", nargs=2, type=int, default=None, metavar="LO HI",
              help="16-bit values mapped to 0 and 255; needed by global, mix and clahe.")
@click.option("--input-size", default=None, metavar="HxW",
              help="Network input, e.g. 2000x1000 (default: model.input_size in config.toml).")
@click.option("--weights", default=None, metavar="none|imagenet|PATH",
              help="Backbone weights (default: model.weights in config.toml).")
@click.option("--seed", type=int, default=None, help="Seed of the random layers (default: train.seed).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@with_config
def init_command(out: str, method: str | None, window: tuple[int, int] | None, input_size: str | None,
                 weights: str | None, seed: int | None, force: bool, cfg: Config) -> None:
    """Write an UNTRAINED model, so a station can be set up and tested before the first training."""
    method = method or cfg.convert.method
    if method in WINDOWED_METHODS and not window:
        raise click.UsageError(f"--method {method} needs --window LO HI (the 16-bit values mapped to 0 and 255)")
    if Path(out).exists() and not force:
        raise click.UsageError(f"{out} already exists; pass --force to overwrite it")
    from inspector.imaging.convert import Window
    from inspector.learn.model import init_model
    from inspector.imaging.modelmeta import Embedding

    win = Window(*window) if window else None
    size = parse_input_size(input_size) if input_size else tuple(cfg.model.input_size)
    weights = weights or cfg.model.weights
    embedding = Embedding(cfg.model.features, cfg.model.pooling) if cfg.model.head != "paper" else None
    sha = init_model(out, method, win, size, weights=weights, freeze=cfg.model.freeze,
                     seed=cfg.train.seed if seed is None else seed, embedding=embedding, head=cfg.model.head)
    used = f", window {win.lo}-{win.hi}" if win else ""
    click.echo(f"wrote {out}: method {method}{used}, input {size[0]}x{size[1]}, weights {weights}, sha256 {sha}")
    click.echo("this model is UNTRAINED: its verdicts are random until `inspector train` writes a trained one")
