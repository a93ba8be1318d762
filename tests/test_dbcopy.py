"""`inspector db copy` on real databases: SQLite files and the session's PostgreSQL server."""

from __future__ import annotations

import hashlib
from datetime import datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from inspector.cli import cli
from inspector.store.dbcopy import copy_database
from inspector.loop.review import record_review
from inspector.store.schema import SCHEMA_VERSION
from inspector.store.store import open_store
from tests.cli_errors import error_of
from tests.store_rows import record_rejection, record_verdict

MODEL = "ab" * 32
TABLES = ["models", "verdicts", "images", "rejections", "reviews", "retrains", "audits"]


def sha(n: int) -> str:
    return f"{n:064x}"


def fill(url: str, station: str | None, base: int) -> None:
    """A station's history: a model, two contents (one also under a second name: a duplicate), a rejection,
    two reviews of one content (the second supersedes the first), a retrain and an audit request of the normal one."""
    cap = f"/srv/{station or 'old'}/capture/".encode()
    with open_store(url, station=station) as store:
        store.record_model(MODEL, "/models/detector.safetensors", '{"threshold": 0.5}')
        record_verdict(store, cap + b"a.tif", sha(base + 1), 10, 1, MODEL, 0.125, "normal", None, 0.5, "global",
                       0.1, 0.2, inode=base + 1, ctime_ns=5)
        record_verdict(store, cap + b"b \xff.tif", sha(base + 2), 11, 1, MODEL, 0.875, "abnormal", None, 0.5, "global",
                       inode=base + 2)
        assert record_verdict(store, cap + b"a copy.tif", sha(base + 1), 10, 2, MODEL, 0.125, "normal", None, 0.5,
                              "global", inode=base + 3) == "duplicate"
        record_rejection(store, cap + b"empty.tif", None, 0, 1, "not_an_image", "the file is empty (0 bytes)",
                         inode=base + 4)
        record_review(store, sha(base + 2), "abnormal", ["scratches"], reviewer="ann")
        record_review(store, sha(base + 2), "normal", reviewer="bob", note="a shadow")
        store.retrains.start()
        store.audits.request([sha(base + 1)], "qa", 7)


