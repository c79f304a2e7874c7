"""The example service, in process and as an image built offline and deployed with the CLI.

The fast test runs the app in process (ASGI) on a real database and Redis. The slow ones
build the v1, v2 and v3-bad images once per module (``releasegate build --offline``:
local base image, host-built wheels, no network in the build) and run them against a
real Postgres database migrated by ``releasegate migrate up`` and the real Redis, with
host networking. Images, containers and the build's cache stage are removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker
import httpx
import psycopg
import pytest
import redis
from conftest import BASE_IMAGE, REPO_ROOT, Project, ensure_base_image, free_ports

RELEASEGATE = Path(sys.executable).parent / "releasegate"
VARIANTS = ("v1", "v2", "v3-bad")


@dataclass(frozen=True)
class Images:
    repository: str
    refs: dict[str, str]
    revision: str


def run_cli(
    config: Path, env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RELEASEGATE), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    engine.ping()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def images(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Images]:
    """The example image in its three variants, built offline from a copy of examples/app."""
    ensure_base_image(client)
    root = tmp_path_factory.mktemp("example-build")
    shutil.copytree(
        REPO_ROOT / "examples" / "app",
        root / "app",
        ignore=shutil.ignore_patterns("__pycache__", "wheels", ".pytest_cache"),
    )
    repository = f"releasegate-test/notes-{uuid.uuid4().hex[:8]}"
    config = root / "releasegate.toml"
    config.write_text(
        f'[service]\nname = "notes"\n[build]\ncontext = "app"\nrepository = "{repository}"\n'
        f'base_image = "{BASE_IMAGE}"\n'
    )
    started = datetime.now(UTC)
    revision = "e2e" + uuid.uuid4().hex + "0" * 5
    env = {**os.environ, "GITHUB_SHA": revision}
    refs = {}
    try:
        for variant in VARIANTS:
            result = run_cli(
                config,
                env,
                "build",
                "--offline",
                "--quiet",
                "--build-arg",
                f"NOTES_VARIANT={variant}",
                "--tag",
                variant,
            )
            assert result.returncode == 0, result.stderr
            refs[variant] = result.stdout.strip()
            assert refs[variant].startswith("sha256:")
        # The wheels were built on the host, for the image's Python, and cached.
        assert list((root / "app" / "wheels").glob("fastapi-*.whl"))
        yield Images(repository, refs, revision)
    finally:
        for image in client.images.list(name=repository):
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image.id, force=True)
        # The dependency stage is kept by the engine as an untagged cache image.
        for image in client.images.list(all=True, filters={"label": "releasegate.stage=deps"}):
            created = datetime.fromisoformat(image.attrs["Created"][:26].rstrip("Z") + "+00:00")
            if created >= started and not image.tags:
                with contextlib.suppress(docker.errors.DockerException):
                    client.images.remove(image.id, force=True)


DEPLOY_SECTION = """
[deploy]
network = "host"
port_env = "NOTES_PORT"
blue_port = {blue}
green_port = {green}
env = {{ NOTES_QDRANT = "off" }}
env_passthrough = ["NOTES_DATABASE_URL", "NOTES_REDIS_URL"]
memory = "256m"
ready_timeout = "40s"
"""


@dataclass
class Deployment:
    project: Project
    env: dict[str, str]
    redis_url: str
    ports: dict[str, int]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.project.config_path, self.env, *args, timeout=180)

    def url(self, color: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[color]}{path}"

    def get(self, color: str, path: str) -> httpx.Response:
        return httpx.get(self.url(color, path), timeout=10)


@pytest.fixture
def deployment(
    project: Project, redis_url: str, client: docker.DockerClient
) -> Iterator[Deployment]:
    blue, green = free_ports(2)
    project.config_path.write_text(
        project.config_path.read_text() + DEPLOY_SECTION.format(blue=blue, green=green)
    )
    env = {**project.env, "NOTES_REDIS_URL": redis_url}
    yield Deployment(project, env, redis_url, {"blue": blue, "green": green})
    for container in client.containers.list(
        all=True, filters={"label": f"releasegate.service={project.service}"}
    ):
        container.remove(force=True)


def seed(url: str, name_column: str) -> None:
    """One user (id 1) owning one document (id 1) titled "budget"."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO users (email, {name_column}) VALUES ('ann@example.com', 'Ann Example')"
        )
        conn.execute("INSERT INTO documents (owner_id, title, body) VALUES (1, 'budget', 'hi')")


