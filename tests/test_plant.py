"""A plant (RELIABILITY case 23): several `inspector watch` daemons, each a real subprocess with its own
station name and state folder, on ONE capture folder and ONE database. Every file gets exactly one outcome
and ends in exactly one place, also when a daemon is SIGKILLed at a fault point and never restarted (the
others take its claims over after the lease), when the PostgreSQL server stops for a while, and when the
daemons' connections are dropped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from daemon_helpers import write_image
from harness import DaemonProcess, wait_for
from image_files import BAD_KINDS, make_bad_file
from inspector.cli import cli
from plant_helpers import HEARTBEAT_SECONDS, Database, plant, plant_config, sha_of

LINES = ("line1", "line2")


class Drops:
    """The files dropped into the capture folder: images (name -> sha256) and bad files (name -> reason)."""

    def __init__(self, capture: Path):
        self.capture = capture
        self.images: dict[str, str] = {}
        self.bad: dict[str, str] = {}

    def image(self, n: int) -> None:
        name = f"scan-{n:03d}.tif"
        write_image(self.capture / name, seed=1000 + n)
        self.images[name] = sha_of(self.capture / name)

    def burst(self, first: int, count: int, bad: tuple[str, ...] = ()) -> None:
        for n in range(first, first + count):
            self.image(n)
        for kind in bad:
            name = f"bad-{first}-{kind}.tif"
            make_bad_file(self.capture / name, kind)
            self.bad[name] = BAD_KINDS[kind]

    def names(self) -> list[str]:
        return [*self.images, *self.bad]

    def raw(self, name: str) -> bytes:
        return os.fsencode(os.path.join(os.path.realpath(self.capture), name))

    def waiting(self) -> list[str]:
        """Files still in the capture folder itself (no outcome yet, or not moved yet)."""
        return sorted(p.name for p in self.capture.iterdir() if p.is_file())

    def done(self, db: Database) -> bool:
        """Every file dropped has an outcome and was moved out of the capture folder."""
        return len(db.outcomes()) == len(self.names()) and not self.waiting()


def check_plant(db: Database, drops: Drops, stations: tuple[str, ...]) -> None:
    """The plant's invariants: one outcome row per file, each file in exactly one place (processed/DATE/ or
    quarantine/, none left, none doubled, none lost), every row written by one of the stations."""
    assert db.outcomes() == Counter({drops.raw(name): 1 for name in drops.names()}), \
        "not exactly one outcome row (images + rejections) per file dropped"
    reasons = {bytes(raw): reason for raw, reason in db.rows("SELECT path_raw, reason FROM rejections")}
    assert reasons == {drops.raw(name): reason for name, reason in drops.bad.items()}
    assert db.rows("SELECT COUNT(*) FROM images WHERE verdict_id IS NULL") == [(0,)]
    assert db.rows("SELECT COUNT(*) FROM verdicts") == [(len(set(drops.images.values())),)], \
        "not one verdict per content"
    for table in ("images", "rejections", "verdicts"):
        by_station = dict(db.rows(f"SELECT station, COUNT(*) FROM {table} GROUP BY station"))
        assert set(by_station) <= set(stations), (table, by_station)
    moved_to = {bytes(raw): where for raw, where in db.rows("SELECT path_raw, moved_to FROM images")}
    assert not drops.waiting(), f"files left in the capture folder: {drops.waiting()}"
    found: dict[str, list[Path]] = {}
    for path in drops.capture.rglob("*"):
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    assert set(found) == set(drops.names()), f"unexpected files: {set(found) ^ set(drops.names())}"
    for name, sha in drops.images.items():
        (path,) = found[name]  # never two copies, never none
        rel = path.relative_to(drops.capture)
        assert rel.parts[0] == "processed" and len(rel.parts) == 3, rel
        assert sha_of(path) == sha, f"{name}: the content moved is not the content dropped"
        assert moved_to[drops.raw(name)] == os.path.realpath(path), (name, moved_to[drops.raw(name)])
    for name in drops.bad:
        (path,) = found[name]
        assert path.parent == drops.capture / "quarantine", path


def cli_json(config: Path, *args: str) -> object:
    result = CliRunner().invoke(cli, [*args, "--config", str(config), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def station_states(config: Path) -> dict[str, dict]:
    """`inspector status --format json` per station name."""
    return {s["name"]: s for s in cli_json(config, "status")["stations"]}  # type: ignore[index]


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


# ---- two daemons sharing the work ------------------------------------------------------------------
def test_two_daemons_on_one_folder_and_database_give_each_file_one_outcome_and_one_place(
        tmp_path, database_url, model_file):
    configs = [plant_config(tmp_path, name, database_url, model_file) for name in LINES]
    drops, db = Drops(tmp_path / "capture"), Database(database_url)
    try:
        with plant(tmp_path, configs) as daemons:
            for burst, bad in enumerate((("text",), ("empty",), ("uint8",))):
                drops.burst(10 * burst, 10, bad)
                wait_for(lambda: len(db.outcomes()) >= len(drops.names()) - 6, 60, f"burst {burst} half scored",
                         interval=0.2)
            wait_for(lambda: drops.done(db), 90, "every file scored and moved", interval=0.2)
            check_plant(db, drops, LINES)
            images = dict(db.rows("SELECT station, COUNT(*) FROM images GROUP BY station"))
            rejected = dict(db.rows("SELECT station, COUNT(*) FROM rejections GROUP BY station"))
            assert sum(images.values()) == len(drops.images) and sum(rejected.values()) == len(drops.bad)
            assert set(images) == set(LINES), f"one station did all the work: {images}"

            # `inspector status` on either station's config: both running, each with its own count today
            def both_running() -> dict | None:
                states = station_states(configs[0])
                return states if all(states.get(n, {}).get("state") == "running" for n in LINES) else None
            states = wait_for(both_running, 10, "both stations shown running", interval=0.2)
            for name in LINES:
                assert states[name]["scored_today"] == images.get(name, 0), states[name]
                assert states[name]["rejected_today"] == rejected.get(name, 0), states[name]
            listed = cli_json(configs[1], "verdicts", "--station", "line1")
            assert listed and {row["station"] for row in listed} == {"line1"}  # type: ignore[union-attr]
            assert len(listed) == images["line1"]  # type: ignore[arg-type]

            for daemon in daemons:
                daemon.send(signal.SIGTERM)
            for config, daemon in zip(configs, daemons):
                assert daemon.wait_exit(30) == 0, f"{config.parent.name} did not stop cleanly"
                assert not error_lines(daemon.log()), error_lines(daemon.log())
                assert "taken over by another station" not in daemon.log()
        states = station_states(configs[1])
        assert {name: states[name]["state"] for name in LINES} == {"line1": "stopped", "line2": "stopped"}
        check_plant(db, drops, LINES)
    finally:
        db.close()


# ---- daemons killed and never restarted ----------------------------------------------------------
KILL_POINTS = ("after_read", "after_infer", "after_commit", "mid_move")


def test_daemons_killed_at_fault_points_leave_their_files_to_a_survivor(tmp_path, pg_server, model_file):
    """One victim daemon per fault point (tests/fault_runner.py SIGKILLs it the first time it gets there)
    and a survivor, line2, on PostgreSQL. No victim is restarted: the survivor takes their claimed files
    over after the lease (its rescan offers them again) and finishes the moves they left undone."""
    url = pg_server.fresh_database()
    victims = [f"victim-{point}" for point in KILL_POINTS]
    names = ("line2", *victims)
    # The daemon whose 0.1 s tick comes first after a file settles claims it, and the phases of the ticks stay put:
    # one daemon can win every race. The survivor settles files later, so that each victim gets one.
    configs = [plant_config(tmp_path, name, url, model_file, settle_seconds=1.0 if name == "line2" else 0.3)
               for name in names]
    envs = [None, *({"INSPECTOR_FAULT": point, "INSPECTOR_FAULT_AFTER": "0"} for point in KILL_POINTS)]
    drops, db = Drops(tmp_path / "capture"), Database(url)
    try:
        with plant(tmp_path, configs, envs) as daemons:
            survivor, dead = daemons[0], daemons[1:]
            first = 0
            while any(d.proc.poll() is None for d in dead) and first < 160:  # until every victim got a file
                drops.burst(first, 4, ("text",) if first == 0 else ())
                first += 4
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: all(d.proc.poll() is not None for d in dead), 3, "the kills", interval=0.1)
            assert [d.proc.returncode for d in dead] == [-9] * len(dead), \
                f"not every victim was killed at its point after {first} files"
            wait_for(lambda: drops.done(db), 90, "every file scored and moved by the survivor", interval=0.2)
            assert survivor.proc.poll() is None
            check_plant(db, drops, names)
            # a victim killed last may have beaten less than three heartbeats ago: shown not responding once it has
            # missed three (bounded wait, not an immediate look)
            states = wait_for(lambda: (found := station_states(configs[0])) and all(
                found[name]["state"] == "not responding" for name in victims) and found,
                4 * HEARTBEAT_SECONDS + 5, "every victim shown not responding", interval=0.5)
            assert states["line2"]["state"] == "running"
            assert not error_lines(survivor.log()), error_lines(survivor.log())
            # the victim killed after its commit left an outcome recorded and its file unmoved: another daemon (the
            # survivor, or a victim still alive then) finished the move
            committed = sum(db.rows(f"SELECT COUNT(*) FROM {table} WHERE station = 'victim-after_commit'")[0][0]
                            for table in ("images", "rejections"))
            assert committed >= 1 and any("finishing an interrupted move" in d.log() for d in daemons)
            print({name: db.rows("SELECT COUNT(*) FROM images WHERE station = :s", s=name)[0][0] for name in names},
                  f"{first} images dropped")
    finally:
        db.close()


# ---- the PostgreSQL server away ------------------------------------------------------------------
OUTAGE_SECONDS = 20.0


@pytest.fixture
def own_pg_server():
    """A PostgreSQL server for this test alone (tests/pg_server.py): it is stopped and started again, which the
    session's shared server must never be."""
    from pg_server import PostgresServer, find_bin

    if not find_bin("initdb"):
        pytest.skip("PostgreSQL server programs are not installed (make test installs them via apt-get)")
    server = PostgresServer().start()
    yield server
    server.stop()


