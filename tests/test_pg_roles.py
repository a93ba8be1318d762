"""docs/PLANT.md's roles on a plant database, on a real PostgreSQL server: the SQL block of "Roles and GRANTs on a plant
database" run as written, the read commands as the reader, the writers as the station, and no password in any
message when a connection fails.

The session's server (conftest `pg_server`) trusts every local connection, so no password could ever be wrong
there. This module starts a server of its own (same tests/pg_server.py) whose pg_hba.conf trusts only the test
superuser and asks every other role for its SCRAM-SHA-256 password on the Unix socket.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from cli_errors import error_of
from inspector.cli import cli
from inspector.base.errors import StoreError
from inspector.store.fleet import FREE
from inspector.store.schema import metadata
from inspector.store.store import FileVersion, open_store
from tests.store_rows import record_rejection, record_verdict

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "PLANT.md"  # the plant guide, which holds the roles block
MARKER = "<!-- roles-and-grants:"  # the line right before its ```sql block
DATABASE = "inspector"  # the block's database
# Characters a URL must percent-encode: the test looks for the plain and the encoded form in every output.
PASSWORDS = {"inspector_owner": "Owner-pw:7d1f", "inspector_station": "St@tion/pw-91ac",
             "inspector_reader": "Reader pw#3be0"}
WRONG = "Wr0ng-pw%Sekret"
MODEL = "cd" * 32
SEEDED = [b"/capture/seeded-normal.tif", b"/capture/seeded-abnormal.tif"]


def readme_statements() -> list[tuple[str, str]]:
    """(database, statement) of docs/PLANT.md's marked sql block, in order; psql's `\\connect DB` switches database."""
    lines = GUIDE.read_text().splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    assert lines[start + 1] == "```sql", "docs/PLANT.md: the roles marker must stand right before a ```sql block"
    end = lines.index("```", start + 2)
    database, pending, statements = "postgres", [], []
    for line in lines[start + 2:end]:
        code = line.split("--", 1)[0].strip()
        if code.startswith("\\connect "):
            database = code.split()[1]
        elif code:
            pending.append(code)
            if code.endswith(";"):
                statements.append((database, " ".join(pending)))
                pending = []
    assert not pending, f"docs/PLANT.md roles block: statement without its ';': {pending}"
    return statements


def role_url(server, role: str, password: str | None = None, database: str = DATABASE) -> str:
    secret = f":{quote(password, safe='')}" if password is not None else ""
    return f"postgresql+psycopg://{role}{secret}@/{database}?host={quote(str(server.socket_dir), safe='')}"


def superuser_sql(server, database: str, *statements: str) -> list:
    import sqlalchemy as sa

    engine = sa.create_engine(server.url(database), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            results = []
            for statement in statements:
                result = conn.exec_driver_sql(statement)
                results.append(result.fetchall() if result.returns_rows else None)
            return results
    finally:
        engine.dispose()


def require_passwords(server) -> None:
    """pg_hba.conf: the superuser trusted on the socket (the tests' own SQL), every other role scram-sha-256."""
    (server.data / "pg_hba.conf").write_text("local all inspector trust\nlocal all all scram-sha-256\n")
    superuser_sql(server, "postgres", "SELECT pg_reload_conf()")
    import psycopg

    deadline = time.monotonic() + 10
    while True:  # the postmaster reloads asynchronously: wait until a password is asked for
        try:
            psycopg.connect(dbname="postgres", user="inspector_reader", host=str(server.socket_dir)).close()
        except psycopg.OperationalError as exc:
            assert "no password supplied" in str(exc), exc
            return
        assert time.monotonic() < deadline, "pg_hba.conf reload did not take effect in 10 s"
        time.sleep(0.05)


def write_cli_config(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "capture").mkdir(exist_ok=True)
    path = folder / "config.toml"
    path.write_text(f'[database]\nurl = "{url}"\nbusy_timeout_seconds = 2\n[watch]\ncapture_dir = "capture"\n')
    return path


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """A server of this module's own with docs/PLANT.md's roles and database, the schema made by `inspector db
    upgrade` as the owner (after the grants: the default privileges must cover it), and rows seeded by the owner."""
    from pg_server import PostgresServer, find_bin

    if not find_bin("initdb"):
        pytest.skip("PostgreSQL server programs are not installed (make test installs them via apt-get)")
    server = PostgresServer().start()
    try:
        for database, statement in readme_statements():
            superuser_sql(server, database, statement)
        superuser_sql(server, "postgres", "SET password_encryption = 'scram-sha-256'",
                      *(f"ALTER ROLE {role} PASSWORD '{pw}'" for role, pw in PASSWORDS.items()))
        require_passwords(server)
        owner = role_url(server, "inspector_owner", PASSWORDS["inspector_owner"])
        config = write_cli_config(tmp_path_factory.mktemp("owner"), owner)
        result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(config)])
        assert result.exit_code == 0 and "schema created" in result.output, result.output
        assert PASSWORDS["inspector_owner"] not in result.output and "inspector_owner:***@" in result.output
        with open_store(owner, station="owner") as store:
            store.record_model(MODEL, "/models/detector.safetensors", "{}")
            record_verdict(store, SEEDED[0], "1" * 64, 10, 1, MODEL, 0.125, "normal", None, 0.5, "global")
            record_verdict(store, SEEDED[1], "2" * 64, 10, 1, MODEL, 0.875, "abnormal", None, 0.5, "global")
            record_rejection(store, b"/capture/seeded-empty.tif", None, 0, 1, "not_an_image", "the file is empty")
        yield server
    finally:
        server.stop()


