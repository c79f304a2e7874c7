"""The act runs of a service repository of its own, timed by job and step.

The bookmarks example becomes a git repository (as tests/e2e/test_caller_workflows.py
makes it), `releasegate init` writes its callers, and scripts/ci/act-rehearsal.sh runs:

- staging, push of v1: the environment's first release (build, push, release);
- staging, push of v2: the same, over v1's promoted digest;
- production, workflow_dispatch of v2: the digest staging promoted, no build.

The two staging runs against the production run compare a release that builds with one
that only pulls. Target: staging under act < 8 min.

python benchmarks/act_caller.py [--gate-profile quick|long]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BIN, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
from bookmarks_repo import advance, git, make_bookmarks_repo

TARGET_S = 8 * 60
REHEARSAL = REPO_ROOT / "scripts" / "ci" / "act-rehearsal.sh"
STEP = re.compile(r"^\s+\[[^/]+/([^\]]+)\] (Success|Failure) - (?:Main )?(.*?) \[([\d.]+)(ms|s)\]$")


def act(repo: Path, workflow: str, image: str, profile: str, *args: str) -> tuple[str, float, str]:
    env = {**os.environ, "RELEASEGATE_ACT_GATE_PROFILE": profile, "RELEASEGATE_ACT_IMAGE": image}
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REHEARSAL), "--caller", str(repo), "--workflow", workflow, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30 * 60,
    )
    seconds = time.monotonic() - started
    outcome = proc.stdout.strip().splitlines()[-1].removeprefix("releasegate-outcome=")
    return outcome, seconds, proc.stdout


def steps(output: str) -> list[tuple[str, str, float]]:
    """(job, step, seconds) of every step act timed, slowest first."""
    timed = []
    for line in output[output.rfind("step timings:") :].splitlines():
        if match := STEP.match(line):
            job, _status, step, value, unit = match.groups()
            timed.append((job.split("/")[-1], step, float(value) / (1000 if unit == "ms" else 1)))
    return sorted(timed, key=lambda row: -row[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate-profile", default="quick", choices=["quick", "long"])
    options = parser.parse_args()
    image = f"127.0.0.1:35000/bookmarks-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="rg-act-bench-") as tmp:
        repo = make_bookmarks_repo(Path(tmp), "v1")
        git(repo, "remote", "add", "origin", "https://github.com/example/bookmarks.git")
        subprocess.run(
            [str(BIN / "releasegate"), "init", "--releasegate-ref", "main"],
            cwd=repo,
            check=True,
            capture_output=True,
        )
        git(repo, "add", "--all")
        git(repo, "commit", "--quiet", "-m", "releasegate init")
        staging = ".github/workflows/releasegate-staging.yml"
        production = ".github/workflows/releasegate-production.yml"
        runs = [("staging v1 (first release)", act(repo, staging, image, options.gate_profile))]
        v2 = advance(repo, "v2")
        runs.append(("staging v2", act(repo, staging, image, options.gate_profile)))
        runs.append(
            (
                "production v2 (promoted digest)",
                act(repo, production, image, options.gate_profile, "--input", f"version={v2}"),
            )
        )
    print(f"act runs of a caller repository (gate profile {options.gate_profile}):\n")
    print(f"{'run':34} {'outcome':12} {'wall s':>7}  target")
    for name, (outcome, seconds, _output) in runs:
        target = f"< {TARGET_S} s: {'ok' if seconds < TARGET_S else 'MISSED'}"
        print(f"{name:34} {outcome:12} {seconds:7.0f}  {target if 'staging' in name else ''}")
    for name, (_outcome, _seconds, output) in runs:
        print(f"\n{name}: slowest steps")
        for job, step, seconds in steps(output)[:8]:
            print(f"  {job:8} {seconds:7.1f} s  {step}")
    ok = all(outcome == "succeeded" for _name, (outcome, _s, _o) in runs)
    return 0 if ok and all(s < TARGET_S for n, (_o, s, _x) in runs if "staging" in n) else 1


if __name__ == "__main__":
    sys.exit(main())
