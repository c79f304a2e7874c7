"""Running Locust headless in a subprocess and reading what it measured.

Locust runs as ``python -m locust`` in a child process (its own session), so gevent
never monkey-patches the releasegate process. The command is::

    locust -f LOCUSTFILE,releasegate_locust_plugin.py --headless -u USERS -r RATE
           -t WARMUP+DURATION+5s --host URL --csv PREFIX --csv-full-history
           --html REPORT --only-summary --releasegate-out window.json
           --releasegate-warmup WARMUP --releasegate-duration DURATION
           [--processes N | --master --expect-workers N ...]

The plugin ends the run when the window has lasted ``duration`` by the wall clock;
``-t`` is a backstop (Locust schedules it on gevent's cached loop time, which can be
stale by the start-up time and end a run a second or so early).

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

**Failures before load.** A locustfile with a syntax error is rejected by compiling it
in-process before Locust starts; one that fails to import (or defines no User) makes
Locust exit before spawning a user, which is reported as a :class:`ConfigError`.
The verdict never depends on Locust's exit code.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate.errors import ConfigError, InfraError
from releasegate.gates.histogram import Histogram
from releasegate.gates.thresholds import PERCENTILES, TOTAL_SCOPE
from releasegate.secrets import mask_url

PLUGIN_PATH = Path(__file__).with_name("releasegate_locust_plugin.py")
# The plugin's NO_TASKS line (the plugin is not imported here: it imports Locust).
NO_TASKS_LOG = "releasegate: no task left to run"
CSV_PREFIX = "locust"
POLL_INTERVAL_S = 0.25
STOP_GRACE_S = 15.0
# Locust's own --run-time is only a backstop (see the plugin's _end_of_window).
RUN_TIME_MARGIN_S = 5.0

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
_STARTED_RE = re.compile(r"Ramping to \d+ users|All users spawned")
_URL_RE = re.compile(r"^https?://[^\s/?#]+(?:/[^\s]*)?$")


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
            "rps": _round(self.metric("rps")),
            "error_rate": _round(self.metric("error_rate"), 6),
            **{m: _round(self.metric(m)) for m in ("avg", "p50", "p90", "p95", "p99", "max")},
        }


def _round(value: float | None, digits: int = 3) -> float | None:
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


# -- running ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LocustPlan:
    """One headless Locust run."""

    locustfile: Path
    host: str
    out_dir: Path
    users: int
    spawn_rate: float
    warmup: float
    duration: float
    processes: int = 1
    workers: int = 0
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = 5557
    timeout: float | None = None  # wall clock; default: run time + max(30 s, 50%)
    # X-Releasegate-Synthetic value every request carries (the plugin adds it); "": none.
    synthetic: str = ""
    # Locust --tags / --exclude-tags (None: no filter).
    tags: tuple[str, ...] | None = None
    exclude_tags: tuple[str, ...] | None = None

    @property
    def run_time_s(self) -> int:
        """Locust's ``-t``, a backstop: the plugin ends the run after warm-up + duration."""
        return max(1, math.ceil(self.warmup + self.duration + RUN_TIME_MARGIN_S))

    @property
    def wall_timeout_s(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return self.run_time_s + max(30.0, 0.5 * self.run_time_s)

    @property
    def csv_prefix(self) -> Path:
        return self.out_dir / CSV_PREFIX

    @property
    def html_report(self) -> Path:
        return self.out_dir / "locust_report.html"

    @property
    def window_path(self) -> Path:
        return self.out_dir / "window.json"

    @property
    def log_path(self) -> Path:
        return self.out_dir / "locust.log"

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "locust_summary.txt"

    def command(self) -> list[str]:
        """The Locust command line (the target URL unmasked: it is passed, not shown)."""
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            f"{self.locustfile},{PLUGIN_PATH}",
            "--headless",
            "-u",
            str(self.users),
            "-r",
            f"{self.spawn_rate:g}",
            "-t",
            f"{self.run_time_s}s",
            "--host",
            self.host.rstrip("/"),
            "--csv",
            str(self.csv_prefix),
            "--csv-full-history",
            "--html",
            str(self.html_report),
            "--only-summary",
            "--releasegate-out",
            str(self.window_path),
            "--releasegate-warmup",
            f"{self.warmup:g}",
            "--releasegate-duration",
            f"{self.duration:g}",
        ]
        if self.synthetic:
            cmd += ["--releasegate-synthetic", self.synthetic]
        if self.tags is not None:
            cmd += ["--tags", *self.tags]
        if self.exclude_tags is not None:
            cmd += ["--exclude-tags", *self.exclude_tags]
        if self.processes > 1:
            cmd += ["--processes", str(self.processes)]
        if self.workers > 0:
            cmd += [
                "--master",
                "--expect-workers",
                str(self.workers),
                "--master-bind-host",
                self.master_bind_host,
                "--master-bind-port",
                str(self.master_bind_port),
                "--expect-workers-max-wait",
                "60",
            ]
        return cmd


