"""The trends people look at, for the HTML report and the review station's status page: the pass rate per local day,
P(abnormal) per ISO week (a drift shows there before the verdicts change), the Pareto of anomaly types from reviews,
the share of verdicts reviewers overturned per week, the miss rate the audits of normal verdicts estimate, and
today's abnormal rate against its trailing baseline (the status page's alarm).

Every row comes from the store by name (store.trends, store.audits), or, for the report, from the outcomes it has
read already (rows_series); the grouping by local day and ISO week is done here, in the reader's calendar.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from inspector.base.config import AlertsConfig
from inspector.data.metrics import wilson_interval
from inspector.store.counts import count_electrodes
from inspector.store.schema import WITHDRAWN
from inspector.store.store import Store
from inspector.store.trends import anomaly_kinds

# The alarm: today's rate more than alerts.abnormal_rate_factor times the baseline of the alerts.baseline_days
# before it, with at least alerts.abnormal_min_verdicts verdicts today and in the baseline (AlertsConfig: the numbers
# `status --check` uses too), ...
ALERT_MIN_RISE = 0.02  # ... and at least two points above the baseline (this rule's own floor)
MAX_DAYS = 400  # a pass-rate chart spans at most this many days (its last ones)
NO_TYPE = "(type not given)"


def local_date(when: datetime) -> date:
    return when.astimezone().date()


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


@dataclass(frozen=True)
class AuditEstimate:
    """What the audits of normal verdicts say: requested, reviewed, and found abnormal (missed by the model)."""

    requested: int
    reviewed: int
    abnormal: int

    @property
    def rate(self) -> float | None:
        return self.abnormal / self.reviewed if self.reviewed else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.abnormal, self.reviewed)

    def describe(self) -> str:
        if not self.requested:
            return "no audits of normal verdicts (`inspector review sample --normal N` asks for some)"
        waiting = self.requested - self.reviewed
        wait = f"; {waiting} audit(s) wait for review" if waiting else ""
        if not self.reviewed:
            return f"{self.requested} normal verdict(s) picked for an audit, none reviewed yet"
        low, high = self.interval
        return (f"{percent(self.rate)} of normal verdicts are defects the model missed ({self.abnormal} of "
                f"{self.reviewed} audited were abnormal; 95% Wilson interval {percent(low)} to {percent(high)}){wait}")


def audit_estimate(store: Store, since: datetime | None = None, until: datetime | None = None,
                   station: str | None = None) -> AuditEstimate:
    """What the audits of the electrodes recorded in [since, until) say (store.audits.results)."""
    found = store.audits.results(since, until, station)
    return AuditEstimate(found.requested, found.reviewed, found.abnormal)


@dataclass(frozen=True)
class AbnormalCheck:
    """Today's abnormal rate against the trailing alerts.baseline_days days' (the status page's alarm)."""

    today: int
    today_abnormal: int
    baseline: int
    baseline_abnormal: int
    alerts: AlertsConfig = AlertsConfig()  # the numbers: baseline_days, abnormal_rate_factor, abnormal_min_verdicts

    @property
    def baseline_days(self) -> float:
        """alerts.baseline_days, a whole number of days as an int (7, as it shows)."""
        days = self.alerts.baseline_days
        return int(days) if float(days).is_integer() else days

    @property
    def rate(self) -> float | None:
        return self.today_abnormal / self.today if self.today else None

    @property
    def baseline_rate(self) -> float | None:
        return self.baseline_abnormal / self.baseline if self.baseline else None

    @property
    def alert(self) -> bool:
        """Today's rate more than abnormal_rate_factor times the baseline's (and ALERT_MIN_RISE above it) beyond
        chance: the lower end of today's 95% Wilson interval is above that bar, so a few abnormal scans in a quiet
        morning do not raise it."""
        least = self.alerts.abnormal_min_verdicts
        if self.today < least or self.baseline < least:
            return False
        low, _ = wilson_interval(self.today_abnormal, self.today)
        base = self.baseline_rate
        return low > max(self.alerts.abnormal_rate_factor * base, base + ALERT_MIN_RISE)

    def describe(self) -> str:
        if self.baseline < self.alerts.abnormal_min_verdicts:
            base = (f"no baseline yet (fewer than {self.alerts.abnormal_min_verdicts} verdicts in the last "
                    f"{self.baseline_days} days)")
        else:
            base = (f"{percent(self.baseline_rate)} over the last {self.baseline_days} days "
                    f"({self.baseline_abnormal} of {self.baseline})")
        today = f"{percent(self.rate)} today ({self.today_abnormal} of {self.today})" if self.today else "none today"
        return f"{today}, {base}" + ("; ABOVE the baseline beyond chance" if self.alert else "")


def abnormal_check(store: Store, verdicts_today: dict[str, int], today_start: datetime, station: str | None = None,
                   alerts: AlertsConfig = AlertsConfig()) -> AbnormalCheck:
    """verdicts_today: today's capture verdicts by verdict, duplicates left out, as status_counts gives them
    (`verdicts_today`, counted since today_start, of `station` when given); the baseline, the alerts.baseline_days
    before today_start, is read here (store.trends.verdict_counts, which counts the same way)."""
    base = store.trends.verdict_counts(since=today_start - timedelta(days=alerts.baseline_days), until=today_start,
                                       station=station)
    return AbnormalCheck(sum(verdicts_today.values()), verdicts_today.get("abnormal", 0), sum(base.values()),
                         base.get("abnormal", 0), alerts)


@dataclass(frozen=True)
class TrendData:
    """The series of one period; `outcomes` is 0 when nothing was recorded in it."""

    outcomes: int
    days: list[dict]  # day, total, normal, pass_rate (None: no electrode that day), oldest first
    weeks: list[dict]  # week, scores (P(abnormal) of its electrodes), oldest first
    threshold: float | None  # the verdicts' threshold (their median, where models changed)
    pareto: list[dict]  # kind, count, cumulative (share), most frequent first
    untyped: int  # abnormal reviews naming no anomaly type
    overturned: list[dict]  # week, reviewed, overturned, false_alarms, misses, share
    audit: AuditEstimate


def day_range(first: date, last: date) -> list[date]:
    first = max(first, last - timedelta(days=MAX_DAYS - 1))
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def pass_rates(outcomes: list[tuple[datetime, str, bool]], since: datetime | None,
               until: datetime | None) -> list[dict]:
    """Per local day of the period (days without an electrode included, so a stopped line shows as a gap)."""
    counted = count_electrodes((local_date(when), outcome, duplicate, 1) for when, outcome, duplicate in outcomes)
    if not counted:
        return []
    today = datetime.now(timezone.utc).astimezone().date()
    first = local_date(since) if since is not None else min(counted)
    last = local_date(until - timedelta(microseconds=1)) if until is not None else today
    days = day_range(min(first, min(counted)), max(min(last, today), max(counted)))
    empty = {"total": 0, "normal": 0, "pass_rate": None}
    return [{"day": d.isoformat(), **{k: counted.get(d, empty)[k] for k in empty}} for d in days]


def weekly_scores(scores: list[tuple[datetime, float, float]]) -> tuple[list[dict], float | None]:
    weeks: dict[str, list[float]] = {}
    for when, p, _ in sorted(scores):
        weeks.setdefault(iso_week(local_date(when)), []).append(p)
    threshold = statistics.median(t for _, _, t in scores) if scores else None
    return [{"week": w, "scores": v} for w, v in sorted(weeks.items())], threshold


def pareto(reviewed: list[dict]) -> tuple[list[dict], int]:
    """Anomaly types of the electrodes reviewed abnormal, each counted once per electrode, most frequent first."""
    kinds = Counter(k for r in reviewed if r["label"] == "abnormal" for k in set(r["anomalies"]))
    untyped = sum(r["label"] == "abnormal" and not r["anomalies"] for r in reviewed)
    total, running, bars = sum(kinds.values()), 0, []
    for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])):
        running += n
        bars.append({"kind": kind, "count": n, "cumulative": running / total})
    return bars, untyped


