"""`inspector convert`: show an operator the 8-bit image the network sees."""

from __future__ import annotations

from pathlib import Path

import click

from inspector.cli import cli, with_config
from inspector.base.config import METHODS, Config
from inspector.base.errors import InspectorError


@cli.command("convert")
@click.argument("image", type=click.Path(dir_okay=True, allow_dash=False))
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Conversion (default: the model's with --model, else convert.method in config.toml).")
@click.option("--window", nargs=2, type=int, default=None, metavar="LO HI",
              help="16-bit values mapped to 0 and 255 (default: the model's window with --model).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Take method and window from this model artifact (.safetensors).")
@with_config
def convert_command(image: str, out: str, method: str | None, window: tuple[int, int] | None,
                    model_path: str | None, cfg: Config) -> None:
    """Convert a 16-bit IMAGE to the 8-bit 3-channel PNG OUT the detector sees (before resizing).

    With --method mix the PNG's red, green and blue channels hold the naive, global and local
    conversions.
    """
    if Path(out).suffix.lower() != ".png":
        raise click.BadParameter(f"{out!r} must end in .png", param_hint="OUT")
    line = _convert_to_png(image, out, method, window, model_path, cfg)
    click.echo(line)


def _convert_to_png(image: str, out: str, method: str | None, window: tuple[int, int] | None,
                    model_path: str | None, cfg: Config) -> str:
    """Read, convert and write; returns the line to print."""
    import cv2

    from inspector.imaging.convert import Conversion
    from inspector.imaging.read import read_image
    from inspector.imaging.modelmeta import read_meta

    model = read_meta(model_path).conversion if model_path else None
    img16 = read_image(image, max_height=cfg.imaging.max_height, max_width=cfg.imaging.max_width)
    if model is None:
        conversion = Conversion.from_config(cfg.convert, method, window)
    else:
        conversion = Conversion(method or model.method, window or model.window, model.clahe)
    img8 = conversion.apply(img16)
    ok, buf = cv2.imencode(".png", img8[:, :, ::-1])  # OpenCV writes BGR: reverse so channel 0 is red
    if not ok:
        raise InspectorError(f"OpenCV could not encode {out} as PNG")
    try:
        Path(out).write_bytes(buf.tobytes())
    except OSError as exc:
        raise InspectorError(f"cannot write {out}: {exc.strerror or exc}; check the folder and free space") from None
    chosen = conversion.window
    used = "" if chosen is None or conversion.method in ("naive", "local") else f", window {chosen.lo}-{chosen.hi}"
    height, width = img8.shape[:2]
    return f"wrote {out}: method {conversion.method}{used}, {width} x {height} px, 3 channels"