@dataclass
class LocustRun:
    """The outcome of one Locust run: paths, parsed statistics and what went wrong."""

    plan: LocustPlan
    exit_code: int | None
    wall_s: float
    timed_out: bool = False
    aborted: str | None = None
    window: WindowStats | None = None
    cpu_warning_in_log: bool = False
    stats: list[CsvStatsRow] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def saturation(self) -> list[str]:
        """Why the load generator was saturated in the window (empty: it was not).

        From the plugin's measurements when there are any; else from Locust's log.
        """
        if self.window is not None and self.window.source == "plugin":
            return self.window.saturation()
        if self.cpu_warning_in_log:
            return ["Locust warned that its CPU usage was above 90%"]
        return []

    @property
    def saturated(self) -> bool:
        return bool(self.saturation())

    @property
    def target(self) -> str:
        return mask_url(self.plan.host)

    def paths(self) -> dict[str, str]:
        prefix = self.plan.csv_prefix
        return {
            "html_report": str(self.plan.html_report),
            "stats_csv": f"{prefix}_stats.csv",
            "stats_history_csv": f"{prefix}_stats_history.csv",
            "failures_csv": f"{prefix}_failures.csv",
            "window_json": str(self.plan.window_path),
            "log": str(self.plan.log_path),
        }

    def to_dict(self) -> dict[str, Any]:
        window = self.window
        return {
            "target": self.target,
            "users": self.plan.users,
            "spawn_rate": self.plan.spawn_rate,
            "warmup_s": self.plan.warmup,
            "duration_s": self.plan.duration,
            "processes": self.plan.processes,
            "exit_code": self.exit_code,
            "wall_s": round(self.wall_s, 3),
            "timed_out": self.timed_out,
            "aborted": self.aborted,
            "saturated": self.saturated,
            "saturation": self.saturation(),
            "loadgen_cpu": None if window is None else _round(window.cpu_utilisation),
            "loadgen_loop_lag_p90_ms": None if window is None else _round(window.loop_lag_p90_ms),
            "cpu_warning_in_log": self.cpu_warning_in_log,
            "window": None
            if window is None
            else {
                "source": window.source,
                "duration_s": round(window.duration_s, 3),
                "requests": window.requests,
                "scopes": [window.scope(name).summary() for name in window.scope_names()],
            },
            "whole_run_requests": next(
                (r.requests for r in self.stats if r.name == "Aggregated" and not r.method), None
            ),
            "failures": [
                {"method": f.method, "name": f.name, "error": f.error, "occurrences": f.occurrences}
                for f in self.failures
            ],
            "notes": self.notes,
            "paths": self.paths(),
        }


def check_target(url: str) -> str:
    """Validate a target base URL (``http(s)://host[:port][/path]``)."""
    if not _URL_RE.match(url):
        raise ConfigError(f"invalid target URL {mask_url(url)!r}: expected http(s)://host[:port]")
    return url.rstrip("/")


