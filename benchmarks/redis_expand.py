"""Redis expand/contract throughput: the example migration ``sess:*`` -> ``session:*``.

Against a redis-server of the benchmark's own (free port, no persistence), with the
ledger and lock in a scratch Postgres database, over ``--keys`` sessions:

1. ``expand``: every twin written (JSON transform, expiry kept, tracking recorded);
2. ``catch_up`` after the old version changed ``--changed`` sessions, the server sending
   keyspace notifications (the release process's watcher hands over the changed keys);
3. the same without a watcher (another process, or notifications off): a full digest
   scan, then the same with nothing changed (the cost of checking every key);
4. a naive per-key loop doing the same copy (GET, PEXPIRETIME, SET PXAT, HSET per key,
   one round trip each) over ``--naive-keys`` sessions.

Targets: expand and catch-up >= 100k keys/s and >= 10x the naive loop; a catch-up of
10,000 changed keys < 2 s. CPU time of both processes is printed too (on a shared
machine wall-clock rates swing with the load, CPU time much less).

    python benchmarks/redis_expand.py [--keys 1000000] [--changed 10000] [--naive-keys 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import REPO_ROOT, redis_server, scratch_db, server_url
from _redis_sessions import CONFIG, server_cpu_seconds, session_v2

sys.path.insert(0, str(REPO_ROOT / "examples" / "app"))
from notes_app.seed_redis import encode, iter_sessions, seed_sessions


def naive(client: redis.Redis) -> tuple[int, float]:
    """The copy one writes by hand: one key at a time, one round trip per command."""
    started = time.perf_counter()
    n = 0
    for key in client.scan_iter(match="sess:*", count=1000):
        raw = client.get(key)
        expiry = client.pexpiretime(key)
        if raw is None:
            continue
        value = json.loads(raw)
        new = session_v2(value)
        suffix = key[len(b"sess:") :]
        client.set(
            b"session:" + suffix,
            json.dumps(new, separators=(",", ":")),
            pxat=expiry if expiry > 0 else None,
        )
        client.hset("naive:tracking", suffix, str(hash(raw)))
        n += 1
    return n, time.perf_counter() - started


class Timer:
    """Wall, client CPU and redis-server CPU of one block."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __enter__(self) -> Timer:
        self.server = server_cpu_seconds(self.client)
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.server = server_cpu_seconds(self.client) - self.server

    def line(self, label: str, keys: int) -> str:
        return (
            f"{label:<38} {keys:>9,} keys {self.wall:7.2f} s {keys / self.wall:>10,.0f} keys/s"
            f"  (cpu: releasegate {self.cpu:.2f} s, redis-server {self.server:.2f} s)"
        )


def change_sessions(client: redis.Redis, n: int, changed: int, seen: str) -> None:
    """The old version updates ``changed`` sessions spread over the keyspace."""
    step = max(1, n // changed)
    pipe = client.pipeline(transaction=False)
    done = 0
    for i, (sid, value, _ttl) in enumerate(iter_sessions(n)):
        if i % step or done >= changed:
            continue
        pipe.set(f"sess:{sid}", encode({**value, "lastSeen": seen}), keepttl=True)
        done += 1
        if done % 5000 == 0:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--changed", type=int, default=10_000)
    parser.add_argument("--naive-keys", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    from releasegate.config import load_config
    from releasegate.migrations.redis import phases, watch
    from releasegate.migrations.redis.moves import read_expansion

    with (
        redis_server() as port,
        scratch_db(server_url()) as pg_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        config = Path(tmp) / "releasegate.toml"
        config.write_text(
            CONFIG.format(
                migrations=(REPO_ROOT / "migrations" / "redis").as_posix(),
                batch_size=args.batch_size,
            )
        )
        env = {**os.environ, "NOTES_DATABASE_URL": pg_url, "NOTES_REDIS_URL": url}
        settings = load_config(config, env)

        started = time.perf_counter()
        seed_sessions(client, args.keys, cache_docs=0)
        print(f"seeded {args.keys:,} sessions in {time.perf_counter() - started:.1f} s")
        used = client.info("memory")["used_memory"] / 2**20

        client.config_set("notify-keyspace-events", "KA")
        with Timer(client) as expand_t:
            result = phases.expand(settings)
        assert result.copied == args.keys, result.to_dict()
        tracked = client.info("memory")["used_memory"] / 2**20
        print(expand_t.line("expand (copy + JSON transform)", args.keys))
        print(
            f"  redis used_memory: {used:.0f} MiB before, {tracked:.0f} MiB expanded"
            f" (twins + tracking: {(tracked - used) * 2**20 / args.keys:.0f} B/key)"
        )

        changed = min(args.changed, args.keys)
        change_sessions(client, args.keys, changed, "2026-12-07T01:00:00")
        with Timer(client) as notified_t:
            notified = phases.catch_up(settings)
        assert notified.scan == "notified" and notified.changed == changed, notified.to_dict()
        print(notified_t.line(f"catch-up, {changed:,} changed, notified", changed))

        record = read_expansion(client, "releasegate:redis:version")
        assert record is not None
        watch.stop(client, "releasegate:redis:version", record.started_at)  # a new process
        change_sessions(client, args.keys, changed, "2026-12-07T02:00:00")
        with Timer(client) as full_t:
            full = phases.catch_up(settings)
        assert full.scan == "full" and full.changed == changed, full.to_dict()
        print(full_t.line(f"catch-up, {changed:,} changed, full scan", args.keys))

        watch.stop(client, "releasegate:redis:version", record.started_at)
        with Timer(client) as idle_t:
            idle = phases.catch_up(settings)
        assert idle.scan == "full" and idle.changed == idle.copied == 0, idle.to_dict()
        print(idle_t.line("catch-up, nothing changed, full scan", args.keys))

        client.flushall()
        seed_sessions(client, args.naive_keys, seed=1, cache_docs=0)
        n, naive_took = naive(client)
        naive_rate = n / naive_took
        print(
            f"{'naive loop (GET, PEXPIRETIME, SET, HSET)':<38} {n:>9,} keys {naive_took:7.2f} s"
            f" {naive_rate:>10,.0f} keys/s"
        )

        rates = {
            "expand": args.keys / expand_t.wall,
            "catch-up, full scan (keys checked)": args.keys / full_t.wall,
        }
        for label, rate in rates.items():
            ratio = rate / naive_rate
            print(
                f"{label}: {'met' if rate >= 100_000 else 'MISSED'} (target >= 100,000 keys/s);"
                f" ratio to naive {ratio:.1f}x ({'met' if ratio >= 10 else 'MISSED'},"
                " target >= 10x)"
            )
        for label, took in (("notified", notified_t.wall), ("full scan", full_t.wall)):
            print(
                f"catch-up of {changed:,} changed keys among {args.keys:,}, {label}:"
                f" {took:.2f} s ({'met' if took < 2 else 'MISSED'}, target < 2 s)"
            )
        client.close()


if __name__ == "__main__":
    main()
