"""Shared fixtures: real PostgreSQL databases on the server named by RELEASEGATE_TEST_PG_URL.

`scripts/test.sh` starts the Debian cluster and exports the URL; tests never mock the
database. Each test that asks for `pg_url` gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from remote_host import remote_host  # noqa: F401  (the session fixture, for every folder)

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("RELEASEGATE_BASE_IMAGE", "releasegate/python:3.11-bookworm")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def ensure_base_image(client: Any) -> str:
    """The offline base image, built by scripts/build-base-image.sh when missing (~1 min)."""
    import docker

    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(
            [str(REPO_ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE],
            check=True,
            timeout=900,
        )
    return BASE_IMAGE


def _server_url() -> str:
    url = os.environ.get("RELEASEGATE_TEST_PG_URL")
    if not url:
        pytest.fail(
            "RELEASEGATE_TEST_PG_URL is not set: run the suite with scripts/test.sh, "
            "which starts PostgreSQL and exports it",
            pytrace=False,
        )
    return url


def url_for_database(server_url: str, dbname: str) -> str:
    """The server URL with its database name replaced."""
    base, _, query = server_url.partition("?")
    head, _, _old = base.rpartition("/")
    return f"{head}/{dbname}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of the maintenance database on the test server (a role with CREATEDB)."""
    url = _server_url()
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("select 1")
    return url


def create_database(server_url: str, prefix: str = "rgtest") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(server_url: str, name: str) -> None:
    from releasegate.db import drop_database as drop

    with psycopg.connect(server_url, autocommit=True) as conn:
        # Sessions a test left behind (a killed runner, a scratch pool) go too.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() AND usename = current_user",
            (name,),
        )
        drop(conn, name)


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    """URL of the test redis-server that scripts/test.sh starts on a port of its own."""
    url = os.environ.get("RELEASEGATE_TEST_REDIS_URL")
    if not url:
        pytest.fail(
            "RELEASEGATE_TEST_REDIS_URL is not set: run the suite with scripts/test.sh",
            pytrace=False,
        )
    return url


_redis_dbs = iter(range(1, 64))


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """URL of an empty logical Redis database, flushed before and after the test."""
    import redis

    base = redis_server_url.rsplit("/", 1)[0]
    url = f"{base}/{next(_redis_dbs, 63)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def qdrant_path(tmp_path: Path) -> Path:
    """Storage folder for an embedded Qdrant (qdrant-client ``path=`` mode)."""
    return tmp_path / "qdrant"


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty database, dropped after the test."""
    name = create_database(pg_server_url)
    try:
        yield url_for_database(pg_server_url, name)
    finally:
        drop_database(pg_server_url, name)


EXAMPLE_CONFIG = """\
[service]
name = "{service}"

[postgres]
url_env = "{url_env}"

[migrations]
postgres = "migrations/postgres"
metadata = "notes_app.models:metadata"
python_path = ["examples/app"]
lock_timeout = "2s"
statement_timeout = "1m"
lock_retries = 2
retry_backoff = "200ms"

[lock]
wait = "1s"
poll_interval = "100ms"
"""


class Project:
    """A copy of the example project (config, migrations, models) in a temporary folder."""

    def __init__(self, root: Path, url: str, service: str) -> None:
        self.root = root
        self.url = url
        self.service = service
        self.url_env = "NOTES_DATABASE_URL"
        self.config_path = root / "releasegate.toml"

    @property
    def versions(self) -> Path:
        return self.root / "migrations" / "postgres" / "versions"

    @property
    def env(self) -> dict[str, str]:
        """Process environment for running the CLI against this project."""
        return {**os.environ, self.url_env: self.url, "RELEASEGATE_CONFIG": str(self.config_path)}

    def settings(self, **overrides: str):  # type: ignore[no-untyped-def]
        from releasegate.config import load_config

        env = {**self.env, **overrides}
        return load_config(self.config_path, env)

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)


@pytest.fixture
def project(tmp_path: Path, pg_url: str) -> Project:
    """The example project copied to tmp_path, pointed at a fresh database."""
    import shutil

    shutil.copytree(
        REPO_ROOT / "migrations" / "postgres",
        tmp_path / "migrations" / "postgres",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(
        REPO_ROOT / "examples" / "app" / "notes_app",
        tmp_path / "examples" / "app" / "notes_app",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    service = f"notes-{uuid.uuid4().hex[:8]}"
    proj = Project(tmp_path, pg_url, service)
    proj.write_config(EXAMPLE_CONFIG.format(service=service, url_env=proj.url_env))
    return proj


# -- the router image of container mode -----------------------------------------------

LOCAL_IMAGE = "releasegate-test/haproxy:host"


def local_haproxy_image() -> str:
    """An image holding the host's haproxy and its libraries (no registry needed)."""
    import io
    import tarfile

    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"Docker is unreachable: {exc}")
    try:
        client.images.get(LOCAL_IMAGE)
        return LOCAL_IMAGE
    except docker.errors.ImageNotFound:
        pass
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy is None:
        pytest.skip("haproxy is not installed")
    ldd = subprocess.run(["ldd", haproxy], capture_output=True, text=True, check=True).stdout
    files = [haproxy] + [word for word in ldd.split() if word.startswith("/")]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in files:
            tar.add(os.path.realpath(name), arcname=name.lstrip("/"))
        tmp = tarfile.TarInfo("tmp")
        tmp.type = tarfile.DIRTYPE
        tmp.mode = 0o1777
        tar.addfile(tmp)
    client.api.import_image_from_data(buffer.getvalue(), repository=LOCAL_IMAGE)
    return LOCAL_IMAGE
