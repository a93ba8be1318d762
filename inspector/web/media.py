"""The pictures of a recorded image, by its id in the database (never by a path from the request): the image in
its model's own conversion at full size, the daemon's Grad-CAM heat map, and the 16-bit original.

The file is read from where the database last recorded its content (processed/ after a move, else the capture
path, or another file that held it) and used only while it still hashes to the recorded sha256. Converted
images are kept in a small cache of encoded PNGs, so the next electrode (which the queue page prefetches) and a
second look cost nothing.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict

import cv2
import numpy as np
from flask import Blueprint, Response, send_file

from inspector.base.errors import ImageError, InspectorError
from inspector.web import WebError, ext

blueprint = Blueprint("media", __name__)
CACHE_IMAGES = 12  # encoded full-size PNGs kept (a 2000 x 1000 scan: about 1 to 2 MB each)
MIME = {".tif": "image/tiff", ".tiff": "image/tiff", ".png": "image/png", ".dcm": "application/dicom",
        ".dicom": "application/dicom"}
NO_STORE = "no-store"  # scans of the plant's product: kept by no browser or proxy cache, like the pages


class PngCache:
    """Encoded PNGs by key; concurrent requests for one key render it once."""

    def __init__(self, size: int = CACHE_IMAGES):
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._rendering: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, render) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            busy = self._rendering.setdefault(key, threading.Lock())
        with busy:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                png = render()
                with self._lock:
                    self._items[key] = png
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
            finally:
                with self._lock:
                    self._rendering.pop(key, None)
        return png


CACHE = PngCache()


def recorded(image_id: int) -> dict:
    detail = ext()["store"].image_detail(image_id)
    if detail is None:
        raise WebError(404, f"no recorded image {image_id}")
    return detail


def original_bytes(detail: dict) -> tuple[bytes, str]:
    from inspector.imaging.read import load_recorded

    try:
        return load_recorded(ext()["store"].recorded_places(detail["sha256"], first=detail), detail["sha256"])
    except ImageError as exc:
        raise WebError(404, f"the image file is unavailable: {exc.message}") from None


def encode_png(img8: np.ndarray) -> bytes:
    """One gray channel when the three are equal (naive, global, local), else the colour image; fast deflate."""
    if img8.ndim == 3 and np.array_equal(img8[..., 0], img8[..., 1]) and np.array_equal(img8[..., 0], img8[..., 2]):
        img8 = img8[..., 0]
    elif img8.ndim == 3:
        img8 = cv2.cvtColor(img8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img8, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise WebError(500, "OpenCV could not encode the image as PNG")
    return buf.tobytes()


def converted_png(detail: dict) -> bytes:
    """The image as its model saw it (the model's conversion and window) at the image's own size."""
    from inspector.imaging.convert import convert_recorded
    from inspector.imaging.read import read_recorded

    cfg = ext()["cfg"]
    places = ext()["store"].recorded_places(detail["sha256"], first=detail)
    try:
        img16, _ = read_recorded(places, detail["sha256"], cfg.imaging.max_height, cfg.imaging.max_width)
    except ImageError as exc:
        raise WebError(404, f"the image file is unavailable: {exc.message}") from None
    meta = json.loads(detail["meta_json"]) if detail.get("meta_json") else None
    try:
        img8 = convert_recorded(img16, meta, detail.get("method"))
    except InspectorError as exc:
        raise WebError(404, f"the image cannot be converted: {exc}") from None
    return encode_png(img8)


@blueprint.route("/image/<int:image_id>/window.png")
def window(image_id: int):
    detail = recorded(image_id)
    png = CACHE.get((detail["sha256"], detail["model_sha256"], detail["method"]), lambda: converted_png(detail))
    return Response(png, mimetype="image/png", headers={"Cache-Control": NO_STORE})


@blueprint.route("/image/<int:image_id>/heatmap.png")
def heatmap(image_id: int):
    """The heat map the daemon drew for this verdict (a PNG under that station's state.dir)."""
    detail = recorded(image_id)
    path = detail.get("heatmap_path")
    if not path:
        raise WebError(404, "no heat map was drawn for this verdict (only abnormal verdicts get one, drawn when "
                            "the daemon is idle; `inspector explain IMAGE --out PNG` draws one at any time)")
    from inspector.imaging.read import load_heatmap

    try:
        png = load_heatmap(path, detail["sha256"], detail.get("heatmap_sha256"))
    except ImageError as exc:
        raise WebError(404, f"the heat map is unavailable: {exc.message} (heat maps are kept on the disk of "
                            f"station {detail['verdict_station'] or '?'})") from None
    return Response(png, mimetype="image/png", headers={"Cache-Control": NO_STORE})


@blueprint.route("/image/<int:image_id>/original")
def original(image_id: int):
    """The 16-bit file as the scanner wrote it, as a download named as it was captured."""
    import io

    detail = recorded(image_id)
    data, _ = original_bytes(detail)
    captured = os.path.basename(bytes(detail["path_raw"])).decode("utf-8", "replace")
    name = re.sub(r"[^\w.\- ]+", "_", captured).strip() or f"image-{image_id}"
    mime = MIME.get(os.path.splitext(name)[1].lower(), "application/octet-stream")
    answer = send_file(io.BytesIO(data), mimetype=mime, as_attachment=True, download_name=name, max_age=0)
    answer.headers["Cache-Control"] = "no-store"
    return answer