def plain(value):
    """A value as both databases' drivers can give it: SQLite's times are the text SQLAlchemy wrote."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return bytes(value) if isinstance(value, memoryview) else value


def content(url: str) -> dict[str, list[tuple]]:
    """Every copied table's rows without ids, the foreign keys as the natural key they point at (read here with
    plain SQL, independently of inspector.store.dbcopy)."""
    engine = sa.create_engine(url)
    queries = {
        "models": "SELECT sha256, path, meta_json, station FROM models",
        "verdicts": "SELECT sha256, model_sha256, p_abnormal, verdict, threshold, method, station FROM verdicts",
        "images": "SELECT i.path, i.path_raw, i.sha256, i.mtime_ns, i.inode, i.ctime_ns, i.status, i.duplicate_of, "
                  "i.station, v.sha256, v.model_sha256 FROM images i LEFT JOIN verdicts v ON v.id = i.verdict_id",
        "rejections": "SELECT path_raw, size, mtime_ns, inode, reason, message, station FROM rejections",
        "reviews": "SELECT r.sha256, r.label, r.anomalies, r.reviewer, r.note, r.created_at, r.station, p.reviewer, "
                   "p.created_at FROM reviews r LEFT JOIN reviews p ON p.id = r.supersedes",
        "retrains": "SELECT started_at, station FROM retrains",
        "audits": "SELECT sha256, requested_at, requested_by, seed, station FROM audits",
    }
    try:
        with engine.connect() as conn:
            return {t: sorted((tuple(plain(v) for v in row) for row in conn.execute(sa.text(q))), key=repr)
                    for t, q in queries.items()}
    finally:
        engine.dispose()


def counts(summary) -> dict[str, tuple[int, int, int]]:
    return {t.name: (t.source_rows, t.new, t.there) for t in summary.tables}


@pytest.fixture
def source(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'station.db'}"
    fill(url, "line2", 0)
    return url


def test_sqlite_and_postgresql_targets_get_every_row_then_nothing_the_second_time(source, database_url):
    first = copy_database(source, database_url, chunk_rows=2)  # several chunks per table
    assert first.matches
    assert counts(first) == {"models": (1, 1, 0), "verdicts": (2, 2, 0), "images": (3, 3, 0),
                             "rejections": (1, 1, 0), "reviews": (2, 2, 0), "retrains": (1, 1, 0),
                             "audits": (1, 1, 0)}
    assert content(database_url) == content(source)
    duplicate = [row for row in content(database_url)["images"] if row[6] == "duplicate"]
    assert len(duplicate) == 1 and duplicate[0][7] == "/srv/line2/capture/a.tif"
    again = copy_database(source, database_url)
    assert again.matches and all(t.new == 0 and t.there == t.source_rows for t in again.tables)
    assert [t.checksum("target") for t in again.tables] == [t.checksum("target") for t in first.tables]
    assert content(database_url) == content(source)


def test_two_stations_merge_into_a_plant_database_whose_ids_collide(tmp_path, pg_server):
    plant = pg_server.fresh_database()
    fill(plant, "line1", 100)  # a station already writing to the plant: ids 1, 2, ... are taken
    second = f"sqlite:///{tmp_path / 'line3.db'}"
    fill(second, "line3", 300)  # its own ids 1, 2, ... too
    before = content(plant)
    summary = copy_database(second, plant)
    assert summary.matches
    assert counts(summary)["models"] == (1, 0, 1)  # the plant's model, first used by line1
    assert counts(summary)["verdicts"] == (2, 2, 0) and counts(summary)["reviews"] == (2, 2, 0)
    merged = content(plant)
    for table in TABLES:
        expected = before[table] + (content(second)[table] if table != "models" else [])
        assert merged[table] == sorted(expected, key=repr), table
    engine = sa.create_engine(plant)
    with engine.connect() as conn:
        # every image points at its own content's verdict, and bob's review at ann's (the target's ids)
        assert conn.execute(sa.text("SELECT count(*) FROM images i JOIN verdicts v ON v.id = i.verdict_id "
                                    "WHERE v.sha256 = i.sha256")).scalar() == 6
        pairs = conn.execute(sa.text("SELECT r.reviewer, p.reviewer, r.sha256 = p.sha256, r.station, p.station "
                                     "FROM reviews r JOIN reviews p ON p.id = r.supersedes")).all()
    engine.dispose()
    assert sorted(pairs) == [("bob", "ann", True, "line1", "line1"), ("bob", "ann", True, "line3", "line3")]


def test_a_row_changed_in_the_target_is_named_and_fails_the_copy(source, tmp_path):
    target = f"sqlite:///{tmp_path / 'plant.db'}"
    copy_database(source, target)
    with open_store(target) as store, store.write() as conn:
        conn.execute(sa.text("UPDATE verdicts SET p_abnormal = 0.5 WHERE sha256 = :s"), {"s": sha(2)})
    summary = copy_database(source, target)
    assert [t.name for t in summary.tables if not t.matches] == ["verdicts"]
    verdict = summary.tables[1]
    assert verdict.new == 0 and verdict.checksum("source") != verdict.checksum("target")
    assert f"verdicts (1 row(s), e.g. sha256={sha(2)[:12]}… model_sha256={MODEL[:12]}…)" in summary.mismatch()
    # the same source and target files as at the start: checksums of source content never depend on the target
    assert verdict.checksum("source") == copy_database(source, f"sqlite:///{tmp_path / 'fresh.db'}").tables[1] \
        .checksum("source")


def test_the_command_prints_its_summary_and_exits_1_on_a_mismatch(source, tmp_path):
    target = f"sqlite:///{tmp_path / 'plant.db'}"
    result = CliRunner().invoke(cli, ["db", "copy", source, target])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"source  {tmp_path / 'station.db'}"
    assert lines[1] == f"target  {tmp_path / 'plant.db'} (schema created)"
    assert lines[2].split() == ["TABLE", "SOURCE", "ROWS", "NEW", "ALREADY", "THERE", "SOURCE", "SHA256", "TARGET",
                                "SHA256", "MATCH"]
    assert [line.split()[:4] for line in lines[3:10]] == [["models", "1", "1", "0"], ["verdicts", "2", "2", "0"],
                                                          ["images", "3", "3", "0"], ["rejections", "1", "1", "0"],
                                                          ["reviews", "2", "2", "0"], ["retrains", "1", "1", "0"],
                                                          ["audits", "1", "1", "0"]]
    assert all(line.split()[4] == line.split()[5] and line.endswith("yes") for line in lines[3:10])
    assert lines[10:] == ["every table matches: 11 row(s) copied, 0 already there"]
    with open_store(target) as store, store.write() as conn:
        conn.execute(sa.text("UPDATE images SET moved_to = '/elsewhere' WHERE status = 'duplicate'"))
    again = CliRunner().invoke(cli, ["db", "copy", source, target])
    assert again.exit_code == 1
    assert [line.split()[:4] for line in again.output.splitlines()[5:6]] == [["images", "3", "0", "3"]]
    assert again.output.splitlines()[5].endswith("NO")
    assert again.output.splitlines()[-1].startswith("Error: the target does not hold every source row as it is in "
                                                    "the source: images (1 row(s), e.g. path_raw=/srv/line2/capture/a copy.tif")


def test_rows_without_a_station_are_counted_and_named_with_station(tmp_path):
    old = f"sqlite:///{tmp_path / 'old.db'}"
    fill(old, None, 0)  # a store opened without a station: rows as a database upgraded to schema 3 without one
    target = f"sqlite:///{tmp_path / 'plant.db'}"
    plain = copy_database(old, target)
    assert plain.matches and sum(t.no_station for t in plain.tables) == 11
    assert "11 row(s) have no station (recorded before schema 3) and were copied without one: give --station NAME " \
           "to name them (the same name on every run)" in plain.lines()
    named = copy_database(old, target, station="line0")  # named now, not copied twice
    assert named.matches and all(t.new == 0 for t in named.tables)
    assert "11 row(s) without a station (recorded before schema 3) are station line0 in the target" in named.lines()
    stations = {t: {row[-1] if t in ("models", "rejections", "retrains") else None for row in rows}
                for t, rows in content(target).items()}
    assert stations["rejections"] == {"line0"} and stations["retrains"] == {"line0"}
    assert stations["models"] == {None}  # a model's row stays the first user's (not compared, not renamed)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert copy_database(old, fresh, station="line0").matches
    assert content(fresh)["retrains"] == content(target)["retrains"]


def test_an_older_source_is_refused_with_what_to_run_and_left_untouched(tmp_path):
    from inspector.store.migrations import schema_v1

    path = tmp_path / "station.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        schema_v1.metadata.create_all(conn)
        conn.execute(sa.insert(schema_v1.schema_info).values(version=1, inspector_version="0.1.0",
                                                             upgraded_at=datetime(2026, 1, 1)))
    engine.dispose()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = CliRunner().invoke(cli, ["db", "copy", f"sqlite:///{path}", f"sqlite:///{tmp_path / 'plant.db'}"])
    assert error_of(result) == (
        f"source database {path} has schema version 1; db copy reads schema {SCHEMA_VERSION} and never writes to its "
        f"source: upgrade it first with `inspector --config C db upgrade`, C a config whose database.url is "
        f"'sqlite:///{path}' and station.name the station's name (its rows get that name), then copy again")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["station.db"]  # no target made, no -wal beside the source


@pytest.mark.parametrize("args, message", [
    (["sqlite:///missing.db", "sqlite:///plant.db"], "source database missing.db does not exist: check SOURCE_URL"),
    (["station.db", "sqlite:///plant.db"], "SOURCE_URL 'station.db' is not a database URL (e.g. "
     "sqlite:////var/lib/inspector/inspector.db or postgresql+psycopg://inspector@db-host/inspector)"),
    (["sqlite:///station.db", "postgresql://u:se@cret@db:port/x"], "TARGET_URL 'postgresql://u:***@db:port/x' is not "
     "a database URL (e.g. sqlite:////var/lib/inspector/inspector.db or postgresql+psycopg://inspector@db-host/"
     "inspector)"),
    (["sqlite:///station.db", "sqlite:///./station.db"], "SOURCE_URL and TARGET_URL are the same database "
     "(station.db)"),
])
def test_usage_errors_are_one_line(tmp_path, args, message):
    fill(f"sqlite:///{tmp_path / 'station.db'}", "line2", 0)
    assert error_of(CliRunner().invoke(cli, ["db", "copy", *args])) == message


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:secret@127.0.0.1:1/x",
                                 "postgresql+psycopg://u@127.0.0.1:1/x?password=secret"])
def test_an_unreachable_server_is_one_line_without_its_password(source, url):
    message = error_of(CliRunner().invoke(cli, ["db", "copy", source, url]))
    assert message.startswith("target: database postgresql+psycopg://u:***@127.0.0.1:1/x: ")
    assert "secret" not in message and "\n" not in message


def test_help():
    result = CliRunner().invoke(cli, ["db", "copy", "--help"])
    assert result.exit_code == 0 and result.output.startswith("Usage: cli db copy [OPTIONS] SOURCE_URL TARGET_URL")
