"""The verdict database on real SQLite files: pragmas, idempotence, schema versions, concurrency, full disk."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from inspector import __version__
from inspector.base.errors import StoreError
from inspector.base.paths import display_path
from inspector.store.schema import SCHEMA_VERSION
from inspector.store.store import StoreFullError, open_store
from tests.store_rows import record_rejection, record_verdict

MODEL = "ab" * 32
OTHER_MODEL = "cd" * 32


def sha(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def db_url(tmp_path) -> str:
    """A SQLite file, for the tests of SQLite's own behaviour (pragmas, locks, the file itself)."""
    return f"sqlite:///{tmp_path / 'inspector.db'}"


@pytest.fixture
def store(database_url):
    """A store on SQLite and, in a second run of the test, on the session's PostgreSQL server."""
    with open_store(database_url, busy_timeout_seconds=2.0) as s:
        yield s


@pytest.fixture
def sqlite_store(db_url):
    with open_store(db_url, busy_timeout_seconds=2.0) as s:
        yield s


def record(store, path: bytes, content: int, model: str = MODEL, verdict: str = "normal", p: float | None = 0.1,
           size: int = 100, mtime_ns: int = 7, inode: int = 0, ctime_ns: int | None = None) -> str:
    return record_verdict(store, path, sha(content), size, mtime_ns, model, p, verdict, None, 0.5, "global", 0.25, 0.5,
                  inode=inode, ctime_ns=ctime_ns)


def test_pragmas_are_set_on_the_writer(sqlite_store, tmp_path):
    raw = sqlite_store.engine.raw_connection()
    try:
        cur = raw.cursor()
        assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
        assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        raw.close()
    # WAL is a property of the file: a fresh, independent connection sees it too.
    plain = sqlite3.connect(tmp_path / "inspector.db")
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain.close()


def test_writer_transactions_begin_immediate(sqlite_store, tmp_path):
    store = sqlite_store
    other = sqlite3.connect(tmp_path / "inspector.db", timeout=0, isolation_level=None)
    with store.write():
        # No statement was run yet, but the write lock is already held (BEGIN IMMEDIATE).
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # released on commit
    other.execute("ROLLBACK")
    with store.read() as conn:  # the daemon's lookups take no write lock
        conn.execute(sa.text("SELECT count(*) FROM images")).scalar()
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    other.close()


def test_record_verdict_new_exists_duplicate(store):
    assert record(store, b"/cap/a.tif", 1) == "new"
    assert record(store, b"/cap/a.tif", 1) == "exists"  # a restart after the commit adds nothing
    assert record(store, b"/cap/copy of a.tif", 1, p=0.9) == "duplicate"
    rows = store.query_verdicts()
    assert [r["path"] for r in rows] == ["/cap/copy of a.tif", "/cap/a.tif"]
    dup, first = rows
    assert dup["duplicate"] and dup["status"] == "duplicate" and dup["duplicate_of"] == "/cap/a.tif"
    assert dup["p_abnormal"] == first["p_abnormal"] == 0.1  # the duplicate shows the first verdict
    assert not first["duplicate"] and first["status"] == "scored"
    with store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM verdicts")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM images")).scalar() == 2
    assert store.outcome_for(sha(1), MODEL)["verdict"] == "normal"
    assert store.outcome_for(sha(1), OTHER_MODEL) is None


def test_same_content_new_model_is_a_new_verdict(store):
    assert record(store, b"/cap/a.tif", 1) == "new"
    assert record(store, b"/cap/b.tif", 1, model=OTHER_MODEL, verdict="abnormal", p=0.8) == "new"
    rows = {r["path"]: r for r in store.query_verdicts()}
    assert rows["/cap/a.tif"]["verdict"] == "normal" and rows["/cap/b.tif"]["verdict"] == "abnormal"
    # model cd judged the content of both names (b.tif at capture; a.tif holds the same content)
    by_cd = store.query_verdicts(model="cd")
    assert [r["path"] for r in by_cd] == ["/cap/b.tif", "/cap/a.tif"] and {r["verdict"] for r in by_cd} == {"abnormal"}


