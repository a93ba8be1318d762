"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, a Unix socket only.

The server runs as an unprivileged user (PostgreSQL refuses root; as root the tests run it as
nobody), listens on no TCP port, trusts local connections and is stopped at the end of the session.
Each test gets a database of its own (`fresh_database`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "inspector"
_COUNTER = itertools.count()


def find_bin(name: str) -> str | None:
    """A PostgreSQL server program on PATH or in Debian's /usr/lib/postgresql/N/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class PostgresServer:
    """initdb, start, URLs for new databases, stop."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL server programs (initdb, pg_ctl) not found: apt-get install postgresql")
        self.root = Path(tempfile.mkdtemp(prefix="inspector-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.user = 65534 if os.geteuid() == 0 else None  # nobody: the server will not run as root
        if self.user is not None:
            os.chmod(self.root, 0o755)
            os.chown(self.root, self.user, -1)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, user=self.user, capture_output=True, text=True, timeout=120,
                              cwd=self.root, env={**os.environ, "LC_ALL": "C.UTF-8"})

    def start(self) -> "PostgresServer":
        init = self._run(self.initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                         "--no-sync")
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
        options = f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
        started = self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                            "-w", "-t", "60", "start")
        if started.returncode:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr[-1000:]} {log[-2000:]}")
        return self

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql+psycopg://{user}@/{database}?host={self.socket_dir}"

    def fresh_database(self) -> str:
        """A new, empty database; its URL."""
        import sqlalchemy as sa

        name = f"t{os.getpid()}_{next(_COUNTER)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