def pg_ctl(server, *args: str) -> None:
    done = server._run(server.pg_ctl, "-D", str(server.data), *args)
    assert done.returncode == 0, f"pg_ctl {' '.join(args)}: {done.stdout} {done.stderr}"


def restart_server(server) -> None:
    """pg_ctl start with the options PostgresServer.start gave it (Unix socket only)."""
    options = f"-k {server.socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
    pg_ctl(server, "-o", options, "-l", str(server.root / "server.log"), "-w", "-t", "60", "start")


def paused(daemon: DaemonProcess) -> bool:
    """The daemon said so in its log and in its systemd STATUS line."""
    statuses = [m for m in list(daemon.notify.messages) if m.startswith("STATUS=")]
    return "database unavailable, pausing" in daemon.log() and any(m.startswith("STATUS=paused: ") for m in statuses)


def last_status(daemon: DaemonProcess) -> str:
    return [m for m in list(daemon.notify.messages) if m.startswith("STATUS=")][-1]


def hold_a_file(tmp_path: Path, drops: Drops, url: str, n: int):
    """An image claimed by a third station, line3 (this test, through the store's own claim), before it lands
    in the capture folder: the daemons leave it alone, and each rescan looks it up again. Returns the store
    and the file version, to give the claim up with release_claims."""
    from inspector.store.store import FileVersion, open_store

    outside = tmp_path / f"scan-{n:03d}.tif"
    write_image(outside, seed=1000 + n)
    st = outside.stat()
    version = FileVersion(drops.raw(outside.name), st.st_size, st.st_mtime_ns, st.st_ino, None)
    store = open_store(url, 5.0, station="line3")
    assert store.claim(version, "line3-run", 600) is None
    outside.rename(drops.capture / outside.name)  # the same size, mtime and inode: the claimed version
    drops.images[outside.name] = sha_of(drops.capture / outside.name)
    return store, version


