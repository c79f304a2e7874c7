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
2. **The cost of the log lines at ``--rate`` requests/s.** ``hey`` holds the rate for
   ``--seconds`` against two routers in turn, ``--rounds`` times: the same config with
   and without the per-request log lines. HAProxy's CPU (``/proc/<pid>/stat``) per
   request answered, against the run without the log lines of the same round (each
   round starts with the other router); medians over the rounds.
3. **The cost of reading the ring.** On the router with the log lines, one ``hey`` run
   at the same rate; after 10 s (the ring is full: each read dumps all of it),
   releasegate drains the ring every ``--read-every`` seconds during every other
   5-second period. HAProxy's CPU with and without the reads (same process, same load),
   releasegate's CPU, and the fixed cost of one read of a full ring.
   Target: < 5% extra HAProxy CPU in all.
4. **What an aborted canary costs real users** (benchmarks/_canary_users.py): a green
   that answers 500 to ``--bad-error-rate`` of requests gets a ``--abort-weight`` step of
   the release's own canary machinery while ``hey`` sends ``--client-rate`` requests/s;
   from hey's per-request rows, the failed requests against the floor (weight x error
   rate x requests in the step; target within 2x) and the time from the first bad
   request to blue at 100% (target < 15 s at 5% and 100 requests/s).

Only 127.0.0.1 is targeted; every run is bounded in time.

python benchmarks/canary_abort.py [--requests 3000] [--rate 2000] [--seconds 10] [--rounds 6]
                                  [--periods 12] [--read-every 1] [--ring-size 1048576]
                                  [--abort-weight 5] [--bad-error-rate 0.1]
                                  [--client-rate 100] [--abort-trials 6] [--parts 1,2,3,4]
Part 4 keeps its ledger in a scratch database of RELEASEGATE_TEST_PG_URL.
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
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from _common import REPO_ROOT, free_port, wait_answers

sys.path.insert(0, str(REPO_ROOT / "src"))

