"""Whole releases of the example service: rollback time, pipeline overhead, client view.

The example ("notes": Postgres + Redis + embedded Qdrant) runs from a temporary copy of
the project (migrations, ``notes_app``, ``smoke.toml``, ``loadtests/``) under the service
name ``notesbench``: database ``rgbench_release``, Redis DB 20, router on 127.0.0.1:28080,
blue on 28081, green on 28082. Setup seeds v1 data, deploys ``notes:v1`` as blue and
releases ``notes:v2`` (``--allow-contract``), so v2 is live with every migration applied.
The images are built (offline when no registry answers) when missing, as
``scripts/demo.sh`` does.

1. **Rollback time** (``--runs``, median): ``notes:v3-bad`` is released again and again
   while a Redis data migration is pending (``migrations/redis/0002``, added to the
   temporary copy: every session is copied under a new prefix with a field more), so
   every rollback undoes a real data change and then verifies all stores against the
   pre-release backup, by content. The SLO gate is short (``--gate-s-short``): its own length is
   not measured (nor compared with blue's: the absolute thresholds fail v3-bad's
   +250 ms by themselves). From the ledger's event times (``releasegate.events.at``):

   - gate failed -> the live color serves 100%: the end of the ``traffic back to ...``
     rollback step, or 0 when traffic never left the live color (the gate runs against
     the new color's own port, before any promotion). A poller sends requests through
     the router on fresh connections during each release and counts the color that
     served them (target: < 10 s, and none on the new color);
   - gate failed -> the new color stopped (the ``stop ...`` rollback step);
   - gate failed -> rollback verified: data rolled back and every store checked against
     the manifest (the ``rollback`` step's end; target: < 60 s).

2. **Pipeline overhead**: ``notes:v2`` released once more with no migration pending and a
   ``--gate-s`` SLO gate (default 30 s): total release time minus the gate step's time
   (target: total < 30 s + gate time), with the time of every step.

3. **Client view**: an independent keep-alive ``wrk`` (``--connections``, default 4)
   through the router for the whole of the v2 release (promoted) and of one v3-bad
   release (rolled back): total requests, socket errors, non-2xx responses and the color
   that served them (a wrk Lua script reads the router's color header). Target: 0 failed.
   v3-bad's own errors happen only on its new color, which gets no router traffic before
   its gate passes, so 0 failed through the router is the expected result there too.

Only 127.0.0.1 is targeted; every load is bounded in time. Everything is removed at the
end: containers, the router (``router down --forget``), the database, the Redis DB.

python benchmarks/release_rollback.py [--runs 5] [--gate-s 30] [--only rollback,overhead,client]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from _common import BIN, REPO_ROOT, server_url, url_for
from psycopg import sql

SERVICE = "notesbench"
DATABASE = "rgbench_release"
REDIS_DB = 20
ROUTER_PORT = 28080
BLUE_PORT = 28081
GREEN_PORT = 28082
COLOR_HEADER = "X-Releasegate-Color"
WRK_PATH = "/documents/1"
SECTIONS = ("rollback", "overhead", "client")

CONFIG = """\
[service]
name = "{service}"

[postgres]
url_env = "NOTES_DATABASE_URL"

[migrations]
postgres = "migrations/postgres"
metadata = "notes_app.models:metadata"
python_path = ["examples/app"]
lock_timeout = "5s"
statement_timeout = "5m"
lock_retries = 3
retry_backoff = "1s"

[lock]
wait = "10s"

[redis]
url_env = "NOTES_REDIS_URL"
patterns = ["sess:*", "session:*", "cache:*"]
migrations = "migrations/redis"
version_key = "releasegate:redis:version"

[qdrant]
url_env = "QDRANT_URL"
path = "state/qdrant"
migrations = "migrations/qdrant"
collections = ["documents"]

[backup]
dir = "state/backups"
postgres_format = "custom"
keep = 3

[build]
repository = "{service}"   # image pruning after a promotion looks here: nothing of notes:*

[deploy]
network = "host"
port_env = "NOTES_PORT"
blue_port = {blue}
green_port = {green}
env_passthrough = ["NOTES_DATABASE_URL", "NOTES_REDIS_URL", "QDRANT_URL"]
memory = "256m"
cpus = 1.0
readiness_path = "/readyz"
ready_timeout = "60s"

[smoke]
file = "smoke.toml"

