"""``releasegate build``, ``deploy``, ``ps`` and ``stop`` on the real Docker engine.

A tiny HTTP server image, built FROM the local offline base image, plays the service;
its behaviour comes from the ``MODE`` variable: ``ok``, ``exit`` (dies at start) or
``never-ready`` (``/readyz`` answers 503 forever). Every container and image created here
is labelled or uniquely named and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import httpx
import pytest
from conftest import BASE_IMAGE, ensure_base_image, free_ports

from releasegate.config import Settings, load_config
from releasegate.deploy import build as build_mod
from releasegate.deploy import containers
from releasegate.deploy.wheels import build_wheels
from releasegate.errors import CheckFailed, ConfigError, StateError

TEST_LABEL = "releasegate.test"
RELEASEGATE = Path(sys.executable).parent / "releasegate"

SERVER = """\
import http.server, json, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 has no default handler
mode = os.environ.get("MODE", "ok")
if mode == "exit":
    print("boom: cannot open the configuration", file=sys.stderr, flush=True)
    sys.exit(3)
print(f"tiny server in mode {mode}", flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/readyz" and mode == "never-ready":
            code, body = 503, {"status": "not ready", "why": "waiting for nothing"}
        else:
            code, body = 200, {"path": self.path, "mode": mode}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

port = int(os.environ.get("PORT", "8080"))
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""

HEALTH = """\
import os, urllib.request
port = os.environ.get("PORT", "8080")
urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
"""

DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY server.py /server.py
COPY health.py /health.py
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["python3", "/health.py"]
CMD ["python3", "/server.py"]
"""

# In the local test registry (scripts/test.sh starts it on 127.0.0.1:35000), which answers
# that it has no such image: a missing image, not a registry that is down (exit 3).
ABSENT_IMAGE = "127.0.0.1:35000/releasegate-test/absent:nope"


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    engine.ping()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_image(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A one-file HTTP server image FROM the local base image (built in a few seconds)."""
    base = ensure_base_image(client)
    context = tmp_path_factory.mktemp("tiny")
    (context / "server.py").write_text(SERVER)
    (context / "health.py").write_text(HEALTH)
    (context / "Dockerfile").write_text(DOCKERFILE)
    tag = f"releasegate-test/tiny:{uuid.uuid4().hex[:10]}"
    client.images.build(
        path=str(context),
        tag=tag,
        buildargs={"BASE_IMAGE": base},
        labels={TEST_LABEL: "1"},
        rm=True,
        network_mode="none",
    )
    yield tag
    with contextlib.suppress(docker.errors.DockerException):
        client.images.remove(tag, force=True)


CONFIG = """\
[service]
name = "{service}"

[deploy]
container_port = 8080
blue_port = {blue}
green_port = {green}
port_env = "PORT"
env = {{ MODE = "ok" }}
env_passthrough = ["RG_TEST_TOKEN", "RG_TEST_UNSET"]
memory = "64m"
cpus = 0.5
readiness_path = "{readiness}"
ready_timeout = "20s"
{extra}
"""


def make_settings(
    tmp_path: Path, service: str, extra: str = "", readiness: str = "/readyz", **env: str
) -> Settings:
    blue, green = free_ports(2)
    path = tmp_path / "releasegate.toml"
    text = CONFIG.format(service=service, blue=blue, green=green, extra=extra, readiness=readiness)
    path.write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}
    environ.pop("RG_TEST_UNSET", None)
    return load_config(path, {**environ, "RG_TEST_TOKEN": "tok-3f9a1c", **env})


@pytest.fixture
def service(client: docker.DockerClient) -> Iterator[str]:
    """A unique service name; its containers are removed after the test."""
    name = f"rgtest-{uuid.uuid4().hex[:8]}"
    yield name
    for container in client.containers.list(
        all=True, filters={"label": f"releasegate.service={name}"}
    ):
        container.remove(force=True)


@pytest.fixture
def settings(tmp_path: Path, service: str) -> Settings:
    return make_settings(tmp_path, service)


def get(settings: Settings, color: str, path: str = "/") -> httpx.Response:
    port = containers.color_port(settings, color)
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


# -- fast: no container ---------------------------------------------------------------


