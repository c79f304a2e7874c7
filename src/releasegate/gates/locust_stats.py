"""What a Locust run measured: the post-warm-up window and Locust's own CSV files.

**Warm-up exclusion.** Locust's own CSVs cover the whole run, and the history CSV only
has cumulative (or 10-second rolling) percentiles, from which the percentiles of an
arbitrary window cannot be recovered. So the plugin
(:mod:`releasegate.gates.releasegate_locust_plugin`), loaded next to the locustfile,
records every request issued after ``warmup`` seconds into a mergeable histogram
(0.1% precision, exact min/max/mean) per request name; workers ship theirs to the master.
That window file is what the verdict uses. When it holds no requests but the history
CSV does (for example remote workers started without the plugin), counts, rate, error
rate and mean come from differencing the history CSV's cumulative totals at the
warm-up boundary, and percentiles are unavailable (their rules are inconclusive).

**Saturation.** A CPU-bound (or CPU-starved) load generator delays every response
timestamp, so its latencies are not trustworthy. Locust warns "CPU usage above 90%",
but it samples CPU only every 10 s (the first sample is a baseline), which misses short
runs. So the plugin also measures each load-generating process during the window: CPU
time over wall time, and the lag of its event loop. The run is saturated when, in the
window, Locust warned, a process used 90% of a core, or the loop lag p90 reached 50 ms;
without window data, when Locust's log has its CPU warning anywhere.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.errors import InfraError
from releasegate.gates.histogram import Histogram
from releasegate.gates.thresholds import PERCENTILES, TOTAL_SCOPE

# A load generator is saturated (its latencies not trustworthy) when, in the window,
# a process used 90% of a core (Locust's own threshold) or its event loop woke up
# 50 ms late or more at the 90th percentile.
CPU_SATURATION = 0.9
LAG_SATURATION_MS = 50.0
MIN_METER_WALL_S = 2.0
MIN_LAG_SAMPLES = 3

_CPU_WARNING_RE = re.compile(
    r"CPU usage above \d+%|CPU usage was too high|exceeded cpu threshold"
    r"|CPU usage threshold was exceeded",
    re.IGNORECASE,
)


# -- window statistics ----------------------------------------------------------------


@dataclass
class EndpointStats:
    """Post-warm-up statistics of one (method, name) as Locust reports requests."""

    method: str
    name: str
    requests: int
    failures: int
    histogram: Histogram | None = None
    avg_ms: float | None = None  # only when there is no histogram (history fallback)

    def label(self) -> str:
        return f"{self.method} {self.name}".strip()


@dataclass
class ScopeStats:
    """Statistics of one threshold scope: ``total`` or a request name."""

    name: str
    requests: int
    failures: int
    duration_s: float
    histogram: Histogram | None = None
    avg_ms: float | None = None

    def metric(self, metric: str) -> float | None:
        """The observed value of a threshold metric, canonical unit; None when unknown."""
        if metric == "requests":
            return float(self.requests)
        if metric == "rps":
            return self.requests / self.duration_s if self.duration_s > 0 else None
        if self.requests == 0:
            return None
        if metric == "error_rate":
            return self.failures / self.requests
        if metric == "avg":
            return self.histogram.mean if self.histogram is not None else self.avg_ms
        if self.histogram is None or not self.histogram.count:
            return None
        if metric == "min":
            return self.histogram.min
        if metric == "max":
            return self.histogram.max
        return self.histogram.percentile(PERCENTILES[metric])

    def summary(self) -> dict[str, Any]:
        """Counts and the usual figures, for reports."""
        return {
            "scope": self.name,
            "requests": self.requests,
            "failures": self.failures,
            "rps": rounded(self.metric("rps")),
            "error_rate": rounded(self.metric("error_rate"), 6),
            **{m: rounded(self.metric(m)) for m in ("avg", "p50", "p90", "p95", "p99", "max")},
        }


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class WindowStats:
    """What was measured after the warm-up: per-endpoint stats over ``duration_s``."""

    duration_s: float
    entries: list[EndpointStats]
    source: str = "plugin"  # "plugin" (exact) or "history" (counts only)
    final: bool = True
    cpu_warnings: int = 0  # Locust's CPU warnings inside the window
    # The busiest load-generating process: CPU time / wall time, and event-loop lag p90.
    cpu_utilisation: float | None = None
    loop_lag_p90_ms: float | None = None

    def saturation(self) -> list[str]:
        """Why the load generator was saturated during the window (empty: it was not)."""
        reasons = []
        if self.cpu_warnings:
            reasons.append("Locust warned that its CPU usage was above 90%")
        if self.cpu_utilisation is not None and self.cpu_utilisation >= CPU_SATURATION:
            reasons.append(f"a Locust process used {self.cpu_utilisation:.0%} of a CPU core")
        if self.loop_lag_p90_ms is not None and self.loop_lag_p90_ms >= LAG_SATURATION_MS:
            reasons.append(f"Locust's event loop lagged {self.loop_lag_p90_ms:.0f}ms (p90)")
        return reasons

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.entries)

    def scope(self, name: str) -> ScopeStats:
        """Stats of ``total`` or of the entries named ``name`` (or ``"METHOD name"``)."""
        if name == TOTAL_SCOPE:
            chosen = list(self.entries)
        else:
            chosen = [e for e in self.entries if e.name == name]
            if not chosen:
                chosen = [e for e in self.entries if e.label() == name]
        requests = sum(e.requests for e in chosen)
        failures = sum(e.failures for e in chosen)
        histogram: Histogram | None = None
        avg: float | None = None
        if chosen and all(e.histogram is not None for e in chosen):
            histogram = Histogram()
            for entry in chosen:
                assert entry.histogram is not None
                histogram.merge(entry.histogram)
        elif requests:
            avg = sum((e.avg_ms or 0.0) * e.requests for e in chosen) / requests
        return ScopeStats(name, requests, failures, self.duration_s, histogram, avg)

    def scope_names(self) -> list[str]:
        return [TOTAL_SCOPE, *sorted({e.name for e in self.entries})]


def read_window(path: Path) -> WindowStats | None:
    """Parse the plugin's window file; None when it does not exist (yet)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InfraError(f"cannot read Locust window statistics {path.name}: {exc}") from None
    return window_from_dict(data)


