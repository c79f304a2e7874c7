"""The bookmarks example released to the simulated remote host, for the remote tests.

:func:`open_remote_release` gives a :class:`RemoteRelease`: a git repository of
the example, a fresh database and Redis DB on the remote host's servers, and the
environment of a CI job that releases over ``DOCKER_HOST=ssh://`` (pinned host key, key
file, router in a container on the host, short gate). Images are built here (offline)
and pushed to the remote host's registry; releases name them by digest. Whatever the
test left on the remote engine and here is removed afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import redis
from bookmarks_repo import make_bookmarks_repo
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

# The remote host's Redis has 64 DBs; tests of other sessions (other pids) use others.
REDIS_DB = 8 + os.getpid() % 56


def run(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
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


class PublicClient:
    """GET /bookmarks through the router's public address, from inside the remote host's
    namespace, every 50 ms until :meth:`stop`."""

    def __init__(self, target: RemoteRelease) -> None:
        host = target.host
        url = f"http://{host.address}:{target.public_port}/bookmarks"
        self._process: subprocess.Popen[str] | None = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{host.namespace}", "python3", "-c", CLIENT, url],
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> tuple[int, int]:
        """(answered, failed); idempotent (a second call gives (0, 0))."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return 0, 0
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        ok, failed = (int(n) for n in out.split())
        print(f"client in the namespace: ok={ok} failed={failed}")
        return ok, failed


@dataclass
class RemoteRelease:
    """One service of the bookmarks example, released to the remote host over ssh."""

    host: RemoteHost
    repo: Path
    service: str
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    # The environment of a job that builds (no DOCKER_HOST), and of one that releases.
    local_env: dict[str, str] = field(repr=False)
    remote_env: dict[str, str] = field(repr=False)
    public_port: int

    @property
    def config(self) -> Path:
        return self.repo / "releasegate.toml"

    @property
    def repository(self) -> str:
        return f"{self.host.registry}/{self.service}"

    def reach_stores_via_ssh(self) -> None:
        """Name the stores as the remote host sees them, on its own loopback (nothing else
        reaches that), with ``via_ssh``: releasegate connects through ssh forwards."""
        at_address = f"@{self.host.address}:"
        self.remote_env.update(
            DATABASE_URL=self.database_url.replace(at_address, "@127.0.0.1:", 1),
            REDIS_URL=self.redis_url.replace(at_address, "@127.0.0.1:", 1),
            RELEASEGATE_POSTGRES__VIA_SSH="true",
            RELEASEGATE_REDIS__VIA_SSH="true",
        )

    def release_outcomes(self) -> list[str]:
        """The outcome of every release in the ledger, read directly on the host's server."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT outcome FROM releasegate.releases WHERE kind = 'release' ORDER BY id"
            )
            return [str(outcome) for (outcome,) in rows.fetchall()]

    def releasegate(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``releasegate ARGS`` as the release job runs it (``env`` added to its env)."""
        return run(
            [str(RELEASEGATE), "--config", str(self.config), *args],
            {**self.remote_env, **(env or {})},
            self.repo,
            timeout,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """``releasegate ARGS`` in the background, its output in pipes."""
        return subprocess.Popen(
            [str(RELEASEGATE), "--config", str(self.config), *args],
            env=self.remote_env,
            cwd=self.repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def build_and_push(self, stage: str) -> str:
        built = run([str(RELEASEGATE), "--config", str(self.config), "build", "--offline",
                     "--quiet", "--tag", stage], self.local_env, self.repo)  # fmt: skip
        assert built.returncode == 0, built.stderr
        return push_by_digest(built.stdout.strip(), self.repository)

    def release(self, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """``release ARGS --json``: the process and its JSON result."""
        done = self.releasegate("release", *args, "--json")
        try:
            data: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON result (exit {done.returncode}): {done.stderr[-3000:]}")
        print(f"outcome={data['outcome']}")
        return done, data

    def containers(self) -> list[str]:
        """Names of this service's containers on the remote engine."""
        listed = self.host.docker("ps", "--all", "--format", "{{.Names}}")
        assert listed.returncode == 0, listed.stderr
        return sorted(n for n in listed.stdout.split() if self.service in n)

    def cleanup(self) -> None:
        self.releasegate("router", "down", "--forget")
        for name in (f"{self.service}-blue", f"{self.service}-green"):
            self.host.docker("rm", "--force", name)
        self.host.docker("rm", "--force", f"releasegate-router-{self.service}")
        self.host.docker("volume", "rm", "--force", f"releasegate-router-{self.service}")
        for pulled in self.host.docker("images", "--quiet", self.repository).stdout.split():
            self.host.docker("image", "rm", "--force", pulled)
        runner = docker.from_env()
        for name in (self.repository, f"releasegate-test/{self.service}"):
            for image in runner.images.list(name=name):
                runner.images.remove(image.id, force=True)


@contextmanager
def remote_stores(host: RemoteHost) -> Iterator[tuple[str, str]]:
    """A fresh database and an empty Redis DB on the remote host's servers."""
    name = create_database(host.postgres_url, prefix="rgremote")
    redis_url = host.redis_url.rpartition("/")[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield url_for_database(host.postgres_url, name), redis_url
    finally:
        client.flushdb()
        client.close()
        drop_database(host.postgres_url, name)


@contextmanager
def open_remote_release(host: RemoteHost, tmp_path: Path) -> Iterator[RemoteRelease]:
    """A new service of the bookmarks example at v1 (not yet released) and its stores."""
    router_image = local_haproxy_image()
    load_on_remote(host, router_image)
    ensure_base_image(docker.from_env())
    service = f"bookmarks-{uuid.uuid4().hex[:8]}"
    blue, green, public = free_ports(3)
    repo = make_bookmarks_repo(tmp_path, "v1")
    # The repository's config with the service, ports and gate of this test.
    local_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RELEASEGATE_"))},
        "RELEASEGATE_SERVICE__NAME": service,
        "RELEASEGATE_BUILD__REPOSITORY": f"releasegate-test/{service}",
    }
    with remote_stores(host) as (database_url, redis_url):
        remote_env = {
            **ssh_env(host),
            **local_env,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "RELEASEGATE_DEPLOY__BLUE_PORT": str(blue),
            "RELEASEGATE_DEPLOY__GREEN_PORT": str(green),
            "RELEASEGATE_ROUTER__MODE": "container",
            "RELEASEGATE_ROUTER__IMAGE": router_image,
            # The public reaches the service at the remote host's address.
            "RELEASEGATE_ROUTER__BIND": f"{host.address}:{public}",
            "RELEASEGATE_SLO__WARMUP": "3s",
            "RELEASEGATE_SLO__DURATION": "10s",
            "RELEASEGATE_SLO__MIN_REQUESTS": "50",
            "RELEASEGATE_RELEASE__WATCH": "5s",
        }
        released = RemoteRelease(
            host=host,
            repo=repo,
            service=service,
            database_url=database_url,
            redis_url=redis_url,
            local_env=local_env,
            remote_env=remote_env,
            public_port=public,
        )
        try:
            yield released
        finally:
            released.cleanup()
