"""A canary judged on real traffic: what the router measures per color, and what it costs.

Two backends (tests/integration/latency_backend.py, asyncio, one process each) sit
behind HAProxy configured by releasegate. ``/slow`` waits a uniform delay (blue 20-120
ms, green 40-200 ms: a slower canary); blue answers 200 and green 203, so that a
client that only shows statuses still tells the colors apart. The client is ``hey``.

1. **Router p95 per color against independent measurements.** At a 50% weight, ``hey``
   sends ``--requests`` requests to ``/slow``; releasegate drains the router's traffic
   ring. Per color: the router's p50/p95/p99, hey's own p95 (its per-request CSV,
   color from the status), the p95 the server measured itself, and the distribution's
   theoretical p95. Target: the router within 5% of hey's and the server's figures.
2. **The cost of the traffic ring at ``--rate`` requests/s.** ``hey`` holds the rate for
   ``--seconds`` against four routers in turn, ``--rounds`` times: the same config with
   the per-request log lines removed, with them, and with them while releasegate drains
   the ring every second or every 5 seconds (a read dumps the whole ring, so its cost
   follows the ring's fill and the reads' frequency); each round starts with another
   variant. HAProxy's CPU (``/proc/<pid>/stat``) per request answered, against the run
   without the log lines of the same round, and releasegate's (the reading thread's CPU
   time); medians over the rounds. Target: < 5% extra HAProxy CPU.
3. **The fixed cost of a read**: HAProxy's and releasegate's CPU for one read of the
   ring as the load runs left it (full), with nothing new to parse.

Only 127.0.0.1 is targeted; every run is bounded in time.

python benchmarks/canary_abort.py [--requests 3000] [--rate 2000] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from _common import REPO_ROOT, free_port

sys.path.insert(0, str(REPO_ROOT / "src"))

from releasegate.canary.traffic import ColorTraffic, TrafficReader, nearest_rank
from releasegate.config import load_config
from releasegate.router.config import TRAFFIC_RING, generate_config
from releasegate.router.runtime import RuntimeClient
from releasegate.router.state import wait_healthy

BACKEND = REPO_ROOT / "tests" / "integration" / "latency_backend.py"
# (low ms, high ms, status) per color.
BACKENDS = {"blue": (20.0, 120.0, 200), "green": (40.0, 200.0, 203)}
STATUS_COLOR = {status: color for color, (_, _, status) in BACKENDS.items()}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# How often releasegate drains the ring in the cost variants that read it (seconds).
READ_EVERY = {"traffic log + reader 1s": 1.0, "traffic log + reader 5s": 5.0}


@contextmanager
def backends() -> Iterator[dict[str, int]]:
    ports = {color: free_port() for color in BACKENDS}
    procs = []
    try:
        for seed, (color, (low, high, status)) in enumerate(BACKENDS.items()):
            cmd = [sys.executable, str(BACKEND), str(ports[color]), "--seed", str(seed)]
            cmd += ["--low", str(low), "--high", str(high), "--status", str(status)]
            procs.append(subprocess.Popen(cmd))
        for port in ports.values():
            wait_answers(f"http://127.0.0.1:{port}/")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def wait_answers(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{url} did not answer")
            time.sleep(0.05)


@dataclass
class Router:
    url: str
    pid: int
    client: RuntimeClient
    ring_size: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def reader(self) -> TrafficReader:
        return TrafficReader(self.client, ring_size=self.ring_size)


@contextmanager
def router(folder: Path, ports: dict[str, int], *, traffic_log: bool) -> Iterator[Router]:
    """HAProxy with releasegate's config, both colors at weight 50; without
    ``traffic_log`` the per-request log lines are left out (the ring stays, unused)."""
    root = Path(tempfile.mkdtemp(dir=folder))
    port = free_port()
    (root / "releasegate.toml").write_text(
        f'[service]\nname = "bench"\n\n[deploy]\nblue_port = {ports["blue"]}\n'
        f'green_port = {ports["green"]}\n\n[router]\nbind = "127.0.0.1:{port}"\n'
        'runtime_dir = "rt"\ncheck_interval = "1s"\nstop_timeout = "5s"\n'
    )
    settings = load_config(root / "releasegate.toml", env={})
    text = generate_config(settings)
    if not traffic_log:
        kept = [line for line in text.splitlines() if not line.startswith(("    log ", "    log-"))]
        text = "\n".join(kept) + "\n"
    runtime = root / "rt"
    runtime.mkdir()
    (runtime / "haproxy.cfg").write_text(text)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    pidfile = runtime / "haproxy.pid"
    subprocess.run(
        [haproxy, "-D", "-q", "-p", str(pidfile), "-f", str(runtime / "haproxy.cfg")], check=True
    )
    pid = int(pidfile.read_text().split()[0])
    try:
        client = RuntimeClient(runtime / "admin.sock")
        for color in BACKENDS:
            client.set_weight("bench", color, 50)
        wait_healthy(settings, list(BACKENDS), timeout=10)
        yield Router(f"http://127.0.0.1:{port}", pid, client, settings.raw.router.traffic_ring_size)
    finally:
        os.kill(pid, 15)


def hey(args: list[str], timeout: float) -> str:
    result = subprocess.run(
        ["hey", *args], capture_output=True, text=True, check=True, timeout=timeout
    )
    return result.stdout


def drain_all(
    reader: TrafficReader, expected: int, timeout: float = 10.0
) -> dict[str, ColorTraffic]:
    seen = {color: ColorTraffic(color) for color in BACKENDS}
    deadline = time.monotonic() + timeout
    while sum(t.requests for t in seen.values()) < expected and time.monotonic() < deadline:
        for color, traffic in reader.drain().items():
            seen[color] = seen[color].merged(traffic)
        time.sleep(0.1)
    return seen


def p95_against_independent(target: Router, ports: dict[str, int], requests: int) -> None:
    reader = target.reader()
    reader.skip_backlog()
    output = hey(["-n", str(requests), "-c", "50", "-o", "csv", f"{target.url}/slow"], 600)
    client_ms: dict[str, list[float]] = {color: [] for color in BACKENDS}
    for row in csv.DictReader(io.StringIO(output)):
        color = STATUS_COLOR.get(int(row["status-code"]))
        if color is not None:
            client_ms[color].append(float(row["response-time"]) * 1000)
    traffic = drain_all(reader, requests)
    print(f"\n1. p95 per color, {requests} requests at weight 50 (hey -c 50), router vs others")
    print(
        f"   {'color':<6} {'router n':>8} {'hey n':>6} {'p50':>7} {'p95':>7} {'p99':>7}"
        f" | {'hey p95':>8} {'diff':>6} | {'server p95':>10} {'diff':>6} | {'theory':>7}"
    )
    for color, (low, high, _) in BACKENDS.items():
        served = traffic[color]
        router_p95 = served.percentile(95) or 0.0
        hey_p95 = nearest_rank(tuple(sorted(client_ms[color])), 95) or 0.0
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[color]}/served", timeout=5) as r:
            server_p95 = nearest_rank(tuple(sorted(json.load(r))), 95) or 0.0
        theory = low + 0.95 * (high - low)
        print(
            f"   {color:<6} {served.requests:>8} {len(client_ms[color]):>6}"
            f" {served.percentile(50) or 0:>7.1f} {router_p95:>7.1f}"
            f" {served.percentile(99) or 0:>7.1f}"
            f" | {hey_p95:>8.1f} {pct(router_p95, hey_p95):>6}"
            f" | {server_p95:>10.1f} {pct(router_p95, server_p95):>6} | {theory:>7.1f}"
        )
    print(
        f"   ring: overruns {reader.overruns}, unrouted {reader.unrouted},"
        f" malformed {reader.malformed}"
    )


def pct(value: float, reference: float) -> str:
    return f"{(value - reference) / reference * 100:+.1f}%" if reference else "-"


@dataclass
class LoadRun:
    haproxy_cpu: float  # share of one core
    rate: float
    haproxy_us: float  # HAProxy CPU per request, microseconds
    reader_cpu: float | None = None  # share of one core
    drains: int = 0
    drain_ms: float | None = None  # median wall time of a drain
    lines: int = 0


def load_run(target: Router, rate: int, seconds: int, *, read_every: float | None) -> LoadRun:
    workers = 20
    stop = threading.Event()
    reads: list[tuple[float, float, int]] = []  # (wall s, cpu s, lines)

    def reading() -> None:
        reader = target.reader()
        reader.skip_backlog()
        while not stop.wait(read_every):
            wall, cpu = time.perf_counter(), time.thread_time()
            traffic = reader.drain()
            lines = sum(t.requests for t in traffic.values())
            reads.append((time.perf_counter() - wall, time.thread_time() - cpu, lines))

    thread = threading.Thread(target=reading) if read_every else None
    if thread is not None:
        thread.start()
    before, started = target.cpu_seconds(), time.perf_counter()
    output = hey(
        ["-z", f"{seconds}s", "-c", str(workers), "-q", f"{rate / workers:g}", f"{target.url}/"],
        seconds + 60,
    )
    elapsed = time.perf_counter() - started
    used = target.cpu_seconds() - before
    stop.set()
    if thread is not None:
        thread.join()
    answered = sum(int(count) for count in re.findall(r"\[\d+\]\s+(\d+) responses", output))
    run = LoadRun(
        haproxy_cpu=used / elapsed,
        rate=answered / elapsed,
        haproxy_us=used / max(1, answered) * 1e6,
    )
    if reads:
        run.reader_cpu = sum(cpu for _, cpu, _ in reads) / elapsed
        run.drains = len(reads)
        run.drain_ms = statistics.median(wall for wall, _, _ in reads) * 1000
        run.lines = sum(lines for _, _, lines in reads)
    return run


def ring_cost(routers: dict[str, Router], rate: int, seconds: int, rounds: int) -> None:
    print(f"\n2. cost at {rate} req/s, hey -z {seconds}s -c 20, {rounds} rounds")
    names = list(routers)
    runs: dict[str, list[LoadRun]] = {name: [] for name in names}
    for index in range(rounds):
        # Each round starts with another variant, so that drift within a round (other
        # work on the machine) does not always favour the same one.
        for name in names[index % len(names) :] + names[: index % len(names)]:
            runs[name].append(
                load_run(routers[name], rate, seconds, read_every=READ_EVERY.get(name))
            )
    base = runs["no traffic log"]
    for name, samples in runs.items():
        per_request = statistics.median(r.haproxy_us for r in samples)
        # Against the run without the log lines of the same round.
        paired = statistics.median(
            r.haproxy_us / b.haproxy_us for r, b in zip(samples, base, strict=True)
        )
        line = (
            f"   {name:<22} rate {statistics.median(r.rate for r in samples):5.0f}/s"
            f"   HAProxy CPU {statistics.median(r.haproxy_cpu for r in samples) * 100:5.2f}%"
            f" of a core, {per_request:5.1f} us a request ({(paired - 1) * 100:+.1f}% vs no log,"
            f" median of rounds)   [{', '.join(f'{r.haproxy_us:.1f}' for r in samples)}]"
        )
        readers = [r for r in samples if r.reader_cpu is not None]
        if readers:
            reader_cpu = statistics.median(r.reader_cpu or 0.0 for r in readers)
            drain_ms = statistics.median(r.drain_ms or 0.0 for r in readers)
            lines = statistics.median(r.lines / max(1, r.drains) for r in readers)
            line += (
                f"\n   {'':<22} releasegate reader CPU {reader_cpu * 100:.2f}% of a core,"
                f" drain {drain_ms:.1f} ms median for {lines:.0f} lines"
            )
        print(line)


def read_cost(target: Router, reads: int = 50) -> None:
    """HAProxy's and releasegate's CPU for one read of the ring as it is (full after the
    load runs), with nothing new in it: the fixed cost of a read, whatever the traffic."""
    reader = target.reader()
    reader.skip_backlog()
    size = len(reader.read_ring().encode())
    haproxy_before, own_before = target.cpu_seconds(), time.process_time()
    for _ in range(reads):
        reader.drain()
    haproxy_ms = (target.cpu_seconds() - haproxy_before) / reads * 1000
    own_ms = (time.process_time() - own_before) / reads * 1000
    print(
        f"\n3. one read of a {size / 1024:.0f} KiB ring, {reads} reads: HAProxy"
        f" {haproxy_ms:.2f} ms CPU, releasegate {own_ms:.2f} ms CPU a read"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="requests for the p95 part")
    parser.add_argument("--rate", type=int, default=2000, help="requests/s for the cost part")
    parser.add_argument("--seconds", type=int, default=10, help="length of one cost run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("hey", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed")
    print(f"ring {TRAFFIC_RING!r}; cpu: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with (
        tempfile.TemporaryDirectory(prefix="rgbench-") as tmp,
        backends() as ports,
        ExitStack() as stack,
    ):
        folder = Path(tmp)
        routers: dict[str, Router] = {
            name: stack.enter_context(router(folder, ports, traffic_log=log))
            for name, log in (
                ("no traffic log", False),
                ("traffic log", True),
                ("traffic log + reader 1s", True),
                ("traffic log + reader 5s", True),
            )
        }
        p95_against_independent(routers["traffic log"], ports, args.requests)
        ring_cost(routers, args.rate, args.seconds, args.rounds)
        read_cost(routers["traffic log + reader 1s"])


if __name__ == "__main__":
    main()
