"""compose/: the local stack's Compose files and compose/up.sh.

The fast tests have every compose command on this machine (Debian's docker-compose 1.29
always; the v2 plugin when the engine's CLI has it) resolve the files. The slow one runs
compose/up.sh under docker-compose 1.29 on free ports: the stores and the app (notes as
blue behind the router) come up with local images when no registry answers, answer real
connections, and ``down --volumes`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import psycopg
import pytest
import redis
import yaml
from conftest import REPO_ROOT, free_ports

COMPOSE_DIR = REPO_ROOT / "compose"
STORES = COMPOSE_DIR / "docker-compose.yml"
APP = COMPOSE_DIR / "app.yml"
UP = COMPOSE_DIR / "up.sh"
RELEASEGATE = Path(sys.executable).parent / "releasegate"
# Local stand-ins of the default images, built by scripts/ci/build-runner-image.sh.
FALLBACKS = {
    "RELEASEGATE_POSTGRES_IMAGE": ("postgres:15", "releasegate/act-postgres:15"),
    "RELEASEGATE_REDIS_IMAGE": ("redis:7", "releasegate/act-redis:7"),
    "RELEASEGATE_ROUTER_IMAGE": ("haproxy:2.6", "releasegate/act-runner:bookworm"),
}


def compose_commands() -> list[list[str]]:
    """docker-compose 1.29 (scripts/test.sh installs it), and `docker compose` if present."""
    commands = [["docker-compose"]]
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        commands.append(["docker", "compose"])
    return commands


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the compose stack's variables (a sourced stack.env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}
    env.pop("QDRANT_URL", None)
    return {**env, **extra}


def config(
    command: list[str], files: list[Path], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    flags = [part for path in files for part in ("-f", str(path))]
    return subprocess.run(
        [*command, *flags, *args, "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", compose_commands(), ids=" ".join)
def test_every_compose_file_resolves(command: list[str], tmp_path: Path) -> None:
    env = clean_env()
    stores = config(command, [STORES], env)
    assert stores.returncode == 0, stores.stderr
    resolved: dict[str, Any] = yaml.safe_load(stores.stdout)
    services = resolved["services"]
    assert set(services) == {"postgres", "redis", "qdrant"}
    assert services["qdrant"]["profiles"] == ["qdrant"]  # started only on request
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    published = sorted(
        (port["host_ip"], int(port["published"]))
        if isinstance(port, dict)
        else (port.split(":")[0], int(port.split(":")[1]))
        for service in services.values()
        for port in service["ports"]
    )
    assert published == [("127.0.0.1", port) for port in (15432, 16333, 16334, 16379)]
    with_qdrant = config(command, [STORES], env, "--profile", "qdrant")
    assert with_qdrant.returncode == 0, with_qdrant.stderr

    # Every image is a variable; the router needs its runtime dir, by absolute path.
    router_dir = str(tmp_path / "router")
    env = clean_env(
        RELEASEGATE_POSTGRES_IMAGE="releasegate/act-postgres:15",
        RELEASEGATE_COMPOSE_ROUTER_DIR=router_dir,
    )
    full = config(command, [STORES, APP], env)
    assert full.returncode == 0, full.stderr
    services = yaml.safe_load(full.stdout)["services"]
    assert services["postgres"]["image"] == "releasegate/act-postgres:15"
    assert services["router"]["command"] == ["haproxy", "-f", f"{router_dir}/haproxy.cfg"]
    assert services["notes"]["labels"]["releasegate.color"] == "blue"

    missing = config(command, [APP], clean_env())
    assert missing.returncode != 0
    assert "RELEASEGATE_COMPOSE_ROUTER_DIR" in missing.stderr


def read_stack_env(path: Path) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of stack.env (values shell-quoted)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0]
    return values


def expected_image(variable: str) -> str:
    from releasegate.deploy.build import registry_answers

    default, fallback = FALLBACKS[variable]
    try:
        docker.from_env().images.get(default)
    except docker.errors.ImageNotFound:
        return default if registry_answers(default)[0] else fallback
    return default


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """compose/up.sh --app under docker-compose 1.29 on free ports; removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    pg, rd, router, blue, green = free_ports(5)
    env = clean_env(
        RELEASEGATE_COMPOSE="docker-compose",
        RELEASEGATE_COMPOSE_PROJECT=f"rgtest-compose-{suffix}",
        RELEASEGATE_COMPOSE_STATE=str(tmp_path / "state"),
        RELEASEGATE_COMPOSE_SERVICE=f"rgtest-compose-{suffix}",
        RELEASEGATE_COMPOSE_PG_PORT=str(pg),
        RELEASEGATE_COMPOSE_REDIS_PORT=str(rd),
        RELEASEGATE_COMPOSE_ROUTER_PORT=str(router),
        RELEASEGATE_COMPOSE_BLUE_PORT=str(blue),
        RELEASEGATE_COMPOSE_GREEN_PORT=str(green),
        RELEASEGATE_NOTES_IMAGE=f"releasegate-test/notes-compose:{suffix}",
        RELEASEGATE_VENV=str(Path(sys.executable).parent.parent),
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(UP), *args], capture_output=True, text=True, env=env, timeout=900, check=False
        )

    try:
        started = run("--app")
        assert started.returncode == 0, started.stderr[-3000:]
        yield env, read_stack_env(tmp_path / "state" / "stack.env")
    finally:
        stopped = run("down", "--volumes")
        client = docker.from_env()
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(env["RELEASEGATE_NOTES_IMAGE"], force=True)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    project = env["RELEASEGATE_COMPOSE_PROJECT"]
    label = f"com.docker.compose.project={project}"
    assert client.containers.list(all=True, filters={"label": label}) == []
    assert client.volumes.list(filters={"label": label}) == []
    # ...nor a color releasegate deployed, nor the router's saved state.
    service = f"releasegate.service={env['RELEASEGATE_COMPOSE_SERVICE']}"
    assert client.containers.list(all=True, filters={"label": service}) == []
    assert not (tmp_path / "state" / "router").exists()


