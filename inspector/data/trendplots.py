"""The trend figures of the report and the status page: pass rate per day, P(abnormal) per ISO week, the Pareto of
anomaly types and the share of verdicts reviewers overturned. Each takes plain series and returns a figure
(plots.figure_png makes it a PNG); loop/trends.py gathers the series from the store."""

from __future__ import annotations

from typing import Any

from inspector.data.plots import pyplot

WIDTH, HEIGHT, DPI = 7.0, 3.0, 90
LABELLED_BARS = 31  # above this many bars, counts are left off (they would overlap)


def _axes(title: str, width: float = WIDTH) -> tuple[Any, Any]:
    fig, ax = pyplot().subplots(figsize=(width, HEIGHT), dpi=DPI)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", color="#ddd", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


def _tick_labels(ax: Any, labels: list[str]) -> None:
    """Every label while they fit, else every k-th one (a year of days stays readable); slanted when many."""
    step = max(1, len(labels) // 16)
    many = len(labels) > 8
    ax.set_xticks(range(0, len(labels), step), [labels[i] for i in range(0, len(labels), step)],
                  rotation=45 if many else 0, ha="right" if many else "center", fontsize=7)


def pass_rate_figure(days: list[str], rates: list[float | None], totals: list[int]) -> Any:
    """The pass rate (%) per day as a line with a point a day; a day without an electrode breaks the line and is
    marked x on the axis (a stopped line is not a 0% day). The y axis starts below the lowest day, so a fall of a
    few points shows; the count of electrodes is written over each point while the days are few."""
    import math

    fig, ax = _axes("Pass rate per day (normal verdicts over every electrode)")
    ys = [math.nan if r is None else 100 * r for r in rates]
    shown = [y for y in ys if not math.isnan(y)]
    bottom = max(0.0, 10 * math.floor((min(shown, default=100.0) - 5) / 10))
    ax.plot(range(len(days)), ys, color="#4c8c4a", marker="o", markersize=3, linewidth=1.2, label="pass rate")
    empty = [i for i, r in enumerate(rates) if r is None]
    if empty:
        ax.plot(empty, [bottom + 0.02 * (100 - bottom)] * len(empty), linestyle="none", marker="x", color="#999",
                markersize=4, label="no electrode")
        ax.legend(loc="lower left", fontsize=7)
    if len(days) <= LABELLED_BARS:
        for x, y in enumerate(ys):
            if not math.isnan(y):
                ax.annotate(str(totals[x]), (x, y), textcoords="offset points", xytext=(0, 4), ha="center",
                            fontsize=6, color="#555")
    ax.set(ylim=(bottom, 100 + 0.08 * (100 - bottom)), xlim=(-0.6, len(days) - 0.4), ylabel="pass rate (%)")
    _tick_labels(ax, days)
    fig.tight_layout()
    return fig


def score_box_figure(weeks: list[str], values: list[list[float]], threshold: float | None) -> Any:
    """A box per ISO week of P(abnormal) (whiskers 5th-95th percentile, the rest as points): a drift moves the
    boxes before the verdicts change. The threshold is the dashed line."""
    fig, ax = _axes("P(abnormal) per week (box: quartiles; whiskers: 5th-95th percentile)")
    ax.boxplot(values, positions=range(len(weeks)), whis=(5, 95), widths=0.6, flierprops={"markersize": 2},
               medianprops={"color": "#b03030"})
    if threshold is not None:
        ax.axhline(threshold, color="#333", linestyle="--", linewidth=0.8, label=f"threshold {threshold:g}")
        ax.legend(loc="upper left", fontsize=7)
    ax.set(ylim=(-0.02, 1.02), ylabel="P(abnormal)")
    _tick_labels(ax, [f"{w}\nn={len(v)}" for w, v in zip(weeks, values)])
    fig.tight_layout()
    return fig


def pareto_figure(kinds: list[str], counts: list[int]) -> Any:
    """Anomaly types by count, most frequent first, with the cumulative share (%) as a line on its own axis."""
    fig, ax = _axes("Anomaly types from reviews (Pareto)")
    total = sum(counts)
    cumulative, running = [], 0
    for n in counts:
        running += n
        cumulative.append(100 * running / total)
    ax.bar(range(len(kinds)), counts, color="#3b6ea5", width=0.7)
    ax.set_ylabel("electrodes")
    share = ax.twinx()
    share.plot(range(len(kinds)), cumulative, color="#c0392b", marker="o", markersize=3, linewidth=1.2)
    share.axhline(80, color="#c0392b", linestyle=":", linewidth=0.7)
    share.text(len(kinds) - 0.5, 81, "80%", color="#c0392b", fontsize=7, ha="right", va="bottom")
    share.set(ylim=(0, 105), ylabel="cumulative share (%)")
    _tick_labels(ax, kinds)
    fig.tight_layout()
    return fig


def overturned_figure(weeks: list[str], overturned: list[int], reviewed: list[int]) -> Any:
    """The share (%) of reviewed verdicts the reviewer decided otherwise, per ISO week, each bar with k/n."""
    fig, ax = _axes("Verdicts overturned by reviewers per week")
    shares = [100 * k / n if n else 0.0 for k, n in zip(overturned, reviewed)]
    ax.bar(range(len(weeks)), shares, color="#d68910", width=0.6)
    for x, (share, k, n) in enumerate(zip(shares, overturned, reviewed)):
        ax.text(x, share + 1.5, f"{k}/{n}", ha="center", va="bottom", fontsize=7, color="#555")
    ax.set(ylim=(0, max(20.0, max(shares, default=0) * 1.2)), xlim=(-0.6, len(weeks) - 0.4),
           ylabel="overturned (%)")
    _tick_labels(ax, weeks)
    fig.tight_layout()
    return fig