@pytest.mark.slow
def test_v1_image_serves_a_v1_database(
    deployment: Deployment, images: Images, client: docker.DockerClient
) -> None:
    migrate = deployment.cli("migrate", "up", "--to", "0002")
    assert migrate.returncode == 0, migrate.stderr
    seed(deployment.project.url, "full_name")

    ref = images.refs["v1"]
    image = client.images.get(ref)
    assert f"{images.repository}:v1" in image.tags
    # Every build is tagged with the commit; the three variants share it, so the sha tag
    # names the last one built, and the --tag variant tags tell them apart.
    last = client.images.get(f"{images.repository}:v3-bad")
    assert f"{images.repository}:{images.revision[:12]}" in last.tags
    assert image.labels["org.opencontainers.image.revision"] == images.revision
    assert image.attrs["Config"]["Healthcheck"]["Test"][-1] == "notes_app.healthcheck"
    assert image.attrs["Size"] < 300_000_000

    result = deployment.cli("deploy", "--color", "green", "--image", ref)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("green is ready: ")
    assert "(ledger release " in result.stdout

    ready = deployment.get("green", "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["postgres"] == {
        "ok": True,
        "revision": "0002",
        "expected": "0002",
    }
    version = deployment.get("green", "/version").json()
    assert version["variant"] == "v1" and version["git_sha"] == images.revision
    doc = deployment.get("green", "/documents/1").json()
    assert doc["owner_name"] == "Ann Example" and doc["title"] == "budget"

    created = httpx.post(deployment.url("green", "/sessions"), json={"user_id": 1}, timeout=10)
    assert created.status_code == 201
    stored = redis.Redis.from_url(deployment.redis_url).get(f"sess:{created.json()['id']}")
    assert stored is not None and json.loads(stored)["userId"] == 1

    ps = deployment.cli("ps")
    assert ps.returncode == 0, ps.stderr
    rows = {line.split()[0]: line for line in ps.stdout.splitlines()[2:]}
    assert "absent" in rows["blue"]
    assert "running" in rows["green"] and f"{images.repository}:" in rows["green"]
    assert images.revision[:12] in rows["green"]

    history = deployment.cli("history", "--json", "--limit", "1")
    release = json.loads(history.stdout)[0]
    assert release["kind"] == "deploy" and release["outcome"] == "succeeded"
    assert release["image_digest"] == ref and release["git_sha"] == images.revision


@pytest.mark.slow
def test_v2_needs_its_schema_and_a_failed_green_leaves_blue_serving(
    deployment: Deployment, images: Images, client: docker.DockerClient
) -> None:
    assert deployment.cli("migrate", "up").returncode == 0
    seed(deployment.project.url, "display_name")

    blue = deployment.cli("deploy", "--color", "blue", "--image", images.refs["v2"])
    assert blue.returncode == 0, blue.stderr
    assert deployment.get("blue", "/version").json()["variant"] == "v2"
    assert deployment.get("blue", "/documents/1").json()["owner_name"] == "Ann Example"
    created = httpx.post(deployment.url("blue", "/sessions"), json={"user_id": 1}, timeout=10)
    stored = redis.Redis.from_url(deployment.redis_url).get(f"session:{created.json()['id']}")
    assert stored is not None and json.loads(stored)["user_id"] == 1

    # v1 cannot run on the contracted schema (0006 dropped users.full_name): its /readyz
    # says so, the deploy fails with the container's logs, and blue is not touched.
    blue_id = client.containers.get(f"{deployment.project.service}-blue").id
    green = deployment.cli(
        "deploy", "--color", "green", "--image", images.refs["v1"], "--timeout", "6"
    )
    assert green.returncode == 1
    assert "did not become ready: not ready within 6s" in green.stderr
    assert "database at 0006; v1 runs on 0002" in green.stderr
    assert "| notes v1" in green.stderr
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(f"{deployment.project.service}-green")
    assert client.containers.get(f"{deployment.project.service}-blue").id == blue_id
    assert deployment.get("blue", "/readyz").status_code == 200

    history = json.loads(deployment.cli("history", "--json", "--limit", "1").stdout)[0]
    assert history["outcome"] == "failed"
    assert any(e["step"] == "deploy.green" and e["status"] == "failed" for e in history["events"])


@pytest.mark.slow
def test_v3_bad_passes_readiness_but_is_slow_and_fails_requests(
    deployment: Deployment, images: Images
) -> None:
    assert deployment.cli("migrate", "up").returncode == 0
    seed(deployment.project.url, "display_name")
    result = deployment.cli(
        "deploy",
        "--no-ledger",
        "--color",
        "green",
        "--image",
        images.refs["v3-bad"],
        "--env",
        "NOTES_BAD_ERROR_RATE=0.2",
    )
    assert result.returncode == 0, result.stderr
    with httpx.Client(timeout=10) as http:
        started = time.monotonic()
        assert http.get(deployment.url("green", "/readyz")).status_code == 200
        assert http.get(deployment.url("green", "/healthz")).status_code == 200
        assert time.monotonic() - started < 0.25
        slow = []
        for _ in range(5):
            started = time.monotonic()
            http.get(deployment.url("green", "/documents?owner_id=1"))
            slow.append(time.monotonic() - started)
        assert min(slow) >= 0.25
        codes = [
            http.get(deployment.url("green", "/search?q=budget")).status_code for _ in range(60)
        ]
    assert 0 < codes.count(500) < 60
    assert set(codes) <= {200, 500}