def check_locustfile(path: Path) -> None:
    """Reject a missing locustfile or one with a syntax error, before any load is sent."""
    if not path.is_file():
        raise ConfigError(f"locustfile not found: {path}")
    try:
        source = path.read_bytes()
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ConfigError(
            f"locustfile {path.name} line {exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read locustfile {path}: {exc}") from None


def _child_env() -> dict[str, str]:
    # LOCUST_* variables would silently change the run (users, run time, processes...).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LocustProcess:
    """A running Locust subprocess; :func:`run_locust` drives one to completion."""

    def __init__(self, plan: LocustPlan) -> None:
        self.plan = plan
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.timed_out = False
        self.aborted: str | None = None
        self._interrupted_at: float | None = None
        self._window_mtime = 0.0

    def start(self) -> None:
        plan = self.plan
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (plan.window_path, plan.html_report):
            stale.unlink(missing_ok=True)
        with plan.log_path.open("wb") as log, plan.summary_path.open("wb") as summary:
            try:
                self.proc = subprocess.Popen(
                    plan.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=summary,
                    stderr=log,
                    cwd=plan.out_dir,
                    env=_child_env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise InfraError(f"cannot start Locust: {exc}") from None
        self.started_at = time.monotonic()

    def running(self) -> bool:
        # Not Popen.poll(): the exited process stays unreaped until finish(), so that its
        # group id cannot be reused before finish() sweeps the group.
        return (
            self.proc is not None
            and self.proc.returncode is None
            and not _exited_unreaped(self.proc.pid, 0.0)
        )

    def fresh_window(self) -> WindowStats | None:
        """The live window when the plugin has rewritten it since the last call."""
        try:
            mtime = self.plan.window_path.stat().st_mtime
        except FileNotFoundError:
            return None
        if mtime == self._window_mtime:
            return None
        self._window_mtime = mtime
        try:
            return read_window(self.plan.window_path)
        except InfraError:
            return None  # caught mid-replace; the next poll reads it

    def interrupt(self, reason: str | None = None) -> None:
        """Ask Locust to stop now (SIGINT: it still writes its report and statistics)."""
        if reason and self.aborted is None:
            self.aborted = reason
        if self.running() and self._interrupted_at is None:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            self._interrupted_at = time.monotonic()

    def tick(self) -> None:
        """Enforce the wall-clock timeout, escalating to SIGKILL of the whole group."""
        if not self.running():
            return
        assert self.proc is not None
        now = time.monotonic()
        if self._interrupted_at is None and now - self.started_at > self.plan.wall_timeout_s:
            self.timed_out = True
            self.interrupt()
        elif self._interrupted_at is not None and now - self._interrupted_at > STOP_GRACE_S:
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self) -> LocustRun:
        """Wait for the exit and parse every output."""
        assert self.proc is not None
        if _exited_unreaped(self.proc.pid, STOP_GRACE_S * 2):
            # Worker processes (--processes) of a master that exited early must not
            # linger. The exited leader is not reaped yet, so its group id is still ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            exit_code = self.proc.wait()
        else:
            self.kill()
            exit_code = self.proc.returncode
        wall = time.monotonic() - self.started_at
        plan = self.plan
        log = plan.log_path.read_text(encoding="utf-8", errors="replace")
        window = read_window(plan.window_path)
        if window is None and not _STARTED_RE.search(log):
            _raise_startup_failure(plan, exit_code, log, self.timed_out)
        prefix = plan.csv_prefix
        run = LocustRun(
            plan=plan,
            exit_code=exit_code,
            wall_s=wall,
            timed_out=self.timed_out,
            aborted=self.aborted,
            window=window,
            cpu_warning_in_log=log_has_cpu_warning(log),
            stats=parse_stats_csv(Path(f"{prefix}_stats.csv")),
            history=parse_history_csv(Path(f"{prefix}_stats_history.csv")),
            failures=parse_failures_csv(Path(f"{prefix}_failures.csv")),
        )
        if window is not None and not window.final:
            run.notes.append("Locust did not write its final window; using the last snapshot")
        if window is None or (window.requests == 0 and any(r.total_requests for r in run.history)):
            fallback = window_from_history(run.history, plan.warmup)
            if fallback is not None and fallback.requests:
                run.window = fallback
                run.notes.append(
                    "no window data from the releasegate plugin: counts come from Locust's"
                    " history CSV and percentiles are unavailable"
                )
        if not plan.html_report.exists():
            run.notes.append("Locust wrote no HTML report")
        return run