def overturned(reviewed: list[dict]) -> list[dict]:
    """Per ISO week of capture: reviewed normal/abnormal verdicts and those the reviewer decided otherwise (false
    alarms: abnormal said normal; misses: normal said abnormal, found by audits)."""
    weeks: dict[str, dict] = {}
    for r in reviewed:
        if r["model_verdict"] not in ("normal", "abnormal") or r["label"] not in ("normal", "abnormal"):
            continue  # a rescan asked for a new scan: there is no verdict to overturn
        w = weeks.setdefault(iso_week(local_date(r["time"])), {"reviewed": 0, "false_alarms": 0, "misses": 0})
        w["reviewed"] += 1
        if r["label"] != r["model_verdict"]:
            w["false_alarms" if r["model_verdict"] == "abnormal" else "misses"] += 1
    out = []
    for week, w in sorted(weeks.items()):
        n = w["false_alarms"] + w["misses"]
        out.append({"week": week, **w, "overturned": n, "share": n / w["reviewed"]})
    return out


def rows_series(rows: list[dict]) -> tuple[list, list, list]:
    """What store.trends.outcomes, .scores and .reviewed give, taken from the outcomes of the same period as
    report.collect_outcomes gives them (its verdict rows carry review_states' newest review of their content)."""
    files = [r for r in rows if r["kind"] == "verdict"]
    electrodes = [r for r in files if r["status"] != "duplicate"]
    outcomes = [(r["when"], r["outcome"], r["status"] == "duplicate") for r in rows]
    scores = [(r["when"], float(r["p_abnormal"]), float(r["threshold"])) for r in electrodes
              if r["p_abnormal"] is not None]
    reviewed = [{"time": r["when"], "model_verdict": review["model_verdict"], "label": review["label"],
                 "anomalies": anomaly_kinds(review["anomalies"])}
                for r in electrodes if (review := r["review"]) and review["label"] != WITHDRAWN]
    return outcomes, scores, reviewed