# -- the app in process (fast) --------------------------------------------------------


async def _exercise(env: dict[str, str]) -> dict[str, httpx.Response]:
    from notes_app.main import create_app
    from notes_app.settings import load_settings

    app = create_app(load_settings(env))
    responses: dict[str, httpx.Response] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        responses["readyz"] = await http.get("/readyz")
        responses["healthz"] = await http.get("/healthz")
        responses["session"] = await http.post("/sessions", json={"user_id": 1, "theme": "dark"})
        if responses["session"].status_code == 201:
            sid = responses["session"].json()["id"]
            responses["session_again"] = await http.get(f"/sessions/{sid}")
        responses["missing_session"] = await http.get("/sessions/nope")
        responses["doc"] = await http.get("/documents/1")
        responses["list"] = await http.get("/documents?owner_id=1")
        responses["list_cached"] = await http.get("/documents?owner_id=1")
        responses["create"] = await http.post(
            "/documents", json={"owner_id": 1, "title": "hiring plan"}
        )
        responses["bad_owner"] = await http.post("/documents", json={"owner_id": 99, "title": "x"})
        responses["list_after"] = await http.get("/documents?owner_id=1")
        responses["search"] = await http.get("/search?q=hiring")
    return responses


def test_example_app_variants_in_process(project: Project, redis_url: str) -> None:
    sys.path.insert(0, str(REPO_ROOT / "examples" / "app"))
    try:
        from releasegate.migrations.commands import up

        up(project.settings(), "0002")
        seed(project.url, "full_name")
        env = {"NOTES_DATABASE_URL": project.url, "NOTES_REDIS_URL": redis_url}
        v1 = asyncio.run(_exercise({**env, "NOTES_VARIANT": "v1"}))
        v2 = asyncio.run(_exercise({**env, "NOTES_VARIANT": "v2"}))
        bad = asyncio.run(
            _exercise({**env, "NOTES_VARIANT": "v3-bad", "NOTES_BAD_ERROR_RATE": "1"})
        )
    finally:
        sys.path.remove(str(REPO_ROOT / "examples" / "app"))

    # v1 runs on 0002; v2 needs 0003 or later and says why it is not ready.
    assert v1["readyz"].status_code == 200
    assert v2["readyz"].status_code == 503
    assert v2["readyz"].json()["checks"]["postgres"]["error"].startswith("database at 0002;")
    # v1 sessions: sess:{uuid}, camelCase, no theme, ISO times; reading touches lastSeen.
    session = v1["session"].json()
    assert set(session) == {"id", "userId", "createdAt", "lastSeen", "userAgent"}
    stored = redis.Redis.from_url(redis_url).get(f"sess:{session['id']}")
    assert stored is not None and json.loads(stored)["userId"] == 1
    datetime.fromisoformat(session["createdAt"])
    assert v1["session_again"].json()["lastSeen"] >= session["lastSeen"]
    assert v1["missing_session"].status_code == 404
    # v2 sessions: session:{uuid}, snake_case with theme.
    v2_session = v2["session"].json()
    assert v2_session["theme"] == "dark" and v2_session["user_id"] == 1
    assert redis.Redis.from_url(redis_url).exists(f"session:{v2_session['id']}")
    # Documents: the owner's name from full_name (v1); a read-through cache per owner.
    assert v1["doc"].json()["owner_name"] == "Ann Example"
    assert v1["list"].headers["x-cache"] == "miss" and v1["list_cached"].headers["x-cache"] == "hit"
    assert v1["create"].status_code == 201
    assert v1["bad_owner"].status_code == 422
    assert [d["title"] for d in v1["list_after"].json()] == ["hiring plan", "budget"]
    assert v1["search"].json()["engine"] == "postgres"
    assert [r["title"] for r in v1["search"].json()["results"]] == ["hiring plan"]
    # v2 reads users.display_name, which does not exist at 0002: a 500, not wrong data.
    assert v2["doc"].status_code == 500
    assert v2["doc"].json() == {"detail": "database error: UndefinedColumn"}
    # v3-bad: liveness passes, every API call fails at error rate 1.
    assert bad["healthz"].status_code == 200
    assert bad["session"].status_code == 500 and bad["list"].status_code == 500
