"""How close is the SLO gate's p95 to the truth? Target: within 5%.

python benchmarks/gate_accuracy.py [--duration 20] [--warmup 3] [--users 20]

A uvicorn server on 127.0.0.1 (a bare ASGI app in a thread of this process) answers each
request after sleeping a time drawn from a fixed, seeded distribution, and records the
service time it actually took (arrival to response sent). The gate then loads it with
Locust exactly as ``releasegate gate`` does. The true p95 is the nearest-rank p95 of the
server's own records for the requests that arrived inside the gate's window (after the
warm-up); the gate's p95 comes from its window statistics. Also shown: the p95 that
Locust's own CSV reports for the whole run (warm-up included, rounded), and the
distribution's analytic p95. The third scenario is 4x slower during the warm-up (a
cold cache): Locust's whole-run figure includes that, the gate's window does not.
Load stays on 127.0.0.1 and is bounded by users x rate x time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import NormalDist
from typing import Any

import uvicorn
from _common import free_port

from releasegate.config import SloSection
from releasegate.gates.slo import run_slo_gate

LOCUSTFILE = """\
from locust import FastHttpUser, constant_throughput, task


class Reader(FastHttpUser):
    wait_time = constant_throughput({rate})

    @task
    def work(self):
        self.client.get("/work", name="GET /work")
"""

Z95 = NormalDist().inv_cdf(0.95)


class Scenario:
    """A seeded latency distribution (milliseconds) and its analytic p95.

    ``cold_factor`` multiplies the latency of requests arriving in the first
    ``cold_s`` seconds (a cold cache during the warm-up); the analytic p95 is the warm one.
    """

    def __init__(
        self,
        name: str,
        draw: Callable[[random.Random], float],
        p95: float,
        cold_factor: float = 1.0,
        cold_s: float = 0.0,
    ) -> None:
        self.name = name
        self.draw = draw
        self.analytic_p95 = p95
        self.cold_factor = cold_factor
        self.cold_s = cold_s


def lognormal(median_ms: float, sigma: float) -> Scenario:
    mu = math.log(median_ms)
    return Scenario(
        f"lognormal(median {median_ms:g} ms, sigma {sigma:g})",
        lambda rng: rng.lognormvariate(mu, sigma),
        math.exp(mu + sigma * Z95),
    )


def mixture() -> Scenario:
    """90% around 20 ms, 10% around 150 ms: a fast path and a slow path."""

    def draw(rng: random.Random) -> float:
        if rng.random() < 0.9:
            return rng.lognormvariate(math.log(20), 0.3)
        return rng.lognormvariate(math.log(150), 0.25)

    # p95 of the mixture: F(x) = 0.9 * F1(x) + 0.1 * F2(x) = 0.95, solved by bisection.
    def cdf(x: float) -> float:
        f1 = NormalDist(math.log(20), 0.3).cdf(math.log(x))
        f2 = NormalDist(math.log(150), 0.25).cdf(math.log(x))
        return 0.9 * f1 + 0.1 * f2

    low, high = 1.0, 2000.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < 0.95 else (low, mid)
    return Scenario("mixture(90% ~20 ms, 10% ~150 ms)", draw, low)


class LatencyApp:
    """A bare ASGI app: sleep a drawn time, answer 200, record (arrival, service ms)."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.records: list[tuple[float, float]] = []
        self.first_arrival: float | None = None

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        arrival = time.time()
        started = time.perf_counter()
        if self.first_arrival is None:
            self.first_arrival = arrival
        delay_ms = self.scenario.draw(self.rng)
        if arrival < self.first_arrival + self.scenario.cold_s:
            delay_ms *= self.scenario.cold_factor
        await asyncio.sleep(delay_ms / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        self.records.append((arrival, (time.perf_counter() - started) * 1000))


def serve(app: LatencyApp) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the latency server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def measure(scenario: Scenario, args: argparse.Namespace, workdir: Path) -> float:
    app = LatencyApp(scenario, seed=42)
    server, thread, url = serve(app)
    try:
        (workdir / "locustfile.py").write_text(LOCUSTFILE.format(rate=args.rate))
        slo = SloSection(
            locustfile=Path("locustfile.py"),
            users=args.users,
            spawn_rate=args.users,
            warmup=args.warmup,
            duration=args.duration,
            min_requests=100,
            thresholds={"total": ["p95 < 60s"]},
        )
        result = run_slo_gate(
            slo, workdir, url, out_dir=workdir / f"run{len(list(workdir.glob('run*')))}"
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    run = result.run
    window = run.window
    if window is None or window.source != "plugin":
        raise SystemExit(f"no window statistics: {result.reasons}")
    plugin = json.loads(run.plan.window_path.read_text())
    start, end = plugin["window_start"], plugin["window_end"]
    truth = [ms for arrival, ms in app.records if start <= arrival <= end]
    gate_p95 = window.scope("total").metric("p95") or 0.0
    true_p95 = nearest_rank(truth, 95)
    csv_p95 = next(
        (r.percentiles.get("95%") for r in run.stats if r.name == "Aggregated" and not r.method),
        None,
    )
    error = (gate_p95 - true_p95) / true_p95
    print(f"\n{scenario.name}")
    print(
        f"  requests: server {len(app.records)} in all, {len(truth)} in the window;"
        f" gate window {window.requests} over {window.duration_s:.1f}s"
        f" (load generator: {window.cpu_utilisation or 0:.0%} CPU,"
        f" loop lag p90 {window.loop_lag_p90_ms or 0:.1f} ms)"
    )
    print(f"  analytic p95 of the distribution   {scenario.analytic_p95:8.2f} ms")
    print(f"  true p95 (server's own records)    {true_p95:8.2f} ms")
    print(f"  gate p95 (releasegate window)      {gate_p95:8.2f} ms   error {error:+.2%}")
    if csv_p95 is not None:
        csv_error = (csv_p95 - true_p95) / true_p95
        print(f"  Locust CSV p95 (whole run, rounded) {csv_p95:7.0f} ms   error {csv_error:+.2%}")
    print(f"  verdict {result.verdict}, saturation: {run.saturation() or 'none'}")
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=20.0, help="window seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=float, default=8.0, help="requests/s per user")
    args = parser.parse_args()
    print(
        f"gate p95 against the server's own p95: {args.users} users x {args.rate:g} req/s,"
        f" {args.warmup:g}s warm-up + {args.duration:g}s window per scenario"
    )
    errors = []
    with tempfile.TemporaryDirectory(prefix="rg-gate-accuracy-") as tmp:
        cold = lognormal(40, 0.5)
        cold.name = "cold start: " + cold.name + f", 4x slower for the first {args.warmup:g}s"
        cold.cold_factor, cold.cold_s = 4.0, args.warmup
        for scenario in (lognormal(40, 0.5), mixture(), cold):
            errors.append(measure(scenario, args, Path(tmp)))
    worst = max(abs(e) for e in errors)
    print(f"\nworst relative error of the gate's p95: {worst:.2%}")
    print(f"target within 5%: {'met' if worst <= 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