def _exited_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``pid`` to exit, leaving it unreaped (a zombie)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True  # reaped already
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _raise_startup_failure(
    plan: LocustPlan, exit_code: int | None, log: str, timed_out: bool
) -> None:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    problem = next(
        (
            line
            for line in reversed(lines)
            if re.search(r"Error|error:|No User class|Exception", line)
            and not line.startswith("File ")
        ),
        lines[-1] if lines else f"exit code {exit_code}",
    )[:300]
    if timed_out:
        raise InfraError(f"Locust did not start within {plan.wall_timeout_s:g}s: {problem}")
    if NO_TASKS_LOG in log:
        raise ConfigError(
            f"slo.tags / slo.exclude_tags leave no task of {plan.locustfile.name} to run"
            f" (tags {list(plan.tags or [])}, exclude_tags {list(plan.exclude_tags or [])});"
            " no load was sent"
        )
    if re.search(r"Traceback|No User class found|locust: error:", log):
        raise ConfigError(
            f"Locust could not load {plan.locustfile.name} (no load was sent): {problem}"
        )
    raise InfraError(f"Locust exited (code {exit_code}) before the test started: {problem}")


AbortCheck = Callable[[int, WindowStats], str | None]


def run_concurrently(
    plans: Sequence[LocustPlan], abort_check: AbortCheck | None = None
) -> list[LocustRun]:
    """Run several Locust processes at once; an abort in one stops all of them.

    ``abort_check(index, window)`` is called with each fresh live window and returns
    a reason to stop early, or None.
    """
    for plan in plans:
        check_locustfile(plan.locustfile)
        check_target(plan.host)
    processes = [LocustProcess(plan) for plan in plans]
    try:
        for process in processes:
            process.start()
        while any(p.running() for p in processes):
            time.sleep(POLL_INTERVAL_S)
            for index, process in enumerate(processes):
                process.tick()
                if abort_check is None or not process.running() or process.aborted:
                    continue
                window = process.fresh_window()
                reason = abort_check(index, window) if window is not None else None
                if reason:
                    process.interrupt(reason)
                    for other in processes:
                        if other is not process:
                            other.interrupt()
        return [process.finish() for process in processes]
    except BaseException:
        for process in processes:
            if process.running():
                process.kill()
        raise


def run_locust(plan: LocustPlan, abort_check: AbortCheck | None = None) -> LocustRun:
    """Run one Locust process to completion (or early abort) and parse its outputs."""
    return run_concurrently([plan], abort_check)[0]


def worker_command(locustfile: Path, master_host: str, master_port: int = 5557) -> list[str]:
    """The command that starts one external Locust worker for ``slo.workers``.

    Run it where the load should come from (releasegate installed there too): the
    plugin must be loaded on every worker, or the window has no requests from it.
    """
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        f"{locustfile},{PLUGIN_PATH}",
        "--worker",
        "--master-host",
        master_host,
        "--master-port",
        str(master_port),
    ]


def describe_plan(plan: LocustPlan) -> str:
    """One line about a run, for progress output."""
    mode = f", {plan.processes} processes" if plan.processes > 1 else ""
    return (
        f"Locust: {plan.users} users (spawn {plan.spawn_rate:g}/s{mode}) against"
        f" {mask_url(plan.host)} for {plan.warmup:g}s warm-up + {plan.duration:g}s"
    )