def test_container_spec_bridge_network(settings: Settings) -> None:
    spec = containers.container_spec(
        settings, "green", "sha256:abc", release="42", image_ref="app:1", extra_env={"X": "1"}
    )
    green = settings.raw.deploy.green_port
    assert spec.name == f"{settings.service}-green"
    assert spec.run_kwargs["ports"] == {"8080/tcp": ("127.0.0.1", green)}
    assert "network_mode" not in spec.run_kwargs
    # The app listens on container_port; the passthrough variable that is set goes in.
    assert spec.environment == {
        "MODE": "ok",
        "RG_TEST_TOKEN": "tok-3f9a1c",
        "X": "1",
        "PORT": "8080",
    }
    assert spec.labels == {
        "releasegate.service": settings.service,
        "releasegate.color": "green",
        "releasegate.release": "42",
        "releasegate.image": "app:1",
        "releasegate.port": str(green),
    }
    assert spec.run_kwargs["mem_limit"] == "64m"
    assert spec.run_kwargs["nano_cpus"] == 500_000_000


def test_container_spec_host_network_listens_on_the_color_port(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "svc", 'network = "host"')
    spec = containers.container_spec(settings, "blue", "img")
    assert spec.run_kwargs["network_mode"] == "host"
    assert "ports" not in spec.run_kwargs
    assert spec.environment["PORT"] == str(settings.raw.deploy.blue_port)
    assert spec.labels["releasegate.release"] == "none"