def test_unique_constraints_hold_against_raw_inserts(store):
    record(store, b"/cap/a.tif", 1, inode=5)
    with pytest.raises(sa.exc.IntegrityError):
        with store.write() as conn:
            conn.execute(sa.text("INSERT INTO verdicts (sha256, model_sha256, verdict, threshold, method, created_at)"
                                 " VALUES (:s, :m, 'normal', 0.5, 'global', '2026-01-01')"), {"s": sha(1), "m": MODEL})
    with pytest.raises(sa.exc.IntegrityError):
        with store.write() as conn:
            conn.execute(sa.text("INSERT INTO images (path, path_raw, sha256, size, mtime_ns, inode, first_seen, status)"
                                 " VALUES ('x', :p, :s, 1, 7, 5, '2026-01-01', 'scored')"), {"p": b"/cap/a.tif", "s": sha(1)})


def test_rejections_are_idempotent_and_known(store):
    assert record_rejection(store, b"/cap/empty.tif", None, 0, 11, "not_an_image", "zero bytes") == "new"
    assert record_rejection(store, b"/cap/empty.tif", None, 0, 11, "not_an_image", "zero bytes") == "exists"
    # Rewritten later (new mtime): a new file version, a new record.
    assert record_rejection(store, b"/cap/empty.tif", None, 0, 12, "not_an_image", "zero bytes") == "new"
    assert len(store.query_rejections()) == 2
    assert store.known_file(b"/cap/empty.tif", 0, 11)
    assert not store.known_file(b"/cap/empty.tif", 0, 13)


def test_known_file_matches_exact_path_size_mtime(store):
    record(store, b"/cap/a.tif", 1, size=100, mtime_ns=7)
    assert store.known_file(b"/cap/a.tif", 100, 7)
    assert store.known_file("/cap/a.tif", 100, 7)  # str paths are encoded the same way
    assert not store.known_file(b"/cap/a.tif", 101, 7)
    assert not store.known_file(b"/cap/a.tif", 100, 8)
    assert not store.known_file(b"/cap/b.tif", 100, 7)


def test_a_new_file_under_an_old_name_is_not_known(store):
    """Issue 12 case 4: same path, size and mtime (cp -p, rsync -t) but another inode or ctime is a new version."""
    record(store, b"/cap/a.tif", 1, size=100, mtime_ns=7, inode=11, ctime_ns=70)
    assert store.known_file(b"/cap/a.tif", 100, 7, 11, 70)
    assert store.known_file(b"/cap/a.tif", 100, 7)  # without inode and ctime: the old test
    assert not store.known_file(b"/cap/a.tif", 100, 7, 12, 70)  # renamed over: another inode
    assert not store.known_file(b"/cap/a.tif", 100, 7, 11, 71)  # rewritten in place (or chmod): another ctime
    # the worker hashes such a file: the same content and version refreshes the ctime, adds nothing
    assert record(store, b"/cap/a.tif", 1, size=100, mtime_ns=7, inode=11, ctime_ns=71) == "exists"
    assert store.known_file(b"/cap/a.tif", 100, 7, 11, 71)
    # new content under the old name: its own verdict
    assert record(store, b"/cap/a.tif", 2, size=100, mtime_ns=7, inode=12, ctime_ns=72) == "new"
    # the same content exported again under the same name: a duplicate row of its own
    assert record(store, b"/cap/a.tif", 1, size=100, mtime_ns=9, inode=13, ctime_ns=73) == "duplicate"
    statuses = sorted((r["sha256"][-1], r["status"]) for r in store.query_verdicts())
    assert statuses == [("1", "duplicate"), ("1", "scored"), ("2", "scored")]
    assert store.file_outcome(b"/cap/a.tif", 100, 7, 12)["sha256"] == sha(2)
    assert store.known_files([(b"/cap/a.tif", 100, 9), (b"/cap/a.tif", 100, 8), (b"/cap/b.tif", 100, 7)]) == {
        (b"/cap/a.tif", 100, 9)}


def test_rejections_are_per_file_version(store):
    assert record_rejection(store, b"/cap/bad.tif", "aa", 10, 5, "corrupt", "x", inode=1, ctime_ns=2) == "new"
    assert record_rejection(store, b"/cap/bad.tif", "aa", 10, 5, "corrupt", "x", inode=1, ctime_ns=3) == "exists"
    assert store.known_file(b"/cap/bad.tif", 10, 5, 1, 3)
    assert record_rejection(store, b"/cap/bad.tif", "bb", 10, 5, "corrupt", "y", inode=2, ctime_ns=4) == "new"
    assert len(store.query_rejections()) == 2


