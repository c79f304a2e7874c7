"""Real traffic read from a real HAProxy: per-color counts, errors, latency, sticky colors.

Each test gets its own HAProxy (host binary, runtime dir in tmp_path) in front of two
threaded HTTP servers on 127.0.0.1 that answer with their color, wait a latency of their
own and fail on request. What the router's traffic ring reports is checked against what
the client sent and saw, and against what the servers measured themselves.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from test_router import CONFIG  # the same router project as the router's own tests

from releasegate.canary.traffic import ColorTraffic, TrafficReader, nearest_rank
from releasegate.config import Settings, load_config
from releasegate.errors import InfraError
from releasegate.router.config import COLOR_HEADER, STICKY_COOKIE, router_config
from releasegate.router.manager import router_down, router_up
from releasegate.router.process import runtime_client
from releasegate.router.state import wait_healthy
from releasegate.router.switching import promote, rollback, set_weight, withdraw

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


BACKEND_SCRIPT = Path(__file__).with_name("latency_backend.py")
# Latencies of a web service's real answers, well above what the machine adds when busy.
LOW_MS, HIGH_MS = 50.0, 250.0


@dataclass
class Backend:
    """A color's server, a process of its own (latency_backend.py): ``/fail`` answers
    500, ``/slow`` waits a seeded uniform delay between LOW_MS and HIGH_MS."""

    color: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        seed = {"blue": 1, "green": 2}[self.color]
        self.process = subprocess.Popen(
            [
                *(sys.executable, str(BACKEND_SCRIPT), str(self.port), "--seed", str(seed)),
                *("--low", str(LOW_MS), "--high", str(HIGH_MS)),
            ]
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def served_ms(self) -> list[float]:
        """How long the server took for each ``/slow``, in ms, by its own clock."""
        answer = httpx.get(f"http://127.0.0.1:{self.port}/served", timeout=5)
        return [float(ms) for ms in answer.json()]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Router:
    settings: Settings
    url: str
    backends: dict[str, Backend]


@contextmanager
def running_router(root: Path, extra: str = "") -> Iterator[Router]:
    """HAProxy in front of two backends, ``extra`` added to the [router] section."""
    backends = {color: Backend(color, free_port()) for color in ("blue", "green")}
    for backend in backends.values():
        backend.start()
    port = free_port()
    path = root / "releasegate.toml"
    text = CONFIG.format(blue=backends["blue"].port, green=backends["green"].port, port=port)
    path.write_text(text + extra)
    settings = load_config(path, env={})
    try:
        router_up(settings)
        wait_healthy(settings, ["blue", "green"], timeout=5)
        yield Router(settings, f"http://127.0.0.1:{port}", backends)
    finally:
        router_down(settings, forget=True)
        for backend in backends.values():
            backend.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    with running_router(tmp_path) as started:
        yield started


def send(url: str, paths: list[str], *, workers: int = 1) -> list[tuple[str, int, float]]:
    """Send each path once, each from a new client with no cookie; (color, status, ms)."""

    host, port = url.removeprefix("http://").split(":")

    def one(path: str) -> tuple[str, int, float]:
        # http.client, not httpx: a new httpx client per request costs milliseconds of CPU.
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
        finally:
            connection.close()
        return response.headers.get(COLOR_HEADER, ""), response.status, elapsed

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def drain_until(reader: TrafficReader, total: int, timeout: float = 5.0) -> dict[str, ColorTraffic]:
    """Drain until ``total`` requests arrived (HAProxy logs a request once it has ended)."""
    seen = {"blue": ColorTraffic("blue"), "green": ColorTraffic("green")}
    deadline = time.monotonic() + timeout
    while True:
        for color, traffic in reader.drain().items():
            seen[color] = seen[color].merged(traffic)
        if sum(t.requests for t in seen.values()) >= total or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def test_drain_counts_requests_and_errors_per_color(router: Router) -> None:
    set_weight(router.settings, "green", 30)
    reader = TrafficReader.for_settings(router.settings)
    reader.skip_backlog()
    paths = ["/fail" if i % 7 == 0 else "/" for i in range(300)]
    answers = send(router.url, paths, workers=4)
    sent = Counter(color for color, _, _ in answers)
    failed = Counter(color for color, status, _ in answers if status >= 500)
    assert 40 <= sent["green"] <= 140, sent  # about 30% of 300

    traffic = drain_until(reader, 300)
    assert {c: t.requests for c, t in traffic.items()} == dict(sent)
    assert {c: t.errors for c, t in traffic.items()} == {c: failed[c] for c in sent}
    assert sum(failed.values()) == 43
    assert all(len(t.latencies_ms) == t.requests for t in traffic.values())
    assert (reader.overruns, reader.restarts, reader.malformed) == (0, 0, 0)
    # Drained: nothing comes twice.
    again = reader.drain()
    assert [t.requests for t in again.values()] == [0, 0]


def test_requests_no_color_took_are_counted_apart(router: Router) -> None:
    withdraw(router.settings)  # both colors at weight 0: HAProxy answers 503 itself
    reader = TrafficReader.for_settings(router.settings)
    reader.skip_backlog()
    assert {status for _, status, _ in send(router.url, ["/"] * 5)} == {503}
    time.sleep(0.2)
    assert [t.requests for t in reader.drain().values()] == [0, 0]
    assert reader.unrouted == 5


def test_an_overrun_ring_is_noted_and_reading_goes_on(tmp_path: Path) -> None:
    # 16 KiB hold some 500 lines: 1,500 requests between two reads overrun it.
    with running_router(tmp_path, "traffic_ring_size = 16384\n") as router:
        reader = TrafficReader.for_settings(router.settings)
        reader.skip_backlog()
        send(router.url, ["/"] * 1500, workers=4)
        time.sleep(0.2)  # the last requests are logged once they have ended
        kept = reader.drain()["blue"].requests
        assert 100 < kept < 1500
        assert (reader.overruns, reader.malformed) == (1, 0)
        # The cursor holds again from there on.
        send(router.url, ["/"] * 20)
        assert drain_until(reader, 20)["blue"].requests == 20
        assert reader.overruns == 1


def test_router_p95_matches_the_servers_and_the_clients_timings(router: Router) -> None:
    """The servers wait delays drawn from a known uniform distribution; the router's p95
    per color is within 5% of the p95 of what each server took by its own clock and of
    what the client measured per color (from the color header)."""
    set_weight(router.settings, "green", 50)
    reader = TrafficReader.for_settings(router.settings)
    reader.skip_backlog()
    answers = send(router.url, ["/slow"] * 400, workers=16)
    traffic = drain_until(reader, 400)
    for color, backend in router.backends.items():
        served = traffic[color]
        known = backend.served_ms()
        assert served.requests == len(known) > 100
        router_p95 = served.percentile(95)
        server_p95 = nearest_rank(tuple(sorted(known)), 95)
        client_p95 = nearest_rank(tuple(sorted(ms for c, _, ms in answers if c == color)), 95)
        assert router_p95 is not None and server_p95 is not None and client_p95 is not None
        assert abs(router_p95 - server_p95) <= 0.05 * server_p95, (color, router_p95, server_p95)
        assert abs(router_p95 - client_p95) <= 0.05 * client_p95, (color, router_p95, client_p95)


def colors_of_sticky_clients(url: str, clients: list[httpx.Client], rounds: int) -> list[set[str]]:
    seen: list[set[str]] = [set() for _ in clients]
    for _ in range(rounds):
        for index, client in enumerate(clients):
            seen[index].add(client.get(url).headers[COLOR_HEADER])
    return seen


def test_a_client_keeps_its_color_during_the_canary(router: Router) -> None:
    # Outside a canary, no cookie is set: a returning client is not pinned to blue.
    with httpx.Client(timeout=5) as client:
        assert STICKY_COOKIE not in client.get(router.url).cookies
    set_weight(router.settings, "green", 50)
    clients = [httpx.Client(timeout=5) for _ in range(20)]
    try:
        seen = colors_of_sticky_clients(router.url, clients, rounds=8)
        assert all(len(colors) == 1 for colors in seen), seen
        firsts = Counter(colors.pop() for colors in seen)
        assert firsts["blue"] and firsts["green"], firsts  # both colors got clients
        assert all(c.cookies[STICKY_COOKIE] in ("blue", "green") for c in clients)
        # A cookie that holds is not set again.
        assert STICKY_COOKIE not in clients[0].get(router.url).headers.get("set-cookie", "")
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(
    "abort", ["rollback", "weight zero", "runtime weight zero", "maintenance", "green down"]
)
def test_abort_sends_green_cookie_holders_to_blue(router: Router, abort: str) -> None:
    set_weight(router.settings, "green", 20)
    holders = []
    for _ in range(40):
        client = httpx.Client(timeout=5, cookies={STICKY_COOKIE: "green"})
        holders.append(client)
    try:
        before = colors_of_sticky_clients(router.url, holders, rounds=2)
        assert all(colors == {"green"} for colors in before)
        if abort == "rollback":
            rollback(router.settings)  # drains green, weight 0
        elif abort == "weight zero":
            set_weight(router.settings, "green", 0)
        elif abort == "green down":
            router.backends["green"].stop()  # refused at once, down after two checks
        else:  # straight through the runtime API: weight 0 without drain, or maintenance
            client = runtime_client(router.settings, router_config(router.settings))
            if abort == "maintenance":
                client.set_state("notes", "green", "maint")
            else:
                client.set_weight("notes", "green", 0)
        after = colors_of_sticky_clients(router.url, holders, rounds=3)
        assert all(colors == {"blue"} for colors in after), after
        set_by_router = {
            cookie.value
            for holder in holders
            for cookie in holder.cookies.jar
            if cookie.name == STICKY_COOKIE and cookie.domain  # not the one the test set
        }
        if abort == "green down":
            # Until the checks mark green down, a request refused by green is sent again
            # to blue, and the canary still runs: the client is pinned to blue now.
            assert set_by_router <= {"blue"}
        else:
            # No cookie is set outside a canary: the stale one is ignored, left alone.
            assert set_by_router == set()
    finally:
        for client in holders:
            client.close()


def test_promote_sends_blue_cookie_holders_to_green(router: Router) -> None:
    set_weight(router.settings, "green", 20)
    with httpx.Client(timeout=5, cookies={STICKY_COOKIE: "blue"}) as holder:
        assert holder.get(router.url).headers[COLOR_HEADER] == "blue"
        promote(router.settings)
        assert {holder.get(router.url).headers[COLOR_HEADER] for _ in range(5)} == {"green"}


def test_a_router_without_the_ring_is_an_infra_error(router: Router) -> None:
    reader = TrafficReader(
        runtime_client(router.settings, router_config(router.settings)), ring="missing"
    )
    with pytest.raises(InfraError, match=r"no traffic ring 'missing'.*restart it"):
        reader.drain()
