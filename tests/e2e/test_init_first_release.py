"""`releasegate init` on a fresh copy of a service, then the first-release command it
prints, run as printed: the service goes live with no file edited and no --force.

The bookmarks example, without its own releasegate files, is the user's repository; the
stores are a scratch Postgres database and Redis database. Only the ports move (through
RELEASEGATE_* overrides, as on any shared machine): the files stay as init wrote them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from bookmarks_repo import git, make_bookmarks_repo

BIN = Path(sys.executable).parent
PORT = 39080  # router; the colors on the next two ports
# What init may add to the repository; the release's own files are ignored (.gitignore).
WRITTEN_BY_INIT = {
    ".gitignore",
    "releasegate.toml",
    "releasegate.production.toml",
    "smoke.toml",
    "loadtests/locustfile.py",
    ".github/workflows/releasegate-staging.yml",
    ".github/workflows/releasegate-production.yml",
    ".github/workflows/releasegate-rollback.yml",
}


def _releasegate(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "releasegate"), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_init_then_the_printed_first_release_goes_live(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    repo = make_bookmarks_repo(tmp_path, "v1")
    for name in ("releasegate.toml", "smoke.toml", "loadtests/locustfile.py"):
        (repo / name).unlink()
    git(repo, "commit", "--quiet", "--all", "-m", "without releasegate")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "RELEASEGATE_ROUTER__BIND": f"127.0.0.1:{PORT}",
        "RELEASEGATE_DEPLOY__BLUE_PORT": str(PORT + 1),
        "RELEASEGATE_DEPLOY__GREEN_PORT": str(PORT + 2),
    }
    init = _releasegate(repo, env, "init", "--service", "bookmarks")
    assert init.returncode == 0, init.stdout + init.stderr
    printed = [line for line in init.stdout.splitlines() if line.startswith("next: ")]
    assert len(printed) == 1, init.stdout
    command = printed[0].removeprefix("next: ")
    assert (
        command
        == "releasegate build --tag bookmarks:v1 && releasegate release --image bookmarks:v1"
    )
    generated = {
        p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
    }

    try:
        first = subprocess.run(
            ["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=900
        )
        assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
        history = _releasegate(repo, env, "history", "--json", "--kind", "release", "--limit", "1")
        [release] = json.loads(history.stdout)
        assert release["outcome"] == "succeeded"
        assert release["summary"]["first_release"] is True
        served = httpx.get(f"http://127.0.0.1:{PORT}/version", timeout=5)
        assert served.status_code == 200 and served.json()["variant"] == "v1", served.text
        # Nothing init wrote was edited by the release (its working files are ignored).
        for path, content in generated.items():
            assert path.read_bytes() == content, path
        untracked = {line[3:] for line in git(repo, "status", "--porcelain", "-uall").splitlines()}
        # (.gitignore changes only where it lacked releasegate's entries)
        assert WRITTEN_BY_INIT - {".gitignore"} <= untracked <= WRITTEN_BY_INIT, untracked
    finally:
        _releasegate(repo, env, "router", "down", "--forget")
        for color in ("blue", "green"):
            _releasegate(repo, env, "stop", "--color", color, "--force")
