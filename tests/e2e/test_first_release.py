"""A service's first release end to end: no router running, no color live, no container.

``releasegate release`` starts the router and deploys blue by itself, with no
``--force`` and no ``router promote``. A bad first release rolls back to no live color
(its migrations undone as in any release); containers with no live color are refused;
the good first release is promoted, and the release after it is an ordinary one.
Everything is real: Postgres, Redis, embedded Qdrant, Docker, HAProxy, Locust.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from release_env import ReleaseEnv, ensure_images, open_release_env

pytestmark = pytest.mark.slow

# The chain as the first release finds it: v1's schema (0002) and two expand revisions
# that v1 and v3-bad both run on. 0005 (irreversible) and 0006 (contract) are left out,
# so that a rollback undoes every revision it applied; the Redis and Qdrant layout changes
# are v2's, and are left out too.
LEFT_OUT = [
    "postgres/versions/0005_*.py",
    "postgres/versions/0006_*.py",
    "redis/0001_*.py",
    "qdrant/0001_*.py",
]


@pytest.fixture
def first_env(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[ReleaseEnv]:
    ensure_images()
    with open_release_env(tmp_path / "project", pg_url, redis_url, baseline=False) as env:
        for pattern in LEFT_OUT:
            for path in (env.root / "migrations").glob(pattern):
                path.unlink()
        yield env


def _router(env: ReleaseEnv) -> dict[str, object]:
    return env.run_json("router", "status")


def test_first_release_rolls_back_to_no_live_color_then_promotes(first_env: ReleaseEnv) -> None:
    env = first_env
    assert env.run("router", "status").returncode == 3  # down: the release starts it
    assert env.container_colors() == {}
    assert env.versions()["postgres"] == "0002"

    # -- v3-bad: the SLO gate fails; blue stopped, no color live, migrations undone ----
    bad = env.run("release", "--image", "notes:v3-bad", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    data = json.loads(bad.stdout)
    assert data["outcome"] == "rolled_back" and data["first_release"] is True
    assert data["error"].startswith("slo gate:"), data["error"]
    assert data["colors"] == {"live_before": None, "target": "blue", "live_after": None}
    preflight = data["steps"][0]
    assert preflight["name"] == "preflight"
    assert preflight["detail"]["checks"]["router"].startswith("started")
    assert "first release" in preflight["summary"]
    rollback = data["rollback"]
    assert rollback["ok"] is True and rollback["verification"]["ok"] is True
    assert [s["name"] for s in rollback["steps"]] == ["stop blue", "postgres down to 0002"]
    assert env.versions()["postgres"] == "0002"
    assert env.container_colors() == {}
    assert _router(env)["live"] is None
    assert env.weights() == {"blue": 0, "green": 0}
    row = env.last_release()
    assert row["outcome"] == "rolled_back" and row["summary"]["first_release"] is True

    # -- a container with no live color: refused, exit 3, one error line ---------------
    manual = env.run("deploy", "--color", "green", "--image", "notes:v1")
    assert manual.returncode == 0, manual.stdout + manual.stderr
    refused = env.run("release", "--image", "notes:v1")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.stderr
    assert "no live color" in errors[0] and "green (running)" in errors[0]
    assert "releasegate stop --color green" in errors[0]
    assert env.container_colors() == {"green": "notes:v1"}  # never replaced
    assert env.run("stop", "--color", "green").returncode == 0

    # -- v1: promoted with no --force; the comparison is skipped, not failed -----------
    good = env.run(
        "release", "--image", "notes:v1", "--json", env={"RELEASEGATE_SLO__COMPARE__ENABLED": "1"}
    )
    assert good.returncode == 0, good.stdout + good.stderr
    data = json.loads(good.stdout)
    assert data["outcome"] == "succeeded" and data["first_release"] is True
    assert data["colors"] == {"live_before": None, "target": "blue", "live_after": "blue"}
    steps = {s["name"]: s for s in data["steps"]}
    assert "no live color to compare with (first release)" in steps["slo gate"]["summary"]
    assert steps["finalize"]["summary"].startswith("no previous color to stop (first release)")
    assert [r["action"] for r in data["router"]] == ["withdraw", "promote"]
    assert env.weights() == {"blue": 100, "green": 0}
    assert env.serving() == {"blue:v1": 6}
    assert env.container_colors() == {"blue": "notes:v1"}
    assert env.versions()["postgres"] == "0004"
    report = env.root / ".releasegate" / "reports" / f"release-{data['release_id']}.md"
    assert "- **First release:**" in report.read_text(encoding="utf-8")
    assert env.last_release()["summary"]["first_release"] is True

    # -- the next release stands beside blue: an ordinary one --------------------------
    dry = env.run("release", "--image", "notes:v2", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    data = json.loads(dry.stdout)
    assert data["first_release"] is False
    assert data["colors"]["live_before"] == "blue" and data["colors"]["target"] == "green"
