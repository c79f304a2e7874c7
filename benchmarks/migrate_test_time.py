"""``releasegate migrate test`` on the example chain: stairway, drift, no-trace. Target < 30 s.

python benchmarks/migrate_test_time.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics

from _common import BIN, REPO_ROOT, run, scratch_db, server_url, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples = []
    with scratch_db(server_url()) as url:
        env = {
            **os.environ,
            "NOTES_DATABASE_URL": url,
            "RELEASEGATE_CONFIG": str(REPO_ROOT / "releasegate.toml"),
        }
        for _ in range(args.rounds):
            samples.append(run([str(BIN / "releasegate"), "migrate", "test"], env))
    print(summary("releasegate migrate test", samples))
    median = statistics.median(samples)
    print(f"target < 30 s: {'met' if median < 30 else 'MISSED'} ({median:.2f} s)")


if __name__ == "__main__":
    main()
