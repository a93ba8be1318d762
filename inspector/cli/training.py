"""Training commands: `inspector train`, `inspector cv` (the paper's Table 1) and `inspector evaluate`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from inspector.cli import cli, with_config
from inspector.cli.detector import describe_score
from inspector.cli.output import JSON, OUTPUT, emit, format_option, to_json
from inspector.base.config import HEADS, METHODS, OPTIMIZERS, POOLINGS, STAGES, Config, network_order, parse_input_size
from inspector.base.errors import InspectorError

PAPER_METHODS = "naive,global,local,mix"


def apply_overrides(cfg: Config, **given) -> Config:
    """Command-line values over config.toml; None means 'not given'. A bad value is a usage error (exit 2)."""
    train_keys = {"epochs", "class_weights", "seed", "target_recall", "optimizer", "min_steps"}
    model_keys = {"input_size", "weights", "features", "pooling", "head"}
    train = {k: v for k, v in given.items() if k in train_keys and v is not None}
    model = {k: v for k, v in given.items() if k in model_keys and v is not None}
    if "input_size" in model:
        try:
            model["input_size"] = parse_input_size(model["input_size"])
        except InspectorError as exc:
            raise click.BadParameter(str(exc), param_hint="'--input-size'") from None
    for key, allowed in (("features", STAGES), ("pooling", POOLINGS)):
        if key in model:
            model[key] = network_order(key, parse_list(model[key], f"--{key}", allowed))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train),
                               model=dataclasses.replace(cfg.model, **model))


def parse_list(text: str, option: str, allowed: tuple[str, ...], what: str = "allowed") -> tuple[str, ...]:
    """'layer2,layer3' -> ('layer2', 'layer3'), each among `allowed`, duplicates dropped."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise click.BadParameter(f"{text!r}: {', '.join(bad) or 'nothing given'} is not {what}; "
                                 f"give a comma-separated list of {', '.join(allowed)}", param_hint=f"'{option}'")
    return tuple(dict.fromkeys(values))


def parse_methods(text: str) -> list[str]:
    """'naive,global' -> ['naive', 'global'], each a known conversion method."""
    return list(parse_list(text, "--methods", METHODS, "a method"))


def prepare_device(cfg: Config):
    """Threads for CPU work and the device from model.device."""
    from inspector.learn.model import resolve_device
    from inspector.learn.train import set_threads

    set_threads(cfg.train.threads)
    return resolve_device(cfg.model.device)


def warn(message: str) -> None:
    click.echo(message, err=True)


def common_options(func):
    """Options train and cv share; defaults come from config.toml."""
    options = [
        click.option("--epochs", type=click.IntRange(1), default=None,
                     help="Epochs; adamw runs more when train.min_steps asks for it [default: train.epochs, 50]."),
        click.option("--input-size", default=None, metavar="HxW",
                     help="Network input, height x width [default: model.input_size, 2000x1000]."),
        click.option("--weights", default=None, metavar="imagenet|none|PATH",
                     help="Backbone weights [default: model.weights]; 'none' is random (tests)."),
        click.option("--features", default=None, metavar="STAGES",
                     help="Backbone stages pooled into the features, e.g. layer2,layer3 [default: model.features]."),
        click.option("--pooling", default=None, metavar="POOLS",
                     help=f"Pooling of each stage, among {', '.join(POOLINGS)} [default: model.pooling]."),
        click.option("--head", type=click.Choice(HEADS), default=None,
                     help="'linear' on standardized features, or 'paper' (layer4 -> fc -> 512/256/2) "
                          "[default: model.head]."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                     help="'adamw' (cosine, at least train.min_steps steps) or 'paper' (SGD, step decay) "
                          "[default: train.optimizer]."),
        click.option("--min-steps", type=click.IntRange(0), default=None, metavar="N",
                     help="adamw: at least N optimizer steps however small the set [default: train.min_steps]."),
        click.option("--class-weights", type=click.Choice(["none", "balanced"]), default=None,
                     help="'balanced': cross-entropy weighted inverse to class frequency "
                          "[default: train.class_weights]."),
        click.option("--seed", type=int, default=None,
                     help="Seed; the same seed repeats a CPU run [default: train.seed]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("train")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Model file to write [default: model.path].")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="16-bit -> 8-bit conversion [default: convert.method, global].")
@common_options
@click.option("--target-recall", type=click.FloatRange(0, 1), default=None, metavar="R",
              help="Choose the threshold from out-of-fold predictions so abnormal recall >= R "
                   "(runs leave-one-bundle-out first); 0 keeps 0.5 [default: train.target_recall].")
@click.option("--normals-only", is_flag=True,
              help="Train no head: score by the normal model's map alone (model.score = map), e.g. for a new line "
                   "or coating with no abnormal electrode yet.")