from _canary_users import abort_cost

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
def router(
    folder: Path, ports: dict[str, int], *, traffic_log: bool, ring_size: int
) -> Iterator[Router]:
    """HAProxy with releasegate's config, both colors at weight 50; without
    ``traffic_log`` the per-request log lines are left out (the ring stays, unused)."""
    root = Path(tempfile.mkdtemp(dir=folder))
    port = free_port()
    (root / "releasegate.toml").write_text(
        f'[service]\nname = "bench"\n\n[deploy]\nblue_port = {ports["blue"]}\n'
        f'green_port = {ports["green"]}\n\n[router]\nbind = "127.0.0.1:{port}"\n'
        'runtime_dir = "rt"\ncheck_interval = "1s"\nstop_timeout = "5s"\n'
        f"traffic_ring_size = {ring_size}\n"
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


def load_run(target: Router, rate: int, seconds: int) -> float:
    """HAProxy's CPU per request answered (microseconds) while hey holds ``rate``."""
    workers = 20
    before, started = target.cpu_seconds(), time.perf_counter()
    output = hey(
        ["-z", f"{seconds}s", "-c", str(workers), "-q", f"{rate / workers:g}", f"{target.url}/"],
        seconds + 60,
    )
    used = target.cpu_seconds() - before
    answered = sum(int(count) for count in re.findall(r"\[\d+\]\s+(\d+) responses", output))
    if answered < 0.9 * rate * seconds:
        print(f"   (hey answered {answered / (time.perf_counter() - started):.0f}/s only)")
    return used / max(1, answered) * 1e6


def logging_cost(routers: dict[str, Router], rate: int, seconds: int, rounds: int) -> None:
    print(f"\n2. the log lines at {rate} req/s, hey -z {seconds}s -c 20, {rounds} rounds")
    samples: dict[str, list[float]] = {name: [] for name in routers}
    names = list(routers)
    for index in range(rounds):
        # Each round starts with the other router, so that drift within a round (other
        # work on the machine) does not always favour the same one.
        for name in names[index % 2 :] + names[: index % 2]:
            samples[name].append(load_run(routers[name], rate, seconds))
    base = samples[names[0]]
    for name, runs in samples.items():
        paired = statistics.median(run / ref for run, ref in zip(runs, base, strict=True))
        print(
            f"   {name:<15} HAProxy {statistics.median(runs):5.1f} us of CPU a request"
            f" ({(paired - 1) * 100:+.1f}% against the same round without the log lines)"
            f"   [{', '.join(f'{run:.1f}' for run in runs)}]"
        )


def reading_cost(target: Router, rate: int, periods: int, read_every: float) -> None:
    """One hey run; releasegate reads the ring every ``read_every`` seconds during every
    other 5-second period: HAProxy's CPU with and without the reads, same process."""
    period = 5.0
    print(
        f"\n3. reading the ring at {rate} req/s: one router, {periods} periods of"
        f" {period:g}s, reads every {read_every:g}s in every other period"
    )
    workers = 20
    seconds = int(10 + periods * period + 5)
    command = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", f"{rate / workers:g}"]
    load = subprocess.Popen([*command, f"{target.url}/"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(10)  # the ring fills up: each read then dumps all of it
        reader = target.reader()
        reader.skip_backlog()
        cpu: dict[str, list[float]] = {"reading": [], "not reading": []}
        drains: list[tuple[float, float]] = []  # (wall s, releasegate CPU s)
        for index in range(periods):
            mode = "reading" if index % 2 else "not reading"
            before, started = target.cpu_seconds(), time.perf_counter()
            while time.perf_counter() - started < period:
                time.sleep(read_every)
                if mode == "reading":
                    wall, own = time.perf_counter(), time.process_time()
                    reader.drain()
                    drains.append((time.perf_counter() - wall, time.process_time() - own))
            cpu[mode].append((target.cpu_seconds() - before) / (time.perf_counter() - started))
    finally:
        load.wait(timeout=seconds + 60)
    idle = statistics.median(cpu["not reading"])
    for mode, shares in cpu.items():
        median = statistics.median(shares)
        print(
            f"   {mode:<12} HAProxy {median * 100:5.2f}% of a core ({pct(median, idle)})"
            f"   [{', '.join(f'{share * 100:.2f}' for share in shares)}]"
        )
    wall_ms = statistics.median(wall for wall, _ in drains) * 1000
    own = sum(cpu_s for _, cpu_s in drains) / (len(drains) * read_every)
    print(
        f"   a drain: {wall_ms:.1f} ms median; releasegate {own * 100:.2f}% of a core while"
        f" reading; overruns {reader.overruns}"
    )


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
        f"   one read of the full {size / 1024:.0f} KiB ring, nothing new: HAProxy"
        f" {haproxy_ms:.2f} ms CPU, releasegate {own_ms:.2f} ms CPU ({reads} reads)"
    )


def costs(args: argparse.Namespace, parts: set[str]) -> None:
    """Parts 1 to 3, on two routers (with and without the log lines) of two backends."""
    with (
        tempfile.TemporaryDirectory(prefix="rgbench-") as tmp,
        backends() as ports,
        ExitStack() as stack,
    ):
        folder = Path(tmp)
        routers: dict[str, Router] = {
            name: stack.enter_context(
                router(folder, ports, traffic_log=log, ring_size=args.ring_size)
            )
            for name, log in (("no log lines", False), ("log lines", True))
        }
        if "1" in parts:
            p95_against_independent(routers["log lines"], ports, args.requests)
        if "2" in parts:
            logging_cost(routers, args.rate, args.seconds, args.rounds)
        if "3" in parts:
            reading_cost(routers["log lines"], args.rate, args.periods, args.read_every)
            read_cost(routers["log lines"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="requests for the p95 part")
    parser.add_argument("--rate", type=int, default=2000, help="requests/s for the cost parts")
    parser.add_argument("--seconds", type=int, default=10, help="length of one logging run")
    parser.add_argument("--rounds", type=int, default=6, help="logging runs per router")
    parser.add_argument("--periods", type=int, default=12, help="5 s periods of part 3")
    parser.add_argument("--read-every", type=float, default=1.0, help="seconds between reads")
    parser.add_argument(
        "--ring-size", type=int, default=1 << 20, help="router.traffic_ring_size, bytes"
    )
    parser.add_argument("--abort-weight", type=int, default=5, help="part 4's step, percent")
    parser.add_argument(
        "--bad-error-rate", type=float, default=0.1, help="share of green's answers that fail"
    )
    parser.add_argument("--client-rate", type=int, default=100, help="part 4's requests/s")
    parser.add_argument("--abort-trials", type=int, default=6, help="aborted canaries in part 4")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run, e.g. 4")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    for tool in ("hey", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed")
    print(f"ring {TRAFFIC_RING!r}; cpu: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if parts & {"1", "2", "3"}:
        costs(args, parts)
    if "4" in parts:
        with tempfile.TemporaryDirectory(prefix="rgbench-abort-") as tmp:
            abort_cost(
                Path(tmp),
                weight=args.abort_weight,
                error_rate=args.bad_error_rate,
                rate=args.client_rate,
                trials=args.abort_trials,
            )


if __name__ == "__main__":
    main()
