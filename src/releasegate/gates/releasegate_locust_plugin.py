"""Locust plugin of the SLO gate: exact statistics for the post-warm-up window.

releasegate runs ``locust -f <locustfile>,<this file> --releasegate-out PATH
--releasegate-warmup SECONDS``. Locust imports this file like a locustfile (it defines
no User class) and its event listeners then:

- note the test start on every node; the window starts ``warmup`` seconds later;
- record every request *issued* after the window start (``start_time`` of the request
  event) into one :class:`~releasegate.gates.histogram.Histogram` per (method, name),
  with its failure count: every sample, nothing rounded beyond 0.1%;
- measure the health of each load-generating process during the window: its CPU time
  over wall time, and the lag of its event loop (a greenlet that sleeps 100 ms and
  notes how late it wakes up; a busy or starved loop delays every response timestamp);
- note each ``cpu_warning`` event (Locust's own "CPU usage above 90%") with its time;
- on workers (``--processes`` or remote workers), ship all of that to the master with
  each stats report (``report_to_master``); the master merges it (``worker_report``);
- on the master or the local runner, write the window to ``PATH`` (JSON, replaced
  atomically) every second while the test runs, and a final copy when Locust quits;
- with ``--releasegate-duration``, end the test when the window has lasted that long;
- with ``--releasegate-synthetic MARKER``, add ``X-Releasegate-Synthetic: MARKER`` and
  releasegate's synthetic User-Agent (:mod:`releasegate.gates.synthetic`) to every request
  of every ``HttpUser`` and ``FastHttpUser`` client, so locustfiles need no change. The
  marker header always wins; a User-Agent the locustfile sets itself is kept. Workers get
  the option from the master (Locust forwards plugin options);
- when ``--tags``/``--exclude-tags`` leave no task to run, log :data:`NO_TASKS` and exit
  with status 2 before any user starts (Locust would otherwise spawn users that fail).

Without its options it does nothing visible, so a locustfile run by hand is unaffected.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import gevent
from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner

from releasegate.gates import synthetic
from releasegate.gates.histogram import Histogram

REPORT_KEY = "releasegate_window"
SNAPSHOT_INTERVAL_S = 1.0
LAG_INTERVAL_S = 0.1
FORMAT_VERSION = 1
# Logged when the tag filter leaves nothing to run; the runner turns it into a config error.
NO_TASKS = "releasegate: no task left to run"


class _Entry:
    __slots__ = ("failures", "histogram", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.histogram = Histogram()


class NodeMeter:
    """CPU use and event-loop lag of this process during the window."""

    def __init__(self) -> None:
        self.cpu_start: float | None = None
        self.wall_start: float | None = None
        self.cpu_end: float | None = None
        self.wall_end: float | None = None
        self.lag = Histogram()
        self.sampler: Any = None

    def reset(self) -> None:
        self.cpu_start = self.wall_start = self.cpu_end = self.wall_end = None
        self.lag = Histogram()

    def sample(self, window_start: float, lag_ms: float) -> None:
        if time.time() < window_start:
            return
        if self.cpu_start is None:
            self.cpu_start, self.wall_start = time.process_time(), time.time()
            return
        self.lag.add(lag_ms)

    def freeze(self) -> None:
        if self.cpu_start is not None and self.cpu_end is None:
            self.cpu_end, self.wall_end = time.process_time(), time.time()

    def to_dict(self) -> dict[str, Any]:
        cpu_s = wall_s = 0.0
        if self.cpu_start is not None and self.wall_start is not None:
            cpu_s = (self.cpu_end or time.process_time()) - self.cpu_start
            wall_s = (self.wall_end or time.time()) - self.wall_start
        return {"cpu_s": cpu_s, "wall_s": wall_s, "lag": self.lag.to_dict()}


class WindowRecorder:
    """The post-warm-up statistics of one Locust node (merged from workers on a master)."""

    def __init__(self) -> None:
        self.out: str = ""
        self.warmup = 0.0
        self.started_at: float | None = None
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.cpu_warnings: list[float] = []
        self.meter = NodeMeter()
        self.nodes: dict[str, dict[str, Any]] = {}  # worker id -> its latest NodeMeter dict
        self.snapshotter: Any = None

    def start(self, warmup: float) -> None:
        self.warmup = warmup
        self.started_at = time.time()
        self.window_start = self.started_at + warmup
        self.window_end = None
        self.entries = {}
        self.cpu_warnings = []
        self.nodes = {}
        self.meter.reset()

    def record(
        self, method: str, name: str, response_time: float, failed: bool, start_time: float
    ) -> None:
        if self.window_start is None or start_time < self.window_start:
            return
        entry = self.entries.get((method, name))
        if entry is None:
            entry = self.entries[(method, name)] = _Entry()
        entry.requests += 1
        entry.failures += failed
        entry.histogram.add(response_time)

    def entries_to_list(self) -> list[dict[str, Any]]:
        return [
            {
                "method": method,
                "name": name,
                "requests": entry.requests,
                "failures": entry.failures,
                "histogram": entry.histogram.to_dict(),
            }
            for (method, name), entry in sorted(self.entries.items())
        ]

    def merge_list(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            key = (str(item["method"]), str(item["name"]))
            entry = self.entries.get(key)
            if entry is None:
                entry = self.entries[key] = _Entry()
            entry.requests += int(item["requests"])
            entry.failures += int(item["failures"])
            entry.histogram.merge(Histogram.from_dict(item["histogram"]))

    def write(self, final: bool) -> None:
        if not self.out:
            return
        data = {
            "version": FORMAT_VERSION,
            "final": final,
            "warmup": self.warmup,
            "started_at": self.started_at,
            "window_start": self.window_start,
            "window_end": self.window_end or time.time(),
            "written_at": time.time(),
            "cpu_warnings": self.cpu_warnings,
            "nodes": {"local": self.meter.to_dict(), **self.nodes},
            "entries": self.entries_to_list(),
        }
        tmp = f"{self.out}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, self.out)


recorder = WindowRecorder()


def _listen(hook: Any, handler: Callable[..., None]) -> None:
    hook.add_listener(handler)


def _snapshot_loop() -> None:
    while True:
        gevent.sleep(SNAPSHOT_INTERVAL_S)
        recorder.write(final=False)


def _lag_loop() -> None:
    while True:
        before = time.perf_counter()
        gevent.sleep(LAG_INTERVAL_S)
        lag_ms = max(0.0, (time.perf_counter() - before - LAG_INTERVAL_S) * 1000)
        if recorder.window_start is not None:
            recorder.meter.sample(recorder.window_start, lag_ms)


def _add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--releasegate-out",
        type=str,
        default="",
        help="releasegate: file receiving the post-warm-up window statistics (JSON)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--releasegate-duration",
        type=float,
        default=0.0,
        help="releasegate: stop the test this many seconds after the warm-up (0: never)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--releasegate-warmup",
        type=float,
        default=0.0,
        help="releasegate: seconds after the test start that the window leaves out",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--releasegate-synthetic",
        type=str,
        default="",
        help="releasegate: marker sent as X-Releasegate-Synthetic with every request",
        include_in_web_ui=False,
    )


# -- the synthetic marker on every request ------------------------------------------

# The marker of every request; empty when none was given.
_marker: list[str] = [""]


def _set_marker(environment: Environment) -> None:
    _marker[0] = str(getattr(environment.parsed_options, "releasegate_synthetic", "") or "")


def _marking(request: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(request)
    def marked(self: Any, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if _marker[0]:
            kwargs["headers"] = synthetic.add_to(kwargs.get("headers"), _marker[0])
        return request(self, method, url, *args, **kwargs)

    marked.releasegate_marked = True  # type: ignore[attr-defined]
    return marked


def _install_marker() -> None:
    """Wrap the request method of Locust's two HTTP clients (once per process)."""
    from locust.clients import HttpSession
    from locust.contrib.fasthttp import FastHttpSession

    for client in (HttpSession, FastHttpSession):
        if not getattr(client.request, "releasegate_marked", False):
            client.request = _marking(client.request)  # type: ignore[method-assign]