def test_non_utf8_name_round_trips(store, tmp_path):
    name = b"electrode \xff\xfe caf\xc3\xa9 " + b"x" * 200 + b".tif"
    path = os.path.join(os.fsencode(tmp_path), name)
    with open(path, "wb") as fh:
        fh.write(b"II*\x00")
    st = os.stat(path)
    assert record(store, path, 5, size=st.st_size, mtime_ns=st.st_mtime_ns) == "new"
    row = store.query_verdicts()[0]
    assert row["path_raw"] == path
    assert os.path.exists(row["path_raw"])  # the stored bytes open the very file
    assert row["path"].endswith("electrode \\xff\\xfe café " + "x" * 200 + ".tif")
    assert store.known_file(path, st.st_size, st.st_mtime_ns)
    assert display_path(b"a\xffb") == "a\\xffb"


def test_record_moved_and_heatmap(store):
    record(store, b"/cap/a.tif", 1)
    store.record_moved(b"/cap/a.tif", sha(1), "/cap/processed/2026-11-22/a.tif")
    store.set_heatmap(sha(1), MODEL, "var/heatmaps/a.png")
    row = store.query_verdicts()[0]
    assert row["moved_to"] == "/cap/processed/2026-11-22/a.tif"
    assert row["heatmap_path"] == "var/heatmaps/a.png"


def test_record_model_is_idempotent_and_reported_in_status(store):
    store.record_model(MODEL, "/models/detector.safetensors", '{"method": "global"}')
    store.record_model(MODEL, "/models/other-name.safetensors", "{}")
    record(store, b"/cap/a.tif", 1, verdict="abnormal", p=0.9)
    record(store, b"/cap/b.tif", 2, verdict="rescan", p=None)
    record(store, b"/cap/c.tif", 1)
    record_rejection(store, b"/cap/x.tif", None, 0, 1, "not_an_image", "zero bytes")
    counts = store.status_counts(datetime.now(timezone.utc) - timedelta(hours=1))
    assert counts["model"]["path"] == "/models/detector.safetensors"
    assert counts["verdicts_today"] == {"abnormal": 1, "rescan": 1}  # c.tif is a's content again: a duplicate
    assert counts["duplicates_total"] == 1
    assert counts["rejections_total"] == {"not_an_image": 1}
    assert counts["last_verdict_at"] is not None
    later = store.status_counts(datetime.now(timezone.utc) + timedelta(hours=1))
    assert later["verdicts_today"] == {} and later["verdicts_total"] == {"abnormal": 1, "rescan": 1}


def test_query_filters_and_limit(store):
    for i in range(5):
        record(store, f"/cap/line{i % 2}/img{i}.tif".encode(), i, verdict="abnormal" if i == 3 else "normal")
    assert len(store.query_verdicts(limit=2)) == 2
    assert store.count_verdicts() == 5
    assert [r["path"] for r in store.query_verdicts(verdict="abnormal")] == ["/cap/line1/img3.tif"]
    assert {r["path"] for r in store.query_verdicts(path_glob="*/line0/*")} == {
        "/cap/line0/img0.tif", "/cap/line0/img2.tif", "/cap/line0/img4.tif"}
    assert store.count_verdicts(path_glob="*/line0/*") == 3
    assert len(store.query_verdicts(path_glob="*/line0/*", limit=1)) == 1
    future = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert store.query_verdicts(since=future) == [] and len(store.query_verdicts(until=future)) == 5
    with pytest.raises(StoreError, match="is not a sha256 or a prefix"):
        store.query_verdicts(model="xyz")


def test_by_content_and_one_row_by_id(store):
    """The API's filters: the files of one content (upper-case hex too), and one file's row by its id."""
    record(store, b"/cap/a.tif", 1)
    record(store, b"/cap/b.tif", 2, verdict="abnormal", p=0.9)
    record(store, b"/cap/again.tif", 1)  # the same content under another name: a duplicate
    assert [r["path"] for r in store.query_verdicts(sha256=sha(1).upper())] == ["/cap/again.tif", "/cap/a.tif"]
    assert store.count_verdicts(sha256=sha(1)) == 2 and store.query_verdicts(sha256=sha(9)) == []
    with pytest.raises(StoreError, match="is not a content sha256"):
        store.query_verdicts(sha256="abc")
    listed = store.query_verdicts()
    assert [store.verdict_row(r["id"]) for r in listed] == listed
    assert store.verdict_row(10**6) is None and store.verdict_row(2**70) is None and store.verdict_row(-1) is None