def window_from_dict(data: dict[str, Any]) -> WindowStats:
    """The window from the plugin's JSON document."""
    window_start = data.get("window_start")
    window_end = data.get("window_end") or 0.0
    duration = max(0.0, window_end - window_start) if window_start is not None else 0.0
    entries = [
        EndpointStats(
            method=str(item["method"]),
            name=str(item["name"]),
            requests=int(item["requests"]),
            failures=int(item["failures"]),
            histogram=Histogram.from_dict(item["histogram"]),
        )
        for item in data.get("entries", [])
    ]
    warnings = data.get("cpu_warnings", [])
    in_window = sum(1 for t in warnings if window_start is not None and t > window_start)
    utilisation: float | None = None
    lag: float | None = None
    for node in (data.get("nodes") or {}).values():
        cpu_s, wall_s = float(node.get("cpu_s", 0.0)), float(node.get("wall_s", 0.0))
        if wall_s >= MIN_METER_WALL_S:
            utilisation = max(utilisation or 0.0, cpu_s / wall_s)
        node_lag = Histogram.from_dict(node.get("lag") or {})
        if node_lag.count >= MIN_LAG_SAMPLES:
            lag = max(lag or 0.0, node_lag.percentile(90) or 0.0)
    return WindowStats(
        duration_s=duration,
        entries=entries,
        source="plugin",
        final=bool(data.get("final")),
        cpu_warnings=in_window,
        cpu_utilisation=utilisation,
        loop_lag_p90_ms=lag,
    )


# -- Locust's CSV files ----------------------------------------------------------------


@dataclass
class CsvStatsRow:
    """One row of ``<prefix>_stats.csv`` (the whole run, warm-up included)."""

    method: str
    name: str
    requests: int
    failures: int
    median_ms: float | None
    avg_ms: float | None
    min_ms: float | None
    max_ms: float | None
    rps: float | None
    percentiles: dict[str, float | None]