[slo]
locustfile = "loadtests/locustfile.py"
users = 20
spawn_rate = 20
warmup = "1s"
duration = "{gate_s}s"
min_requests = {min_requests}
abort_factor = 5

[slo.thresholds]
total = ["p95 < 300ms", "p99 < 800ms", "error_rate < 1%", "rps >= 10"]
"GET /documents" = ["p95 < 200ms"]
"GET /documents/{{id}}" = ["p95 < 200ms"]
"POST /sessions" = ["p95 < 200ms", "error_rate < 1%"]

[slo.compare]                  # off: a 5 s window is too short to compare with blue fairly
enabled = false
latency_margin = "20%"
latency_slack = "5ms"
error_rate_margin = "0.5%"

[router]
mode = "host"
bind = "127.0.0.1:{router}"
runtime_dir = "state/router"
health_path = "/healthz"
check_interval = "1s"

[release]
report_dir = "state/reports"
"""

# A pending data migration for the v3-bad releases: its expand (a copy of every session
# under a new prefix) is undone by every rollback.
REDIS_MIGRATION = '''\
"""Every session is copied to ``benchsess:`` with a ``bench_tag`` field (benchmark only)."""

from __future__ import annotations

from releasegate.migrations.redis import KeyMove, field_map

tag = field_map({}, defaults={"bench_tag": "release-rollback"})
untag = field_map({}, drop=("bench_tag",))

MOVES = [KeyMove("session:*", "session:", "benchsess:", up=tag, down=untag)]
'''
REDIS_MIGRATION_NAME = "0002_sessions_bench_tag.py"

# wrk: count the responses by status class and by the color that served them.
WRK_SCRIPT = """\
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, bad, blue, green, nocolor = 0, 0, 0, 0, 0
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else bad = bad + 1 end
  local color = headers["X-Releasegate-Color"] or headers["x-releasegate-color"]
  if color == "blue" then blue = blue + 1
  elseif color == "green" then green = green + 1
  else nocolor = nocolor + 1 end
end

function done(summary, latency, requests)
  local t = {ok = 0, bad = 0, blue = 0, green = 0, nocolor = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format("lua: ok %d bad %d blue %d green %d nocolor %d\\n",
    t.ok, t.bad, t.blue, t.green, t.nocolor))
end
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the project copy and the CLI ----------------------------------------------------------