def test_path_glob_is_filtered_in_sql_with_shell_pattern_meaning(store):
    """--path GLOB runs in the database (it read every row into Python); it keeps fnmatchcase's meaning."""
    import fnmatch

    paths = ["/cap/A/Scan_1.tif", "/cap/a/scan_1.tif", "/cap/a/scan%1.tif", "/cap/b/x?.tif", "/cap/b/deep/er.TIF"]
    for i, path in enumerate(paths):
        record(store, path.encode(), i)
    queries: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    sqlite = store.engine.dialect.name == "sqlite"
    for pattern in ("*/a/*", "*/A/*", "*scan_1*", "*%*", "*/?/*", "*.tif", "*[Ab]/*", "/cap/b/*"):
        queries.clear()
        expected = {p for p in paths if fnmatch.fnmatchcase(p, pattern)}
        assert {r["path"] for r in store.query_verdicts(path_glob=pattern)} == expected, pattern
        assert store.count_verdicts(path_glob=pattern) == len(expected), pattern
        # SQLite's GLOB takes every pattern; elsewhere LIKE takes all but a [...] class (matched in Python)
        in_sql = "GLOB" if sqlite else "LIKE"
        if sqlite or "[" not in pattern:
            assert all(in_sql in q for q in queries if "FROM images" in q), (pattern, queries)


def test_readonly_open_of_missing_file(tmp_path):
    with pytest.raises(StoreError) as err:
        open_store(f"sqlite:///{tmp_path / 'none.db'}", readonly=True)
    assert str(err.value) == (f"no database at {tmp_path / 'none.db'} yet: start `inspector watch` "
                              "(or check database.url)")
    assert not (tmp_path / "none.db").exists()


def test_readonly_never_writes(store, database_url):
    with open_store(database_url, readonly=True) as reader:
        with pytest.raises(StoreError, match="is open read-only; this command cannot write"):
            reader.record_model(MODEL, "x", "{}")
        with pytest.raises(sa.exc.DBAPIError, match="readonly|read-only"):
            with reader.engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM images"))


def test_newer_schema_is_refused(db_url, tmp_path):
    open_store(db_url).close()
    raw = sqlite3.connect(tmp_path / "inspector.db")
    raw.execute("UPDATE schema_info SET version = ?, inspector_version = '0.4.0'", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    expected = (f"database {tmp_path / 'inspector.db'} has schema version {SCHEMA_VERSION + 1}, written by inspector 0.4.0; "
                f"this is inspector {__version__} (schema {SCHEMA_VERSION}): install inspector 0.4.0 or newer")
    for readonly in (False, True):
        with pytest.raises(StoreError) as err:
            open_store(db_url, readonly=readonly)
        assert str(err.value) == expected


def test_older_schema_is_migrated(db_url, tmp_path):
    # A version-0 database: no schema_info, images without moved_to/verdict_id, no reviews table.
    raw = sqlite3.connect(tmp_path / "inspector.db")
    raw.executescript("""
        CREATE TABLE verdicts (id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, model_sha256 TEXT NOT NULL,
            p_abnormal FLOAT, verdict TEXT NOT NULL, reason TEXT, threshold FLOAT NOT NULL, method TEXT NOT NULL,
            ready_to_commit_seconds FLOAT, inference_seconds FLOAT, heatmap_path TEXT, created_at DATETIME NOT NULL,
            UNIQUE (sha256, model_sha256));
        CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL, path_raw BLOB NOT NULL,
            sha256 TEXT NOT NULL, size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, first_seen DATETIME NOT NULL,
            status TEXT NOT NULL, duplicate_of TEXT, UNIQUE (path_raw, sha256));
        INSERT INTO images (path, path_raw, sha256, size, mtime_ns, first_seen, status)
            VALUES ('/cap/old.tif', X'2f6361702f6f6c642e746966', 'aa', 5, 6, '2026-01-01 00:00:00', 'scored');
    """)
    raw.commit()
    raw.close()
    with pytest.raises(StoreError) as err:
        open_store(db_url, readonly=True)
    assert str(err.value) == (f"database {tmp_path / 'inspector.db'} has schema version 0, this inspector "
                              f"needs schema {SCHEMA_VERSION}: run `inspector db upgrade`")
    with open_store(db_url) as store:
        assert store.schema_action == "migrated"
        assert store.schema_version() == SCHEMA_VERSION
        assert store.known_file(b"/cap/old.tif", 5, 6)  # old rows survive
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("images")}
        assert {"moved_to", "verdict_id"} <= cols
        assert "reviews" in sa.inspect(store.engine).get_table_names()
    with open_store(db_url) as again:
        assert again.schema_action == "current"