@with_config
def train_command(cfg: Config, dataset: str, out: str | None, method: str | None, target_recall: float | None,
                  normals_only: bool, **given) -> None:
    """Train the detector on every image of DATASET and write the model the daemon uses.

    Pooled backbone features (model.features), standardized on these images, then the head,
    trained with cross-entropy and random h/v flips (train.optimizer); the conversion's window
    and the standardization are fitted on these images and stored in the model. The normal model
    (model.map_stages: per position, what the normal electrodes look like) is fitted on the normal
    images; its map shows where a scan is not normal, and model.score decides whether P(abnormal) is
    the head's, the map's or their mean.
    """
    from inspector.data.dataset import load_dataset
    from inspector.learn.build import train_model

    cfg = apply_overrides(cfg, target_recall=target_recall, **given)
    device = prepare_device(cfg)
    ds = load_dataset(dataset)
    method = method or cfg.convert.method
    path = Path(out) if out else cfg.model.path
    outcome = train_model(ds, path, method, cfg, device, cfg.train.target_recall, warn=warn, normals_only=normals_only)
    meta = outcome.meta
    h, w = meta.input_size
    click.echo(f"trained {method} on {len(ds)} images ({len(ds.bundles)} bundles), input {h}x{w}, "
               f"weights {cfg.model.weights}, device {device}")
    click.echo(f"features: {'+'.join(meta.features)} pooled by {'+'.join(meta.pooling)}, head {meta.head}; "
               f"{meta.metrics['optimizer_settings']}")
    click.echo(f"window: {list(meta.window) if meta.window else 'none (' + method + ')'}")
    click.echo(f"threshold: {meta.threshold:.6g} ({meta.threshold_source})")
    if meta.quality:
        (h_lo, h_hi), (w_lo, w_hi) = meta.quality["height"], meta.quality["width"]
        click.echo(f"quality gate: blur_min {meta.quality['blur_min']:.3g}, "
                   f"clipped_fraction {meta.quality['clipped_fraction']:g}, "
                   f"trained on {h_lo}-{h_hi} x {w_lo}-{w_hi} px")
    click.echo(f"scores by: {describe_score(meta)}")
    click.echo("training: " + ("no head (--normals-only)" if normals_only else outcome.fit.summary()))
    click.echo(f"wrote {outcome.path} (sha256 {outcome.sha256})")


@cli.command("cv")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--methods", default=PAPER_METHODS, show_default=True,
              help=f"Comma-separated conversion methods among {', '.join(METHODS)}.")
@common_options
@click.option("--no-cache", is_flag=True,
              help="Reference loop: the full forward pass every epoch instead of cached backbone features.")
@format_option(legacy_json="file")
@OUTPUT
@with_config
def cv_command(cfg: Config, dataset: str, methods: str, fmt: str, output: str | None, json_out: str | None,
               no_cache: bool, **given) -> None:
    """Leave-one-bundle-out cross-validation; prints the paper's Table 1 and pooled metrics.

    Every bundle is held out once per method; pooled balanced accuracy sums the folds'
    TP/FP/TN/FN as the paper does. Results are kept under state.dir/cv/ and compared with
    the latest earlier run on the same dataset. --format json prints all results (per-fold counts,
    out-of-fold probabilities) as one JSON object; --output FILE writes either to FILE.
    """
    from inspector.learn.crossval import (cross_validate, format_comparison, format_table, result_to_json, save_roc_png,
                                    save_run, write_json)
    from inspector.data.dataset import load_dataset

    chosen = parse_methods(methods)
    cfg = apply_overrides(cfg, **given)
    device = prepare_device(cfg)
    ds = load_dataset(dataset)
    res = cross_validate(ds, chosen, cfg, device, not no_cache, warn=warn)
    data = result_to_json(res)
    kept, previous = save_run(data, cfg.state.dir)
    if json_out:  # the deprecated --json OUT: the results to OUT beside the text, as before
        write_json(Path(json_out), data)
    png = save_roc_png(kept.with_suffix(".png"), ds.y, {m: r.oof for m, r in res.methods.items()},
                       f"ROC, leave-one-bundle-out, {ds.root.name}")
    notes = [f"kept: {kept}", *([f"ROC curve: {png}"] if png else []), *([f"wrote {json_out}"] if json_out else [])]
    if fmt == JSON:
        click.echo("\n".join(notes), err=True)
        emit(to_json(data), output)
        return
    lines = [format_table(data), "",
             f"{len(ds)} images, {len(ds.bundles)} bundles, device {device}, "
             f"{'cache' if data['config']['cache'] else 'no cache'}: {res.passes} backbone passes, "
             f"{res.hits} cached features reused, {res.seconds:.1f} s", *notes]
    if previous:
        lines.append(format_comparison(data, previous))
    emit("\n".join(lines), output)


@cli.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("dataset", type=click.Path(file_okay=False))
@format_option(legacy_json="file")
@OUTPUT
@with_config
def evaluate_command(cfg: Config, model: str, dataset: str, fmt: str, output: str | None,
                     json_out: str | None) -> None:
    """Score a labeled DATASET with MODEL as it is (its window, its threshold).

    Prints confusion counts, balanced accuracy, precision, recall, F1 and ROC AUC per bundle
    and pooled, and the images it got wrong with their probabilities; --format json prints the
    results, with every image's probability, as one JSON object; --output FILE writes either to FILE.
    """
    from inspector.learn.crossval import write_json
    from inspector.data.dataset import load_dataset
    from inspector.learn.evaluate import evaluate_model, format_evaluation
    from inspector.learn.train import set_threads

    set_threads(cfg.train.threads)
    ds = load_dataset(dataset)
    data = evaluate_model(Path(model), ds, cfg)
    if json_out:  # the deprecated --json OUT: the results to OUT beside the text, as before
        write_json(Path(json_out), data)
    if fmt == JSON:
        emit(to_json(data), output)
    else:
        emit(format_evaluation(data) + (f"\nwrote {json_out}" if json_out else ""), output)