def test_host_network_needs_port_env_and_colors_need_two_ports(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text('[service]\nname = "svc"\n[deploy]\nnetwork = "host"\n')
    with pytest.raises(ConfigError, match="port_env"):
        containers.container_spec(load_config(path, {}), "blue", "img")
    path.write_text('[service]\nname = "svc"\n[deploy]\nblue_port = 9000\ngreen_port = 9000\n')
    with pytest.raises(ConfigError, match="must differ"):
        containers.color_port(load_config(path, {}), "green")
    with pytest.raises(ConfigError, match="unknown color"):
        containers.container_name(load_config(path, {}), "red")


def test_base_image_tags_and_labels() -> None:
    dockerfile = (
        "ARG BASE_IMAGE=python:3.11-slim\nARG X\nFROM ${BASE_IMAGE} AS deps\nFROM scratch\n"
    )
    assert build_mod.base_image_of(dockerfile) == "python:3.11-slim"
    assert build_mod.base_image_of(dockerfile, {"BASE_IMAGE": "local/py:1"}) == "local/py:1"
    assert build_mod.base_image_of("FROM debian:12\n") == "debian:12"
    now = datetime.fromisoformat("2024-05-01T10:20:30+02:00")
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert build_mod.image_tags("notes", sha, ["latest", "reg:5000/x/notes:v2"], now) == [
        "notes:0123456789ab",
        "notes:latest",
        "reg:5000/x/notes:v2",
    ]
    assert build_mod.image_tags("notes", None, [], now) == ["notes:build-20240501082030"]
    with pytest.raises(ConfigError, match="invalid image tag"):
        build_mod.image_tags("notes", sha, ["bad tag!"], now)
    labels = build_mod.oci_labels(revision=sha, version="1.2.3", created=now, source=None)
    assert labels == {
        "org.opencontainers.image.revision": sha,
        "org.opencontainers.image.version": "1.2.3",
        "org.opencontainers.image.created": "2024-05-01T08:20:30Z",
    }
    assert build_mod._clean_remote("https://user:tok@example.com/org/x.git") == (
        "https://example.com/org/x.git"
    )


def test_auto_mode_builds_offline_when_no_registry_answers() -> None:
    started = time.monotonic()
    ok, why = build_mod.registry_answers("registry.invalid/none/image:1")
    assert not ok and why
    mode = build_mod.choose_mode("auto", "registry.invalid/none/image:1")
    assert mode.offline and "no registry answered" in mode.reason
    assert time.monotonic() - started < 15
    assert build_mod.choose_mode("always", None).offline
    assert not build_mod.choose_mode("never", None).offline


def test_wheels_cover_the_target_python_and_are_cached(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("redis>=5.0\n")
    dest = tmp_path / "wheels"
    # redis needs async-timeout only below Python 3.11.3, as the base image's 3.11.2 is.
    first = build_wheels(requirements, dest, target_python="3.11.2")
    assert not first.cached
    assert any(name.startswith("redis-") for name in first.wheels)
    assert any(name.startswith("async_timeout-") for name in first.wheels)
    second = build_wheels(requirements, dest, target_python="3.11.2")
    assert second.cached and second.wheels == first.wheels
    requirements.write_text("idna\n")
    third = build_wheels(requirements, dest, target_python="3.11.2")
    assert not third.cached
    assert not any(name.startswith("redis-") for name in third.wheels)


# -- build ----------------------------------------------------------------------------

TINY_BUILD = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG GIT_SHA=unknown
ARG OFFLINE=0
RUN echo "sha=$GIT_SHA offline=$OFFLINE" > /build-info
"""


def _build_settings(
    tmp_path: Path,
    service: str,
    base: str = BASE_IMAGE,
    env: dict[str, str] | None = None,
) -> Settings:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(TINY_BUILD)
    path = tmp_path / "releasegate.toml"
    path.write_text(
        f'[service]\nname = "{service}"\n[build]\ncontext = "ctx"\n'
        f'repository = "releasegate-test/{service}"\nbase_image = "{base}"\n'
    )
    return load_config(path, env or {})


def _remove_repository(client: docker.DockerClient, repository: str) -> None:
    for image in client.images.list(name=repository):
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(image.id, force=True)


def test_offline_build_labels_tags_and_build_args(
    client: docker.DockerClient, tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_base_image(client)
    sha = uuid.uuid4().hex + "abcdefgh"
    monkeypatch.setenv("GITHUB_SHA", sha)
    settings = _build_settings(tmp_path, service, env={"GITHUB_REPOSITORY": "example/notes"})
    repository = f"releasegate-test/{service}"
    logs: list[str] = []
    try:
        result = build_mod.build(
            settings, mode="always", tags=["candidate"], version="1.4.0", on_log=logs.append
        )
        assert result.offline and result.mode_reason == "offline mode requested"
        assert result.tags == [f"{repository}:{sha[:12]}", f"{repository}:candidate"]
        assert result.ref == result.image_id and result.image_id.startswith("sha256:")
        assert result.wheels is None  # no requirements.txt in this context
        image = client.images.get(f"{repository}:candidate")
        assert image.id == result.image_id
        labels = image.labels
        assert labels["org.opencontainers.image.revision"] == sha
        assert labels["org.opencontainers.image.version"] == "1.4.0"
        assert labels["org.opencontainers.image.source"] == "https://github.com/example/notes"
        assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE
        datetime.strptime(labels["org.opencontainers.image.created"], "%Y-%m-%dT%H:%M:%SZ")
        info = client.containers.run(image.id, ["cat", "/build-info"], remove=True)
        assert info.decode().strip() == f"sha={sha} offline=1"
        assert any("Step" in line for line in logs)
    finally:
        _remove_repository(client, repository)


def test_source_date_epoch_makes_rebuilds_identical(
    client: docker.DockerClient, tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_base_image(client)
    monkeypatch.setenv("GITHUB_SHA", "ab" * 20)
    settings = _build_settings(tmp_path, service, env={"SOURCE_DATE_EPOCH": "1700000000"})
    try:
        first = build_mod.build(settings, mode="always")
        second = build_mod.build(settings, mode="always")
        assert first.image_id == second.image_id
        assert first.labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    finally:
        _remove_repository(client, f"releasegate-test/{service}")


def test_failing_build_step_is_a_check_failure(
    client: docker.DockerClient, tmp_path: Path, service: str
) -> None:
    ensure_base_image(client)
    settings = _build_settings(tmp_path, service)
    # The failing step comes first: no intermediate image is left behind.
    (settings.root / "ctx" / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN exit 7\n"
    )
    try:
        with pytest.raises(CheckFailed, match=r"image build failed: .*non-zero code: 7"):
            build_mod.build(settings, mode="always")
    finally:
        _remove_repository(client, f"releasegate-test/{service}")


def test_offline_build_without_its_base_image_names_the_script(
    tmp_path: Path, service: str
) -> None:
    settings = _build_settings(tmp_path, service, base="releasegate-test/absent:0")
    with pytest.raises(ConfigError, match=r"build-base-image\.sh"):
        build_mod.build(settings, mode="always")


# -- deploy, ps, stop -----------------------------------------------------------------


def test_deploy_waits_until_ready_and_replaces_the_same_color(
    client: docker.DockerClient, tiny_image: str, settings: Settings
) -> None:
    progress: list[str] = []
    first = containers.deploy(
        settings, "green", tiny_image, release="7", on_progress=progress.append
    )
    assert first.container == f"{settings.service}-green" and first.replaced is None
    assert first.release == "7"
    assert get(settings, "green", "/readyz").json() == {"path": "/readyz", "mode": "ok"}
    container = client.containers.get(first.container_id)
    labels = container.labels
    assert labels["releasegate.color"] == "green" and labels["releasegate.image"] == tiny_image
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert "RG_TEST_TOKEN=tok-3f9a1c" in container.attrs["Config"]["Env"]
    assert not any(e.startswith("RG_TEST_UNSET=") for e in container.attrs["Config"]["Env"])
    assert any("starting" in line for line in progress)

    second = containers.deploy(settings, "green", tiny_image)
    assert second.replaced == first.container
    assert second.container_id != first.container_id
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(first.container_id)
    assert get(settings, "green").status_code == 200


def test_ps_shows_both_colors(tiny_image: str, settings: Settings) -> None:
    containers.deploy(settings, "blue", tiny_image)
    rows = {row.color: row for row in containers.status(settings)}
    assert rows["green"].state == "absent" and rows["green"].container is None
    blue = rows["blue"]
    assert blue.state == "running" and blue.container == f"{settings.service}-blue"
    assert blue.image == tiny_image and tiny_image in blue.image_tags
    assert blue.port == settings.raw.deploy.blue_port
    # No router runs for this config: no weight to show.
    assert blue.weight is None and containers.traffic_weights(settings) is None


def test_readiness_by_docker_health_without_a_path(
    tiny_image: str, tmp_path: Path, service: str
) -> None:
    settings = make_settings(tmp_path, service, readiness="")
    result = containers.deploy(settings, "blue", tiny_image)
    rows = {row.color: row for row in containers.status(settings)}
    assert rows["blue"].health == "healthy"
    assert result.ready_after_s > 0


def test_missing_image_is_a_config_error_and_creates_nothing(
    client: docker.DockerClient, settings: Settings
) -> None:
    # A registry that answers (scripts/test.sh starts it) and does not hold the image.
    with pytest.raises(ConfigError, match="not on this Docker host"):
        containers.deploy(settings, "green", ABSENT_IMAGE)
    with pytest.raises(ConfigError, match="does not exist"):
        containers.deploy(settings, "green", "sha256:" + "0" * 64)
    assert containers.find_container(client, settings, "green") is None


def test_container_that_exits_on_start_is_removed_with_its_logs(
    client: docker.DockerClient, tiny_image: str, settings: Settings
) -> None:
    started = time.monotonic()
    with pytest.raises(containers.DeployFailed, match="exited with code 3") as failure:
        containers.deploy(settings, "green", tiny_image, extra_env={"MODE": "exit"})
    assert time.monotonic() - started < 15  # no waiting for the full ready_timeout
    assert "boom: cannot open the configuration" in failure.value.logs
    assert containers.find_container(client, settings, "green") is None


def test_never_ready_green_is_removed_and_blue_keeps_serving(
    client: docker.DockerClient, tiny_image: str, settings: Settings
) -> None:
    blue = containers.deploy(settings, "blue", tiny_image)
    started = time.monotonic()
    with pytest.raises(containers.DeployFailed, match="not ready within 3s") as failure:
        containers.deploy(
            settings, "green", tiny_image, extra_env={"MODE": "never-ready"}, ready_timeout=3
        )
    assert 3 <= time.monotonic() - started < 15
    assert "HTTP 503" in str(failure.value) and "waiting for nothing" in str(failure.value)
    assert "tiny server in mode never-ready" in failure.value.logs
    assert containers.find_container(client, settings, "green") is None
    still = containers.find_container(client, settings, "blue")
    assert still is not None and still.id == blue.container_id
    assert get(settings, "blue", "/readyz").status_code == 200


def test_port_in_use_is_refused_before_start(
    client: docker.DockerClient, tiny_image: str, settings: Settings
) -> None:
    port = settings.raw.deploy.green_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StateError, match=f"port {port} for green is already in use"):
            containers.deploy(settings, "green", tiny_image)
    assert containers.find_container(client, settings, "green") is None


def test_stop_removes_one_color(tiny_image: str, settings: Settings) -> None:
    containers.deploy(settings, "green", tiny_image)
    assert containers.stop(settings, "green") == f"{settings.service}-green"
    assert {r.color: r.state for r in containers.status(settings)}["green"] == "absent"
    assert containers.stop(settings, "green") is None


def test_cli_deploy_ps_and_exit_codes(tiny_image: str, settings: Settings) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RELEASEGATE), "--config", str(settings.path), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**settings.env, "RG_TEST_TOKEN": "tok-3f9a1c"},
            check=False,
        )

    missing = run("deploy", "--no-ledger", "--color", "green", "--image", ABSENT_IMAGE)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith(f"error: image {ABSENT_IMAGE}")
    failed = run(
        "deploy", "--no-ledger", "--color", "green", "--image", tiny_image, "--env", "MODE=exit"
    )
    assert failed.returncode == 1
    assert "| boom: cannot open the configuration" in failed.stderr
    ok = run("deploy", "--no-ledger", "--color", "blue", "--image", tiny_image)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("blue is ready:")
    ps = run("ps")
    assert ps.returncode == 0
    lines = {line.split()[0]: line for line in ps.stdout.splitlines()[2:]}
    assert "running" in lines["blue"] and tiny_image in lines["blue"]
    assert "absent" in lines["green"]
    # Passed-through values are treated as secrets in everything printed.
    assert "tok-3f9a1c" not in ok.stdout + ok.stderr + ps.stdout
