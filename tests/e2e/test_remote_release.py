"""The remote rehearsal, as CI runs it: three releases of the bookmarks example over ssh.

``scripts/ci/remote-rehearsal.sh`` builds the images here (offline), pushes each to the
simulated remote host's registry and releases it by digest with ``DOCKER_HOST=ssh://``:
the colors and HAProxy run on the remote engine, the stores are the remote host's
Postgres and Redis, the restore points go to an S3 bucket (moto's server), and smoke,
gate and watch traffic goes through the ssh tunnel. A user inside the remote host's
namespace reads and writes bookmarks through the router's public address the whole time.

v1 and v2 are promoted and v3-bad is rolled back by its gate; each release's restore
point verifies from a fresh checkout; not one of the user's requests fails and every
write the service acknowledged is there at the end.

The same three releases again with the stores reached only through ssh forwards
(``via_ssh``), as on a host that exposes no database port.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bookmarks_repo import advance
from remote_host import RemoteHost
from remote_release_env import PublicClient, RemoteRelease, open_remote_release

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ci" / "remote-rehearsal.sh"


@pytest.mark.slow
def test_the_remote_rehearsal_promotes_and_rolls_back_without_losing_a_request_or_a_write(
    remote_host: RemoteHost,
) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    lines = done.stdout.splitlines()
    print("\n".join(line for line in lines if "=" in line and " " not in line.split("=")[0]))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    outcomes = [line.removeprefix("outcome=") for line in lines if line.startswith("outcome=")]
    assert outcomes == ["succeeded", "succeeded", "rolled_back"]
    verified = [line for line in lines if line.startswith("restore_point=")]
    assert len(verified) == 3 and all(line.endswith(" verify=ok") for line in verified)
    facts = dict(
        line.split("=", 1) for line in lines if line.startswith(("requests_", "failed_", "writes_"))
    )
    assert int(facts["requests_ok"]) > 0 and facts["failed_requests"] == "0"
    assert int(facts["writes_acknowledged"]) > 0 and facts["writes_lost"] == "0"


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
