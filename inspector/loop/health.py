"""`inspector status --check`: the alert rules' conditions (deploy/prometheus/inspector-rules.yml) judged from the
database and this host, for cron, systemd timers and Nagios-style monitors: 0 ok, 1 warning, 2 critical, with one
line saying why. The thresholds are `[alerts]` (config.py), whose defaults are the numbers in the rules.

- a station not responding (no heartbeat for 3 heartbeats): critical; with --station, also one stopped or never seen;
- the last hour's abnormal rate above abnormal_rate_factor x the trailing baseline's: warning;
- the last hour's rejections above rejection_factor x the baseline's hourly mean: warning;
- more than waiting_files files waiting (this host's capture folder, or a running station's queue): warning;
- state.dir's file system below disk_critical_percent free: critical; below disk_warning_percent: warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from inspector.base.config import AlertsConfig, Config
from inspector.base.durable import disk_space
from inspector.base.times import format_age
from inspector.store.store import Store

OK, WARNING, CRITICAL = 0, 1, 2
LEVELS = ("OK", "WARNING", "CRITICAL")
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Finding:
    level: int  # OK, WARNING or CRITICAL
    text: str


@dataclass(frozen=True)
class Health:
    """What --check prints: the worst level and one line (the problems, worst first, or what is fine)."""

    findings: list[Finding]

    @property
    def code(self) -> int:
        return max((f.level for f in self.findings), default=OK)

    def line(self) -> str:
        code = self.code
        shown = [f.text for f in sorted(self.findings, key=lambda f: -f.level) if f.level == code or f.level > OK]
        return f"{LEVELS[code]}: {'; '.join(shown)}"


def check_health(cfg: Config, store: Store, station: str | None = None, now: datetime | None = None) -> Health:
    """Every condition judged at `now` (the database's clock when None); `station`: that station only."""
    rows, db_now = store.station_rows()
    now = now or db_now
    findings = stations_findings(rows, now, station)
    findings += rate_findings(cfg.alerts, store, station, now)
    findings += waiting_findings(cfg, store, rows, now, station)
    findings.append(disk_finding(cfg.alerts, Path(cfg.state.dir)))
    return Health(findings)


def stations_findings(rows: list[dict], now: datetime, station: str | None) -> list[Finding]:
    from inspector.station.heartbeat import is_live

    rows = [r for r in rows if station is None or r["name"] == station]
    if not rows:
        if station is not None:
            return [Finding(CRITICAL, f"no heartbeat from station {station!r}")]
        return [Finding(WARNING, "no station has run a daemon on this database")]
    found, running = [], 0
    for row in rows:
        age = format_age(max(0.0, (now - row["last_seen"]).total_seconds()))
        if row["stopped_at"] is not None:
            if station is not None:  # asked about this station: stopped is not serving
                found.append(Finding(CRITICAL, f"station {row['name']} stopped (last seen {age})"))
        elif is_live(row, now):
            running += 1
        else:
            found.append(Finding(CRITICAL, f"station {row['name']} not responding (last seen {age})"))
    return found + [Finding(OK, f"{running} station(s) running")]


def rate_findings(alerts: AlertsConfig, store: Store, station: str | None, now: datetime) -> list[Finding]:
    """The last hour against the `baseline_days` before it: abnormal rate and rejections."""
    start = now - HOUR - timedelta(days=alerts.baseline_days)
    hour = {"since": now - HOUR, "until": now, "station": station}
    base = {"since": start, "until": now - HOUR, "station": station}
    total, abnormal = store.count_verdicts(**hour), store.count_verdicts(verdict="abnormal", **hour)
    base_total, base_abnormal = store.count_verdicts(**base), store.count_verdicts(verdict="abnormal", **base)
    found = [Finding(OK, f"{total} verdict(s) in the last hour" + (f", {abnormal / total:.1%} abnormal" if total else ""))]
    if total >= alerts.abnormal_min_verdicts and base_total:  # no baseline yet: nothing to compare with
        rate, base_rate = abnormal / total, base_abnormal / base_total
        if rate > alerts.abnormal_rate_factor * max(base_rate, alerts.abnormal_rate_floor):
            found.append(Finding(WARNING, f"abnormal rate {rate:.1%} in the last hour ({abnormal} of {total}), "
                                          f"baseline {base_rate:.1%} over {alerts.baseline_days:g} days"))
    rejected = store.count_rejections(**hour)
    per_hour = store.count_rejections(**base) / (alerts.baseline_days * 24)
    if rejected >= alerts.rejection_min and rejected > alerts.rejection_factor * per_hour:
        found.append(Finding(WARNING, f"{rejected} rejection(s) in the last hour, baseline {per_hour:.1f} per hour"))
    return found


def waiting_findings(cfg: Config, store: Store, rows: list[dict], now: datetime, station: str | None) -> list[Finding]:
    """This host's capture folder (when it has one) and each running station's queue at its last heartbeat."""
    from inspector.loop.overview import count_waiting
    from inspector.station.heartbeat import is_live

    limit = cfg.alerts.waiting_files
    waiting = count_waiting(cfg, store)
    found = [Finding(OK, f"{waiting} file(s) waiting")] if waiting is not None else []
    if waiting is not None and waiting > limit:
        found.append(Finding(WARNING, f"{waiting} files waiting in {cfg.watch.capture_dir} (more than {limit})"))
    for row in rows:
        if (station is None or row["name"] == station) and is_live(row, now) and (row["queued"] or 0) > limit:
            found.append(Finding(WARNING, f"station {row['name']} has {row['queued']} files queued (more than {limit})"))
    return found


def disk_finding(alerts: AlertsConfig, state_dir: Path) -> Finding:
    space = disk_space(state_dir)
    if space is None or not space[1]:
        return Finding(WARNING, f"free space of {state_dir} unknown")
    percent = 100 * space[0] / space[1]
    text = f"state dir {percent:.0f}% free"
    if percent < alerts.disk_critical_percent:
        return Finding(CRITICAL, f"{text} ({state_dir}; below {alerts.disk_critical_percent:g}%)")
    if percent < alerts.disk_warning_percent:
        return Finding(WARNING, f"{text} ({state_dir}; below {alerts.disk_warning_percent:g}%)")
    return Finding(OK, text)
