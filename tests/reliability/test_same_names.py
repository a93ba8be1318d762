"""Two daemons moving same-named files into one processed/DATE/ folder (issue 25, case 1): the plant layout of
docs/PLANT.md, two stations in move mode on one capture folder and one database, bundle folders whose files share
base names (bundle00/e0.tif ... bundle11/e0.tif, every content distinct), each bundle renamed into the capture
folder whole. A move must never replace a file: every content dropped ends in exactly one place, and the path
recorded for it holds that content. Before the atomic no-replace rename, two daemons picked the same free name
and the second rename destroyed the first file (on PostgreSQL 4 of 200 contents lost, on SQLite 8 of 100)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from daemon_helpers import write_image
from harness import wait_for
from plant_helpers import Database, plant, plant_config, sha_of
from soak import SOAK, scaled

STATIONS = ("A", "B")
BUNDLES = scaled(12, 25)  # bundle folders a round
FILES = 4  # e0.tif ... e3.tif in each
ROUNDS = scaled(5, 40)


def drop_round(tmp_path: Path, capture: Path, round_no: int) -> dict[str, str]:
    """Writes the round's bundles outside the capture folder, then renames each into it whole (as a scanner's
    export or a copy tool's rename does); returns {path inside capture: sha256}."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    dropped: dict[str, str] = {}
    for b in range(BUNDLES):
        bundle = staging / f"r{round_no:02d}-bundle{b:02d}"
        bundle.mkdir()
        for f in range(FILES):
            write_image(bundle / f"e{f}.tif", seed=100_000 * (round_no + 1) + 100 * b + f)
            dropped[os.path.realpath(capture / bundle.name / f"e{f}.tif")] = sha_of(bundle / f"e{f}.tif")
    assert len(set(dropped.values())) == len(dropped), "every content distinct"
    for bundle in sorted(staging.iterdir()):
        bundle.rename(capture / bundle.name)
    return dropped


def left_in_bundles(capture: Path) -> list[Path]:
    return [p for p in capture.glob("r*-bundle*/*") if p.is_file()]


def check_no_scan_lost(db: Database, capture: Path, dropped: dict[str, str]) -> None:
    """Every content dropped is on disk exactly once, under processed/; each file's one outcome row records where
    it went, and that place holds that file's content."""
    outcomes = Counter(os.fsdecode(bytes(raw)) for (raw,) in db.rows(
        "SELECT path_raw FROM images UNION ALL SELECT path_raw FROM rejections"))
    assert outcomes == Counter(dict.fromkeys(dropped, 1)), "not exactly one outcome per file dropped"
    on_disk = Counter(sha_of(p) for p in (capture / "processed").rglob("*") if p.is_file())
    lost = set(dropped.values()) - set(on_disk)
    assert not lost, f"{len(lost)} of {len(dropped)} contents are gone from the disk"
    assert all(n == 1 for n in on_disk.values()), f"contents on disk twice: {[s for s, n in on_disk.items() if n > 1]}"
    assert sum(on_disk.values()) == len(dropped), "files in processed/ that were never dropped"
    for raw, sha, moved_to in db.rows("SELECT path_raw, sha256, moved_to FROM images"):
        path = os.fsdecode(bytes(raw))
        assert sha == dropped[path], f"{path}: recorded for another content"
        assert moved_to and sha_of(Path(moved_to)) == sha, f"{path}: {moved_to} holds another electrode's scan"
    assert not left_in_bundles(capture), "a file was put back into a bundle folder"


@pytest.mark.slow
@pytest.mark.timeout(1800 if SOAK else 300)
def test_two_daemons_never_destroy_same_named_scans(tmp_path, database_url, model_file):
    capture = tmp_path / "capture"
    configs = [plant_config(tmp_path, name, database_url, model_file) for name in STATIONS]
    db = Database(database_url)
    dropped: dict[str, str] = {}
    try:
        with plant(tmp_path, configs) as daemons:
            for round_no in range(ROUNDS):
                dropped.update(drop_round(tmp_path, capture, round_no))
                wait_for(lambda: not left_in_bundles(capture) and db.rows(
                    "SELECT COUNT(*) FROM images")[0][0] == len(dropped), 180,
                    f"round {round_no}: every file scored and moved", interval=0.2)
                check_no_scan_lost(db, capture, dropped)
            logs = [daemon.log() for daemon in daemons]
        by_station = dict(db.rows("SELECT station, COUNT(*) FROM images GROUP BY station"))
        assert set(by_station) == set(STATIONS), f"one station did all the work: {by_station}"
        assert not any("putting it back" in log for log in logs)
        print(f"{ROUNDS} rounds, {len(dropped)} files, {by_station}; "
              f"{sum(log.count('moved ') for log in logs)} moves")
    finally:
        db.close()