@dataclass
class HistoryRow:
    """One row of ``<prefix>_stats_history.csv``: cumulative totals at a second."""

    timestamp: int
    user_count: int
    method: str
    name: str
    rps: float | None
    total_requests: int
    total_failures: int
    total_avg_ms: float | None


@dataclass
class FailureRow:
    """One row of ``<prefix>_failures.csv``."""

    method: str
    name: str
    error: str
    occurrences: int


def _num(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _int(value: str | None) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def parse_stats_csv(path: Path) -> list[CsvStatsRow]:
    """Rows of Locust's ``_stats.csv``; the ``Aggregated`` row has an empty method."""
    rows = []
    for row in _read_csv(path):
        percentiles = {k: _num(v) for k, v in row.items() if k and k.endswith("%")}
        rows.append(
            CsvStatsRow(
                method=row.get("Type", "") or "",
                name=row.get("Name", "") or "",
                requests=_int(row.get("Request Count")),
                failures=_int(row.get("Failure Count")),
                median_ms=_num(row.get("Median Response Time")),
                avg_ms=_num(row.get("Average Response Time")),
                min_ms=_num(row.get("Min Response Time")),
                max_ms=_num(row.get("Max Response Time")),
                rps=_num(row.get("Requests/s")),
                percentiles=percentiles,
            )
        )
    return rows


def parse_history_csv(path: Path) -> list[HistoryRow]:
    """Rows of Locust's ``_stats_history.csv`` (one per second and entry)."""
    return [
        HistoryRow(
            timestamp=_int(row.get("Timestamp")),
            user_count=_int(row.get("User Count")),
            method=row.get("Type", "") or "",
            name=row.get("Name", "") or "",
            rps=_num(row.get("Requests/s")),
            total_requests=_int(row.get("Total Request Count")),
            total_failures=_int(row.get("Total Failure Count")),
            total_avg_ms=_num(row.get("Total Average Response Time")),
        )
        for row in _read_csv(path)
    ]


def parse_failures_csv(path: Path) -> list[FailureRow]:
    """Rows of Locust's ``_failures.csv``."""
    return [
        FailureRow(
            method=row.get("Method", "") or "",
            name=row.get("Name", "") or "",
            error=row.get("Error", "") or "",
            occurrences=_int(row.get("Occurrences")),
        )
        for row in _read_csv(path)
    ]


def window_from_history(rows: Sequence[HistoryRow], warmup: float) -> WindowStats | None:
    """Counts, rate, error rate and mean after ``warmup`` from the cumulative history.

    The boundary is the last row at or before ``first timestamp + warmup`` (rows are a
    second apart, so the boundary is exact to about a second). Percentiles cannot be
    recovered this way: the entries carry no histogram.
    """
    if not rows:
        return None
    start = min(r.timestamp for r in rows)
    boundary_ts = start + warmup
    by_entry: dict[tuple[str, str], list[HistoryRow]] = {}
    for row in rows:
        if row.name == "Aggregated" and not row.method:
            continue
        by_entry.setdefault((row.method, row.name), []).append(row)
    entries = []
    last_ts = max(r.timestamp for r in rows)
    first_ts: int | None = None
    for (method, name), items in sorted(by_entry.items()):
        items.sort(key=lambda r: r.timestamp)
        before = [r for r in items if r.timestamp <= boundary_ts]
        base = before[-1] if before else None
        end = items[-1]
        base_n = base.total_requests if base else 0
        base_f = base.total_failures if base else 0
        base_avg = (base.total_avg_ms or 0.0) if base else 0.0
        requests = end.total_requests - base_n
        if requests <= 0:
            continue
        avg = ((end.total_avg_ms or 0.0) * end.total_requests - base_avg * base_n) / requests
        entries.append(
            EndpointStats(method, name, requests, end.total_failures - base_f, avg_ms=avg)
        )
        ts = base.timestamp if base else start
        first_ts = ts if first_ts is None else min(first_ts, ts)
    boundary = max(first_ts if first_ts is not None else boundary_ts, boundary_ts)
    return WindowStats(duration_s=max(0.0, last_ts - boundary), entries=entries, source="history")


def log_has_cpu_warning(text: str) -> bool:
    """Whether Locust's log reports a load generator above its CPU threshold."""
    return _CPU_WARNING_RE.search(text) is not None
