"""Issue 26, case 7: every reader of a scan or a heat map (the review screen's image routes, the report's
thumbnails and heat maps, /reports/view and `inspector export --format html`) shows it only while it is what
was scored: one check, imaging.load_recorded for scans and imaging.load_heatmap for heat maps."""

from __future__ import annotations

import os

import pytest
import tifffile

from inspector.store.store import open_store
from inspector.data.synth import synth_electrode
from inspector.web.app import create_app
from web_station import build_station, logged_in



@pytest.fixture
def station(tmp_path):
    return build_station(tmp_path / "station", flagged=2, normal=0, scale=0.05)


def thumbnails(html: str) -> int:
    return html.count("class=\"thumb\"")


def test_a_scan_replaced_after_scoring_is_not_shown_in_the_report(station):
    with open_store(station.cfg.database.url) as store:
        client = logged_in(create_app(station.cfg, store))
        before = client.get("/reports/view?since=1d").data.decode()
        assert thumbnails(before) == 2
        replaced, linked = station.flagged[0]["path"], station.flagged[1]["path"]
        tifffile.imwrite(replaced, synth_electrode(999, scale=0.05, abnormal=False), compression="zlib")
        other = linked.with_name("other.tif")
        tifffile.imwrite(other, synth_electrode(998, scale=0.05, abnormal=False), compression="zlib")
        linked.unlink()
        linked.symlink_to(other)
        after = client.get("/reports/view?since=1d").data.decode()
        assert thumbnails(after) == 0, "a scan that changed after scoring is shown as if it were the scored one"
        assert after.count("now holds other content") >= 2


def test_a_heat_map_replaced_or_symlinked_is_refused_by_every_reader(station):
    abnormal = [i for i in station.flagged if i["verdict"] == "abnormal"]
    with open_store(station.cfg.database.url) as store:
        heat = [store.image_detail(i["image_id"])["heatmap_path"] for i in abnormal]
        client = logged_in(create_app(station.cfg, store))
        assert client.get("/reports/view?since=1d").data.decode().count("class=\"heat\"") == len(abnormal)
        planted = os.path.join(os.path.dirname(heat[0]), "planted.png")
        with open(heat[0], "rb") as fh:
            data = fh.read()
        with open(planted, "wb") as fh:
            fh.write(data)
        os.unlink(heat[0])
        os.symlink(planted, heat[0])  # any PNG the attacker likes, behind the recorded name
        answer = client.get(f"/image/{abnormal[0]['image_id']}/heatmap.png")
        assert answer.status_code == 404 and b"heat map" in answer.data
        report = client.get("/reports/view?since=1d").data.decode()
        assert report.count("class=\"heat\"") == len(abnormal) - 1, "the report shows a symlinked heat map"
        store.set_heatmap(abnormal[0]["sha256"], store.image_detail(abnormal[0]["image_id"])["model_sha256"],
                          heat[1] if len(heat) > 1 else planted)  # a heat map of another content's name
        assert client.get(f"/image/{abnormal[0]['image_id']}/heatmap.png").status_code == 404


def test_a_heat_map_overwritten_with_another_png_is_refused_where_its_digest_was_recorded(station):
    """The daemon records the digest of the PNG it drew (schema 5): another PNG copied over the right name, a
    plain file as every other check wants, is refused by the review station and the report alike."""
    import hashlib

    abnormal = [i for i in station.flagged if i["verdict"] == "abnormal"]
    with open_store(station.cfg.database.url) as store:
        detail = store.image_detail(abnormal[0]["image_id"])
        path = detail["heatmap_path"]
        with open(path, "rb") as fh:
            drawn = fh.read()
        store.set_heatmap(detail["sha256"], detail["model_sha256"], path, hashlib.sha256(drawn).hexdigest())
        client = logged_in(create_app(station.cfg, store))
        assert client.get(f"/image/{abnormal[0]['image_id']}/heatmap.png").data == drawn
        shown = client.get("/reports/view?since=1d").data.decode().count("class=\"heat\"")
        import cv2
        import numpy as np

        ok, other = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
        with open(path, "wb") as fh:  # the same name, a regular file, a PNG: only its content differs
            fh.write(other.tobytes())
        answer = client.get(f"/image/{abnormal[0]['image_id']}/heatmap.png")
        assert answer.status_code == 404 and b"changed after it was drawn" in answer.data
        assert client.get("/reports/view?since=1d").data.decode().count("class=\"heat\"") == shown - 1
