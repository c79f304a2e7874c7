"""Faults injected into a real release of the example service (v1 blue live -> v2).

Each test breaks one thing while ``releasegate release`` runs against real Postgres,
Redis, embedded Qdrant, Docker and HAProxy: the green container killed during the SLO
gate, the Postgres connection dropped during a migration, a migration failing half way,
a Redis migration interrupted, a Qdrant migration that does not verify, the router gone
at promote, releasegate itself SIGKILLed, and two releases at once. In every case the
rollback must verify against the pre-release manifest and blue v1 must still serve
through the router.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_writer import LiveWriters
from release_env import ReleaseEnv, Watcher, ensure_images, open_release_env, wait_for
from test_live_writes import assert_nothing_lost

pytestmark = pytest.mark.slow

RELEASE = ("release", "--image", "notes:v2", "--allow-contract", "--json")


@pytest.fixture(scope="module")
def images() -> None:
    ensure_images()


@pytest.fixture
def release_env(
    images: None, tmp_path: Path, pg_url: str, redis_url: str, request: pytest.FixtureRequest
) -> Iterator[ReleaseEnv]:
    """The environment, with users writing and reading through the router throughout.

    Whatever the fault, every write the service acknowledged must read back unchanged
    afterwards, and the live color must answer every request (except while a test takes
    the router itself away: ``@pytest.mark.router_outage``).
    """
    with open_release_env(tmp_path / "project", pg_url, redis_url) as env:
        writers = LiveWriters(
            f"http://127.0.0.1:{env.ports['router']}", env.pg_url, env.redis_url
        ).start()
        try:
            yield env
        finally:
            writers.stop()
        outage = request.node.get_closest_marker("router_outage") is not None
        report = writers.check()
        if outage:
            report.answers = [a for a in report.answers if a.status != 0]
        assert_nothing_lost(report)


def _release(env: ReleaseEnv, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    result = env.run(*(args or RELEASE))
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON result (exit {result.returncode}): {result.stderr}")
    return result, data


def _gate_started(env: ReleaseEnv) -> bool:
    return any((env.root / ".releasegate" / "reports").glob("release-*/gate/locust.log"))


def assert_rolled_back(
    env: ReleaseEnv, result: subprocess.CompletedProcess[str], data: Any, failed_step: str
) -> None:
    """Exit 1, verified rollback, blue v1 live and serving, the stores back at v1."""
    detail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 1, detail
    assert data["outcome"] == "rolled_back", detail
    assert data["error"].startswith(f"{failed_step}:"), data["error"]
    rollback = data["rollback"]
    assert rollback["verification"]["ok"] is True, rollback
    assert rollback["ok"] is True and rollback["manual_steps"] == [], rollback
    assert all(c["ok"] for c in rollback["verification"]["checks"])
    report = env.report(data["release_id"])
    assert report["rollback"]["verification"]["ok"] is True
    row = env.last_release()
    assert row["id"] == data["release_id"] and row["outcome"] == "rolled_back"
    # What serves: blue v1, through the router, and no green container is left.
    assert env.weights() == {"blue": 100, "green": 0}
    assert env.serving() == {"blue:v1": 6}
    assert env.container_colors() == {"blue": "notes:v1"}
    assert [c.name for c in env.containers()] == [f"{env.service}-blue"]  # not even stopped
    versions = env.versions()
    # The irreversible data revision 0005 ran before the failure: it is kept, with the
    # revisions below it (v1 is compatible with them), and never "repaired" by a restore.
    assert versions["postgres"] == "0005"
    assert any("0005" in kept for kept in rollback["kept"]), rollback["kept"]
    content = [c for c in rollback["verification"]["checks"] if c["item"].startswith("content")]
    assert content and all(c["ok"] for c in content)
    assert versions["redis"] in (None, "0000", "base")
    assert versions["qdrant"] in (None, "0000", "base")


def test_green_killed_during_the_slo_gate(release_env: ReleaseEnv) -> None:
    env = release_env

    def kill_green() -> str:
        time.sleep(1.5)  # well inside the measured window
        container = env.docker.containers.get(f"{env.service}-green")
        container.kill()
        return str(container.name)

    watcher = Watcher(lambda: _gate_started(env), kill_green)
    watcher.start()
    result, data = _release(env)
    watcher.join(10)
    assert watcher.fired and watcher.error is None, watcher.error
    assert_rolled_back(env, result, data, "slo gate")
    assert data["slo"]["verdict"] in ("fail", "inconclusive")


def test_postgres_connection_dropped_during_migrate(release_env: ReleaseEnv) -> None:
    env = release_env
    env.add_pg_revision("0005a", 'op.execute("SELECT pg_sleep(3)")')
    killed: list[int] = []

    def migrating_backend() -> list[dict[str, Any]]:
        return env.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE 'releasegate/migrate up%%' AND query LIKE '%%pg_sleep%%'"
        )

    def terminate() -> None:
        for row in migrating_backend():
            env.query("SELECT pg_terminate_backend(%s)", (row["pid"],))
            killed.append(row["pid"])

    watcher = Watcher(migrating_backend, terminate)
    watcher.start()
    result, data = _release(env)
    watcher.join(10)
    assert watcher.fired and watcher.error is None and killed, watcher.error
    assert_rolled_back(env, result, data, "migrate")


def test_migration_failing_half_way(release_env: ReleaseEnv) -> None:
    env = release_env
    env.add_pg_revision(
        "0005a",
        'op.execute("ALTER TABLE users ADD COLUMN fault_probe text")\n'
        '    op.execute("UPDATE users SET no_such_column = 1")',
    )
    # Mixed-case addresses: the irreversible 0005 lower-cases them before 0005a fails.
    env.query("UPDATE users SET email = upper(email) WHERE id <= 20")
    result, data = _release(env)
    assert_rolled_back(env, result, data, "migrate")
    assert "no_such_column" in data["error"]
    # 0005 is kept, so its 20 rewritten rows are accepted as it left them, no more.
    users = next(
        c for c in data["rollback"]["verification"]["checks"] if c["item"] == "content public.users"
    )
    assert "20 as the kept migration left them" in users["actual"], users
    assert env.query("SELECT count(*) AS n FROM users WHERE email <> lower(email)")[0]["n"] == 0
    # The revision's transaction was rolled back with it: no half-added column.
    columns = env.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
    )
    assert "fault_probe" not in {c["column_name"] for c in columns}


REDIS_FAULT = '''"""Test: the sessions move of 0001, with a probe field, failing after 20 keys."""

from typing import Any

from releasegate.migrations.redis import KeyMove

calls = {"n": 0}


def to_v2(value: dict[str, Any]) -> dict[str, Any]:
    calls["n"] += 1
    if calls["n"] > 20:
        raise RuntimeError("injected failure after 20 keys")
    return {"user_id": value.get("userId"), "probe": True}


def to_v1(value: dict[str, Any]) -> dict[str, Any]:
    return {"userId": value.get("user_id")}


MOVES = [KeyMove("sess:*", "sess:", "session:", up=to_v2, down=to_v1)]
'''


def test_redis_migration_interrupted(release_env: ReleaseEnv) -> None:
    env = release_env
    env.add_migration("redis", "0001_sessions_snake_case.py", REDIS_FAULT)
    result, data = _release(env)
    assert_rolled_back(env, result, data, "migrate")
    assert "injected failure" in result.stdout + result.stderr
    # The expand wrote copies only: they are gone, and no v1 session was touched.
    import redis

    client = redis.Redis.from_url(env.redis_url)
    try:
        assert not list(client.scan_iter("session:*"))
        values = [client.get(k) for k in client.scan_iter("sess:*", count=500)]
        assert values and not any(b'"probe"' in v for v in values if v)
    finally:
        client.close()


QDRANT_FAULT = '''"""Test: the documents rebuild of 0001, corrupting every title (no verify)."""

from releasegate.migrations.qdrant import MigrationContext, PointData

collection = "documents"


def corrupt(point: PointData) -> PointData:
    return PointData(point.id, point.vector, {**point.payload, "title": "corrupted"})


def up(ctx: MigrationContext) -> None:
    ctx.rebuild(transform=corrupt)


def down(ctx: MigrationContext) -> None:
    ctx.drop_new = True
'''


def test_qdrant_verification_failure(release_env: ReleaseEnv) -> None:
    env = release_env
    env.add_migration("qdrant", "0001_documents_v2.py", QDRANT_FAULT)
    result, data = _release(env)
    assert_rolled_back(env, result, data, "migrate")
    assert "payload keys changed" in result.stdout + result.stderr


@pytest.mark.router_outage
def test_router_unreachable_at_promote(release_env: ReleaseEnv) -> None:
    """HAProxy stops while the gate runs (the gate goes to green directly): promote
    fails; the rollback starts the router again and verifies the traffic on blue."""
    env = release_env
    watcher = Watcher(lambda: _gate_started(env), lambda: env.run("router", "down"))
    watcher.start()
    result, data = _release(env)
    watcher.join(30)
    assert watcher.fired and watcher.error is None, watcher.error
    assert watcher.result.returncode == 0, watcher.result.stderr
    assert_rolled_back(env, result, data, "promote")
    switch_back = next(s for s in data["rollback"]["steps"] if s["name"] == "traffic back to blue")
    assert switch_back["status"] == "ok"
    assert switch_back["detail"]["router_restarted"] is True
    assert switch_back["detail"]["live_after"] == "blue"


def test_releasegate_sigkilled_then_resumed(release_env: ReleaseEnv) -> None:
    env = release_env
    proc = env.popen(*RELEASE)
    try:
        assert wait_for(lambda: env.step_status("deploy") == "ok", 180, poll=0.05), (
            "the deploy step did not end"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    running = env.last_release()
    assert running["outcome"] == "running"
    assert "green" in env.container_colors()  # the crash left green behind

    result, data = _release(env, "release", "--resume", "--json")
    assert data["release_id"] == running["id"]
    assert_rolled_back(env, result, data, "resume")
    assert env.last_release()["outcome"] != "running"
    steps = [e["step"] for e in env.events(running["id"])]
    assert "resume" in steps and steps[-1] == "rollback"
    # Nothing is left to resume.
    again = env.run("release", "--resume")
    assert again.returncode != 0 and "no interrupted release" in again.stderr


def test_two_releases_at_once(release_env: ReleaseEnv) -> None:
    env = release_env
    first = env.popen(*RELEASE)
    try:
        assert wait_for(lambda: env.step_status("lock") == "ok", 60), "no release started"
        started = time.monotonic()
        second = env.run(*RELEASE)
        elapsed = time.monotonic() - started
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "lock" in second.stderr
    assert elapsed < 15
    assert first.returncode == 0, out[-3000:] + err[-3000:]
    # One release in the ledger, complete and consistent with what serves.
    rows = env.releases()
    assert len(rows) == 1 and rows[0]["outcome"] == "succeeded"
    steps = [e["step"] for e in env.events(rows[0]["id"])]
    assert steps[0] == "lock" and steps[-1] == "finalize"
    assert env.weights() == {"blue": 0, "green": 100}
    assert env.serving() == {"green:v2": 6}
    assert env.container_colors() == {"green": "notes:v2"}
    assert env.versions()["postgres"] == "0006"


def test_failures_before_the_first_change_need_no_rollback(release_env: ReleaseEnv) -> None:
    """A backup that cannot be written, and a crash before any change, end as plain
    failures (exit 1, nothing changed), not as a rollback without a manifest."""
    env = release_env
    (env.root / "not-a-folder").write_text("a file where the backups should go\n")
    result = env.run(*RELEASE, env={"RELEASEGATE_BACKUP__DIR": "not-a-folder"})
    # backup.dir names a file: a config error (exit 2), found before anything changed.
    assert result.returncode == 2, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == "failed" and "rollback" not in data
    assert data["error"].startswith("backup:") and "nothing was changed" in data["error"]
    assert env.last_release()["outcome"] == "failed"

    # SIGKILL while plan runs: the undo log is empty, so --resume has nothing to undo.
    proc = env.popen(*RELEASE)
    try:
        assert wait_for(lambda: env.step_status("preflight") == "ok", 60, poll=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    running = env.last_release()
    assert running["outcome"] == "running"
    assert not (running["summary"] or {}).get("changes")
    resumed = env.run("release", "--resume", "--json")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    data = json.loads(resumed.stdout)
    assert data["release_id"] == running["id"]
    assert data["outcome"] == "failed" and "nothing was changed" in data["error"]
    assert env.last_release()["outcome"] == "failed"
    assert env.weights() == {"blue": 100, "green": 0}
    assert env.serving() == {"blue:v1": 6}
    assert [c.name for c in env.containers()] == [f"{env.service}-blue"]
    assert env.versions()["postgres"] == "0002"


def test_sigkilled_after_promote_resumes_forward(release_env: ReleaseEnv) -> None:
    """Killed once green is live: --resume runs finalize, with the contract revision the
    release was allowed, and records the previous image for a later manual rollback."""
    env = release_env
    proc = env.popen(*RELEASE)
    try:
        assert wait_for(lambda: env.step_status("promote") == "ok", 180, poll=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    running = env.last_release()
    assert running["outcome"] == "running"
    assert env.versions()["postgres"] == "0005"  # the contract waits for finalize

    result, data = _release(env, "release", "--resume", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert data["release_id"] == running["id"] and data["outcome"] == "succeeded"
    assert env.last_release()["outcome"] == "succeeded"
    assert env.versions()["postgres"] == "0006"
    assert env.weights() == {"blue": 0, "green": 100}
    assert env.serving() == {"green:v2": 6}
    assert [c.name for c in env.containers()] == [f"{env.service}-green"]
    changes = env.last_release()["summary"]["changes"]
    stopped = next(c for c in changes if c["kind"] == "stop_previous")
    assert stopped == {"kind": "stop_previous", "color": "blue", "image": "notes:v1"}