def url_of(plant, role: str, password: str | None = "right") -> str:
    return role_url(plant, role, PASSWORDS[role] if password == "right" else password)


def assert_no_password(*outputs: str) -> None:
    for secret in [WRONG, *PASSWORDS.values()]:
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            for output in outputs:
                assert form not in output, f"password {form!r} shown in:\n{output}"


def child_env(cwd: Path, **extra: str) -> dict:
    """The environment of a child inspector: INSPECTOR_DEBUG and libpq's password variables unset unless given, and
    HOME in tmp_path (no ~/.pgpass of the machine's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("INSPECTOR_DEBUG", "PGPASSWORD", "PGPASSFILE")}
    return {**env, "HOME": str(cwd), **extra}


def inspector(*args: str, env: dict | None = None, cwd: Path, timeout: float = 60):
    """The real entry point in a child process."""
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=child_env(cwd, **(env or {})))


def inspectors(runs: dict[str, tuple[list[str], dict, Path]], timeout: float = 60) -> dict[str, tuple[int, str, str]]:
    """Several runs of the real entry point at once (they mostly wait for Python's start): name -> (rc, out, err)."""
    procs = {name: subprocess.Popen([sys.executable, "-m", "inspector", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=cwd, env=child_env(cwd, **env))
             for name, (args, env, cwd) in runs.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        results[name] = (proc.returncode, out, err)
    return results


# ---- the roles' privileges --------------------------------------------------------------------------

def test_readme_grants_give_each_role_exactly_its_privileges_on_every_table(plant):
    rows = superuser_sql(plant, DATABASE, """
        SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner),
               has_table_privilege('inspector_station', c.oid, 'SELECT'),
               has_table_privilege('inspector_station', c.oid, 'INSERT'),
               has_table_privilege('inspector_station', c.oid, 'UPDATE'),
               has_table_privilege('inspector_station', c.oid, 'DELETE, TRUNCATE, REFERENCES, TRIGGER'),
               has_table_privilege('inspector_reader', c.oid, 'SELECT'),
               has_table_privilege('inspector_reader', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'),
               CASE WHEN c.relkind = 'S' THEN has_sequence_privilege('inspector_station', c.oid, 'USAGE') END,
               CASE WHEN c.relkind = 'S' THEN has_sequence_privilege('inspector_reader', c.oid, 'USAGE') END
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S')""")[0]
    tables = {r[0]: r for r in rows if r[1] == "r"}
    assert set(metadata.tables) | {"alembic_version"} <= set(tables)
    for name, (_, _, owner, s_select, s_insert, s_update, s_other, r_select, r_other, _, _) in tables.items():
        assert owner == "inspector_owner", name
        assert (s_select, s_insert, s_update, s_other) == (True, True, True, False), name
        assert (r_select, r_other) == (True, False), name
    sequences = {r[0]: r for r in rows if r[1] == "S"}
    assert sequences, "the serial ids have sequences"
    for name, row in sequences.items():
        assert row[2] == "inspector_owner" and row[9] is True and row[10] is False, name
    public_connect = superuser_sql(plant, "postgres",
                                   f"SELECT has_database_privilege('public', '{DATABASE}', 'CONNECT')")[0]
    assert public_connect == [(False,)]
    (stored,) = superuser_sql(plant, "postgres", "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN "
                                                 "('inspector_owner', 'inspector_station', 'inspector_reader')")
    assert len(stored) == 3 and all(pw.startswith("SCRAM-SHA-256$") for _, pw in stored)


# ---- the reader ---------------------------------------------------------------------------------------

def test_reader_runs_every_read_command_with_the_rows(plant, tmp_path):
    config = str(write_cli_config(tmp_path, url_of(plant, "inspector_reader")))
    runner = CliRunner()
    verdicts = runner.invoke(cli, ["verdicts", "--format", "json", "--config", config])
    assert verdicts.exit_code == 0, verdicts.output
    paths = {row["path"] for row in json.loads(verdicts.output)}
    assert {p.decode() for p in SEEDED} <= paths
    rejections = runner.invoke(cli, ["rejections", "--config", config])
    assert rejections.exit_code == 0 and "seeded-empty.tif" in rejections.output, rejections.output
    status = runner.invoke(cli, ["status", "--format", "json", "--config", config])
    assert status.exit_code == 0, status.output
    counts = json.loads(status.output)
    assert counts["model"]["sha256"] == MODEL and counts["database"].startswith("postgresql+psycopg://inspector_reader:***@")
    reviews = runner.invoke(cli, ["reviews", "--pending", "--format", "json", "--config", config])
    assert reviews.exit_code == 0 and "seeded-abnormal.tif" in reviews.output, reviews.output
    out = tmp_path / "report.csv"
    export = runner.invoke(cli, ["export", "--format", "csv", "--out", str(out), "--config", config])
    assert export.exit_code == 0, export.output
    assert all(p.decode() in out.read_text() for p in SEEDED)
    assert_no_password(verdicts.output, rejections.output, status.output, reviews.output, export.output)


def test_reader_cannot_write_and_says_why_in_one_line(plant, tmp_path):
    config = str(write_cli_config(tmp_path, url_of(plant, "inspector_reader")))
    result = CliRunner().invoke(cli, ["review", "2" * 64, "--label", "normal", "--by", "qa", "--config", config])
    message = error_of(result)
    assert "\n" not in message and "permission denied for table reviews" in message, message
    assert "the role in database.url lacks this privilege" in message
    assert message.startswith("database postgresql+psycopg://inspector_reader:***@/inspector")
    assert_no_password(result.output)
    import sqlalchemy as sa

    with open_store(url_of(plant, "inspector_reader")) as store:  # a writer's store: the role still refuses
        with pytest.raises(StoreError, match="permission denied for table verdicts") as caught:
            with store.write() as conn:
                conn.execute(sa.update(metadata.tables["verdicts"]).values(heatmap_path="x"))
    assert "\n" not in str(caught.value)
    proc = inspector("--config", config, "review", "2" * 64, "--label", "normal", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith("Error: database ") and "permission denied for table reviews" in line


# ---- the station ----------------------------------------------------------------------------------------

def test_station_records_claims_beats_and_locks_but_cannot_delete_drop_or_alter(plant):
    with open_store(url_of(plant, "inspector_station"), station="line2") as store:
        assert store.schema_action == "current"
        store.record_model("ef" * 32, "/models/candidate.safetensors", "{}", promoted=True)
        assert record_verdict(store, b"/capture/line2-a.tif", "3" * 64, 10, 1, "ef" * 32, 0.9, "abnormal", None,
                              0.5, "global") == "new"
        assert record_verdict(store, b"/capture/line2-a.tif", "3" * 64, 10, 1, "ef" * 32, 0.9, "abnormal", None,
                              0.5, "global") == "exists"  # its UPDATE of the row's ctime
        assert record_rejection(store, b"/capture/line2-b.tif", None, 0, 1, "not_an_image", "empty") == "new"
        store.set_heatmap("3" * 64, "ef" * 32, "/var/heatmaps/a.png")
        store.record_moved(b"/capture/line2-a.tif", "3" * 64, "/capture/processed/line2-a.tif")
        file = FileVersion(b"/capture/line2-c.tif", 10, 1, 7)
        assert store.claim(file, "run-1", 30) is None
        assert store.renew_claims("run-1", 30) == 1
        store.release_claims([file], "run-1")
        assert store.claim(file, "run-2", 30) is None  # a free claim taken again: an UPDATE, not a DELETE
        store.beat(dict(name="line2", host="host2", pid=123, run_id="run-2", capture_dir="/capture",
                        model_sha256="ef" * 32, inspector_version="test", heartbeat_seconds=10.0, scored=1,
                        rejected=1, queued=0, paused_reason=None, status="scored 1"))
        store.beat(dict(name="line2", host="host2", pid=123, run_id="run-2", capture_dir="/capture",
                        model_sha256="ef" * 32, inspector_version="test", heartbeat_seconds=10.0, scored=2,
                        rejected=1, queued=0, paused_reason=None, status="scored 2"))
        store.station_stopped("line2", "run-2")
        assert store.take_lock("retrain", "holder-1", "host2", 123, 60) is None
        assert store.renew_lock("retrain", "holder-1", 60)
        store.release_lock("retrain", "holder-1")
        assert store.take_lock("retrain", "holder-2", "host2", 123, 60) is None
        rows, _ = store.station_rows()
        assert [r["scored"] for r in rows if r["name"] == "line2"] == [2]
        for statement, refusal in [("DELETE FROM verdicts", "permission denied for table verdicts"),
                                   ("DELETE FROM claims", "permission denied for table claims"),
                                   ("TRUNCATE locks", "permission denied for table locks"),
                                   ("DROP TABLE images", "must be owner of table images"),
                                   ("ALTER TABLE reviews ADD COLUMN extra integer", "must be owner of table reviews"),
                                   ("CREATE TABLE extra (x integer)", "permission denied for schema public")]:
            with pytest.raises(StoreError, match=refusal) as caught:
                with store.write() as conn:
                    conn.exec_driver_sql(statement)
            assert "\n" not in str(caught.value) and PASSWORDS["inspector_station"] not in str(caught.value)
    lease = superuser_sql(plant, DATABASE, "SELECT lease_until FROM claims WHERE run_id = ''")[0]
    assert lease == [] or all(row[0].year == FREE.year for row in lease)


# ---- failed connections ------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failing_urls(plant) -> dict[str, tuple[str, dict, str]]:
    """name -> (database.url, extra environment, what the error must say)."""
    socket_dir = quote(str(plant.socket_dir), safe="")
    return {
        "wrong password in the URL": (url_of(plant, "inspector_reader", WRONG), {},
                                      'password authentication failed for user "inspector_reader"'),
        "wrong password as ?password=": (f"postgresql+psycopg://inspector_reader@/{DATABASE}?host={socket_dir}"
                                         f"&password={quote(WRONG, safe='')}", {}, "password authentication failed"),
        "wrong $PGPASSWORD": (url_of(plant, "inspector_reader", None), {"PGPASSWORD": WRONG},
                              "password authentication failed"),
        "nobody listening": (f"postgresql+psycopg://inspector_reader:{quote(WRONG, safe='')}@127.0.0.1:"
                             f"{closed_port()}/{DATABASE}", {}, "Connection refused"),
        "a port that is no number": (f"postgresql+psycopg://inspector_reader:{quote(WRONG, safe='')}@db.plant.lan:"
                                     f"port/{DATABASE}", {}, "not a database URL"),
    }


@pytest.mark.parametrize("command", [["verdicts"], ["db", "upgrade"]])
def test_a_failed_connection_is_one_line_and_never_shows_the_password(plant, tmp_path, command):
    cases = failing_urls(plant)
    runs = {}
    for name, (url, env, _) in cases.items():
        config = write_cli_config(tmp_path / name.replace(" ", "-").replace("?", ""), url)
        runs[name] = (["--config", str(config), *command], env, config.parent)
        if name == "wrong password in the URL":  # the traceback INSPECTOR_DEBUG=1 asks for: no password either
            runs["debug"] = (["--config", str(config), *command], {"INSPECTOR_DEBUG": "1"}, config.parent)
    results = inspectors(runs)
    for name, (_, _, words) in cases.items():
        returncode, out, err = results[name]
        assert returncode == 1 and out == "", (name, out, err)
        (line,) = err.splitlines() or [""]
        assert line.startswith("Error: ") and words in line, (name, err)
        assert_no_password(err)
    returncode, out, err = results["debug"]
    assert returncode == 1 and "Traceback" in err
    assert_no_password(out, err)


def test_libpq_takes_the_password_from_a_pgpass_file_or_pgpassword(plant, tmp_path):
    config = write_cli_config(tmp_path, url_of(plant, "inspector_reader", None))
    missing = inspector("--config", str(config), "verdicts", cwd=tmp_path)
    assert missing.returncode == 1 and "no password supplied" in missing.stderr, missing.stderr
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:{DATABASE}:inspector_reader:{PASSWORDS['inspector_reader']}\n")
    pgpass.chmod(0o600)
    from_file = inspector("--config", str(config), "verdicts", env={"PGPASSFILE": str(pgpass)}, cwd=tmp_path)
    assert from_file.returncode == 0 and "seeded-abnormal.tif" in from_file.stdout, from_file.stderr
    from_env = inspector("--config", str(config), "verdicts", env={"PGPASSWORD": PASSWORDS["inspector_reader"]},
                         cwd=tmp_path)
    assert from_env.returncode == 0 and "seeded-abnormal.tif" in from_env.stdout, from_env.stderr
    assert_no_password(missing.stderr, from_file.stdout, from_file.stderr, from_env.stdout, from_env.stderr)


# ---- the daemon --------------------------------------------------------------------------------------------

def daemon_station(tmp_path: Path, model_file: Path, url: str) -> Path:
    from daemon_helpers import write_config

    config = write_config(tmp_path, database_url=url)
    (tmp_path / "models").mkdir(exist_ok=True)
    shutil.copy(model_file, tmp_path / "models" / "detector.safetensors")
    return config


def test_daemon_scores_with_the_station_role_and_logs_no_password(plant, tmp_path, model_file):
    from daemon_helpers import write_image

    config = daemon_station(tmp_path, model_file, url_of(plant, "inspector_station"))
    old = time.time() - 3600
    write_image(tmp_path / "capture" / "daemon-1.tif", seed=1)
    (tmp_path / "capture" / "daemon-empty.tif").write_bytes(b"")
    for name in ("daemon-1.tif", "daemon-empty.tif"):
        os.utime(tmp_path / "capture" / name, (old, old))
    result = CliRunner().invoke(cli, ["watch", "--once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert_no_password(result.output)
    counts = superuser_sql(plant, DATABASE, "SELECT count(*) FROM images WHERE strpos(path, 'daemon-1.tif') > 0",
                           "SELECT count(*) FROM rejections WHERE strpos(path, 'daemon-empty.tif') > 0")
    assert counts == [[(1,)], [(1,)]]


def test_daemon_with_a_wrong_password_stops_with_one_line_and_no_password(plant, tmp_path, model_file):
    config = daemon_station(tmp_path, model_file, url_of(plant, "inspector_station", WRONG))
    result = CliRunner().invoke(cli, ["watch", "--once", "--config", str(config)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and 'password authentication failed for user "inspector_station"' in errors[0], \
        result.output
    assert_no_password(result.output)
