"""A review station to point the web tests (and bench/web.py) at: a config with a [web] section, real 16-bit TIFF
scans in a capture folder, their verdicts in a real database (the store's own writers), heat maps for the
abnormal ones, and users in a real users file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile

from inspector.base.config import Config
from inspector.base.configfile import load_config
from inspector.imaging.convert import Window, convert_image
from inspector.imaging.read import file_sha256
from inspector.store.store import open_store
from inspector.data.synth import synth_electrode
from store_rows import record_verdict

MODEL = "cd" * 32
META = {"method": "global", "window": [1500, 3000], "input_size": [64, 32], "threshold": 0.5, "trained": True,
        "clahe": {"clip_limit": 2.0, "tile_grid": 8}}
PASSWORDS = {"ann": "ann-password-1", "vic": "vic-password-1"}  # ann reviews, vic only looks
EVIL_NAME = "<img src=x onerror=alert(1)>.tif"


@dataclass
class Station:
    root: Path
    config: Path
    cfg: Config
    flagged: list[dict] = field(default_factory=list)  # oldest first: what the queue shows, in its order
    normal: list[dict] = field(default_factory=list)


def heat_overlay(img16: np.ndarray, seed: int) -> np.ndarray:
    """A Grad-CAM-like overlay (a JET blob over the converted image), as explain.save_overlay draws one."""
    img8 = convert_image(img16, META["method"], Window(*META["window"]))
    h, w = img16.shape
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    yy, xx = np.mgrid[0:h, 0:w]
    cam = np.exp(-(((yy - cy) / (0.08 * h)) ** 2 + ((xx - cx) / (0.08 * w)) ** 2))
    heat = cv2.applyColorMap(np.rint(cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(heat, 0.4, img8, 0.6, 0.0)


def build_station(root: Path, flagged: int = 4, normal: int = 2, scale: float = 0.2, database_url: str | None = None,
                  station_names: tuple[str, ...] = ("line1",), evil: bool = False, extra_config: str = "",
                  full_size: int = 0) -> Station:
    """`flagged` abnormal/rescan scans (every fourth a rescan, the first named EVIL_NAME when `evil`) and `normal`
    normal ones, first seen one second apart in that order, spread over `station_names`; the first `full_size`
    scans 2000 x 1000 pixels (height x width), as the plant's scanner writes them."""
    root.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{root / 'inspector.db'}"
    (root / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n[watch]\ncapture_dir = "capture"\n[state]\ndir = "var"\n'
        f'[model]\npath = "models/detector.safetensors"\n[station]\nname = "{station_names[0]}"\n' + extra_config)
    cfg = load_config(root / "config.toml")
    capture = root / "capture"
    capture.mkdir(exist_ok=True)
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from inspector.store.schema import images

    now = datetime.now(timezone.utc)
    midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)  # the station's day
    start = max(now - timedelta(hours=1), midnight.astimezone(timezone.utc))  # an hour ago, but today
    st = Station(root, root / "config.toml", cfg)
    with open_store(url, station=station_names[0]) as store:
        store.record_model(MODEL, "models/detector.safetensors", json.dumps(META))
        for i in range(flagged + normal):
            is_flagged = i < flagged
            if i < full_size:
                img16 = np.ascontiguousarray(synth_electrode(100 + i, scale=1.0, abnormal=is_flagged)[:2000, :1000])
            else:
                img16 = synth_electrode(100 + i, scale=scale, abnormal=is_flagged)
            name = EVIL_NAME if evil and i == 0 else f"bundle{1 + i % 3:02d}-electrode-{i:03d}.tif"
            path = capture / name
            tifffile.imwrite(path, img16, compression="zlib")
            sha = file_sha256(path)
            verdict = ("rescan" if i % 4 == 3 else "abnormal") if is_flagged else "normal"
            p = None if verdict == "rescan" else (0.9 - 0.01 * i if is_flagged else 0.1)
            reason = "blurred: variance of the Laplacian 3.1 < 12.0 (the training images' 1st percentile)" \
                if verdict == "rescan" else None
            store.station = station_names[i % len(station_names)]
            record_verdict(store, str(path), sha, path.stat().st_size, path.stat().st_mtime_ns, MODEL, p, verdict,
                           reason, 0.5, "global", 0.1, 0.2, inode=path.stat().st_ino)
            if verdict == "abnormal":
                heat = cfg.state.dir / "heatmaps" / sha[:2] / f"{sha}.png"
                heat.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(heat), heat_overlay(img16, i))
                store.set_heatmap(sha, MODEL, str(heat))
            with store.write() as conn:  # one second apart, oldest first
                conn.execute(sa.update(images).where(images.c.sha256 == sha)
                             .values(first_seen=start + timedelta(seconds=i)))
            entry = {"path": path, "sha256": sha, "verdict": verdict}
            (st.flagged if is_flagged else st.normal).append(entry)
        with store.read() as conn:
            ids = dict(conn.execute(sa.select(images.c.sha256, images.c.id)).all())
    for entry in st.flagged + st.normal:
        entry["image_id"] = ids[entry["sha256"]]
    add_users(cfg)
    return st


def add_users(cfg: Config) -> None:
    from inspector.web.users import UsersFile

    users = UsersFile(cfg.users_path)
    users.add("ann", "reviewer", PASSWORDS["ann"])
    users.add("vic", "viewer", PASSWORDS["vic"])


# ---- logging in through Flask's test client --------------------------------------------------------
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def token_of(page: bytes | str) -> str:
    """The CSRF token of a page of the station."""
    text = page.decode() if isinstance(page, bytes) else page
    found = TOKEN.search(text)
    assert found, text[:500]
    return found.group(1)


def login(client, name: str, password: str | None = None):
    page = client.get("/login")
    return client.post("/login", data={"name": name, "password": password or PASSWORDS[name],
                                       "csrf_token": token_of(page.data)})


def logged_in(app, name: str = "ann"):
    """A test client of `app` logged in as `name` (one of PASSWORDS)."""
    client = app.test_client()
    assert login(client, name).status_code == 302
    return client