def test_the_server_stopped_and_connections_dropped_pause_two_daemons_and_lose_nothing(tmp_path, own_pg_server,
                                                                                      model_file):
    """Two daemons on a PostgreSQL server stopped for a few seconds while they are idle, then for
    OUTAGE_SECONDS mid-burst: they pause (log and STATUS), nothing moves while it is away, they resume by
    themselves; then their connections are terminated mid-burst. A third station, line3, holds one file's
    claim through both outages (the daemons' rescans keep looking it up) and gives it up afterwards.
    Nothing is lost or doubled, and a database away is never logged as an unexpected error."""
    server = own_pg_server
    url = server.fresh_database()
    configs = [plant_config(tmp_path, name, url, model_file) for name in LINES]
    drops, db, admin = Drops(tmp_path / "capture"), Database(url), Database(server.url())
    processed = tmp_path / "capture" / "processed"
    third, held = hold_a_file(tmp_path, drops, url, 300)
    try:
        with plant(tmp_path, configs) as daemons:
            # a short outage while the plant is idle: the rescans find line3's file and the database away
            for daemon in daemons:
                daemon.wait_log("scan-300.tif is being scored by station line3", timeout=30)
            pg_ctl(server, "-m", "fast", "-w", "stop")
            for daemon in daemons:
                daemon.wait_log("heartbeat not written", timeout=10)
            time.sleep(2.5)  # two rescans (watch.rescan_seconds = 1) while it is away
            restart_server(server)
            for daemon in daemons:
                daemon.wait_log("heartbeat written again", timeout=10)

            # the server stops mid-burst: both pause, nothing moves, the files dropped meanwhile wait in place
            drops.burst(0, 12, ("text",))
            wait_for(lambda: len(db.outcomes()) >= 3, 60, "the first outcomes", interval=0.1)
            pg_ctl(server, "-m", "fast", "-w", "stop")
            down_at = time.monotonic()
            drops.burst(100, 6)
            for daemon in daemons:
                wait_for(lambda: paused(daemon), 15, "the daemon paused (log and STATUS)", interval=0.2)
            time.sleep(1.0)  # a move whose destination was committed just before the stop completes
            moved, waiting = sorted(processed.rglob("*.tif")), drops.waiting()
            assert {f"scan-{n}.tif" for n in range(100, 106)} <= set(waiting)
            while time.monotonic() - down_at < OUTAGE_SECONDS:
                assert sorted(processed.rglob("*.tif")) == moved and drops.waiting() == waiting, \
                    "a file moved while its outcome could not be committed"
                assert all(d.proc.poll() is None for d in daemons), "a daemon exited while the server was down"
                time.sleep(0.5)
            restart_server(server)
            assert "scan-300.tif" in drops.waiting()  # still held by line3
            third.release_claims([held], "line3-run")  # line3 gives it up: a daemon's next rescan takes it
            third.close()
            wait_for(lambda: drops.done(db), 90, "every file scored and moved after the server came back", interval=0.2)
            for daemon in daemons:  # the other may have done the rest while this one still backed off (at most 30 s)
                daemon.wait_log("database available again; resuming", timeout=40)
                wait_for(lambda: not last_status(daemon).startswith("STATUS=paused"), 10, "STATUS not paused")
            check_plant(db, drops, LINES)

            # the daemons' connections dropped again and again mid-burst: they reconnect (pool_pre_ping) and go on
            drops.burst(200, 12)
            before = len(db.outcomes())
            wait_for(lambda: len(db.outcomes()) >= before + 2, 60, "the burst's first outcomes", interval=0.1)
            name = sa.make_url(url).database
            ended = 0
            for _ in range(8):
                ended += sum(ok for (ok,) in admin.rows(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name "
                    "AND pid <> pg_backend_pid()", name=name))
                time.sleep(0.25)
            assert ended >= 2, "no connection of the daemons was there to drop"
            wait_for(lambda: drops.done(db), 90, "every file scored and moved after the connections dropped",
                     interval=0.2)
            assert all(d.proc.poll() is None for d in daemons)
            check_plant(db, drops, LINES)
            for daemon in daemons:  # a database away is reported as such, not as a bug
                assert "unexpected error" not in daemon.log(), "\n".join(error_lines(daemon.log()))
    finally:
        third.close()
        db.close()
        admin.close()
