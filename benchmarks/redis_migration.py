"""Redis data migration throughput: ``sess:{id}`` camelCase -> ``session:{id}`` snake_case.

Runs the example migration (rename + JSON transform, TTL kept) with
``releasegate.migrations.redis.up`` -- release lock, ledger and checkpoints included -- over
``--keys`` sessions, and a naive loop (GET, PTTL, SET PX, DEL per key, one round trip
each) over ``--naive-keys`` of them. Both run against a redis-server of the benchmark's
own on a free port (no persistence), removed at the end. Targets: >= 100k keys/s and
>= 10x the naive loop. The CPU time of both processes is printed too: on a shared machine
wall-clock rates swing with the load, CPU time much less.

    python benchmarks/redis_migration.py [--keys 1000000] [--naive-keys 50000]
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
from notes_app.seed_redis import seed_sessions


def naive(client: redis.Redis) -> tuple[int, float]:
    """One key at a time, one round trip per command: the loop one writes by hand."""
    started = time.perf_counter()
    n = 0
    for key in client.scan_iter(match="sess:*", count=1000):
        raw = client.get(key)
        pttl = client.pttl(key)
        if raw is None:
            continue
        value = json.loads(raw)
        new = session_v2(value)
        new_key = b"session:" + key[len(b"sess:") :]
        client.set(new_key, json.dumps(new, separators=(",", ":")), px=pttl if pttl > 0 else None)
        client.delete(key)
        n += 1
    return n, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--naive-keys", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    from releasegate.config import load_config
    from releasegate.migrations.redis import up

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
        print(f"redis used_memory: {used:.0f} MiB")

        server_cpu = server_cpu_seconds(client)
        cpu = time.process_time()
        started = time.perf_counter()
        result = up(settings)
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        server_cpu = server_cpu_seconds(client) - server_cpu
        keys = result.steps[0].keys
        assert keys["changed"] == args.keys, keys
        assert client.dbsize() == args.keys + 1  # the sessions and the version key
        rate = args.keys / took
        print(
            f"releasegate up (rename + JSON transform)  {args.keys:>9,} keys  {took:7.2f} s"
            f"  {rate:>9,.0f} keys/s  ({took / args.keys * 1e6:.1f} us/key)"
        )
        print(
            f"  cpu: releasegate {cpu:.2f} s ({cpu / args.keys * 1e6:.1f} us/key),"
            f" redis-server {server_cpu:.2f} s ({server_cpu / args.keys * 1e6:.1f} us/key);"
            f" bound by the busier of the two (they overlap):"
            f" {args.keys / max(cpu, server_cpu):,.0f} keys/s"
        )

        client.flushall()
        seed_sessions(client, args.naive_keys, seed=1, cache_docs=0)
        n, naive_took = naive(client)
        naive_rate = n / naive_took
        print(
            f"naive loop (GET, PTTL, SET, DEL per key)   {n:>9,} keys  {naive_took:7.2f} s"
            f"  {naive_rate:>9,.0f} keys/s  ({naive_took / n * 1e6:.1f} us/key)"
        )
        ratio = rate / naive_rate
        print(
            f"throughput: {'met' if rate >= 100_000 else 'MISSED'} (target >= 100,000 keys/s);"
            f" ratio to naive: {ratio:.1f}x ({'met' if ratio >= 10 else 'MISSED'}, target >= 10x)"
        )
        client.close()


if __name__ == "__main__":
    main()
