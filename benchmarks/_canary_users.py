"""What an aborted canary costs real users, seen from the client (part 4 of canary_abort.py).

Blue (tests/integration/latency_backend.py) answers 200; green, the bad version, answers
203 or, for a seeded ``--bad-error-rate`` share of requests, 500. HAProxy is started by
releasegate (``router up``), and ``hey`` sends ``--client-rate`` requests/s through it
with a per-request CSV: each row's start offset, response time and status, whose value
tells the color (200 blue; 203 or 500 green). After a few seconds on blue alone, the
release's own canary step (``pipeline.canary.weight_step``, ledger in a scratch
database) gives green ``--abort-weight`` percent and judges the router's ring every
second, until it fails the step and sends every new request back to blue.

Per trial, from the client's rows only:

- **failed requests** (5xx or no response) against the floor *weight x error rate x
  requests in the step*, the requests in the step being those the client started from
  the first answer of green to the last one. Target: within 2x of the floor, summed over
  the trials (one trial's two or three failures are mostly chance).
- **first bad request to blue at 100%**: from the start of the first failed request to
  the end of the last answer of green. Target: < 15 s at 5% and 100 requests/s.

hey's CSV lists answered requests only: a request with no response at all is not in it.
So each trial also shows what the router's ring logged over the same run (requests and
errors, a missing response included), to show that no failure escaped the client.
"""

from __future__ import annotations

import csv
import io
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, free_port, scratch_db, server_url, wait_answers

sys.path.insert(0, str(REPO_ROOT / "src"))

from releasegate.canary.traffic import TrafficReader
from releasegate.config import Settings, load_config
from releasegate.ledger import Ledger
from releasegate.lock import HeldLock
from releasegate.pipeline.canary import weight_step
from releasegate.pipeline.context import ReleaseContext, ReleaseOptions
from releasegate.router.manager import router_down, router_up
from releasegate.router.state import wait_healthy

BACKEND = REPO_ROOT / "tests" / "integration" / "latency_backend.py"
BLUE_STATUS, GREEN_STATUS = 200, 203
# Seconds of blue alone before the step, and of the client after blue is back at 100%.
LEAD_S, TAIL_S = 3.0, 3.0
# The step's duration, without extensions: long enough that a bad green is failed by the
# analysis (early, or at min_requests = 50), never by the end of the window.
STEP_S = 30.0
CONFIG = """\
[service]
name = "bench"

[deploy]
blue_port = {blue}
green_port = {green}

[router]
bind = "127.0.0.1:{port}"
runtime_dir = "rt"
check_interval = "1s"
stop_timeout = "2s"

[release.canary]
steps = ["{weight}%", "100%"]
duration = "{duration}s"
min_requests = 50
max_extensions = 0
thresholds = ["error_rate < 1%"]
compare = false
"""


@dataclass(frozen=True)
class Answer:
    """One request as ``hey`` saw it: start and end in seconds from hey's start."""

    start_s: float
    end_s: float
    status: int

    @property
    def failed(self) -> bool:
        return self.status >= 500

    @property
    def green(self) -> bool:
        return self.status in (GREEN_STATUS, 500)  # only green answers 500


@dataclass(frozen=True)
class Trial:
    requests: int
    in_step: int  # requests started from green's first answer to its last
    failed: int
    floor: float
    first_bad_to_blue_s: float | None
    step_s: float
    router_requests: int  # what the router's ring logged over the same run
    router_errors: int
    reason: str

    @property
    def ratio(self) -> float:
        return self.failed / self.floor if self.floor else float("inf")


def parse_hey_csv(text: str) -> list[Answer]:
    """hey's ``-o csv`` rows as :class:`Answer`, in start order."""
    answers = []
    for row in csv.DictReader(io.StringIO(text)):
        start = float(row["offset"])
        answers.append(Answer(start, start + float(row["response-time"]), int(row["status-code"])))
    return sorted(answers, key=lambda answer: answer.start_s)


