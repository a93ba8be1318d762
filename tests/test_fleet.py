"""The plant's coordination in the database (fleet.py): claims on files, heartbeats, the plant lock, the
promoted model; on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from inspector.store.fleet import LockBusy, plant_lock
from inspector.store.schema import claims
from inspector.store.store import FileVersion, Verdict, VerdictRecord, open_store

SHA = "ab" * 32
MODEL = "cd" * 32


@pytest.fixture
def stations(database_url):
    """Two stores on one database, as two stations (two processes or two hosts) open it."""
    with open_store(database_url, 5.0, station="line1") as one, open_store(database_url, 5.0, station="line2") as two:
        yield one, two


def version(n: int = 1) -> FileVersion:
    return FileVersion(f"/share/capture/scan-{n}.tif".encode(), 1000 + n, 10**18 + n, 500 + n, 7)


def verdict_record(file: FileVersion) -> VerdictRecord:
    return VerdictRecord(file, Verdict(SHA, MODEL, 0.1, "normal", None, 0.5, "local", 0.2, 0.1))


def test_a_file_is_claimed_by_one_daemon_until_it_gives_it_up(stations):
    one, two = stations
    f = version()
    assert one.claim(f, "run-a", 60) is None
    assert two.claim(f, "run-b", 60) == "line1"  # held: the other station is named
    assert one.claim(f, "run-a", 60) is None  # the same run offered it again: still its own
    one.release_claims([f], "run-a")
    assert two.claim(f, "run-b", 60) is None  # given up without an outcome: the next daemon takes it
    assert one.claim(f, "run-a", 60) == "line2"


def test_a_dead_daemons_claim_is_taken_over_after_its_lease_and_its_late_commit_is_refused(stations):
    one, two = stations
    f = version()
    assert one.claim(f, "run-a", 0.3) is None
    assert two.claim(f, "run-b", 60) == "line1"
    time.sleep(0.6)  # run-a stopped renewing (killed, host down)
    assert two.claim(f, "run-b", 60) is None
    # run-a was only paused: its commit finds the claim gone and writes nothing for the file
    assert one.record_outcomes([verdict_record(f)], "run-a") == ["lost"]
    assert two.record_outcomes([verdict_record(f)], "run-b") == ["new"]
    with one.read() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*), MIN(station) FROM images")).one() == (1, "line2")
        assert conn.execute(sa.text("SELECT station FROM verdicts")).scalar_one() == "line2"


def test_renewed_leases_are_not_taken_over(stations):
    one, two = stations
    f = version()
    assert one.claim(f, "run-a", 0.4) is None
    for _ in range(3):
        time.sleep(0.2)
        assert one.renew_claims("run-a", 0.4) == 1
        assert two.claim(f, "run-b", 60) == "line1"


def test_the_claim_is_kept_through_the_commit_until_the_move_and_then_given_up(stations):
    """Given up at the commit, another daemon's rescan found the file known but still in the folder and finished
    its "interrupted" move while the first was moving it (the first then recorded moved_to = NULL)."""
    one, two = stations
    f = version()
    assert one.claim(f, "run-a", 60) is None
    assert one.record_outcomes([verdict_record(f)], "run-a") == ["new"]
    assert two.claim(f, "run-b", 60) == "line1"  # committed, not yet moved: still line1's
    one.release_claims([f], "run-a")  # moved
    with one.read() as conn:
        (run_id,) = conn.execute(sa.select(claims.c.run_id)).one()
    assert run_id == ""  # free: a later daemon may claim it, and then finds the outcome (known_file)
    assert two.claim(f, "run-b", 60) is None
    assert two.known_file(f.path_raw, f.size, f.mtime_ns, f.inode, f.ctime_ns)


def test_a_restarted_station_frees_the_claims_of_its_previous_run(stations):
    one, two = stations
    assert one.claim(version(1), "old-run", 60) is None
    assert one.claim(version(2), "old-run", 60) is None
    assert two.claim(version(3), "other", 60) is None
    assert one.release_station_claims("line1", "new-run") == 2
    assert two.claim(version(1), "other", 60) is None
    assert one.claim(version(3), "new-run", 60) == "line2"  # another station's claims are left alone


def test_many_daemons_racing_for_the_same_files_each_get_distinct_ones(database_url):
    """Eight threads (each its own store: connections of its own) claim 40 files at once: every file once."""
    files = [version(n) for n in range(40)]
    won: dict[str, list[int]] = {}
    start = threading.Barrier(8, timeout=60)

    def daemon(k: int) -> None:
        with open_store(database_url, 30.0, station=f"s{k}") as store:  # eight first starts on a new database
            start.wait()
            won[f"s{k}"] = [n for n, f in enumerate(files) if store.claim(f, f"run-{k}", 60) is None]

    threads = [threading.Thread(target=daemon, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = sorted(n for ns in won.values() for n in ns)
    assert claimed == list(range(40))


def test_heartbeats_show_each_station_and_its_clean_stop(stations):
    one, two = stations
    row = dict(name="line1", host="box-a", pid=42, run_id="run-a", capture_dir="/share/capture", model_sha256=MODEL,
               inspector_version="x", heartbeat_seconds=10.0, scored=3, rejected=1, queued=2, paused_reason=None,
               status="scored 3")
    one.beat(row)
    one.beat(dict(row, scored=5))
    two.beat(dict(row, name="line2", host="box-b", run_id="run-b"))
    rows, now = two.station_rows()
    assert [(r["name"], r["host"], r["scored"]) for r in rows] == [("line1", "box-a", 5), ("line2", "box-b", 3)]
    assert all(now - r["last_seen"] < timedelta(seconds=30) for r in rows)
    one.station_stopped("line1", "run-a")
    row1, _ = two.station_row("line1")
    assert row1["stopped_at"] is not None and row1["status"] == "stopped"


def test_the_plant_lock_lets_one_job_run_and_names_the_holder(stations):
    one, two = stations
    with plant_lock(one, "retrain", "retrain"):
        with pytest.raises(LockBusy, match=r"another retrain is running on .+ since \d{4}-\d\d-\d\d .*station line1"):
            with plant_lock(two, "retrain", "retrain"):
                pass  # pragma: no cover - never entered
    with plant_lock(two, "retrain", "retrain"):  # released at the end of the first
        pass


def test_a_plant_lock_whose_holder_died_is_taken_after_its_lease(stations):
    one, two = stations
    assert one.take_lock("retrain", "dead-holder", "box-a", 1, 0.3) is None  # never renewed, never released
    with pytest.raises(LockBusy):
        with plant_lock(two, "retrain", "retrain"):
            pass  # pragma: no cover
    time.sleep(0.6)
    with plant_lock(two, "retrain", "retrain"):
        assert one.take_lock("retrain", "third", "box-c", 3, 60)["host"] != "box-a"


def test_the_promoted_model_is_the_latest_promotion(stations):
    one, two = stations
    assert two.promoted_model() is None
    one.record_model("11" * 32, "/models/detector.safetensors", "{}")
    assert two.promoted_model() is None  # used, not promoted
    one.record_model("22" * 32, "/models/detector.safetensors", "{}", promoted=True)
    promoted = two.promoted_model()
    assert promoted["sha256"] == "22" * 32 and promoted["station"] == "line1"


def test_a_running_daemon_reloads_the_model_a_retrain_promoted_on_another_station(tmp_path, database_url):
    """A promotion recorded in the database (by `inspector retrain` on any host) reaches every daemon: at its
    next heartbeat it reloads model.path once the file there has changed, and shows it in its heartbeat."""
    from daemon_helpers import make_model, write_config
    from harness import running, wait_for

    old = make_model(tmp_path / "models" / "detector.safetensors", seed=0)
    config = write_config(tmp_path, database_url=database_url)
    config.write_text(config.read_text() + '[station]\nname = "line1"\nheartbeat_seconds = 0.3\n'
                      "claim_lease_seconds = 3\n")
    with running(tmp_path, config) as daemon:
        other = tmp_path / "other" / "detector.safetensors"  # the model a retrain on line2 trained and promoted
        new = make_model(other, seed=1)
        with open_store(database_url, station="line2") as store:
            store.record_model(new, str(other), "{}", promoted=True)
            time.sleep(1.0)  # promoted, but this station's model.path does not hold it yet: it keeps serving
            assert "model reloaded" not in daemon.log()
            other.replace(tmp_path / "models" / "detector.safetensors")  # the shared path now holds it
            daemon.wait_log(f"model reloaded: {old[:12]} -> {new[:12]}", timeout=30)
            wait_for(lambda: store.station_row("line1")[0]["model_sha256"] == new, 10, "the heartbeat's model")
        assert "(promoted by line2)" in daemon.log()