def test_schema_1_is_migrated_by_alembic(db_url, tmp_path):
    """A database inspector wrote before Alembic (schema 1) is stamped and upgraded; its rows keep working."""
    from inspector.store.migrations import schema_v1
    from inspector.store.schema import SCHEMA_REVISIONS

    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        schema_v1.metadata.create_all(conn)
        conn.execute(sa.insert(schema_v1.schema_info).values(version=1, inspector_version="0.1.0",
                                                             upgraded_at=datetime(2026, 1, 1)))
        conn.execute(sa.insert(schema_v1.images).values(path="/cap/a.tif", path_raw=b"/cap/a.tif", sha256=sha(1),
                                                        size=5, mtime_ns=6, first_seen=datetime(2026, 1, 1),
                                                        status="scored"))
        conn.execute(sa.insert(schema_v1.rejections).values(path="/cap/e.tif", path_raw=b"/cap/e.tif", size=0,
                                                            mtime_ns=6, reason="not_an_image", message="empty",
                                                            created_at=datetime(2026, 1, 1)))
    engine.dispose()
    with open_store(db_url) as store:
        assert store.schema_action == "migrated" and store.schema_version() == SCHEMA_VERSION
        with store.read() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == \
                SCHEMA_REVISIONS[SCHEMA_VERSION]
        uniques = {u["name"]: u["column_names"] for u in sa.inspect(store.engine).get_unique_constraints("images")}
        assert uniques["uq_images_file_version"] == ["path_raw", "sha256", "mtime_ns", "inode"]
        # rows of schema 1 have no inode: they match any, as the old path + size + mtime test did (the daemon
        # asks known_file before it records anything)
        assert store.known_file(b"/cap/a.tif", 5, 6, 99, 100) and store.known_file(b"/cap/e.tif", 0, 6, 99, 100)
        assert record(store, b"/cap/a.tif", 1, size=5, mtime_ns=8, inode=98) == "new"  # no verdict row in the fixture
    with open_store(db_url) as again:
        assert again.schema_action == "current"
        # the migrated database is the schema a new one gets: Alembic's own comparison finds no difference
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        from inspector.store.schema import metadata
        with again.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
        assert [d for d in diff if d[0] not in ("remove_table",)] == []


