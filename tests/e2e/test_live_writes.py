"""Releases with users writing through the router the whole time: no acknowledged write is lost.

Each test runs :class:`live_writer.LiveWriters` (documents in Postgres, sessions in Redis,
readers of the pre-release data) through the router while a real release of the example
service runs against real Postgres, Redis, embedded Qdrant, Docker and HAProxy:

- v1 -> v2 promoted, every store migrating (Postgres expand/data revisions, the Redis
  sessions moving to their v2 layout, the Qdrant collection rebuilt);
- v1 -> v3-bad, failing its SLO gate: rolled back before promotion;
- v1 -> v2-watch-bad, which passes its gate and starts failing once real traffic reaches
  it: rolled back after promotion, carrying what its users wrote back to v1's layout.

Afterwards every acknowledged write reads back unchanged through the router, no id was
handed out twice, the live color answered every request with a 2xx, and the rollback
verified with writers running. The fault tests (``test_release_faults.py``) run the same
writers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_writer import LiveReport, LiveWriters
from release_env import ReleaseEnv, ensure_images, open_release_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images() -> None:
    ensure_images()


@pytest.fixture
def release_env(images: None, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[ReleaseEnv]:
    with open_release_env(tmp_path / "project", pg_url, redis_url) as env:
        yield env


def live_writers(env: ReleaseEnv) -> LiveWriters:
    return LiveWriters(
        f"http://127.0.0.1:{env.ports['router']}", env.pg_url, env.redis_url, writes_per_s=20
    )


def assert_nothing_lost(report: LiveReport, *, bad_color: str | None = None) -> None:
    """Every acknowledged write is there, unchanged; the live color never failed."""
    detail = report.summary()
    assert report.acknowledged["documents"] > 20 and report.acknowledged["sessions"] > 20, detail
    assert report.lost == [], detail + f"\nlost: {report.lost[:10]}"
    assert report.changed == [], detail + f"\nchanged: {report.changed[:10]}"
    assert report.reused_ids == [], detail
    assert report.stale_reads == [], detail
    failed = report.failed_answers(lambda a: bad_color is not None and a.color == bad_color)
    assert not failed, detail


def release(env: ReleaseEnv, *args: str) -> tuple[int, dict[str, Any]]:
    result = env.run("release", "--json", *args, timeout=420)
    try:
        data: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON result (exit {result.returncode}): {result.stderr[-3000:]}")
    return result.returncode, data


def assert_verified_rollback(code: int, data: dict[str, Any], failed_step: str) -> None:
    detail = json.dumps(data.get("rollback"), indent=1)[-4000:] + str(data.get("error"))
    assert code == 1, detail
    assert data["outcome"] == "rolled_back", detail
    assert data["error"].startswith(f"{failed_step}:"), data["error"]
    rollback = data["rollback"]
    assert rollback["verification"]["ok"] is True and rollback["manual_steps"] == [], detail
    content = [c for c in rollback["verification"]["checks"] if c["item"].startswith("content")]
    assert content and all(c["ok"] for c in content), detail


def test_promoted_release_loses_no_write(release_env: ReleaseEnv) -> None:
    env = release_env
    with live_writers(env) as writers:
        code, data = release(env, "--image", "notes:v2", "--allow-contract", "--watch", "3")
    report = writers.check()
    assert code == 0, f"{data.get('error')}\n{report.summary()}"
    assert data["outcome"] == "succeeded"
    assert env.serving() == {"green:v2": 6}
    versions = env.versions()
    assert (versions["postgres"], versions["redis"], versions["qdrant"]) == ("0006", "0001", "0001")
    assert_nothing_lost(report)
    # Sessions written on blue during the release were carried into v2's layout by the
    # catch-up: they read back through green (checked above), and the old layout is gone.
    assert report.served_by()["green"] > 0 and report.served_by()["blue"] > 0


def test_gate_failure_rolls_back_with_writers_running(release_env: ReleaseEnv) -> None:
    env = release_env
    with live_writers(env) as writers:
        code, data = release(env, "--image", "notes:v3-bad", "--allow-contract")
    report = writers.check()
    assert_verified_rollback(code, data, "slo gate")
    assert env.serving() == {"blue:v1": 6}
    versions = env.versions()
    # The irreversible data revision 0005 (and what is below it) is kept; Redis and
    # Qdrant are back at their pre-release versions.
    assert versions["postgres"] == "0005"
    assert versions["redis"] in (None, "0000", "base")
    assert versions["qdrant"] in (None, "0000", "base")
    assert any("0005" in kept for kept in data["rollback"]["kept"])
    assert_nothing_lost(report)
    assert report.served_by().get("green", 0) == 0
    print(report.summary())


def test_watch_failure_after_promotion_carries_writes_back(release_env: ReleaseEnv) -> None:
    env = release_env
    with live_writers(env) as writers:
        code, data = release(
            env, "--image", "notes:v2-watch-bad", "--allow-contract", "--watch", "6"
        )
    report = writers.check()
    assert_verified_rollback(code, data, "watch")
    assert data["rollback"]["promoted"] is True
    assert env.serving() == {"blue:v1": 6}
    versions = env.versions()
    # After promotion the expanded schema is kept (green's users may have written into
    # it); the contract revision never ran.
    assert versions["postgres"] == "0005"
    assert versions["redis"] in (None, "0000", "base")
    assert any("expanded" in kept for kept in data["rollback"]["kept"])
    status = env.run("migrate", "status", "--store", "postgres")
    assert f"kept:     after the rollback of release {data['release_id']}" in status.stdout
    assert "expanded" in status.stdout, status.stdout
    # Green served real users before the watch failed: what they wrote reads back on blue.
    assert report.served_by()["green"] > 0
    assert_nothing_lost(report, bad_color="green")