# -- events ---------------------------------------------------------------------------


def _on_init(environment: Environment, **_kw: Any) -> None:
    _set_marker(environment)
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or options is None:
        return  # a worker gets its options (tags included) from the master later
    tags = getattr(options, "tags", None)
    exclude = getattr(options, "exclude_tags", None)
    if tags is None and exclude is None:
        return
    # Filtering is idempotent; Locust would do it when the test starts.
    environment._filter_tasks_by_tags()
    if all(not user_class.tasks for user_class in environment.user_classes):
        logging.getLogger(__name__).error(
            "%s: tags %s and exclude_tags %s exclude every task of %s",
            NO_TASKS,
            tags,
            exclude,
            ", ".join(u.__name__ for u in environment.user_classes) or "no user class",
        )
        raise SystemExit(2)


def _on_test_start(environment: Environment, **_kw: Any) -> None:
    _set_marker(environment)  # a worker has the master's options by now
    options = environment.parsed_options
    warmup = float(getattr(options, "releasegate_warmup", 0.0) or 0.0)
    recorder.start(warmup)
    if recorder.meter.sampler is None:
        recorder.meter.sampler = gevent.spawn(_lag_loop)
    if isinstance(environment.runner, WorkerRunner):
        return
    recorder.out = str(getattr(options, "releasegate_out", "") or "")
    if recorder.out and recorder.snapshotter is None:
        recorder.snapshotter = gevent.spawn(_snapshot_loop)
    duration = float(getattr(options, "releasegate_duration", 0.0) or 0.0)
    if duration > 0:
        gevent.spawn(_end_of_window, environment, warmup + duration)


