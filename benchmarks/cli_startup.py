"""``releasegate --help`` wall time beside ``python -c pass``. Target: < 0.3 s.

python benchmarks/cli_startup.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _common import BIN, alternate, run, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    releasegate = str(BIN / "releasegate")
    samples = alternate(
        args.rounds,
        {
            "python -c pass": lambda: run([sys.executable, "-c", "pass"]),
            "releasegate --help": lambda: run([releasegate, "--help"]),
            "releasegate migrate --help": lambda: run([releasegate, "migrate", "--help"]),
        },
    )
    for name, values in samples.items():
        print(summary(name, values))
    median = statistics.median(samples["releasegate --help"])
    base = statistics.median(samples["python -c pass"])
    print(f"releasegate --help: {median:.3f} s ({median - base:.3f} s over bare Python)")
    print(f"target < 0.300 s: {'met' if median < 0.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
