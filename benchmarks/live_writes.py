"""Releases under a steady write load: acknowledged writes lost, ids reused, live errors, timings.

Each scenario starts the example service fresh (v1 blue live, seeded, behind HAProxy, real
Postgres, Redis, Docker; Qdrant embedded), starts the live writers of
``tests/e2e/live_writer.py`` through the router (``--writes`` per second, half documents in
Postgres, half sessions in Redis, plus a reader of the pre-release data), runs one release
and checks every acknowledged write afterwards:

- ``promoted``: v1 -> v2, every store migrating (expand, catch-up at promote, contract);
- ``gate-fail``: v1 -> v3-bad, its SLO gate fails: rollback before promotion;
- ``watch-fail``: v1 -> v2-watch-bad, passes its gate, fails the watch once real traffic
  reaches it: rollback after promotion, green's writes carried back to v1's layout.

Printed per scenario: writes acknowledged and the rate reached, writes lost or changed, ids
reused, non-2xx answers of the live color (a deliberately bad variant's own answers after
its promotion counted apart), the outcome, and for rollbacks the time from the failed step
to blue serving 100% and to the rollback verified. Targets: 0 lost or changed, 0 reused,
0 live errors, ``rolled_back`` (verified) at >= 20 writes/s.

``--redis-keys N`` also runs ``benchmarks/redis_expand.py`` at N keys (expand + catch-up
throughput against a naive loop, and the catch-up of 10,000 changed keys).

Only 127.0.0.1 is targeted; every load is bounded in time. Everything is removed at the end.

python benchmarks/live_writes.py [--scenarios promoted,gate-fail,watch-fail] [--writes 20]
    [--redis-keys 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, scratch_db, server_url

sys.path[:0] = [str(REPO_ROOT / "tests" / "e2e"), str(REPO_ROOT / "tests")]

from live_writer import LiveReport, LiveWriters  # noqa: E402
from release_env import ensure_images, open_release_env  # noqa: E402

SCENARIOS: dict[str, tuple[str, ...]] = {
    "promoted": ("--image", "notes:v2", "--allow-contract", "--watch", "3"),
    "gate-fail": ("--image", "notes:v3-bad", "--allow-contract"),
    "watch-fail": ("--image", "notes:v2-watch-bad", "--allow-contract", "--watch", "6"),
}
REDIS_DB = 21


def rollback_times(data: dict[str, Any]) -> tuple[float | None, float | None]:
    """(failed step -> blue at 100%, failed step -> rollback verified), in seconds.

    The rollback starts as the failed step ends. Blue serves 100% once the ``traffic back``
    undo step ends, or from the start when traffic never left it (failure before promote).
    """
    rollback = data.get("rollback")
    step = next((s for s in data["steps"] if s["name"] == "rollback"), None)
    if rollback is None or step is None:
        return None, None
    elapsed = 0.0
    to_blue = 0.0
    for undo_step in rollback["steps"]:
        elapsed += undo_step["duration_s"]
        if undo_step["name"].startswith("traffic back"):
            to_blue = elapsed
    return to_blue, float(step["duration_s"])


def run_scenario(name: str, writes: float, pg: str, redis_url: str) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="rg-live-") as folder,
        open_release_env(Path(folder) / "project", pg, redis_url) as env,
    ):
        writers = LiveWriters(
            f"http://127.0.0.1:{env.ports['router']}", pg, redis_url, writes_per_s=writes
        ).start()
        started = time.monotonic()
        result = env.run("release", "--json", *SCENARIOS[name], timeout=600)
        took = time.monotonic() - started
        writers.stop()
        report: LiveReport = writers.check()
        data = json.loads(result.stdout)
        bad = "green" if name == "watch-fail" else None
        live_failed = report.failed_answers(lambda a: bad is not None and a.color == bad)
        bad_failed = report.failed_answers(lambda a: a.color != bad) if bad else {}
        to_blue, verified = rollback_times(data)
        return {
            "scenario": name,
            "outcome": data["outcome"],
            "exit_code": result.returncode,
            "release_s": round(took, 1),
            "acknowledged": report.acknowledged,
            "writes_per_s": round(report.writes_per_s, 1),
            "lost": len(report.lost),
            "changed": len(report.changed),
            "reused_ids": len(report.reused_ids),
            "stale_reads": len(report.stale_reads),
            "live_errors": sum(live_failed.values()),
            "bad_variant_errors": sum(bad_failed.values()),
            "served_by": dict(report.served_by()),
            "to_blue_s": to_blue,
            "to_verified_s": verified,
            "verification": (data.get("rollback") or {}).get("verification", {}).get("ok"),
            "examples": (report.lost + report.changed)[:5],
        }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'scenario':<11} {'outcome':<12} {'acked':>6} {'w/s':>5} {'lost':>5} {'changed':>7}"
        f" {'reused':>6} {'live err':>8} {'bad err':>7} {'->blue':>7} {'->verified':>10}"
    )
    for r in rows:
        acked = sum(r["acknowledged"].values())
        blue = "-" if r["to_blue_s"] is None else f"{r['to_blue_s']:.2f}s"
        verified = "-" if r["to_verified_s"] is None else f"{r['to_verified_s']:.2f}s"
        print(
            f"{r['scenario']:<11} {r['outcome']:<12} {acked:>6} {r['writes_per_s']:>5.1f}"
            f" {r['lost']:>5} {r['changed']:>7} {r['reused_ids']:>6} {r['live_errors']:>8}"
            f" {r['bad_variant_errors']:>7} {blue:>7} {verified:>10}"
        )
        for example in r["examples"]:
            print(f"    {example}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--writes", type=float, default=20.0, help="writes per second")
    parser.add_argument("--redis-keys", type=int, default=0, help="also run redis_expand.py")
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    ensure_images()
    import redis

    redis_base = "redis://127.0.0.1:6390"
    rows = []
    for name in names:
        with scratch_db(server_url()) as pg:
            redis_url = f"{redis_base}/{REDIS_DB}"
            client = redis.Redis.from_url(redis_url)
            client.flushdb()
            try:
                print(f"-- {name} ({uuid.uuid4().hex[:6]})", flush=True)
                rows.append(run_scenario(name, args.writes, pg, redis_url))
            finally:
                client.flushdb()
                client.close()
    print()
    print_table(rows)
    ok = all(
        r["lost"] == r["changed"] == r["reused_ids"] == r["live_errors"] == 0
        and r["outcome"] == ("succeeded" if r["scenario"] == "promoted" else "rolled_back")
        for r in rows
    )
    verdict = "met" if ok else "MISSED"
    print(f"\ntarget (0 lost/changed/reused, 0 live errors, verified outcome): {verdict}")
    if args.redis_keys:
        print()
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "redis_expand.py"), "--keys",
             str(args.redis_keys)],
            check=False,
        )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