def _end_of_window(environment: Environment, seconds: float) -> None:
    """Quit when the window is complete, by the wall clock.

    Locust's ``--run-time`` timer is scheduled on gevent's cached loop time, which can be
    stale by the start-up time, so the run can end early; releasegate passes a longer
    ``--run-time`` as a backstop and ends the run here instead.
    """
    assert recorder.started_at is not None
    end = recorder.started_at + seconds
    while (left := end - time.time()) > 0:
        gevent.sleep(min(0.1, left))
    logging.getLogger(__name__).info("releasegate: the measured window is complete, stopping")
    runner = environment.runner
    if runner is not None:
        runner.quit()


def _on_request(
    request_type: str,
    name: str,
    response_time: float | None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_kw: Any,
) -> None:
    elapsed = float(response_time or 0.0)
    started = start_time if start_time is not None else time.time() - elapsed / 1000.0
    recorder.record(request_type, name, elapsed, exception is not None, started)


def _on_cpu_warning(**_kw: Any) -> None:
    recorder.cpu_warnings.append(time.time())


def _on_report_to_master(client_id: str, data: dict[str, Any]) -> None:
    data[REPORT_KEY] = {
        "entries": recorder.entries_to_list(),
        "cpu_warnings": recorder.cpu_warnings,
        "node": recorder.meter.to_dict(),
    }
    recorder.entries = {}
    recorder.cpu_warnings = []


def _on_worker_report(client_id: str, data: dict[str, Any]) -> None:
    report = data.get(REPORT_KEY)
    if report:
        recorder.merge_list(report.get("entries", []))
        recorder.cpu_warnings.extend(report.get("cpu_warnings", []))
        if "node" in report:
            recorder.nodes[str(client_id)] = report["node"]


def _stop_meter() -> None:
    recorder.meter.freeze()
    if recorder.meter.sampler is not None:
        recorder.meter.sampler.kill(block=False)
        recorder.meter.sampler = None


def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    _stop_meter()
    if not isinstance(environment.runner, WorkerRunner) and recorder.window_end is None:
        recorder.window_end = time.time()


def _on_quitting(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    _stop_meter()
    if recorder.snapshotter is not None:
        recorder.snapshotter.kill(block=False)
        recorder.snapshotter = None
    if recorder.window_end is None:
        recorder.window_end = time.time()
    recorder.write(final=True)


# Registered through Any: Locust's add_listener is untyped.
_install_marker()
_listen(events.init_command_line_parser, _add_arguments)
_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.request, _on_request)
_listen(events.cpu_warning, _on_cpu_warning)
_listen(events.report_to_master, _on_report_to_master)
_listen(events.worker_report, _on_worker_report)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)
