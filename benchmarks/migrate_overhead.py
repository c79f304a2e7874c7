"""``releasegate migrate up`` against plain ``alembic upgrade head`` on the example chain.

Both run as a user would run them (a fresh process, a fresh database each round);
releasegate adds the release lock, the ledger, session timeouts and one transaction per
revision. Target: ratio <= 1.5.

    python benchmarks/migrate_overhead.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics

from _common import BIN, REPO_ROOT, alternate, run, scratch_db, server_url, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    server = server_url()
    ini = str(REPO_ROOT / "migrations" / "postgres" / "alembic.ini")

    def timed(cmd: list[str]) -> float:
        with scratch_db(server) as url:
            env = {**os.environ, "NOTES_DATABASE_URL": url}
            env["RELEASEGATE_CONFIG"] = str(REPO_ROOT / "releasegate.toml")
            return run(cmd, env)

    samples = alternate(
        args.rounds,
        {
            "alembic upgrade head": lambda: timed(
                [str(BIN / "alembic"), "-c", ini, "upgrade", "head"]
            ),
            "releasegate migrate up": lambda: timed(
                [str(BIN / "releasegate"), "migrate", "up", "--store", "postgres"]
            ),
        },
    )
    for name, values in samples.items():
        print(summary(name, values))
    ratio = statistics.median(samples["releasegate migrate up"]) / statistics.median(
        samples["alembic upgrade head"]
    )
    print(
        f"ratio releasegate/alembic: {ratio:.2f}x"
        f" (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
