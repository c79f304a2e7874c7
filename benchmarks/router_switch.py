"""Blue/green switches through the router: failed requests and switch latency.

Two backends (uvicorn processes serving a minimal ASGI app that names its color in a
header) sit behind the router (host HAProxy, runtime dir in a temporary folder).

1. **Capacity:** a short keep-alive ``wrk`` run gives the maximum rate through HAProxy.
2. **Zero-downtime switch:** ``wrk`` holds a rate of ``--fraction`` of that maximum
   (Debian's wrk 4.1 has no ``-R``: a Lua ``delay()`` per connection, calibrated by
   short runs, paces it) while the script runs ``--cycles`` promote/rollback cycles.
   It prints total requests, socket errors and non-2xx responses (target: 0 failed),
   and HAProxy's own retry and redispatch counters.
3. **Switch latency:** from the moment ``promote()`` is called until every new request
   hits green: a poller thread sends requests on fresh connections and records the start
   of the first request of the all-green streak that follows. p50 and max over the
   cycles, once idle and once under the load of step 2 (target: < 100 ms).

Only 127.0.0.1 is targeted; every run is bounded in time.

python benchmarks/router_switch.py [--cycles 20] [--fraction 0.8] [--connections 64]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, free_port

COLOR_ENV = "RG_BENCH_COLOR"
STREAK = 20  # consecutive green answers that count as "100% of new requests"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The backend: a minimal ASGI app that answers every request with its color."""
    if scope["type"] != "http":
        return
    color = os.environ.get(COLOR_ENV, "unknown").encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-color", color)],
        }
    )
    await send({"type": "http.response.body", "body": color})


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"backend on port {port} did not start")