def test_busy_writer_gives_a_store_error(sqlite_store, tmp_path, db_url):
    blocker = sqlite3.connect(tmp_path / "inspector.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with open_store(db_url, busy_timeout_seconds=0.2) as second:
            with pytest.raises(StoreError) as err:
                second.record_model(MODEL, "x", "{}")
        assert str(err.value) == (f"database {tmp_path / 'inspector.db'} stayed locked for 0.2 s "
                                  "(database.busy_timeout_seconds): another process holds a long write "
                                  "transaction; try again or stop it")
        assert not isinstance(err.value, StoreFullError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_full_disk_is_a_store_full_error(sqlite_store):
    store = sqlite_store
    with store.read() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    store.engine.dispose()

    @sa.event.listens_for(store.engine, "connect")
    def cap_size(dbapi_conn, _record) -> None:  # SQLite's own quota: writes past it fail with SQLITE_FULL
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    with pytest.raises(StoreFullError, match="disk full"):
        for i in range(200):
            record(store, f"/cap/{'x' * 200}{i}.tif".encode(), i)
    assert isinstance(StoreFullError("x"), StoreError)


READER = textwrap.dedent("""
    import sys
    import sqlalchemy as sa
    from inspector.store.store import open_store
    with open_store(sys.argv[1], readonly=True) as store, store.read() as conn:
        print(conn.execute(sa.text("SELECT count(*) FROM images")).scalar(), flush=True)
        sys.stdin.readline()  # hold the read transaction until told
        print(conn.execute(sa.text("SELECT count(*) FROM images")).scalar(), flush=True)
""")


def test_long_reader_does_not_block_the_writer(store, database_url):
    record(store, b"/cap/a.tif", 1)
    proc = subprocess.Popen([sys.executable, "-c", READER, database_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"
        # The reader's snapshot is open; the writer still commits at once (no "database is locked").
        for i in range(2, 12):
            assert record(store, f"/cap/{i}.tif".encode(), i) == "new"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "1"  # a consistent snapshot
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open_store(database_url, readonly=True) as reader:
        assert reader.count_verdicts() == 11


def test_a_batch_of_outcomes_commits_all_or_nothing(store, monkeypatch):
    """The daemon commits a batch in one transaction: a failure on its last row leaves none of it behind."""
    import inspector.store.records as records
    from inspector.store.store import FileVersion, RejectionRecord, Verdict, VerdictRecord
    from sqlalchemy import exc as sa_exc

    verdict = Verdict(sha(1), MODEL, 0.2, "normal", None, 0.5, "global", 0.1, 0.1)
    batch = [VerdictRecord(FileVersion(b"/cap/a.tif", 10, 1, 7, 8), verdict),
             VerdictRecord(FileVersion(b"/cap/b.tif", 10, 1, 9, 8), verdict),
             RejectionRecord(FileVersion(b"/cap/c.tif", 0, 1, 11, 8), None, "not_an_image", "the file is empty (0 bytes)")]

    def disk_error(conn, record, station):
        raise sa_exc.OperationalError("INSERT INTO rejections", {}, Exception("disk I/O error"))

    monkeypatch.setitem(records.WRITERS, RejectionRecord, disk_error)
    with pytest.raises(StoreError, match="disk I/O error"):
        store.record_outcomes(batch)
    with store.read() as conn:
        assert [conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in ("images", "verdicts")] == [0, 0]
    monkeypatch.undo()
    assert store.record_outcomes(batch) == ["new", "duplicate", "new"]  # the second name of one content
    assert store.record_outcomes(batch) == ["exists", "exists", "exists"]  # a retried batch counts nothing twice


def test_rescore_todo_and_rescored_verdicts_beside_the_capture_ones(store):
    """What `inspector rescore` reads and writes: contents without the model's verdict, then one verdict each."""
    from inspector.store.store import RescoreRecord, Verdict

    record(store, b"/cap/a.tif", 1, inode=1)
    record(store, b"/cap/a-copy.tif", 1, inode=2)
    record(store, b"/cap/b.tif", 2, verdict="abnormal", p=0.9, inode=3)
    store.record_moved(b"/cap/b.tif", sha(2), "/cap/processed/b.tif", 7, 3)
    todo = store.rescore_todo(OTHER_MODEL)
    assert [(e["sha256"], e["verdict"]) for e in todo] == [(sha(1), "normal"), (sha(2), "abnormal")]
    assert todo[0]["places"] == [b"/cap/a.tif", b"/cap/a-copy.tif"]
    assert todo[1]["places"] == ["/cap/processed/b.tif", b"/cap/b.tif"]  # where it was moved to first
    new = Verdict(sha(2), OTHER_MODEL, 0.1, "normal", None, 0.5, "global", inference_seconds=0.2)
    assert store.record_outcomes([RescoreRecord(new)]) == ["new"]
    assert store.record_outcomes([RescoreRecord(new)]) == ["exists"]
    assert [e["sha256"] for e in store.rescore_todo(OTHER_MODEL)] == [sha(1)]
    assert store.rescore_todo(MODEL) == []  # the capture model has judged everything
    rows = store.query_verdicts(model=OTHER_MODEL[:8])
    assert [(r["path"], r["verdict"]) for r in rows] == [("/cap/b.tif", "normal")]
    assert {r["path"]: r["verdict"] for r in store.query_verdicts()}["/cap/b.tif"] == "abnormal"  # capture verdict
    assert store.rescore_todo(OTHER_MODEL, since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
