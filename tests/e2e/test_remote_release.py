"""A full ``releasegate release`` of the bookmarks example to the simulated remote host.

The images are built here (offline), pushed to the remote host's registry and released
by digest with ``DOCKER_HOST=ssh://``: the colors and HAProxy run on the remote engine,
the stores are the remote host's Postgres and Redis, and smoke, gate and watch traffic
goes through the ssh tunnel. A client inside the remote host's namespace asks through
the router's bind address the whole time; not one of its requests may fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bookmarks_repo import advance
from remote_host import RemoteHost
from remote_release_env import PublicClient, RemoteRelease, open_remote_release


@pytest.mark.slow
def test_release_to_the_remote_host_promotes_and_rolls_back_without_a_failed_request(
    remote_host: RemoteHost, tmp_path: Path
) -> None:
    with open_remote_release(remote_host, tmp_path) as target:
        release_and_watch_the_public(target)


@pytest.mark.slow
def test_release_with_the_stores_reached_through_ssh_forwards(
    remote_host: RemoteHost, tmp_path: Path
) -> None:
    """Postgres and Redis listen on the remote host's own loopback (as on a host that
    exposes no database port): releasegate reaches them, ledger and lock included,
    through forwards over its ssh connection, and pg_dump runs here through one."""
    with open_remote_release(remote_host, tmp_path) as target:
        target.reach_stores_via_ssh()
        release_and_watch_the_public(target)
        assert target.release_outcomes() == ["succeeded", "succeeded", "rolled_back"]
        # pg_dump ran here, through the forward: a restore point per release.
        sets = [p for p in (target.repo / ".releasegate" / "backups").iterdir() if p.is_dir()]
        assert len(sets) == 3, sets


def release_and_watch_the_public(target: RemoteRelease) -> None:
    public: PublicClient | None = None
    try:
        _, first = target.release("--image", target.build_and_push("v1"))
        assert first["outcome"] == "succeeded", first.get("error")

        public = PublicClient(target)

        advance(target.repo, "v2")
        _, second = target.release("--image", target.build_and_push("v2"))
        assert second["outcome"] == "succeeded", second.get("error")
        assert second["plan"]["deferred"] == ["0003"]
        assert second["colors"]["live_after"] != first["colors"]["live_after"]

        advance(target.repo, "v3-bad")
        _, third = target.release("--image", target.build_and_push("v3-bad"))
        assert third["outcome"] == "rolled_back", third.get("error")
        assert third["error"].startswith("slo gate:")
        assert third["colors"]["live_after"] == second["colors"]["live_after"]
        assert third["rollback"]["verification"]["ok"] is True

        ok, failed = public.stop()
        assert ok > 0 and failed == 0
    finally:
        if public is not None:
            public.stop()