def gather_trends(store: Store, since: datetime | None = None, until: datetime | None = None,
                  station: str | None = None, rows: list[dict] | None = None) -> TrendData:
    """The trends of [since, until) (station: that station's electrodes only). rows: the period's outcomes already
    read (report.collect_outcomes of the same since, until and station), drawn from instead of the store; only the
    audits are read then."""
    if rows is None:
        outcomes = store.trends.outcomes(since, until, station)
        scores = store.trends.scores(since, until, station)
        reviewed = store.trends.reviewed(since, until, station)
    else:
        outcomes, scores, reviewed = rows_series(rows)
    weeks, threshold = weekly_scores(scores)
    bars, untyped = pareto(reviewed)
    return TrendData(len(outcomes), pass_rates(outcomes, since, until), weeks, threshold, bars, untyped,
                     overturned(reviewed), audit_estimate(store, since, until, station))


def trend_charts(data: TrendData) -> dict[str, str | None]:
    """Each chart as a PNG data: URI, None where its period holds nothing to draw."""
    from inspector.data import trendplots as tp
    from inspector.data.plots import figure_png, png_uri

    def uri(fig) -> str:
        return png_uri(figure_png(fig))

    return {
        "pass_rate": uri(tp.pass_rate_figure([d["day"] for d in data.days], [d["pass_rate"] for d in data.days],
                                             [d["total"] for d in data.days])) if data.outcomes else None,
        "scores": uri(tp.score_box_figure([w["week"] for w in data.weeks], [w["scores"] for w in data.weeks],
                                          data.threshold)) if data.weeks else None,
        "pareto": uri(tp.pareto_figure([b["kind"] for b in data.pareto], [b["count"] for b in data.pareto]))
        if data.pareto else None,
        "overturned": uri(tp.overturned_figure([w["week"] for w in data.overturned],
                                               [w["overturned"] for w in data.overturned],
                                               [w["reviewed"] for w in data.overturned])) if data.overturned else None,
    }


def trend_view(store: Store, since: datetime | None = None, until: datetime | None = None,
               station: str | None = None, rows: list[dict] | None = None) -> dict:
    """What the trends template (web/templates/report/trends.html) shows: the data, its charts, the audit line
    (rows: as gather_trends takes them)."""
    data = gather_trends(store, since, until, station, rows)
    return {"trends": data, "charts": trend_charts(data), "audit": data.audit.describe(),
            "pareto_rows": [dict(b, cumulative=percent(b["cumulative"])) for b in data.pareto],
            "overturned_rows": [dict(w, share=percent(w["share"])) for w in data.overturned]}
