"""Faults of the remote path: a release over ``DOCKER_HOST=ssh://`` to the simulated host.

- the host cannot be reached, the key is refused, the host key is not the pinned one:
  exit 3, one ``error:`` line that says which, and nothing changed (no ledger row, no
  container, the stores as they were);
- the registry is down when the CI step pushes an image, or when the host pulls the
  released digest: exit 3, one line (a digest the registry does not hold: exit 2);
- the ssh connection drops during the SLO gate: the release rolls back over a new
  connection, the rollback verifies and the public never sees an error;
- it drops during migrate, with the stores reached through it (``via_ssh``): the release
  stops (exit 3, one line: resume it) and ``release --resume`` rolls back and verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import redis
from bookmarks_repo import VERSIONS, advance, git
from release_env import Watcher
from remote_host import SCRIPT, RemoteHost, new_key_pair, other_known_hosts
from remote_release_env import PublicClient, RemoteRelease, open_remote_release, run

IMAGE_SH = Path(__file__).resolve().parents[2] / "scripts" / "ci" / "image.sh"
# A digest nobody pushed: the connection fails before anything looks for it.
NO_DIGEST = "sha256:" + "0" * 64


def assert_nothing_changed(target: RemoteRelease) -> None:
    """No ledger, no schema, no Redis key, no container of the service on the host."""
    with psycopg.connect(target.database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    assert tables == []
    client = redis.Redis.from_url(target.redis_url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()
    assert target.containers() == []


def assert_one_error_line(done: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: "), line
    return line


@pytest.fixture
def target(remote_host: RemoteHost, tmp_path: Path) -> RemoteRelease:
    with open_remote_release(remote_host, tmp_path) as released:
        yield released  # type: ignore[misc]


def test_an_unreachable_host_wrong_key_or_changed_host_key_is_one_line_and_no_change(
    target: RemoteRelease, tmp_path: Path
) -> None:
    host = target.host
    image = f"{target.repository}@{NO_DIGEST}"
    # Port 2 of the host's address: nothing listens, the connection is refused.
    refused = target.releasegate(
        "release", "--image", image, env={"DOCKER_HOST": f"ssh://root@{host.address}:2"}
    )
    line = assert_one_error_line(refused, 3)
    assert line == f"error: ssh root@{host.address}:2: unreachable (connection refused)"

    other_key = tmp_path / "other_ed25519"
    new_key_pair(other_key)
    wrong_key = target.releasegate(
        "release", "--image", image, env={"RELEASEGATE_SSH_IDENTITY_FILE": str(other_key)}
    )
    line = assert_one_error_line(wrong_key, 3)
    assert line == f"error: ssh root@{host.address}: wrong credentials (the key was refused)"

    # A known_hosts that pins another key for the host's address (a changed host, or
    # someone in between).
    other_host_key = other_known_hosts(host, tmp_path)
    mismatch = target.releasegate(
        "release", "--image", image, env={"RELEASEGATE_SSH_KNOWN_HOSTS": str(other_host_key)}
    )
    line = assert_one_error_line(mismatch, 3)
    assert line == (
        f"error: ssh root@{host.address}: host key mismatch (not the key pinned for it)"
    )
    assert_nothing_changed(target)


def _remote_host_script(function: str) -> None:
    done = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {function}'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_the_registry_down_when_the_host_pulls_is_exit_3_and_no_change(
    target: RemoteRelease,
) -> None:
    image = target.build_and_push("v1")
    # The registry answers: a digest it does not hold is bad input (exit 2).
    absent = target.releasegate("release", "--image", f"{target.repository}@{NO_DIGEST}")
    line = assert_one_error_line(absent, 2)
    assert line.startswith(f"error: image {target.repository}@{NO_DIGEST} is not on this")
    _remote_host_script("stop_remote_registry")
    try:
        down = target.releasegate("release", "--image", image)
        # The CI step that builds and pushes the next version, with the registry down.
        push = run(
            ["bash", str(IMAGE_SH)],
            {**target.local_env, "RG_IMAGE": target.repository, "RG_VERSION": "HEAD"},
            target.repo,
        )
    finally:
        _remote_host_script("start_remote_registry")
    assert push.returncode == 3, push.stdout + push.stderr
    # The build's own progress comes first; the push's failure is the one error line.
    *_, push_error = push.stderr.splitlines()
    assert push.stderr.count("error:") == 1, push.stderr
    assert push_error.startswith(f"error: cannot push {target.repository}:"), push_error
    assert "connection refused" in push_error, push_error
    line = assert_one_error_line(down, 3)
    assert line.startswith(f"error: cannot pull image {image}: its registry did not serve it:")
    assert "connection refused" in line, line
    assert_nothing_changed(target)


def _ssh_masters(parent: int) -> list[int]:
    """The ssh master connections (``ssh -M``) among ``parent``'s children."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    masters = []
    for child in map(int, children):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if argv and argv[0].endswith(b"ssh") and b"-M" in argv:
            masters.append(child)
    return masters