@pytest.mark.slow
def test_up_starts_the_stack_with_local_images_and_down_removes_it(
    stack: tuple[dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    env, stack_env = stack
    assert (tmp_path / "state" / "stack.env").stat().st_mode & 0o777 == 0o600
    for variable in FALLBACKS:
        assert stack_env[variable] == expected_image(variable)

    with psycopg.connect(stack_env["NOTES_DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.info.server_version // 10000 == 15
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row is not None and row[0] == "0006"  # --app migrated to head
    client = redis.Redis.from_url(stack_env["NOTES_REDIS_URL"], socket_timeout=5)
    try:
        assert client.ping()
        assert str(client.info("server")["redis_version"]).startswith("7.")
    finally:
        client.close()

    # notes is blue behind the router, which runs releasegate's config.
    answer = httpx.get(f"http://127.0.0.1:{env['RELEASEGATE_COMPOSE_ROUTER_PORT']}/readyz")
    assert answer.status_code == 200
    assert answer.headers["x-releasegate-color"] == "blue"
    assert answer.json()["variant"] == "v2"
    router_dir = Path(stack_env["RELEASEGATE_COMPOSE_ROUTER_DIR"])
    assert (router_dir / "admin.sock").exists()
    assert (
        f"bind 127.0.0.1:{env['RELEASEGATE_COMPOSE_ROUTER_PORT']}"
        in (router_dir / "haproxy.cfg").read_text()
    )

    # releasegate, given stack.env, sees notes as blue behind its router, and puts green
    # beside it (which `down` removes too).
    def releasegate(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(RELEASEGATE), "--config", str(REPO_ROOT / "releasegate.toml"), *args],
            capture_output=True,
            text=True,
            env={**clean_env(), **stack_env},
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result

    assert json.loads(releasegate("router", "status", "--json").stdout)["live"] == "blue"
    releasegate("deploy", "--color", "green", "--image", env["RELEASEGATE_NOTES_IMAGE"])
    colors = json.loads(releasegate("ps", "--json").stdout)
    assert [(c["color"], c["state"]) for c in colors] == [("blue", "running"), ("green", "running")]