@contextmanager
def bad_canary_router(folder: Path, weight: int, error_rate: float, step_s: float) -> Iterator[str]:
    """Blue and a bad green behind releasegate's HAProxy; yields the router's URL and
    leaves the settings in ``folder``/releasegate.toml."""
    ports = {"blue": free_port(), "green": free_port()}
    backends = [
        subprocess.Popen(
            [sys.executable, str(BACKEND), str(ports["blue"]), "--status", str(BLUE_STATUS)]
        ),
        subprocess.Popen(
            [
                *(sys.executable, str(BACKEND), str(ports["green"]), "--seed", "1"),
                *("--status", str(GREEN_STATUS), "--fail-rate", str(error_rate)),
            ]
        ),
    ]
    port = free_port()
    (folder / "releasegate.toml").write_text(
        CONFIG.format(
            blue=ports["blue"], green=ports["green"], port=port, weight=weight, duration=step_s
        )
    )
    settings = load_config(folder / "releasegate.toml", env={})
    try:
        for color_port in ports.values():
            wait_answers(f"http://127.0.0.1:{color_port}/healthz")
        router_up(settings)
        wait_healthy(settings, ["blue", "green"], timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        router_down(settings, forget=True)
        for backend in backends:
            backend.terminate()
            backend.wait(timeout=10)


def one_trial(ctx: ReleaseContext, url: str, weight: int, error_rate: float, rate: int) -> Trial:
    workers = 10
    canary = ctx.settings.raw.release.canary
    assert canary is not None
    # hey's own bound, should the step hang: it is stopped as soon as the step is over.
    seconds = int(LEAD_S + canary.duration + TAIL_S + 30)
    ring = TrafficReader.for_settings(ctx.settings)
    ring.skip_backlog()
    client = subprocess.Popen(
        [
            *("hey", "-z", f"{seconds}s", "-c", str(workers), "-q", f"{rate / workers:g}"),
            *("-o", "csv", f"{url}/"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(LEAD_S)
        outcome = weight_step(ctx, weight)
        time.sleep(TAIL_S)
    finally:
        client.send_signal(signal.SIGINT)  # hey stops and prints what it has
        output, _ = client.communicate(timeout=60)
    time.sleep(0.2)  # the router logs a request once it has ended
    logged = ring.drain().values()
    if outcome.ok:
        sys.exit(f"the bad canary passed its step: {outcome.summary}")
    answers = parse_hey_csv(output)
    green = [answer for answer in answers if answer.green]
    failed = [answer for answer in answers if answer.failed]
    in_step = [a for a in answers if green and green[0].start_s <= a.start_s <= green[-1].start_s]
    detail: dict[str, Any] = outcome.detail
    return Trial(
        requests=len(answers),
        in_step=len(in_step),
        failed=len(failed),
        floor=weight / 100 * error_rate * len(in_step),
        first_bad_to_blue_s=green[-1].end_s - failed[0].start_s if failed and green else None,
        step_s=float(detail.get("duration_s", 0.0)),
        reason=str(detail.get("reason", outcome.summary)),
        router_requests=sum(traffic.requests for traffic in logged) + ring.unrouted,
        router_errors=sum(traffic.errors for traffic in logged),
    )


def release_context(settings: Settings, ledger: Ledger) -> ReleaseContext:
    """A release of green beside a live blue, as the pipeline has it at the canary."""
    release_id = ledger.start_release(settings.service, "release", "benchmark")
    lock = HeldLock(conn=ledger.conn, service=settings.service, waited=0.0)
    return ReleaseContext(
        settings=settings,
        options=ReleaseOptions(image="bench:bad"),
        ledger=ledger,
        release_id=release_id,
        lock=lock,
        performer="benchmark",
        git_sha=None,
        live_before="blue",
        target="green",
    )


def abort_cost(folder: Path, *, weight: int, error_rate: float, rate: int, trials: int) -> None:
    print(
        f"\n4. an aborted canary, from the client: green answers 500 to {error_rate:.0%} of"
        f" requests, {weight}% step, hey at {rate} req/s, {trials} trials"
    )
    print(
        f"   {'trial':<5} {'requests':>8} {'in step':>7} {'failed':>6} {'floor':>6} {'ratio':>6}"
        f" | {'1st bad->blue 100%':>18} {'step':>6} | router: requests, errors"
    )
    results: list[Trial] = []
    with (
        scratch_db(server_url()) as ledger_url,
        Ledger.open(ledger_url) as ledger,
        bad_canary_router(folder, weight, error_rate, STEP_S) as url,
    ):
        settings = load_config(folder / "releasegate.toml", env={})
        for index in range(trials):
            trial = one_trial(release_context(settings, ledger), url, weight, error_rate, rate)
            results.append(trial)
            to_blue = trial.first_bad_to_blue_s
            print(
                f"   {index + 1:<5} {trial.requests:>8} {trial.in_step:>7} {trial.failed:>6}"
                f" {trial.floor:>6.1f} {trial.ratio:>5.2f}x"
                f" | {'-' if to_blue is None else f'{to_blue:.2f} s':>18} {trial.step_s:>5.2f}s"
                f" | {trial.router_requests}, {trial.router_errors}"
            )
            print(f"         verdict: {trial.reason}")
    # The step stops at a time the failures choose, but by Wald's identity the failures
    # expected at that time are still error rate x green's requests: the trials' sums
    # compare with the floor; one trial's handful of failures is mostly chance.
    failed, floor = sum(t.failed for t in results), sum(t.floor for t in results)
    ratio = failed / floor if floor else float("inf")
    times = [t.first_bad_to_blue_s for t in results if t.first_bad_to_blue_s is not None]
    print(
        f"   failed / floor over the trials: {failed} / {floor:.1f} = {ratio:.2f}x"
        f" (per trial {min(t.ratio for t in results):.2f}x to {max(t.ratio for t in results):.2f}x;"
        f" target within 2x: {'met' if ratio <= 2 else 'MISSED'})"
    )
    if times:
        print(
            f"   first bad request -> blue at 100%: median {statistics.median(times):.2f} s,"
            f" worst {max(times):.2f} s (target < 15 s: {'met' if max(times) < 15 else 'MISSED'})"
        )