def _gate_logs(target: RemoteRelease) -> set[Path]:
    return set((target.repo / ".releasegate" / "reports").glob("release-*/gate/locust.log"))


@pytest.mark.slow
def test_the_ssh_connection_dropped_during_the_gate_rolls_back_over_a_new_one(
    target: RemoteRelease,
) -> None:
    """The ssh connection ends (its master is killed, as when the host resets it) while
    the gate measures green through it: the gate fails on the lost connection, the
    rollback reconnects and verifies, blue serves on; the public sees no error."""
    _, first = target.release("--image", target.build_and_push("v1"))
    assert first["outcome"] == "succeeded", first.get("error")
    public = PublicClient(target)
    try:
        advance(target.repo, "v2")
        image = target.build_and_push("v2")
        earlier_gates = _gate_logs(target)
        proc = target.popen("release", "--image", image, "--json")
        dropped: list[int] = []

        def drop() -> None:
            time.sleep(2)  # inside the measured window
            for master in _ssh_masters(proc.pid):
                os.kill(master, signal.SIGKILL)
                dropped.append(master)

        watcher = Watcher(lambda: _gate_logs(target) - earlier_gates, drop)
        watcher.start()
        out, err = proc.communicate(timeout=600)
        watcher.join(30)
        assert watcher.fired and watcher.error is None and dropped, watcher.error
        data = json.loads(out)
        print(f"outcome={data['outcome']}: {data['error']}")
        assert proc.returncode == 1, json.dumps(data.get("rollback"), indent=1)[-4000:]
        assert data["outcome"] == "rolled_back", err[-3000:]
        assert data["error"].startswith("slo gate:"), data["error"]
        assert data["error"].endswith(
            f"(the connection to root@{target.host.address} over ssh dropped during the release"
            " and was made again: 1x)"
        ), data["error"]
        assert data["rollback"]["verification"]["ok"] is True, data["rollback"]
        assert data["colors"]["live_after"] == first["colors"]["live_after"]
        assert target.containers() == [
            f"{target.service}-{first['colors']['live_after']}",
            f"releasegate-router-{target.service}",
        ]
        ok, failed = public.stop()
        assert ok > 0 and failed == 0
    finally:
        public.stop()


@pytest.mark.slow
def test_the_ssh_connection_dropped_during_migrate_with_stores_through_it(
    target: RemoteRelease,
) -> None:
    """With the stores reached through ssh forwards, the connection ends while a
    migration runs: the release stops (its lock and ledger sessions went with the
    connection) with one line that says to resume, and ``release --resume`` rolls back
    and verifies. The public, served by blue on the host, sees no error."""
    target.reach_stores_via_ssh()
    _, first = target.release("--image", target.build_and_push("v1"))
    assert first["outcome"] == "succeeded", first.get("error")
    public = PublicClient(target)
    try:
        advance(target.repo, "v2")
        image = target.build_and_push("v2")
        # A migration that takes a while, so that the connection drops while it runs.
        expand = next((target.repo / VERSIONS).glob("0002_*.py"))
        text = expand.read_text()
        expand.write_text(
            text.replace(
                "    op.add_column(", '    op.execute("SELECT pg_sleep(4)")\n    op.add_column(', 1
            )
        )
        git(target.repo, "commit", "--quiet", "-am", "a slow expand")
        proc = target.popen("release", "--image", image, "--json")
        dropped: list[int] = []

        def migrating() -> bool:
            with psycopg.connect(target.database_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(4)%'"
                ).fetchall()
            return bool(rows)

        def drop() -> None:
            for master in _ssh_masters(proc.pid):
                os.kill(master, signal.SIGKILL)
                dropped.append(master)

        watcher = Watcher(migrating, drop)
        watcher.start()
        out, err = proc.communicate(timeout=600)
        watcher.join(30)
        assert watcher.fired and watcher.error is None and dropped, watcher.error
        assert proc.returncode == 3, out + err
        assert out == "" and err.count("error:") == 1, err
        stopped = err.splitlines()[-1]
        print(stopped)
        assert stopped.startswith("error: release ") and stopped.endswith(
            f"stopped: its ledger session was lost (the connection to root@{target.host.address}"
            " over ssh dropped); `releasegate release --resume` rolls it back or finishes it"
        ), stopped
        assert target.release_outcomes() == ["succeeded", "running"]

        resumed, data = target.release("--resume")
        assert resumed.returncode == 1, resumed.stderr[-3000:]
        assert data["outcome"] == "rolled_back", data.get("error")
        assert data["rollback"]["verification"]["ok"] is True, data["rollback"]
        assert target.release_outcomes() == ["succeeded", "rolled_back"]
        assert target.containers() == [
            f"{target.service}-{first['colors']['live_after']}",
            f"releasegate-router-{target.service}",
        ]
        ok, failed = public.stop()
        assert ok > 0 and failed == 0
    finally:
        public.stop()
