"""Requests per second per CPU core of the gate's load generator, beside wrk.

python benchmarks/loadgen_efficiency.py [--seconds 10] [--connections 10] [--rounds 2]

All tools hit the same fast endpoint: HAProxy on 127.0.0.1 answering every request
itself (``http-request return``), so the server costs little and is the same for all.
Each tool runs with ``--connections`` connections (Locust: users with no wait time) for
``--seconds``; its CPU time comes from the kernel (``wait4`` rusage of the process) and
for Locust from the gate's own window measurement (warm-up and start-up left out).
requests / CPU seconds = requests per second per core, which factors out how much of
the machine's two shared cores each tool got. Locust runs exactly as ``releasegate gate``
runs it (with the releasegate plugin), once with FastHttpUser (what the example
locustfile uses) and once with HttpUser; hey is shown as a second reference. "CPU share"
is CPU seconds over wall seconds: below 100% for a single-threaded tool means it waited
(for the server, or for a core the machine's other work was using). Last, the CPU cost
of the plugin's per-request bookkeeping, measured in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import free_port

from releasegate.gates.histogram import Histogram
from releasegate.gates.locust_runner import LocustPlan, read_window

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend fast
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok
"""

LOCUSTFILE = """\
from locust import {cls}, constant, task


class Hammer({cls}):
    wait_time = constant(0)

    @task
    def fast(self):
        self.client.get("/", name="GET /")
"""


def run_measured(cmd: list[str], cwd: Path) -> tuple[str, float, float]:
    """Run a command to completion: (stdout+stderr, CPU seconds, wall seconds)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime, wall


Result = tuple[float, float, float]  # requests, CPU seconds, wall seconds


def wrk(url: str, args: argparse.Namespace, tmp: Path) -> Result:
    text, cpu, _ = run_measured(
        ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", url], tmp
    )
    match = re.search(r"(\d+) requests in ([\d.]+)s", text)
    if not match:
        raise SystemExit(f"cannot read wrk's output:\n{text}")
    return float(match.group(1)), cpu, float(match.group(2))


def hey(url: str, args: argparse.Namespace, tmp: Path) -> Result:
    text, cpu, _ = run_measured(
        ["hey", "-z", f"{args.seconds}s", "-c", str(args.connections), url], tmp
    )
    total = re.search(r"Total:\s+([\d.]+) secs", text)
    count = re.search(r"\[200\]\s+(\d+) responses", text)
    if not (total and count):
        raise SystemExit(f"cannot read hey's output:\n{text}")
    return float(count.group(1)), cpu, float(total.group(1))


def locust(user_class: str) -> Callable[[str, argparse.Namespace, Path], Result]:
    def measure(url: str, args: argparse.Namespace, tmp: Path) -> Result:
        locustfile = tmp / f"{user_class.lower()}.py"
        locustfile.write_text(LOCUSTFILE.format(cls=user_class))
        out_dir = tmp / f"out-{user_class}-{time.monotonic_ns()}"
        plan = LocustPlan(
            locustfile=locustfile,
            host=url,
            out_dir=out_dir,
            users=args.connections,
            spawn_rate=args.connections,
            warmup=2,
            duration=args.seconds,
        )
        out_dir.mkdir(parents=True)
        run_measured(plan.command(), out_dir)
        window = read_window(plan.window_path)
        if window is None or not window.requests:
            raise SystemExit(f"Locust ({user_class}) measured nothing: see {plan.log_path}")
        node = json.loads(plan.window_path.read_text())["nodes"]["local"]
        return float(window.requests), float(node["cpu_s"]), float(node["wall_s"])

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for tool in ("haproxy", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/test.sh installs it)")

    tools: dict[str, Callable[[str, argparse.Namespace, Path], Result]] = {"wrk": wrk}
    if shutil.which("hey"):
        tools["hey"] = hey
    tools["locust FastHttpUser"] = locust("FastHttpUser")
    tools["locust HttpUser"] = locust("HttpUser")

    with tempfile.TemporaryDirectory(prefix="rg-loadgen-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        (tmp / "haproxy.cfg").write_text(HAPROXY_CFG.format(port=port))
        server = subprocess.Popen(
            ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "haproxy.log").open("wb"),
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log = (tmp / "haproxy.log").read_text(errors="replace")
                        raise SystemExit(f"haproxy did not start:\n{log}") from None
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/"
            per_core: dict[str, list[float]] = {name: [] for name in tools}
            wall_rps: dict[str, list[float]] = {name: [] for name in tools}
            for _ in range(args.rounds):
                for name, measure in tools.items():
                    requests, cpu, wall = measure(url, args, tmp)
                    per_core[name].append(requests / cpu)
                    wall_rps[name].append(requests / wall)
        finally:
            server.terminate()
            server.wait(timeout=10)

    print(
        f"{args.connections} connections/users, {args.seconds}s per run, {args.rounds} rounds;"
        " medians; HAProxy answers on 127.0.0.1"
    )
    print(f"{'tool':<22}{'req/s (wall)':>14}{'CPU share':>11}{'req/s per core':>16}{'vs wrk':>9}")
    base = statistics.median(per_core["wrk"])
    for name in tools:
        efficiency = statistics.median(per_core[name])
        rate = statistics.median(wall_rps[name])
        print(
            f"{name:<22}{rate:>14.0f}{rate / efficiency:>11.0%}{efficiency:>16.0f}"
            f"{efficiency / base:>9.3f}"
        )
    fast = statistics.median(per_core["locust FastHttpUser"])
    print(
        f"FastHttpUser does {fast / base:.1%} of wrk's work per core"
        f" ({base / fast:.1f} cores of Locust per core of wrk)"
    )
    cost = plugin_cost_us()
    print(
        f"the releasegate plugin's bookkeeping: {cost:.2f} us per request,"
        f" {cost / (1e6 / fast):.1%} of FastHttpUser's CPU per request"
    )


def plugin_cost_us(samples: int = 200_000) -> float:
    """CPU cost of recording one request in the plugin's per-name histogram (us)."""
    entries: dict[tuple[str, str], Histogram] = {}
    values = [0.5 + (i % 997) * 0.37 for i in range(samples)]
    started = time.process_time()
    for value in values:
        histogram = entries.get(("GET", "/"))
        if histogram is None:
            histogram = entries[("GET", "/")] = Histogram()
        histogram.add(value)
    return (time.process_time() - started) / samples * 1e6


if __name__ == "__main__":
    main()