class Bench:
    """The temporary project, its environment and the CLI calls against it."""

    def __init__(self, root: Path, gate_s: float) -> None:
        self.root = root
        self.config = root / "releasegate.toml"
        self.server = server_url()
        redis_server = os.environ.get("RELEASEGATE_TEST_REDIS_URL")
        if not redis_server:
            sys.exit("set RELEASEGATE_TEST_REDIS_URL (scripts/bench.sh does)")
        self.redis_url = f"{redis_server.rsplit('/', 1)[0]}/{REDIS_DB}"
        self.db_url = url_for(self.server, DATABASE)
        self.env = {
            **os.environ,
            "RELEASEGATE_CONFIG": str(self.config),
            "NOTES_DATABASE_URL": self.db_url,
            "NOTES_REDIS_URL": self.redis_url,
            "RELEASEGATE_PERFORMER": "benchmark/release_rollback",
        }
        self.env.pop("QDRANT_URL", None)  # embedded Qdrant; the app searches with Postgres
        self.gate_s = gate_s

    def copy_project(self) -> None:
        ignore = shutil.ignore_patterns("__pycache__")
        for part in ("migrations", "loadtests", "examples/app/notes_app"):
            shutil.copytree(REPO_ROOT / part, self.root / part, ignore=ignore)
        shutil.copy(REPO_ROOT / "smoke.toml", self.root / "smoke.toml")
        self.config.write_text(
            CONFIG.format(
                service=SERVICE,
                blue=BLUE_PORT,
                green=GREEN_PORT,
                router=ROUTER_PORT,
                gate_s=f"{self.gate_s:g}",
                min_requests=min_requests(self.gate_s),
            )
        )

    def rg(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: int = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "releasegate"), *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            sys.exit(
                f"releasegate {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def set_redis_migration(self, present: bool) -> None:
        path = self.root / "migrations" / "redis" / REDIS_MIGRATION_NAME
        if present:
            path.write_text(REDIS_MIGRATION)
        else:
            path.unlink(missing_ok=True)

    def events(self, release_id: int) -> list[dict[str, Any]]:
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute(
                "SELECT step, status, at, duration_ms, detail FROM releasegate.events"
                " WHERE release_id = %s ORDER BY id",
                (release_id,),
            ).fetchall()
        names = ("step", "status", "at", "duration_ms", "detail")
        return [dict(zip(names, row, strict=True)) for row in rows]


def min_requests(gate_s: float) -> int:
    """A quarter of what 20 users at 2 requests/s send in the window, as the example does."""
    return max(20, int(20 * 2 * gate_s / 4))


def ensure_images() -> None:
    """notes:v1, v2 and v3-bad, built from the repository's example when missing."""
    for variant in ("v1", "v2", "v3-bad"):
        tag = f"notes:{variant}"
        found = subprocess.run(
            ["docker", "image", "inspect", tag], capture_output=True, check=False
        )
        if found.returncode == 0:
            continue
        log(f"building {tag}")
        build = ["build", "--quiet", "--build-arg", f"NOTES_VARIANT={variant}", "--tag", tag]
        subprocess.run(
            [str(BIN / "releasegate"), *build],
            cwd=REPO_ROOT,
            env={**os.environ, "RELEASEGATE_CONFIG": str(REPO_ROOT / "releasegate.toml")},
            check=True,
            capture_output=True,
            timeout=1200,
        )


def reset_stores(bench: Bench) -> None:
    with psycopg.connect(bench.server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    client = redis.Redis.from_url(bench.redis_url)
    client.flushdb()
    client.close()


def remove_everything(bench: Bench) -> None:
    bench.rg("router", "down", "--forget", check=False, timeout=120)
    for color in ("blue", "green"):
        subprocess.run(
            ["docker", "rm", "-f", f"{SERVICE}-{color}"], capture_output=True, check=False
        )


def drop_stores(bench: Bench) -> None:
    with psycopg.connect(bench.server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
        )
    client = redis.Redis.from_url(bench.redis_url)
    client.flushdb()
    client.close()


def setup(bench: Bench, users: int) -> None:
    """v1 data, the router, blue v1 live."""
    remove_everything(bench)
    reset_stores(bench)
    log(f"seeding v1 data ({users} users) into {DATABASE}, Redis DB {REDIS_DB}, embedded Qdrant")
    seed = [str(REPO_ROOT / "scripts" / "seed.py"), "--config", str(bench.config)]
    subprocess.run(
        [str(BIN / "python"), *seed, "--users", str(users), "--migrate-to", "0002"],
        cwd=bench.root,
        env=bench.env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    bench.rg("router", "up")
    bench.rg("deploy", "--color", "blue", "--image", "notes:v1", "--force")
    bench.rg("router", "promote", "blue")
    status = get_status(WRK_PATH)
    if status != 200:
        sys.exit(f"GET {WRK_PATH} through the router answered {status}, not 200")
    log(f"blue notes:v1 live behind 127.0.0.1:{ROUTER_PORT}")


def get_status(path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", ROUTER_PORT, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- one release ---------------------------------------------------------------------------


@dataclass
class Release:
    code: int
    wall_s: float
    data: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def release_id(self) -> int:
        return int(self.data["release_id"])

    def event(self, step: str) -> dict[str, Any]:
        found = [e for e in self.events if e["step"] == step]
        if not found:
            raise KeyError(f"release {self.release_id} has no '{step}' event")
        return found[-1]

    def step_s(self, name: str) -> float:
        return float(next(s["duration_s"] for s in self.data["steps"] if s["name"] == name))

    @property
    def failed_step(self) -> str | None:
        return next((s["name"] for s in self.data["steps"] if s["status"] == "failed"), None)


def parse_json(stdout: str) -> dict[str, Any]:
    start = stdout.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    data: dict[str, Any] = json.JSONDecoder().raw_decode(stdout[start:])[0]
    return data


def release(bench: Bench, image: str, *args: str, gate_s: float | None = None) -> Release:
    env: dict[str, str] = {}
    if gate_s is not None:
        env = {
            "RELEASEGATE_SLO__DURATION": f"{gate_s:g}s",
            "RELEASEGATE_SLO__MIN_REQUESTS": str(min_requests(gate_s)),
        }
    started = time.perf_counter()
    result = bench.rg("release", "--image", image, "--json", *args, check=False, env=env)
    wall = time.perf_counter() - started
    try:
        data = parse_json(result.stdout)
    except ValueError:
        sys.exit(
            f"release {image} printed no result ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return Release(result.returncode, wall, data, bench.events(int(data["release_id"])))


# -- load through the router -----------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int = 0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    colors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


@contextmanager
def wrk_load(folder: Path, connections: int, out: WrkResult, limit_s: int = 600) -> Iterator[None]:
    """Keep-alive wrk through the router while the block runs (stopped with SIGINT)."""
    script = folder / "count.lua"
    script.write_text(WRK_SCRIPT)
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{limit_s}s", "--timeout", "5s", "-s", str(script)]
    proc = subprocess.Popen(
        [*cmd, f"http://127.0.0.1:{ROUTER_PORT}{WRK_PATH}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = time.perf_counter()
    try:
        time.sleep(1.0)
        yield
    finally:
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        out.seconds = time.perf_counter() - started
        parse_wrk(output, out)


def parse_wrk(output: str, out: WrkResult) -> None:
    total = re.search(r"(\d+) requests in", output)
    lua = re.search(r"lua: ok (\d+) bad (\d+) blue (\d+) green (\d+) nocolor (\d+)", output)
    if not (total and lua):
        sys.exit(f"cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    names = ("connect", "read", "write", "timeout")
    out.requests = int(total.group(1))
    # wrk counts 3xx as fine; the script counts every non-2xx: take the larger.
    out.non_2xx = max(int(non_2xx.group(1)) if non_2xx else 0, int(lua.group(2)))
    out.socket_errors = (
        {n: int(v) for n, v in zip(names, errors.groups(), strict=True)}
        if errors
        else dict.fromkeys(names, 0)
    )
    out.colors = {
        "blue": int(lua.group(3)),
        "green": int(lua.group(4)),
        "none": int(lua.group(5)),
    }


class ColorPoller:
    """Requests through the router on fresh connections; counts the colors that answer."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.colors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", ROUTER_PORT, timeout=5)
            try:
                conn.request("GET", "/healthz", headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                color = response.getheader(COLOR_HEADER) or "none"
                if response.status != 200:
                    color = f"HTTP {response.status}"
            except OSError as exc:
                color = type(exc).__name__
            finally:
                conn.close()
            self.colors[color] = self.colors.get(color, 0) + 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ColorPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# -- 1. rollback time ------------------------------------------------------------------------


@dataclass
class RollbackRun:
    release_id: int
    failed_step: str | None
    code: int
    live: str  # the color live before the release (it must keep every request)
    new: str  # the color v3-bad was deployed to
    to_live_s: float | None  # None: traffic never left the live color
    stopped_s: float
    verified_s: float
    undo: list[tuple[str, float]]
    kept: int  # changes the rollback kept on purpose (e.g. an irreversible revision)
    polled: dict[str, int]
    problems: list[str]


def seconds_between(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def rollback_run(bench: Bench, gate_s: float) -> RollbackRun:
    with ColorPoller() as poller:
        result = release(bench, "notes:v3-bad", "--force", gate_s=gate_s)
    gate = result.event("slo gate")
    rollback = result.event("rollback")
    # The rollback event is written at its end with its length: its start, then each
    # undo step's end as the running sum of the recorded step lengths.
    rollback_s = float(rollback["duration_ms"] or 0.0) / 1000
    start_after_gate = seconds_between(gate["at"], rollback["at"]) - rollback_s
    section = result.data.get("rollback") or result.data.get("sections", {}).get("rollback", {})
    undo_steps = section.get("steps", [])
    undo: list[tuple[str, float]] = []
    elapsed = start_after_gate
    to_live: float | None = None
    stopped = 0.0
    for step in undo_steps:
        elapsed += float(step["duration_s"])
        undo.append((step["name"], float(step["duration_s"])))
        if step["name"].startswith("traffic back to"):
            to_live = elapsed
        if step["name"].startswith("stop "):
            stopped = elapsed
    kept = len(section.get("kept", []))
    problems = [
        f"{c['store']} {c['item']}: expected {c['expected']}, found {c['actual']}"
        for c in section.get("verification", {}).get("checks", [])
        if not c["ok"]
    ]
    return RollbackRun(
        release_id=result.release_id,
        failed_step=result.failed_step,
        code=result.code,
        live=str(result.data["colors"]["live_before"]),
        new=str(result.data["colors"]["target"]),
        to_live_s=to_live,
        stopped_s=stopped,
        verified_s=seconds_between(gate["at"], rollback["at"]),
        undo=undo,
        kept=kept,
        polled=dict(poller.colors),
        problems=problems,
    )


def stats(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):6.2f} s   min {min(samples):6.2f} s"
        f"   max {max(samples):6.2f} s   n={len(samples)}"
    )


def report_rollback(runs: list[RollbackRun], gate_s: float) -> None:
    print()
    print(
        f"1. rollback time: notes:v3-bad released {len(runs)}x with Redis data migration 0002"
        f" pending; SLO gate {gate_s:g}s (not measured); times after the gate failed"
    )
    print(
        f"   {'release':>7}  {'failed at':<9} {'exit':>4}  {'live 100%':>9}  {'new stopped':>11}"
        f"  {'verified':>8}  {'kept':<8}  poller through the router"
    )
    for run in runs:
        kept = "0 (kept)" if run.to_live_s is None else f"{run.to_live_s:.2f} s"
        colors = ", ".join(
            f"{'live ' if k == run.live else 'new ' if k == run.new else ''}{k} {v}"
            for k, v in sorted(run.polled.items())
        )
        kept_changes = str(run.kept) if run.kept else "-"
        print(
            f"   {run.release_id:>7}  {run.failed_step or '-':<9} {run.code:>4}  {kept:>9}"
            f"  {run.stopped_s:9.2f} s  {run.verified_s:6.2f} s  {kept_changes:<8}  {colors}"
        )
        for problem in run.problems:
            print(f"            verification: {problem}")
    valid = [r for r in runs if r.failed_step == "slo gate" and r.code == 1]
    if len(valid) < len(runs):
        print(
            f"   {len(runs) - len(valid)} of {len(runs)} run(s) did not end as a verified"
            " rollback after the SLO gate (exit 1); left out of the figures below"
        )
    if not valid:
        return
    first = valid[0]
    steps = "; ".join(f"{name} {s:.2f} s" for name, s in first.undo)
    print(f"   rollback steps (release {first.release_id}): {steps}")
    to_live = [r.to_live_s or 0.0 for r in valid]
    new_hits = sum(r.polled.get(r.new, 0) for r in runs)
    failed = sum(v for r in runs for k, v in r.polled.items() if k not in ("blue", "green"))
    print(f"   gate failed -> live color serves 100%  {stats(to_live)}")
    if all(r.to_live_s is None for r in valid):
        print(
            "     (traffic never left the live color: the gate runs against the new color's own"
            " port, before any promotion)"
        )
    print(
        f"     poller requests through the router during all {len(runs)} releases:"
        f" {sum(sum(r.polled.values()) for r in runs)}, on the new color {new_hits},"
        f" failed {failed}"
    )
    print(f"   gate failed -> new color stopped       {stats([r.stopped_s for r in valid])}")
    print(f"   gate failed -> rollback verified       {stats([r.verified_s for r in valid])}")
    verified = [r.verified_s for r in valid]
    live_met = max(to_live) < 10 and new_hits == 0 and failed == 0
    print(
        f"   target live 100% < 10 s: {'met' if live_met else 'MISSED'}"
        f";  target verified rollback < 60 s: {'met' if max(verified) < 60 else 'MISSED'}"
        f" (median {statistics.median(verified):.2f} s, max {max(verified):.2f} s)"
    )


# -- 2. pipeline overhead --------------------------------------------------------------------


def report_overhead(result: Release, gate_s: float) -> None:
    total = float(result.data["duration_s"])
    gate = result.step_s("slo gate")
    print()
    print(
        f"2. pipeline overhead: notes:v2 released with no migration pending, SLO gate {gate_s:g}s"
    )
    print(f"   outcome {result.data.get('outcome')} (exit {result.code})")
    print(
        "   steps: "
        + "; ".join(f"{s['name']} {s['duration_s']:.2f} s" for s in result.data["steps"])
    )
    print(f"   total release           {total:7.2f} s   (CLI wall time {result.wall_s:.2f} s)")
    print(f"   SLO gate step           {gate:7.2f} s")
    print(f"   overhead (total - gate) {total - gate:7.2f} s")
    print(
        f"   target total < 30 s + gate ({30 + gate:.2f} s):"
        f" {'met' if total < 30 + gate and result.code == 0 else 'MISSED'}"
    )


# -- 3. client view --------------------------------------------------------------------------


def report_client(label: str, result: Release, load: WrkResult, connections: int) -> None:
    errors = ", ".join(f"{k} {v}" for k, v in load.socket_errors.items())
    colors = ", ".join(f"{k} {v}" for k, v in load.colors.items())
    print(
        f"   {label}: release {result.release_id} {result.data.get('outcome')} (exit {result.code})"
        f" in {result.wall_s:.1f} s; wrk -c{connections} for {load.seconds:.1f} s"
    )
    print(f"     total requests     {load.requests:,}")
    print(f"     socket errors      {sum(load.socket_errors.values())} ({errors})")
    print(f"     non-2xx responses  {load.non_2xx}")
    print(f"     served by          {colors}")
    print(f"     target 0 failed: {'met' if load.failed == 0 else 'MISSED'} ({load.failed} failed)")


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="v3-bad rollbacks timed")
    parser.add_argument("--gate-s", type=float, default=30.0, help="SLO gate of the overhead run")
    parser.add_argument("--gate-s-short", type=float, default=5.0, help="SLO gate elsewhere")
    parser.add_argument("--users", type=int, default=500, help="users seeded (as the demo)")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    args = parser.parse_args()
    chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    if not chosen <= set(SECTIONS):
        sys.exit(f"--only takes {', '.join(SECTIONS)}")
    for tool in ("docker", "haproxy", *(("wrk",) if "client" in chosen else ())):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed")

    ensure_images()
    with tempfile.TemporaryDirectory(prefix="rgbench-release-") as tmp:
        bench = Bench(Path(tmp), args.gate_s_short)
        bench.copy_project()
        try:
            setup(bench, args.users)
            started = time.perf_counter()

            v2_load = WrkResult()
            if "client" in chosen:
                log("releasing notes:v2 (--allow-contract) under wrk")
                with wrk_load(Path(tmp), args.connections, v2_load):
                    v2 = release(bench, "notes:v2", "--allow-contract")
            else:
                log("releasing notes:v2 (--allow-contract)")
                v2 = release(bench, "notes:v2", "--allow-contract")
            if v2.code != 0:
                sys.exit(f"the v2 release did not succeed: {json.dumps(v2.data.get('error'))}")
            log(f"notes:v2 promoted in {v2.wall_s:.1f} s")

            runs: list[RollbackRun] = []
            bench.set_redis_migration(True)
            if "rollback" in chosen:
                for i in range(args.runs):
                    run = rollback_run(bench, args.gate_s_short)
                    runs.append(run)
                    log(
                        f"v3-bad run {i + 1}/{args.runs}: failed at {run.failed_step}, exit"
                        f" {run.code}, verified {run.verified_s:.2f} s after the gate"
                    )
            v3_load = WrkResult()
            v3: Release | None = None
            if "client" in chosen:
                log("releasing notes:v3-bad under wrk")
                with wrk_load(Path(tmp), args.connections, v3_load):
                    v3 = release(bench, "notes:v3-bad", "--force")
                log(f"notes:v3-bad: exit {v3.code} in {v3.wall_s:.1f} s")
            bench.set_redis_migration(False)

            overhead: Release | None = None
            if "overhead" in chosen:
                log(f"releasing notes:v2 again, no migration pending, {args.gate_s:g}s gate")
                overhead = release(bench, "notes:v2", gate_s=args.gate_s)
                log(f"exit {overhead.code} in {overhead.wall_s:.1f} s")
            log(f"all releases done in {time.perf_counter() - started:.0f} s")

            if "rollback" in chosen:
                report_rollback(runs, args.gate_s_short)
            if overhead is not None:
                report_overhead(overhead, args.gate_s)
            if "client" in chosen and v3 is not None:
                print()
                print(
                    f"3. client view: wrk -t2 -c{args.connections} keep-alive through"
                    f" 127.0.0.1:{ROUTER_PORT}{WRK_PATH}"
                )
                report_client("v1 -> v2 (promoted)", v2, v2_load, args.connections)
                report_client("v2 -> v3-bad (rolled back)", v3, v3_load, args.connections)
        finally:
            remove_everything(bench)
            drop_stores(bench)
            log("cleaned up: router, containers, database, Redis DB")


if __name__ == "__main__":
    main()
