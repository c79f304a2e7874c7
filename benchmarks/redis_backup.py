"""Redis logical backup: export (SCAN + DUMP into one file) and restore, at two sizes.

For each size (default 100k and 1M keys: 80% ``sess:*`` JSON sessions with a TTL, 20%
``cache:doc:*`` strings, half with a TTL) the export and the restore each run in a fresh
process, which reports its own peak RSS (``ru_maxrss``); a process that only imports the
modules gives the baseline. The export must not grow with the keyspace: the target is a
peak RSS under 200 MB at both sizes. CPU times are printed beside wall-clock rates, which
swing with the load of a shared machine. Runs against a redis-server of its own on a free port
(no persistence), removed at the end.

    python benchmarks/redis_backup.py [--sizes 100000,1000000] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import REPO_ROOT, redis_server
from _redis_sessions import server_cpu_seconds

sys.path.insert(0, str(REPO_ROOT / "examples" / "app"))
from notes_app.seed_redis import seed_sessions

CHILD = """
import json, resource, sys, time
from pathlib import Path
from releasegate.backup import redis_export, redis_restore
from releasegate.stores import redis as stores

op, url, path, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
out = {}
if op != "baseline":
    client = stores.connect(url, purpose="bench " + op)
    started = time.perf_counter()
    if op == "export":
        result = redis_export.export_keys(client, path, ["*"], batch_size=batch)
        out = {"keys": result.keys, "bytes": result.bytes}
    else:
        result = redis_restore.restore_file(client, path, batch_size=batch)
        out = {"keys": result.restored}
    out["seconds"] = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
out["maxrss_mb"] = usage.ru_maxrss / 1024
out["cpu"] = usage.ru_utime + usage.ru_stime
print(json.dumps(out))
"""


def child(op: str, url: str, path: Path, batch: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, op, url, str(path), str(batch)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"{op} failed:\n{result.stderr[-2000:]}")
    data: dict[str, float] = json.loads(result.stdout)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with redis_server() as port, tempfile.TemporaryDirectory() as tmp:
        source_url = f"redis://127.0.0.1:{port}/0"
        target_url = f"redis://127.0.0.1:{port}/1"
        source = redis.Redis.from_url(source_url)
        target = redis.Redis.from_url(target_url)
        baseline = child("baseline", source_url, Path(tmp) / "none", 1)["maxrss_mb"]
        print(f"baseline process (imports only): peak RSS {baseline:.0f} MB")
        worst = 0.0
        for size in sizes:
            source.flushall()
            started = time.perf_counter()
            seed_sessions(source, size * 4 // 5, cache_docs=size - size * 4 // 5)
            print(f"\n{size:,} keys (seeded in {time.perf_counter() - started:.1f} s)")
            path = Path(tmp) / f"redis-{size}.rgdump"
            cpu = server_cpu_seconds(source)
            exported = child("export", source_url, path, args.batch_size)
            exported["server_cpu"] = server_cpu_seconds(source) - cpu
            assert exported["keys"] == size, exported
            cpu = server_cpu_seconds(source)
            restored = child("restore", target_url, path, args.batch_size)
            restored["server_cpu"] = server_cpu_seconds(source) - cpu
            assert restored["keys"] == size and target.dbsize() == size, restored
            for name, data in (("export", exported), ("restore", restored)):
                worst = max(worst, data["maxrss_mb"])
                print(
                    f"  {name:<8} {data['seconds']:7.2f} s  {size / data['seconds']:>9,.0f} keys/s"
                    f"  peak RSS {data['maxrss_mb']:6.0f} MB"
                    f" (+{data['maxrss_mb'] - baseline:.0f} MB over the baseline)"
                )
                print(
                    f"           cpu: process {data['cpu']:.2f} s, redis-server"
                    f" {data['server_cpu']:.2f} s"
                )
            print(f"  file     {exported['bytes'] / 2**20:7.1f} MiB")
            target.flushall()
        print(
            f"\npeak RSS target < 200 MB at every size: {'met' if worst < 200 else 'MISSED'}"
            f" (worst {worst:.0f} MB)"
        )


if __name__ == "__main__":
    main()
