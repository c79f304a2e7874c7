"""What ``releasegate init`` reads from a Dockerfile, and its readiness checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.init.dockerfile import (
    Finding,
    exposed_port,
    healthcheck_path,
    instructions,
    port_variable,
    readiness,
)

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "app" / "Dockerfile").read_text()

NAIVE = """\
FROM python:3.12-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
EXPOSE 8080/tcp 9090
CMD ["python", "-m", "app"]
"""


def _by_topic(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.topic: finding for finding in findings}


def test_instructions_join_continuations_and_skip_comments() -> None:
    text = "# a comment\nFROM base AS deps\nRUN a \\\n  # inside\n  && b\n\nenv X=1\n"
    found = instructions(text)
    assert [(i.keyword, i.arguments, i.line) for i in found] == [
        ("FROM", "base AS deps", 2),
        ("RUN", "a && b", 3),
        ("ENV", "X=1", 7),
    ]


def test_the_escape_directive_changes_the_continuation_character() -> None:
    found = instructions("# escape=`\nFROM base\nRUN a `\n  b\n")
    assert [i.arguments for i in found] == ["base", "a b"]


def test_the_example_dockerfile_is_ready() -> None:
    findings = readiness(EXAMPLE, "/readyz")
    assert [f.topic for f in findings] == ["offline base image", "offline wheels", "health", "user"]
    assert all(f.ok for f in findings), findings
    assert exposed_port(EXAMPLE) == 8000
    assert port_variable(EXAMPLE) == ("NOTES_PORT", 8000)
    assert healthcheck_path(EXAMPLE) is None  # a python module, not a URL


def test_a_naive_dockerfile_gets_what_to_change() -> None:
    findings = _by_topic(readiness(NAIVE, "/ready"))
    assert not any(f.ok for f in findings.values())
    base = findings["offline base image"].message
    assert "add 'ARG BASE_IMAGE=python:3.12-slim' before the first FROM" in base
    assert "write 'FROM ${BASE_IMAGE}' instead of 'FROM python:3.12-slim' (line 1)" in base
    wheels = findings["offline wheels"].message
    assert "ARG OFFLINE=0" in wheels and "wheel[s]" in wheels and "--no-index" in wheels
    assert "/ready" in findings["health"].message
    assert "USER 65534:65534" in findings["user"].message
    assert exposed_port(NAIVE) == 8080
    assert port_variable(NAIVE) is None


def test_base_image_half_done_names_the_missing_half() -> None:
    declared_only = "ARG BASE_IMAGE=python:3.12\nFROM python:3.12\n"
    message = _by_topic(readiness(declared_only, "/r"))["offline base image"].message
    assert "add 'ARG" not in message and "write 'FROM ${BASE_IMAGE}'" in message
    used = "ARG BASE_IMAGE=python:3.12\nFROM --platform=linux/amd64 $BASE_IMAGE AS deps\n"
    assert _by_topic(readiness(used, "/r"))["offline base image"].ok
    late = "FROM python:3.12\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
    assert not _by_topic(readiness(late, "/r"))["offline base image"].ok


@pytest.mark.parametrize(
    ("user_lines", "ok"),
    [
        ("USER app", True),
        ("USER 1000:1000", True),
        ("USER root", False),
        ("USER app\nUSER 0", False),
        ("", False),
    ],
)
def test_the_final_stage_must_not_run_as_root(user_lines: str, ok: bool) -> None:
    # A USER of an earlier stage does not count.
    text = f"FROM a AS build\nUSER app\nFROM b\n{user_lines}\n"
    assert _by_topic(readiness(text, "/r"))["user"].ok is ok


def test_healthcheck_none_is_no_healthcheck() -> None:
    assert not _by_topic(readiness("FROM a\nHEALTHCHECK NONE\n", "/r"))["health"].ok
    text = "FROM a\nHEALTHCHECK --interval=5s CMD curl -fsS http://127.0.0.1:8080/health/ready\n"
    assert _by_topic(readiness(text, "/r"))["health"].ok
    assert healthcheck_path(text) == "/health/ready"


@pytest.mark.parametrize(
    ("env", "found"),
    [
        ("ENV PORT=8080", ("PORT", 8080)),
        ("ENV PYTHONUNBUFFERED=1 APP_PORT=9000", ("APP_PORT", 9000)),
        ("ENV PORT 7000", ("PORT", 7000)),
        ('ENV WEB_PORT="$OTHER"', ("WEB_PORT", None)),
        ("ENV SUPPORT=1", None),
    ],
)
def test_the_port_variable(env: str, found: tuple[str, int | None] | None) -> None:
    assert port_variable(f"FROM a\n{env}\n") == found
    # Only the final stage's environment reaches the running container.
    assert port_variable(f"FROM a\n{env}\nFROM b\n") is None
