"""SIGKILL at injected points (RELIABILITY case 10), over seeded random kill points: after a restart
every image has exactly one outcome and no source file is lost or duplicated."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_helpers import db_count, db_rows, write_config, write_image
from harness import DaemonProcess, wait_for
from image_files import make_bad_file
from soak import scaled

POINTS = ("after_read", "after_infer", "after_commit", "mid_move")
KILLS = scaled(12, 250)  # make test: 12 lives (every point at least twice with SEED; the CI budget), make soak: 250
BAD_KINDS = ("truncated_strip", "text", "corrupt_deflate")
SEED = 20240601


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan_life(rng: random.Random, life: int) -> tuple[str, int, int, bool]:
    """(point, passes spared, new good files, one bad file too); the point is sure to be reached:
    every new file passes after_read, after_commit and mid_move once, every life infers at least once."""
    point = rng.choice(POINTS)
    good = rng.randint(2, 5)
    spare = 0 if point == "after_infer" else rng.randint(0, good - 1)
    return point, spare, good, rng.random() < 0.3


def files_with(capture: Path, sha: str) -> list[Path]:
    return [p for p in capture.rglob("*") if p.is_file() and sha_of(p) == sha]


@pytest.mark.slow
@pytest.mark.timeout(3600 if KILLS > 20 else 600)
def test_sigkill_at_random_points_then_restart_leaves_exactly_one_outcome(tmp_path, model_file):
    config = write_config(tmp_path, after="move", settle_seconds=0.2, model=model_file)
    capture, db = tmp_path / "capture", tmp_path / "inspector.db"
    rng = random.Random(SEED)
    good: dict[str, str] = {}  # name -> content sha256
    bad: dict[str, str] = {}
    kills: dict[str, int] = {p: 0 for p in POINTS}
    for life in range(KILLS):
        point, spare, n_good, with_bad = plan_life(rng, life)
        names = [f"life{life:03d}-{i}.tif" for i in range(n_good)]
        early = names[: len(names) // 2] if life % 2 else names  # odd lives: the rest arrives after start

        def drop(name: str) -> None:
            write_image(capture / name, seed=1000 * life + names.index(name))
            good[name] = sha_of(capture / name)

        for name in early:
            drop(name)
        if with_bad:
            kind = rng.choice(BAD_KINDS)
            make_bad_file(capture / f"life{life:03d}-bad-{kind}.tif", kind)
            bad[f"life{life:03d}-bad-{kind}.tif"] = kind
        daemon = DaemonProcess(tmp_path, config, extra_env={"INSPECTOR_FAULT": point,
                                                            "INSPECTOR_FAULT_AFTER": str(spare)})
        try:
            for name in names[len(early):]:
                drop(name)
            wait_for(lambda: daemon.proc.poll() is not None, 90,
                     f"the kill at {point} (spare {spare}) in life {life}:\n{daemon.log()[-3000:]}")
            assert daemon.proc.returncode == -9, daemon.log()[-3000:]
            kills[point] += 1
            print(f"life {life}: killed at {point} after {spare} spared passes", flush=True)
        finally:
            daemon.close()

    # The restart without the fault: score everything waiting, then exit.
    proc = subprocess.run([sys.executable, "-m", "inspector", "watch", "--once", "--config", str(config)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(kills.values()) == KILLS and all(kills.values()), kills

    root = str(capture.resolve())
    rows = db_rows(db, "SELECT path_raw, COUNT(*) FROM images GROUP BY path_raw")
    paths = {bytes(raw).decode(): n for raw, n in rows}
    assert paths == {f"{root}/{name}": 1 for name in good}, "not exactly one images row per good file"
    assert db_count(db, "SELECT COUNT(*) FROM images WHERE verdict_id IS NULL") == 0
    assert db_count(db, "SELECT COUNT(*) FROM verdicts") == len(set(good.values())), "not one verdict per content"
    rejected = {bytes(raw).decode(): n for raw, n in db_rows(db, "SELECT path_raw, COUNT(*) FROM rejections "
                                                                 "GROUP BY path_raw")}
    assert rejected == {f"{root}/{name}": 1 for name in bad}, "a good file was rejected or a bad one twice"
    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]

    for name, sha in good.items():
        found = files_with(capture, sha)
        assert len(found) == 1, f"{name}: {len(found)} copies on disk ({found}); never both, never neither"
        where = found[0].relative_to(capture)
        # every move finished, also those a kill cut short (the restart completes them)
        assert where.parts[0] == "processed" and where.name.startswith(name[:-4]), where
        (moved_to,) = db_rows(db, "SELECT moved_to FROM images WHERE path_raw = ?", f"{root}/{name}".encode())
        assert moved_to[0] is not None and Path(moved_to[0]) == found[0].resolve(), (name, moved_to, found)
    print(f"kills per point {kills}")
    for name in bad:
        found = [p for p in capture.rglob(f"{name[:-4]}*") if p.is_file()]
        assert len(found) == 1 and found[0].parent == capture / "quarantine", found
