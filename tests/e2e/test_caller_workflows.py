"""releasegate adopted by a repository that is not this one, as a user adopts it.

The bookmarks example (its own API, Alembic chain, smoke file and locustfile) becomes a
git repository of its own; `releasegate init` writes its caller workflows, which call
this repository's reusable workflows as `OWNER/releasegate/...@REF`. act resolves those
calls to this checkout (`--local-repository`) and runs them with local images and a local
registry (scripts/ci/act-rehearsal.sh --caller DIR):

1. staging on push of v1: the environment's first release (no baseline) is promoted;
2. staging on push of v2: the baseline is v1's promoted digest, its schema at v1's own
   revision (0001), so v1 really runs on the expanded schema; v2 is promoted, its contract
   revision deferred;
3. staging on push of v3-bad: the SLO gate fails and the release rolls back;
4. production by workflow_dispatch of v2: the digest staging promoted, never rebuilt;
5. production of v3-bad, which staging never promoted: exit 2, nothing built;
6. the rollback workflow with a release id the ledger does not know: exit 2, one line.

One slow test: each act run needs the one before it (the registry holds what staging
promoted). The time of every run is printed, by step; staging must stay under 8 minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from bookmarks_repo import advance, git, make_bookmarks_repo

ROOT = Path(__file__).resolve().parents[2]
REHEARSAL = ROOT / "scripts" / "ci" / "act-rehearsal.sh"
BIN = Path(sys.executable).parent
STAGING_BUDGET_S = 8 * 60
# The reusable workflows' address in the generated callers; act maps it to this checkout.
TOOL_REPOSITORY = "releasegate/releasegate"
TOOL_REF = "main"


@dataclass
class ActRun:
    outcome: str
    seconds: float
    log: str

    def errors(self) -> list[str]:
        """The `error:` lines the jobs printed (act prefixes them with `[job] | `)."""
        return [m.group(1) for m in re.finditer(r"\|\s*(error: .*)$", self.log, re.M)]


def _act(repo: Path, workflow: str, *args: str) -> ActRun:
    started = time.monotonic()
    env = {
        **os.environ,
        "RELEASEGATE_ACT_GATE_PROFILE": "quick",
        "RELEASEGATE_ACT_IMAGE": f"127.0.0.1:35000/bookmarks-{os.getpid()}",
    }
    proc = subprocess.run(
        ["bash", str(REHEARSAL), "--caller", str(repo), "--workflow", workflow, *args],
        capture_output=True,
        text=True,
        timeout=20 * 60,
        env=env,
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("releasegate-outcome="), output[-4000:]
    timings = proc.stdout[proc.stdout.rfind("step timings:") :]
    inputs = " ".join(arg for arg in args if arg.startswith(("version=", "release-id=")))
    print(f"\n{Path(workflow).name} {inputs}: {last} in {seconds:.0f} s\n{timings}")
    return ActRun(last.removeprefix("releasegate-outcome="), seconds, output)


def _digest(run: ActRun) -> str:
    found = re.findall(r"::set-output:: digest=(\S+)", run.log)
    assert found, run.log[-3000:]
    return found[-1]


@pytest.mark.slow
def test_a_service_repository_releases_through_the_reusable_workflows(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    if shutil.which("docker") is None or not (BIN / "act").exists():
        pytest.skip("needs docker and act (the dev extras)")
    repo = make_bookmarks_repo(tmp_path, "v1")
    git(repo, "remote", "add", "origin", "https://github.com/example/bookmarks.git")
    init = subprocess.run(
        [
            str(BIN / "releasegate"),
            "init",
            "--releasegate-repository",
            TOOL_REPOSITORY,
            "--releasegate-ref",
            TOOL_REF,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    workflows = repo / ".github" / "workflows"
    staging = ".github/workflows/releasegate-staging.yml"
    production = ".github/workflows/releasegate-production.yml"
    rollback = ".github/workflows/releasegate-rollback.yml"
    for name in (staging, production, rollback):
        text = (repo / name).read_text()
        assert f"uses: {TOOL_REPOSITORY}/.github/workflows/" in text, text
        assert "secrets: inherit" not in text
    assert len(list(workflows.iterdir())) == 3
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "releasegate init")

    # 1. The first release of the staging environment: no baseline to deploy first.
    first = _act(repo, staging)
    assert first.outcome == "succeeded", first.log[-6000:]
    assert "the release is this environment's first" in first.log

    # 2. v2 over v1: v1's promoted digest, its schema at 0001, is live first.
    v2 = advance(repo, "v2")
    second = _act(repo, staging)
    assert second.outcome == "succeeded", second.log[-6000:]
    assert second.seconds < STAGING_BUDGET_S, f"staging took {second.seconds:.0f} s"
    assert "schema at 0001" in second.log, second.log[-6000:]
    assert "deferred 0003" in second.log, second.log[-6000:]
    staged = _digest(second)

    # 3. v3-bad: the gate fails, the release rolls back by itself.
    v3 = advance(repo, "v3-bad")
    third = _act(repo, staging)
    assert third.outcome == "rolled_back", third.log[-6000:]
    assert third.seconds < STAGING_BUDGET_S, f"staging took {third.seconds:.0f} s"

    # 4. Production releases the digest staging promoted for v2, without a build.
    prod = _act(repo, production, "--input", f"version={v2}")
    assert prod.outcome == "succeeded", prod.log[-6000:]
    assert _digest(prod) == staged
    assert "released as is, not rebuilt" in prod.log
    assert "built " not in prod.log

    # 5. A version staging never promoted: exit 2, one line, nothing built or released.
    refused = _act(repo, production, "--input", f"version={v3}")
    assert refused.outcome == "none", refused.log[-6000:]
    assert refused.errors() == [
        f"error: no promoted digest for {v3}: staging never promoted commit {v3}"
        f" of 127.0.0.1:35000/bookmarks-{os.getpid()}"
    ], refused.log[-6000:]
    assert "exitcode '2'" in refused.log and "built " not in refused.log

    # 6. The rollback workflow, with an id the production ledger does not know.
    unknown = _act(
        repo,
        rollback,
        "--input",
        "release-id=999999",
        "--secret",
        f"PRODUCTION_DATABASE_URL={pg_url}",
        "--secret",
        f"PRODUCTION_REDIS_URL={redis_url}",
        "--secret",
        "PRODUCTION_DOCKER_HOST=unix:///var/run/docker.sock",
    )
    assert unknown.outcome == "none", unknown.log[-6000:]
    assert unknown.errors() == ["error: no release with id 999999 in the ledger"]
    assert "exitcode '2'" in unknown.log
    assert pg_url.split("@")[0].split(":")[-1] not in unknown.log  # the password: masked
