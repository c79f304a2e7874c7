"""A full ``releasegate release`` of the bookmarks example to the simulated remote host.

The images are built here (offline), pushed to the remote host's registry and released
by digest with ``DOCKER_HOST=ssh://``: the colors and HAProxy run on the remote engine,
the stores are the remote host's Postgres and Redis, and smoke, gate and watch traffic
goes through the ssh tunnel. A client inside the remote host's namespace asks through
the router's bind address the whole time; not one of its requests may fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
from bookmarks_repo import advance, make_bookmarks_repo
from conftest import (
    create_database,
    drop_database,
    ensure_base_image,
    free_ports,
    local_haproxy_image,
    url_for_database,
)
from release_env import RELEASEGATE
from remote_host import RemoteHost, load_on_remote, ssh_env

# A Redis DB of the remote host's server no other test uses.
REDIS_DB = 7

# Runs in the remote host's namespace: GET /bookmarks through the router until SIGTERM,
# then prints "ok failed" (a failure: no answer, or any status but 200).
CLIENT = """\
import signal, sys, time, urllib.request
url = sys.argv[1]
counts = {"ok": 0, "failed": 0}
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
while running:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            counts["ok" if answer.status == 200 else "failed"] += 1
    except Exception:
        counts["failed"] += 1
    time.sleep(0.05)
print(counts["ok"], counts["failed"], flush=True)
"""


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def push_by_digest(local_image: str, repository: str) -> str:
    """Push ``local_image`` as ``repository`` (the remote registry); its digest reference."""
    runner = docker.from_env()
    tag = uuid.uuid4().hex[:12]
    runner.images.get(local_image).tag(repository, tag=tag)
    runner.images.push(repository, tag=tag)
    pushed = runner.images.get(f"{repository}:{tag}")
    digests = [d for d in pushed.attrs["RepoDigests"] if d.startswith(f"{repository}@")]
    assert digests, f"{local_image} was not pushed to {repository}"
    return str(digests[0])


@pytest.fixture
def remote_stores(remote_host: RemoteHost) -> Iterator[tuple[str, str]]:
    """A fresh database and an empty Redis DB on the remote host's servers."""
    name = create_database(remote_host.postgres_url, prefix="rgremote")
    redis_url = remote_host.redis_url.rpartition("/")[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield url_for_database(remote_host.postgres_url, name), redis_url
    finally:
        client.flushdb()
        client.close()
        drop_database(remote_host.postgres_url, name)


@pytest.mark.slow
def test_release_to_the_remote_host_promotes_and_rolls_back_without_a_failed_request(
    remote_host: RemoteHost, remote_stores: tuple[str, str], tmp_path: Path
) -> None:
    router_image = local_haproxy_image()
    load_on_remote(remote_host, router_image)
    ensure_base_image(docker.from_env())
    service = f"bookmarks-{uuid.uuid4().hex[:8]}"
    blue, green, public = free_ports(3)
    database_url, redis_url = remote_stores
    repo = make_bookmarks_repo(tmp_path, "v1")
    config = repo / "releasegate.toml"
    # The repository's config with the service, ports and gate of this test.
    local_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RELEASEGATE_"))},
        "RELEASEGATE_SERVICE__NAME": service,
        "RELEASEGATE_BUILD__REPOSITORY": f"releasegate-test/{service}",
    }
    remote_env = {
        **ssh_env(remote_host),
        **local_env,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RELEASEGATE_DEPLOY__BLUE_PORT": str(blue),
        "RELEASEGATE_DEPLOY__GREEN_PORT": str(green),
        "RELEASEGATE_ROUTER__MODE": "container",
        "RELEASEGATE_ROUTER__IMAGE": router_image,
        # The public reaches the service at the remote host's address.
        "RELEASEGATE_ROUTER__BIND": f"{remote_host.address}:{public}",
        "RELEASEGATE_SLO__WARMUP": "3s",
        "RELEASEGATE_SLO__DURATION": "10s",
        "RELEASEGATE_SLO__MIN_REQUESTS": "50",
        "RELEASEGATE_RELEASE__WATCH": "5s",
    }
    repository = f"{remote_host.registry}/{service}"

    def build_and_push(stage: str) -> str:
        built = run([str(RELEASEGATE), "--config", str(config), "build", "--offline",
                     "--quiet", "--tag", stage], local_env, repo)  # fmt: skip
        assert built.returncode == 0, built.stderr
        return push_by_digest(built.stdout.strip(), repository)

    def release(image: str) -> dict[str, Any]:
        done = run([str(RELEASEGATE), "--config", str(config), "release", "--image", image,
                    "--json"], remote_env, repo)  # fmt: skip
        data: dict[str, Any] = json.loads(done.stdout)
        print(f"outcome={data['outcome']}")
        return data

    client: subprocess.Popen[str] | None = None
    try:
        first = release(build_and_push("v1"))
        assert first["outcome"] == "succeeded", first.get("error")

        client = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{remote_host.namespace}", "python3", "-c",
             CLIENT, f"http://{remote_host.address}:{public}/bookmarks"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

        advance(repo, "v2")
        second = release(build_and_push("v2"))
        assert second["outcome"] == "succeeded", second.get("error")
        assert second["plan"]["deferred"] == ["0003"]
        assert second["colors"]["live_after"] != first["colors"]["live_after"]

        advance(repo, "v3-bad")
        third = release(build_and_push("v3-bad"))
        assert third["outcome"] == "rolled_back", third.get("error")
        assert third["error"].startswith("slo gate:")
        assert third["colors"]["live_after"] == second["colors"]["live_after"]
        assert third["rollback"]["verification"]["ok"] is True

        client.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=30)
        ok, failed = (int(n) for n in out.split())
        print(f"client in the namespace: ok={ok} failed={failed}")
        assert ok > 0 and failed == 0
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        run([str(RELEASEGATE), "--config", str(config), "router", "down", "--forget"],
            remote_env, repo)  # fmt: skip
        for name in (f"{service}-blue", f"{service}-green", f"releasegate-router-{service}"):
            remote_host.docker("rm", "--force", name)
        remote_host.docker("volume", "rm", "--force", f"releasegate-router-{service}")
        for pulled in remote_host.docker("images", "--quiet", repository).stdout.split():
            remote_host.docker("image", "rm", "--force", pulled)
        runner = docker.from_env()
        for name in (repository, f"releasegate-test/{service}"):
            for image in runner.images.list(name=name):
                runner.images.remove(image.id, force=True)
