"""Build friction on the real Docker engine: an unreachable index or registry gets a hint
naming what the offline build needs, and ``releasegate build`` says where it wrote the
wheels.

Every image is tagged under a unique ``releasegate-test/`` repository and removed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import BASE_IMAGE, ensure_base_image

from releasegate.config import Settings, load_config
from releasegate.deploy import build as build_mod
from releasegate.deploy.wheels import STAMP_NAME
from releasegate.errors import CheckFailed

RELEASEGATE = Path(sys.executable).parent / "releasegate"
# An index whose name never resolves (RFC 2606), retried once (pip logs each retry with
# its cause, as it does five times by default), with a short timeout.
PIP_FROM_NOWHERE = (
    "RUN python3 -m venv /venv && /venv/bin/pip install --disable-pip-version-check"
    " --retries 1 --timeout 3 --index-url https://pypi.invalid/simple idna\n"
)


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    engine.ping()
    ensure_base_image(engine)
    yield engine
    engine.close()


@pytest.fixture
def repository(client: docker.DockerClient) -> Iterator[str]:
    name = f"releasegate-test/build-{uuid.uuid4().hex[:8]}"
    yield name
    for image in client.images.list(name=name):
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(image.id, force=True)


def project(tmp_path: Path, repository: str, dockerfile: str, **files: str) -> Settings:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (context / name).write_text(text)
    path = tmp_path / "releasegate.toml"
    path.write_text(
        f'[service]\nname = "svc"\n[build]\ncontext = "ctx"\nrepository = "{repository}"\n'
        f'base_image = "{BASE_IMAGE}"\n'
    )
    return load_config(path, {})


def test_online_build_without_an_index_names_what_offline_needs(
    client: docker.DockerClient, tmp_path: Path, repository: str
) -> None:
    # The base image is local (the build never pulls it); the index is not reachable.
    dockerfile = f"FROM {BASE_IMAGE}\n{PIP_FROM_NOWHERE}"
    settings = project(tmp_path, repository, dockerfile)
    with pytest.raises(CheckFailed) as failed:
        build_mod.build(settings, mode="never")
    message = str(failed.value)
    assert message.startswith("image build failed: ")
    assert "no registry or package index could be reached (" in message
    assert "Failed to establish a new connection" in message
    assert "\x1b" not in message  # the engine's colour codes are left out
    for need in ("ARG BASE_IMAGE with FROM ${BASE_IMAGE}", "OFFLINE build arg", "wheels stage"):
        assert need in message
    assert "docs/own-service.md" in message
    assert "\n" not in message


def test_unresolvable_registry_of_the_base_image_gets_the_hint(
    client: docker.DockerClient, tmp_path: Path, repository: str
) -> None:
    dockerfile = (
        "ARG BASE_IMAGE=registry.invalid/none/python:3\nFROM ${BASE_IMAGE}\nARG OFFLINE=0\n"
        "COPY wheel[s] requirements.txt /tmp/install/\n"
    )
    settings = project(tmp_path, repository, dockerfile, **{"requirements.txt": ""})
    with pytest.raises(CheckFailed) as failed:
        build_mod.build(settings, mode="never")
    message = str(failed.value)
    assert "registry.invalid" in message
    # This Dockerfile has what the offline mode needs: the hint says to use it.
    assert "build offline with releasegate build --offline" in message


def test_offline_build_that_reaches_for_the_network_says_it_has_none(
    client: docker.DockerClient, tmp_path: Path, repository: str
) -> None:
    dockerfile = f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nARG OFFLINE=0\n{PIP_FROM_NOWHERE}"
    settings = project(tmp_path, repository, dockerfile)
    with pytest.raises(CheckFailed, match="the offline build has no network") as failed:
        build_mod.build(settings, mode="always")
    assert "the Dockerfile lacks a wheels stage" in str(failed.value)


def test_a_failure_with_no_network_cause_gets_no_hint(
    client: docker.DockerClient, tmp_path: Path, repository: str
) -> None:
    settings = project(tmp_path, repository, f"FROM {BASE_IMAGE}\nRUN exit 7\n")
    with pytest.raises(CheckFailed) as failed:
        build_mod.build(settings, mode="never")
    assert str(failed.value).endswith("returned a non-zero code: 7")


def test_build_says_where_it_writes_the_wheels(
    client: docker.DockerClient, tmp_path: Path, repository: str
) -> None:
    dockerfile = (
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG OFFLINE=0\n"
        "COPY requirements.txt wheel[s] /tmp/install/\n"
        "RUN python3 -m venv /venv && /venv/bin/pip install --no-index"
        " --find-links /tmp/install -r /tmp/install/requirements.txt\n"
    )
    settings = project(tmp_path, repository, dockerfile, **{"requirements.txt": "idna\n"})
    wheels = settings.root / "ctx" / "wheels"

    def cli_build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RELEASEGATE), "--config", str(settings.path), "build", "--offline", *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    first = cli_build("--quiet")
    assert first.returncode == 0, first.stderr
    said = [line for line in first.stderr.splitlines() if line.startswith("wheels: ")]
    assert said == [
        f"wheels: wrote 1 wheel and {STAMP_NAME} to {wheels}"
        " (inside the build context: keep wheels/ out of version control)"
    ]
    assert (wheels / STAMP_NAME).is_file() and list(wheels.glob("idna-*.whl"))

    # Streamed: the line comes once, in the log, before the image is built.
    second = cli_build()
    assert second.returncode == 0, second.stderr
    lines = second.stderr.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("wheels: ")]
    assert len(said) == 1
    assert lines[said[0]].startswith(f"wheels: reused the 1 wheel in {wheels} ({STAMP_NAME}")
    assert said[0] < next(i for i, line in enumerate(lines) if line.startswith("building "))
