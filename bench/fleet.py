"""Several daemons on one capture folder and one PostgreSQL database (inspector/fleet.py's claims), same run.

A throwaway PostgreSQL server (tests/pg_server.py: initdb + pg_ctl, Unix socket, fsync off) is
started by the bench; every run below gets a database of its own on it.

Throughput: 1, 2 and 4 real `inspector watch` processes (each its own station.name and state folder)
on ONE capture folder and ONE database; N small distinct TIFFs linked into the folder at once;
images/s from the first file in to the last commit, 2 and 4 daemons against the 1-daemon baseline of
the same run. The model is near-free (untrained ResNet-34 at 32 x 16 input, threshold 1.0: no heat
maps), so the figure is the station's pipeline and the claim protocol. Each daemon runs one torch
thread and max(1, cores // k) workers (k daemons share the machine's cores). Rows per fleet size:
the CPU time per image of the daemons and the PostgreSQL server together and the database
transactions per file (pg_stat_database; the pool's pre-ping before each store call is one of
them): what it costs that every daemon sees every file and claims it, or is refused, or takes the
free claim of a file already recorded back and gives it up again; and the cores they kept busy
against the machine's (1.0x: the CPU is the limit, so a ratio that stops growing there is the
machine, not the claims). Each run ends with a check that every file has exactly one outcome (one
images row, no rejection, no claim still held); a run that fails it raises FleetError, loudly.

Claim overhead: in this process, on the same server, batches of BATCH_SIZE files recorded as the daemon
does it, store.claim of each file, record_outcomes(records, run_id) (which checks the claims in the
commit) and release_claims (after the moves), against record_outcomes alone on fresh file versions; ms
per file, interleaved.

Takeover: two daemons with a short lease (TAKEOVER); a burst of files; one daemon is SIGKILLed as soon
as the claims table shows it holding KILL_HELD claims. Seconds from the kill until the other daemon has
recorded every file whose claim the dead one still held, against station.claim_lease_seconds: about
the lease plus one watch.rescan_seconds (that daemon's workers were refused those files while the
claims were held; its first rescan after the leases ran out offers them again). None of them may be
recorded before its lease ran out.

    .venv/bin/python bench/fleet.py [--n 1000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import select
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))  # the repository root: tests.harness
from convert_read import Figure, describe_machine, print_figures  # noqa: E402
from daemon_latency import BATCH_SIZE, make_images, stage, write_model  # noqa: E402
from pipeline_ceiling import FREE_INPUT, cores  # noqa: E402
from tests.harness import DaemonProcess  # noqa: E402

FLEETS = (1, 2, 4)
N_FILES = 1000
IMAGE_SCALE = 0.1  # synthetic electrodes of 113 x 207 px: reading them costs little next to the claims
TAKEOVER_FILES = 40
KILL_HELD = 3  # the takeover's victim is killed once it holds this many claims
CLAIM_GRACE_SECONDS = 5.0  # a claim still held this long after the last outcome is a claim never given up


class FleetError(RuntimeError):
    """A fleet run broke its promise: a file without exactly one outcome, or a claim never given up."""


@dataclass(frozen=True)
class Timing:
    """The [station] and [watch] timings a fleet runs with."""
    heartbeat_seconds: float
    claim_lease_seconds: float
    rescan_seconds: float
    settle_seconds: float = 0.2


THROUGHPUT = Timing(heartbeat_seconds=10.0, claim_lease_seconds=60.0, rescan_seconds=600.0)  # config.toml's lease
TAKEOVER = Timing(heartbeat_seconds=1.0, claim_lease_seconds=5.0, rescan_seconds=1.0)


def pg_server_module():
    """tests/pg_server.py, imported by its path (the bench is no test package)."""
    spec = importlib.util.spec_from_file_location("inspector_bench_pg_server", ROOT / "tests" / "pg_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def postgres_server() -> object:
    """A throwaway PostgreSQL server (tests/pg_server.py's PostgresServer), started."""
    return pg_server_module().PostgresServer().start()


def skipped_note() -> str | None:
    """Why this benchmark cannot run here (no PostgreSQL server programs, no driver), or None."""
    pg = pg_server_module()
    if not pg.find_bin("initdb") or not pg.find_bin("pg_ctl"):
        return "skipped: no PostgreSQL server programs (initdb, pg_ctl) on this machine (apt-get install postgresql)"
    if importlib.util.find_spec("psycopg") is None:
        return "skipped: no PostgreSQL driver in this environment (pip install 'inspector[postgres]')"
    return None


class FleetStation(DaemonProcess):
    """One daemon of a fleet (tests/harness.py): on a shared capture folder and a shared database, under its own
    station name; its notify socket read by the bench (select() on every daemon's, no polling)."""

    def __init__(self, folder: Path, capture: Path, model: Path, url: str, name: str, threads: int, workers: int,
                 timing: Timing, queue_size: int):
        self.name = name
        folder.mkdir(parents=True)
        config = folder / "config.toml"
        config.write_text(
            f'[watch]\ncapture_dir = "{capture}"\nsettle_seconds = {timing.settle_seconds}\n'
            f'rescan_seconds = {timing.rescan_seconds}\nqueue_size = {queue_size}\nafter = "keep"\n'
            f'[model]\npath = "{model}"\ndevice = "cpu"\n'
            f'[infer]\nbatch_size = {BATCH_SIZE}\nthreads = {threads}\nworkers = {workers}\n'
            f'[station]\nname = "{name}"\nheartbeat_seconds = {timing.heartbeat_seconds}\n'
            f'claim_lease_seconds = {timing.claim_lease_seconds}\n'
            f'[database]\nurl = "{url}"\n[state]\ndir = "var"\n[log]\nlevel = "WARNING"\n')
        super().__init__(folder, config, omp_threads=threads, listen=False, stop_seconds=30, ready_timeout=120)
        self.done = 0  # scored + rejected, from the latest STATUS

    def take_status(self) -> None:
        """Read every waiting notify datagram; keep the latest scored + rejected count."""
        for message in self.notify.drain():
            counts = re.search(r"scored (\d+), abnormal \d+, rejected (\d+)", message)
            if counts:
                self.done = int(counts.group(1)) + int(counts.group(2))

    def tail(self) -> str:
        return self.log()[-1500:]


def per_daemon(count: int) -> tuple[int, int]:
    """(infer.threads, infer.workers) of each of `count` daemons: one torch thread (the near-free model gains
    nothing from a second, and an OpenMP team of two stalls whenever another process takes one of its cores:
    the PostgreSQL server, the other daemons), the workers the machine's cores shared out."""
    return 1, max(1, cores() // count)


def start_fleet(root: Path, capture: Path, model: Path, url: str, count: int, timing: Timing, queue_size: int,
                prefix: str) -> list[FleetStation]:
    """`count` daemons started together (their start-up overlaps), each READY before this returns."""
    threads, workers = per_daemon(count)
    fleet: list[FleetStation] = []
    try:
        for i in range(count):
            fleet.append(FleetStation(root / f"{prefix}-{i}", capture, model, url, f"{prefix}-{i}", threads, workers,
                                      timing, queue_size))
        for station in fleet:
            station.wait_ready()
    except BaseException:
        close_fleet(fleet)
        raise
    return fleet


def close_fleet(fleet: list[FleetStation]) -> None:
    """Stop every daemon; any WARNING, ERROR or traceback line in their logs (level WARNING) is printed."""
    for station in fleet:
        station.close()
    for station in fleet:
        text = station.log()
        found = [line for line in text.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback", line)]
        if found:
            progress(f"{station.name} logged {len(found)} warning/error line(s), the first: {found[0][:300]}")


def wait_done(fleet: list[FleetStation], n: int, timeout: float) -> None:
    """Sleep on the notify sockets until the daemons' STATUS counts add up to n (no polling of the database:
    the CPU is the daemons')."""
    deadline = time.monotonic() + timeout
    while sum(s.done for s in fleet) < n:
        if time.monotonic() > deadline:
            raise FleetError(f"timed out after {timeout:.0f} s: the daemons report {sum(s.done for s in fleet)} of {n} "
                             "outcomes; " + "; ".join(f"{s.name}: {s.done}" for s in fleet))
        for s in fleet:
            if s.proc.poll() is not None:
                raise FleetError(f"daemon {s.name} exited with {s.proc.returncode}: {s.tail()}")
        readable, _, _ = select.select([s.notify for s in fleet], [], [], 0.5)
        for s in fleet:
            if s.notify in readable:
                s.take_status()


def ticks_of(pid: int) -> int:
    """utime + stime + cutime + cstime of a live process, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(v) for v in fields[11:15])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def cpu_seconds(pids: list[int], postmaster: int) -> float:
    """CPU seconds so far of the daemons and the PostgreSQL server (its postmaster, live backends and the
    reaped ones, which the postmaster's cutime holds)."""
    ticks = sum(ticks_of(pid) for pid in pids) + ticks_of(postmaster)
    ticks += sum(ticks_of(pid) for pid in children_of(postmaster))
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core so far (/proc/stat): the whole machine, other processes included."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


class Database:
    """The bench's own reads of a fleet's database (plain SQL on the tables the daemons write)."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.sa = sa
        self.engine = sa.create_engine(url)

    def rows(self, sql: str, **params: object) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(self.sa.text(sql), params))

    def scalar(self, sql: str, **params: object) -> object:
        return self.rows(sql, **params)[0][0]

    def last_commit_epoch(self) -> float:
        return epoch(self.scalar("SELECT max(first_seen) FROM images"))

    def transactions(self) -> int:
        """Transactions committed or rolled back in this database so far (pg_stat_database: complete for the
        connections that have ended; a live one's reach it within seconds)."""
        return int(self.scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                               "WHERE datname = current_database()"))

    def wait_alone(self, timeout: float = 30) -> None:
        """Until no other connection to this database is left (the daemons' have ended: their statistics are in)."""
        deadline = time.monotonic() + timeout
        while self.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid()") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # an ended backend writes its statistics on its way out

    def per_station(self) -> dict[str, int]:
        return {name: n for name, n in self.rows("SELECT station, count(*) FROM images GROUP BY station ORDER BY 1")}

    def check_once(self, names: list[str], what: str) -> None:
        """Every file exactly one outcome: one images row per name, one verdict per (distinct) content, no rejection,
        no claim held. Raises FleetError."""
        problems = []
        rows = self.rows("SELECT path_raw, count(*) FROM images GROUP BY path_raw")
        recorded = {bytes(raw): n for raw, n in rows}
        missing = [n for n in names if os.fsencode(n) not in recorded]
        twice = {os.fsdecode(raw): n for raw, n in recorded.items() if n != 1}
        wanted = set(names)
        stray = [os.fsdecode(raw) for raw in recorded if os.fsdecode(raw) not in wanted]
        rejected = self.scalar("SELECT count(*) FROM rejections")
        verdicts = self.scalar("SELECT count(*) FROM verdicts")
        held_sql = "SELECT station, path_raw, lease_until FROM claims WHERE run_id <> ''"
        deadline = time.monotonic() + CLAIM_GRACE_SECONDS
        while (held := self.rows(held_sql)) and time.monotonic() < deadline:
            time.sleep(0.1)  # a daemon that took a free claim back finds the outcome and gives it up at once
        if missing:
            problems.append(f"{len(missing)} file(s) without an outcome (first: {missing[0]})")
        if twice:
            problems.append(f"{len(twice)} file(s) recorded more than once: {dict(list(twice.items())[:3])}")
        if stray:
            problems.append(f"{len(stray)} unexpected file(s) recorded (first: {stray[0]})")
        if rejected:
            problems.append(f"{rejected} rejection(s), none expected")
        if verdicts != len(names):
            problems.append(f"{verdicts} verdicts for {len(names)} distinct contents")
        if held:
            problems.append(f"{len(held)} claim(s) still held {CLAIM_GRACE_SECONDS:g} s after every file was recorded "
                            f"(first: station {held[0][0]}, {os.fsdecode(bytes(held[0][1]))}, lease until "
                            f"{held[0][2]} UTC)")
        if problems:
            message = f"EXACTLY-ONCE CHECK FAILED, {what}: " + "; ".join(problems)
            print(message, file=sys.stderr, flush=True)
            raise FleetError(message)

    def close(self) -> None:
        self.engine.dispose()


def epoch(value: datetime) -> float:
    """A naive-UTC timestamp column as epoch seconds."""
    return value.replace(tzinfo=timezone.utc).timestamp()


def fleet_run(root: Path, server, model: Path, staged: list[Path], count: int, label: str) -> dict:
    """One fleet of `count` daemons on one capture folder: every staged file linked in at once."""
    url = server.fresh_database()
    capture = root / f"capture-{label}"
    capture.mkdir()
    db = Database(url)
    try:
        transactions = db.transactions()
        fleet = start_fleet(root, capture, model, url, count, THROUGHPUT, len(staged) + 64, f"fleet{count}-{label}")
        try:
            postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
            pids = [s.proc.pid for s in fleet]
            cpu0, machine0 = cpu_seconds(pids, postmaster), machine_ticks()
            start = time.time()
            for path in staged:
                os.link(path, capture / path.name)
            wait_done(fleet, len(staged), 120 + len(staged) / 2)
            cpu, machine = cpu_seconds(pids, postmaster) - cpu0, machine_ticks()
            last = db.last_commit_epoch()
            db.check_once([str(capture / p.name) for p in staged], f"{count} daemon(s) on one folder")
            rss = max(s.peak_rss_mb() for s in fleet)
            shares = db.per_station()
        finally:
            close_fleet(fleet)
        db.wait_alone()
        transactions = db.transactions() - transactions
    finally:
        db.close()
    seconds = last - start
    machine_busy = cores() * (machine[0] - machine0[0]) / max(1, machine[1] - machine0[1])
    return {"rate": len(staged) / seconds, "cpu_ms": 1000 * cpu / len(staged), "busy": cpu / seconds,
            "machine_busy": machine_busy, "transactions": transactions / len(staged), "rss": rss, "shares": shares}


def claim_overhead(server, files: int) -> tuple[float, float]:
    """(ms per file with claims, ms per file without): batches of BATCH_SIZE, as the daemon commits them."""
    from inspector.store.store import FileVersion, Verdict, VerdictRecord, open_store

    def record(i: int) -> VerdictRecord:
        file = FileVersion(f"/capture/scan-{i:06d}.tif".encode(), 40_000 + i, 10**18 + i, 10**6 + i, 10**18 + i)
        return VerdictRecord(file, Verdict(f"{i:064x}", "cd" * 32, 0.1, "normal", None, 1.0, "global", 0.2, 0.01))

    lease = THROUGHPUT.claim_lease_seconds
    with open_store(server.fresh_database(), 30.0, station="bench-claims") as store:
        for warm in (record(-1 - i) for i in range(8)):  # the pool's connection, the statements' first plans
            store.claim(warm.file, "warm", lease)
            store.record_outcomes([warm], "warm")
            store.release_claims([warm.file], "warm")
        spent = {"claims": 0.0, "plain": 0.0}
        for first in range(0, files, BATCH_SIZE):
            for kind in ("claims", "plain"):  # interleaved: a drift of the machine's load reaches both
                base = first if kind == "claims" else files + first
                batch = [record(base + i) for i in range(min(BATCH_SIZE, files - first))]
                start = time.perf_counter()
                if kind == "claims":
                    for r in batch:
                        if store.claim(r.file, "run", lease) is not None:
                            raise FleetError("the claim-overhead loop lost a claim on a database of its own")
                    results = store.record_outcomes(batch, "run")
                    store.release_claims([r.file for r in batch], "run")  # after the moves, as the daemon does
                else:
                    results = store.record_outcomes(batch)
                spent[kind] += time.perf_counter() - start
                if results != ["new"] * len(batch):
                    raise FleetError(f"record_outcomes answered {results} for new files ({kind})")
        with store.read() as conn:
            import sqlalchemy as sa

            held = conn.execute(sa.text("SELECT count(*) FROM claims WHERE run_id <> ''")).scalar_one()
        if held:
            raise FleetError(f"{held} claim(s) still held after record_outcomes(run_id) and release_claims")
    return 1000 * spent["claims"] / files, 1000 * spent["plain"] / files


def takeover(root: Path, server, model: Path, staged: list[Path]) -> dict:
    """Two daemons; the first SIGKILLed while it holds claims. Seconds from the kill until the survivor has
    recorded the files it held; when the leases ran out."""
    url = server.fresh_database()
    capture = root / "capture-takeover"
    capture.mkdir()
    fleet = start_fleet(root, capture, model, url, 2, TAKEOVER, len(staged) + 64, "takeover")
    victim, survivor = fleet
    db = Database(url)
    try:
        for path in staged:
            os.link(path, capture / path.name)
        deadline, first = time.monotonic() + 60, None
        held_sql = "SELECT count(*) FROM claims WHERE station = :name AND run_id <> ''"
        while True:  # a short poll: the kill must find files in flight, KILL_HELD of them (or any after a while)
            held = db.scalar(held_sql, name=victim.name)
            first = first or (time.monotonic() if held else None)
            if held >= KILL_HELD or (held and time.monotonic() - first > 2.0):
                break
            if time.monotonic() > deadline or victim.proc.poll() is not None:
                raise FleetError(f"daemon {victim.name} never held a claim: {victim.tail()}")
            time.sleep(0.005)
        killed = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        time.sleep(0.3)  # a COMMIT the server had in hand when the client died still lands
        held = db.rows("SELECT path_raw, lease_until FROM claims WHERE station = :name AND run_id <> ''",
                       name=victim.name)
        if not held:
            raise FleetError("the killed daemon's last claims were all committed before it died; nothing to take over")
        leases = {bytes(raw): epoch(until) for raw, until in held}
        limit = TAKEOVER.claim_lease_seconds + TAKEOVER.rescan_seconds + 60
        deadline = time.monotonic() + limit
        sql = "SELECT path_raw, station, first_seen FROM images WHERE path_raw = ANY(:paths)"
        while len(found := db.rows(sql, paths=list(leases))) < len(leases):
            if time.monotonic() > deadline or survivor.proc.poll() is not None:
                raise FleetError(f"{len(found)} of the {len(leases)} files the killed daemon held were recorded "
                                 f"within {limit:.0f} s of the kill: {survivor.tail()}")
            time.sleep(0.1)
        taken = {bytes(raw): epoch(at) for raw, station, at in found if station == survivor.name}
        if not taken:  # every one was a COMMIT of the killed daemon that landed after the 0.3 s above
            raise FleetError("the killed daemon's claims were all committed after all; nothing was taken over")
        early = sorted((at - leases[raw], os.fsdecode(raw)) for raw, at in taken.items() if at < leases[raw])
        if early:
            raise FleetError(f"{len(early)} file(s) the killed daemon held were recorded by {survivor.name} before "
                             f"their lease ran out (first: {early[0][1]}, {-early[0][0]:.2f} s early)")
        seconds = max(taken.values()) - killed
        expiry = max(leases[raw] for raw in taken) - killed
        deadline = time.monotonic() + 60
        while db.scalar("SELECT count(*) FROM images") < len(staged) and time.monotonic() < deadline:
            time.sleep(0.1)  # the rest of the burst (the survivor's STATUS went unread meanwhile: not counted on)
        db.check_once([str(capture / p.name) for p in staged], "after the takeover of a killed daemon's claims")
    finally:
        close_fleet(fleet)
        db.close()
    return {"seconds": seconds, "held": len(taken), "expiry": expiry}


def progress(text: str) -> None:
    print(f"fleet: {text}", flush=True)


def measure(n: int = N_FILES, claim_files: int = 400, takeover_files: int = TAKEOVER_FILES,
            fleets: tuple[int, ...] = FLEETS, notes: list[str] | None = None) -> list[Figure]:
    """Every figure of this benchmark; fleets of 2 and 4 daemons against 1 daemon in the same run."""
    from inspector.data.synth import synth_electrode

    notes = notes if notes is not None else []
    c = cores()
    figures: list[Figure] = []
    server = postgres_server()
    try:
        with tempfile.TemporaryDirectory(prefix="inspector-bench-fleet-") as tmp:
            root = Path(tmp)
            base = synth_electrode(0, scale=IMAGE_SCALE)
            lo, hi = np.percentile(base, [0.01, 99.99]).astype(int)
            model = root / "detector.safetensors"
            write_model(model, (int(lo), int(hi)), FREE_INPUT)
            staged = stage(root / "staging", make_images(base, n, 0), "scan")
            os.sync()
            runs = {}
            for count in fleets:
                t0 = time.monotonic()
                runs[count] = fleet_run(root, server, model, staged, count, f"{count}")
                run = runs[count]
                progress(f"{count} daemon(s): {run['rate']:.0f} images/s, {run['busy']:.2f} cores busy with them and "
                         f"the database ({run['machine_busy']:.2f} of {cores()} in the whole machine), "
                         f"{run['transactions']:.1f} transactions per file, files per daemon "
                         f"{sorted(run['shares'].values())} ({time.monotonic() - t0:.0f} s with start-up)")
            files = f"{n} files {base.shape[1]}x{base.shape[0]} px"
            size = (f"{files}, near-free model {FREE_INPUT[0]}x{FREE_INPUT[1]}, PostgreSQL, {c} cores, "
                    "1 torch thread and cores // daemons workers each")
            one, baseline = runs[fleets[0]], f"{fleets[0]} daemon, same files, same run"
            for count in fleets[1:]:
                run = runs[count]
                ideal = min(count, c)  # what k daemons can gain at most on c cores (as if 1 daemon kept 1 core busy)
                target = f">= {0.8 * ideal:.1f}x (0.8 of {ideal}: {count} daemons, {c} cores; CPU-bound past it)"
                figures.append(Figure(f"fleet of {count} daemons, one capture folder, one database: images/s ({size})",
                                      run["rate"], one["rate"], "images/s", baseline, target))
                figures.append(Figure(f"fleet of {count} daemons: CPU ms per image, daemons + PostgreSQL ({size})",
                                      run["cpu_ms"], one["cpu_ms"], "ms/image", baseline))
                figures.append(Figure(f"fleet of {count} daemons: database transactions per file, start-up and stop "
                                      f"included ({size})", run["transactions"], one["transactions"], "tx/file",
                                      baseline))
            for count in fleets:
                figures.append(Figure(f"fleet of {count} daemon{'s' * (count > 1)}: cores kept busy, daemons + "
                                      f"PostgreSQL, first file in to last commit ({size})", runs[count]["busy"], c,
                                      "cores", "every core of this machine (1.0x: the CPU is the limit)"))
            t0 = time.monotonic()
            with_claims, plain = claim_overhead(server, claim_files)
            progress(f"claim overhead: {with_claims - plain:.2f} ms per file ({with_claims:.2f} ms with claims, "
                     f"{plain:.2f} ms without; {time.monotonic() - t0:.0f} s)")
            figures.append(Figure(f"claim overhead: store.claim per file + record_outcomes(run_id) per batch of "
                                  f"{BATCH_SIZE} ({claim_files} files, PostgreSQL on a Unix socket, fsync off)",
                                  with_claims, plain, "ms/file", "record_outcomes alone, same database, same run"))
            t0 = time.monotonic()
            took = takeover(root, server, model, staged[:takeover_files])
            progress(f"takeover: the killed daemon held {took['held']} claim(s); their leases ran out "
                     f"{took['expiry']:.2f} s after the kill, the survivor had recorded them {took['seconds']:.2f} s "
                     f"after it ({time.monotonic() - t0:.0f} s with start-up)")
            t = TAKEOVER
            bound = (t.claim_lease_seconds + t.rescan_seconds + t.settle_seconds + 0.3) / t.claim_lease_seconds
            figures.append(Figure(f"takeover of a SIGKILLed daemon's claimed files by the other daemon: s from the "
                                  f"kill to the last of them recorded (heartbeat {t.heartbeat_seconds:g} s, rescan "
                                  f"{t.rescan_seconds:g} s, settle {t.settle_seconds:g} s)", took["seconds"],
                                  t.claim_lease_seconds, "s", "station.claim_lease_seconds",
                                  f"<= {bound:.2f}x (the lease + one rescan + settle and scoring)"))
            notes.append(f"fleet: {n} files per fleet run (heartbeat {THROUGHPUT.heartbeat_seconds:g} s, lease "
                         f"{THROUGHPUT.claim_lease_seconds:g} s, rescan {THROUGHPUT.rescan_seconds:g} s, queue_size "
                         f"{n + 64}, after = keep) and {takeover_files} in the takeover run: every run ended with "
                         "exactly one outcome per file and no claim held")
    finally:
        server.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N_FILES, help=f"files per fleet run (default {N_FILES})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 files, fewer claims and takeover files")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the table rows")
    args = parser.parse_args(argv)
    n = 60 if args.quick and args.n == N_FILES else args.n
    print(f"machine: {describe_machine()}", flush=True)
    note = skipped_note()
    if note:
        print(f"fleet benchmark {note}")
        return 1
    notes: list[str] = []
    started = time.monotonic()
    figures = measure(n, claim_files=100 if args.quick else 400, takeover_files=min(n, 24 if args.quick else 40),
                      notes=notes)
    notes.append(f"took {time.monotonic() - started:.0f} s")
    print_figures(figures, args.json, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