@contextmanager
def backends() -> Iterator[dict[str, int]]:
    ports = {"blue": free_port(), "green": free_port()}
    procs = []
    try:
        for color, port in ports.items():
            cmd = [sys.executable, "-m", "uvicorn", "router_switch:app"]
            cmd += ["--app-dir", str(Path(__file__).parent), "--port", str(port)]
            cmd += ["--lifespan", "off", "--no-access-log", "--log-level", "warning"]
            procs.append(subprocess.Popen(cmd, env={**os.environ, COLOR_ENV: color}))
        for port in ports.values():
            wait_port(port)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def fresh_color(host: str, port: int) -> str:
    """The color that serves one request on a new connection."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            return f"status {response.status}"
        return response.getheader("X-Releasegate-Color") or "none"
    finally:
        conn.close()


@dataclass
class Switch:
    """One promote, seen by the pollers; times are seconds after promote() was called."""

    to_target: float  # every request started after this hit the target (upper bound)
    last_other: float  # the last request that still hit the old color started here
    call: float  # how long promote() took
    late: int  # requests started after promote() returned that still hit the old color


def switch_latency(settings: Any, host: str, port: int, target: str, pollers: int = 3) -> Switch:
    """Promote ``target`` while ``pollers`` threads send requests to the router at
    ``host:port`` on fresh connections.

    Requests are sorted by the moment they were sent. The switch happened after the
    last request that hit the other color started, and no later than the first request
    after it, or than the return of promote() when no later request hit the other
    color (the weights are in place when the runtime API answers).
    """
    from releasegate.router.switching import promote

    samples: list[tuple[float, str]] = []
    done = threading.Event()

    def poll() -> None:
        deadline = time.perf_counter() + 10
        while not done.is_set() and time.perf_counter() < deadline:
            started = time.perf_counter()
            samples.append((started, fresh_color(host, port)))

    threads = [threading.Thread(target=poll) for _ in range(pollers)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    promote(settings, target)
    returned = time.perf_counter()
    deadline = returned + 10
    while sum(1 for at, _ in list(samples) if at > returned) < STREAK:
        if time.perf_counter() > deadline:
            sys.exit(f"too few requests after promote() to measure the switch to {target}")
        time.sleep(0.002)
    done.set()
    for thread in threads:
        thread.join(timeout=15)
    ordered = sorted(samples)
    last_other = max((i for i, (_, color) in enumerate(ordered) if color != target), default=-1)
    if last_other == len(ordered) - 1:
        sys.exit(f"new requests never all went to {target}")
    switched_at = ordered[last_other + 1][0] if last_other >= 0 else t0
    late = sum(1 for at, color in ordered if at > returned and color != target)
    if late == 0:
        switched_at = min(switched_at, returned)
    return Switch(
        to_target=max(0.0, switched_at - t0),
        last_other=max(0.0, ordered[last_other][0] - t0) if last_other >= 0 else 0.0,
        call=returned - t0,
        late=late,
    )


@dataclass
class WrkResult:
    rate: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    latency_ms: float

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, connections: int, seconds: float, script: Path | None = None) -> WrkResult:
    """One keep-alive wrk run against ``url``, bounded by ``seconds``."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    output = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s|m)\b", output)
    if not (rate and total and latency):
        sys.exit(f"cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    names = ("connect", "read", "write", "timeout")
    return WrkResult(
        rate=float(rate.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={n: int(v) for n, v in zip(names, errors.groups(), strict=True)}
        if errors
        else dict.fromkeys(names, 0),
        latency_ms=_ms(latency.group(1), latency.group(2)),
    )


def pacing_script(folder: Path, delay_ms: int) -> Path:
    """A wrk script that waits ``delay_ms`` before each request of a connection."""
    path = folder / f"delay-{delay_ms}.lua"
    path.write_text(f"function delay()\n  return {delay_ms}\nend\n")
    return path


def calibrate(
    url: str, connections: int, target: float, first_latency_ms: float, folder: Path
) -> tuple[int, float]:
    """The per-request delay (ms) that keeps ``connections`` at >= ``target`` req/s.

    Each connection does one request per (latency + delay), so the delay that gives the
    target is ``connections / target - latency``; a few short runs correct the guess.
    """
    period_ms = connections * 1000 / target
    delay = max(0, int(period_ms - first_latency_ms))
    tried: dict[int, float] = {}
    for _ in range(4):
        if delay in tried:
            break
        rate = run_wrk(url, connections, 2, pacing_script(folder, delay)).rate
        tried[delay] = rate
        # rate = connections / (latency + delay): solve for the delay at the target.
        latency_ms = connections * 1000 / rate - delay
        delay = max(0, int(period_ms - latency_ms))
    above = [d for d, r in tried.items() if r >= target]
    chosen = max(above) if above else min(tried)
    return chosen, tried[chosen]


def describe(samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"p50 {statistics.median(ms):6.1f} ms   max {max(ms):6.1f} ms"
        f"   min {min(ms):6.1f} ms   n={len(ms)}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=20, help="promote/rollback cycles")
    parser.add_argument("--fraction", type=float, default=0.8, help="load as a share of max")
    parser.add_argument("--connections", type=int, default=64, help="paced load connections")
    parser.add_argument("--capacity-seconds", type=int, default=5)
    parser.add_argument("--cycle-seconds", type=float, default=1.0)
    parser.add_argument(
        "--pace-margin",
        type=float,
        default=1.1,
        help="calibrate this much above the target: the switching and the latency pollers"
        " take CPU from wrk on a small machine",
    )


def measure_switches(
    settings: Any, host: str, port: int, folder: Path, args: argparse.Namespace
) -> tuple[list[Switch], list[Switch]]:
    """Capacity, idle switches, then switches under paced load; prints the figures.

    The router of ``settings`` answers at ``host:port`` and runs with blue live; the
    idle and loaded switches are returned for figures of the caller's own.
    """
    from releasegate.router.config import router_config
    from releasegate.router.process import runtime_client
    from releasegate.router.switching import rollback

    url = f"http://{host}:{port}/"
    backend = router_config(settings).backend

    # 1. capacity
    capacity = run_wrk(url, 16, args.capacity_seconds)
    max_rate = capacity.rate
    print(
        f"capacity: wrk -t2 -c16 -d{args.capacity_seconds}s (keep-alive):"
        f" {max_rate:,.0f} req/s, mean latency {capacity.latency_ms:.2f} ms"
    )

    # 3a. switch latency, idle
    idle: list[Switch] = []
    for _ in range(max(5, args.cycles // 2)):
        idle.append(switch_latency(settings, host, port, "green"))
        rollback(settings)
        time.sleep(0.05)

    # 2. + 3b. switches under paced load
    target = args.fraction * max_rate
    delay, calibrated = calibrate(
        url, args.connections, target * args.pace_margin, capacity.latency_ms, folder
    )
    print(
        f"pacing: {args.connections} connections, {delay} ms between requests"
        f" -> {calibrated:,.0f} req/s in calibration"
        f" (target {target:,.0f} x margin {args.pace_margin:g})"
    )
    duration = int(args.cycles * args.cycle_seconds + 3)
    before = {
        r["svname"]: r for r in runtime_client(settings, router_config(settings)).show_stat(backend)
    }
    outcome: dict[str, WrkResult] = {}
    script = pacing_script(folder, delay)
    loader = threading.Thread(
        target=lambda: outcome.setdefault("load", run_wrk(url, args.connections, duration, script))
    )
    loader.start()
    time.sleep(1.5)
    loaded: list[Switch] = []
    switch_times: list[float] = []
    for _ in range(args.cycles):
        cycle_start = time.perf_counter()
        loaded.append(switch_latency(settings, host, port, "green"))
        time.sleep(max(0.0, args.cycle_seconds / 2 - (time.perf_counter() - cycle_start)))
        switch_times.append(rollback(settings).switch_s)
        time.sleep(max(0.0, args.cycle_seconds - (time.perf_counter() - cycle_start)))
    loader.join(timeout=duration + 90)
    after = {
        r["svname"]: r for r in runtime_client(settings, router_config(settings)).show_stat(backend)
    }
    result = outcome["load"]
    failed = result.non_2xx + result.errors

    def delta(key: str) -> int:
        return int(after["BACKEND"].get(key) or 0) - int(before["BACKEND"].get(key) or 0)

    print()
    print(
        f"zero-downtime switch: {args.cycles} promote/rollback cycles during"
        f" {duration}s of wrk -c{args.connections} paced at {target:,.0f} req/s"
        f" ({args.fraction:.0%} of capacity)"
    )
    print(
        f"  achieved rate      {result.rate:,.0f} req/s ({result.rate / max_rate:.0%} of capacity)"
    )
    print(f"  total requests     {result.requests:,}")
    errors = ", ".join(f"{name} {count}" for name, count in result.socket_errors.items())
    print(f"  socket errors      {result.errors} ({errors})")
    print(f"  non-2xx responses  {result.non_2xx}")
    print(
        f"  haproxy backend:   retries {delta('wretr')}, redispatches {delta('wredis')},"
        f" connection errors {delta('econ')}, response errors {delta('eresp')},"
        f" 5xx {delta('hrsp_5xx')}"
    )
    print(f"  target 0 failed: {'met' if failed == 0 else 'MISSED'} ({failed} failed)")
    print()
    print("switch latency: promote() called -> every new request on green (upper bound)")
    print(f"  idle                 {describe([s.to_target for s in idle])}")
    print(f"  under load           {describe([s.to_target for s in loaded])}")
    print("  last request on blue started (lower bound)")
    print(f"  idle                 {describe([s.last_other for s in idle])}")
    print(f"  under load           {describe([s.last_other for s in loaded])}")
    print(f"  promote() call idle  {describe([s.call for s in idle])}")
    print(f"  promote() call load  {describe([s.call for s in loaded])}")
    print(f"  runtime API round trip of the switch (rollback)  {describe(switch_times)}")
    late = sum(s.late for s in idle + loaded)
    print(f"  requests sent after promote() returned that hit blue: {late}")
    return idle, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from releasegate.config import load_config
    from releasegate.router.manager import router_down, router_up
    from releasegate.router.state import wait_healthy

    with tempfile.TemporaryDirectory(prefix="rgbench-") as tmp, backends() as ports:
        folder = Path(tmp)
        port = free_port()
        config = folder / "releasegate.toml"
        config.write_text(
            f'[service]\nname = "bench"\n\n[deploy]\nblue_port = {ports["blue"]}\n'
            f'green_port = {ports["green"]}\n\n[router]\nbind = "127.0.0.1:{port}"\n'
            'runtime_dir = "rt"\ncheck_interval = "1s"\nstop_timeout = "5s"\n'
        )
        settings = load_config(config, env={})
        router_up(settings)
        try:
            wait_healthy(settings, ["blue", "green"], timeout=10)
            print(f"router 127.0.0.1:{port} -> blue :{ports['blue']}, green :{ports['green']}")
            idle, loaded = measure_switches(settings, "127.0.0.1", port, folder, args)
        finally:
            router_down(settings, forget=True)
    worst = max(s.to_target for s in idle + loaded)
    print(f"  target < 100 ms: {'met' if worst < 0.1 else 'MISSED'} (max {worst * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
