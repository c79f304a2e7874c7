"""Running Locust headless in a subprocess and reading what it measured.

Locust runs as ``python -m locust`` in a child process (its own session), so gevent
never monkey-patches the releasegate process. The command is::

    locust -f LOCUSTFILE,releasegate_locust_plugin.py --headless -u USERS -r RATE
           -t WARMUP+DURATION+5s --host URL --csv PREFIX --csv-full-history
           --html REPORT --only-summary --releasegate-out window.json
           --releasegate-warmup WARMUP --releasegate-duration DURATION
           [--releasegate-synthetic MARKER] [--tags T ...] [--exclude-tags T ...]
           [--processes N | --master --expect-workers N ...]

The plugin ends the run when the window has lasted ``duration`` by the wall clock;
``-t`` is a backstop (Locust schedules it on gevent's cached loop time, which can be
stale by the start-up time and end a run a second or so early).

The statistics (the post-warm-up window, Locust's CSV files, saturation) are read by
:mod:`releasegate.gates.locust_stats`.

**Failures before load.** A locustfile with a syntax error is rejected by compiling it
in-process before Locust starts; one that fails to import (or defines no User), or whose
tasks the tag filter removes entirely, makes Locust exit before spawning a user, which is
reported as a :class:`ConfigError`. Locust's worker processes (``--processes``) of a run
that ended are killed with its process group: the leader is reaped only after that, so
the group id cannot have been reused.
The verdict never depends on Locust's exit code.
"""

from __future__ import annotations

import contextlib
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
from releasegate.gates.locust_stats import (
    CsvStatsRow,
    EndpointStats,
    FailureRow,
    HistoryRow,
    ScopeStats,
    WindowStats,
    log_has_cpu_warning,
    parse_failures_csv,
    parse_history_csv,
    parse_stats_csv,
    read_window,
    rounded,
    window_from_dict,
    window_from_history,
)
from releasegate.secrets import mask_url

# The statistics types stay importable from here.
__all__ = [
    "CsvStatsRow",
    "EndpointStats",
    "FailureRow",
    "HistoryRow",
    "LocustPlan",
    "LocustProcess",
    "LocustRun",
    "ScopeStats",
    "WindowStats",
    "check_locustfile",
    "check_target",
    "describe_plan",
    "log_has_cpu_warning",
    "parse_failures_csv",
    "parse_history_csv",
    "parse_stats_csv",
    "read_window",
    "run_concurrently",
    "run_locust",
    "window_from_dict",
    "window_from_history",
    "worker_command",
]

PLUGIN_PATH = Path(__file__).with_name("releasegate_locust_plugin.py")
# The plugin's NO_TASKS line (the plugin is not imported here: it imports Locust).
NO_TASKS_LOG = "releasegate: no task left to run"
CSV_PREFIX = "locust"
POLL_INTERVAL_S = 0.25
STOP_GRACE_S = 15.0
# Locust's own --run-time is only a backstop (see the plugin's _end_of_window).
RUN_TIME_MARGIN_S = 5.0

_STARTED_RE = re.compile(r"Ramping to \d+ users|All users spawned")
_URL_RE = re.compile(r"^https?://[^\s/?#]+(?:/[^\s]*)?$")


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
            "loadgen_cpu": None if window is None else rounded(window.cpu_utilisation),
            "loadgen_loop_lag_p90_ms": None if window is None else rounded(window.loop_lag_p90_ms),
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


def child_env() -> dict[str, str]:
    """The environment of a Locust child process."""
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
                    env=child_env(),
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
        filters = ", ".join(
            f"{key} {list(value)}"
            for key, value in (("tags", plan.tags), ("exclude_tags", plan.exclude_tags))
            if value is not None
        )
        raise ConfigError(
            f"slo.tags / slo.exclude_tags leave no task of {plan.locustfile.name} to run"
            f" ({filters}); no load was sent"
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
