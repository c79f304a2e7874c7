"""The hint a failed build gets when its log shows an unreachable registry or index.

The log lines are what the engine, pip, curl and apt print for a DNS failure or a refused
connection; tests/integration/test_build_failures.py produces some of them for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.deploy.build_hints import network_hint, offline_gaps, unreachable_line

REPO_ROOT = Path(__file__).resolve().parents[2]

PIP_DNS = (
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None))"
    " after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection."
    "HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno -3]"
    " Temporary failure in name resolution')': /simple/idna/"
)
PIP_REFUSED = (
    "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError("
    "...: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/x/"
)
ENGINE_PULL = (
    'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io'
    " on 10.0.0.2:53: no such host"
)
CURL = "curl: (6) Could not resolve host: example.com"
APT = (
    "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease"
    "  Temporary failure resolving 'deb.debian.org'"
)

PLAIN = "FROM python:3.11-slim\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\n"


@pytest.mark.parametrize("line", [PIP_DNS, PIP_REFUSED, ENGINE_PULL, CURL, APT])
def test_unreachable_hosts_are_recognised(line: str) -> None:
    log = ["Step 3/5 : RUN pip install -r requirements.txt", line, "ERROR: No matching dist"]
    assert unreachable_line(log) == line


def test_other_failures_get_no_hint() -> None:
    log = [
        "Step 2/2 : RUN exit 7",
        "The command '/bin/sh -c exit 7' returned a non-zero code: 7",
        "ERROR: Could not find a version that satisfies the requirement nosuchpackage",
    ]
    assert unreachable_line(log) is None
    assert network_hint(log, PLAIN, offline=False) is None


def test_online_failure_lists_what_an_offline_build_needs() -> None:
    hint = network_hint([PIP_DNS], PLAIN, offline=False)
    assert hint is not None
    assert hint.startswith("no registry or package index could be reached (…")
    assert "Temporary failure in name resolution" in hint
    assert "ARG BASE_IMAGE with FROM ${BASE_IMAGE}" in hint
    assert "an OFFLINE build arg" in hint
    assert "a wheels stage" in hint
    assert hint.endswith("(see releasegate's docs/own-service.md)")
    assert len(hint) < 500


def test_a_ready_dockerfile_is_told_to_build_offline() -> None:
    example = (REPO_ROOT / "examples" / "app" / "Dockerfile").read_text()
    assert offline_gaps(example) == []
    hint = network_hint([ENGINE_PULL], example, offline=False)
    assert hint is not None and "releasegate build --offline" in hint
    assert "needs, in the Dockerfile" not in hint


def test_gaps_are_named_one_by_one() -> None:
    base_only = "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\nRUN pip install x\n"
    assert [gap.split(" ")[0] for gap in offline_gaps(base_only)] == ["an", "a"]
    # The ARG alone is not enough: the FROM must use it.
    unused = "ARG BASE_IMAGE\nARG OFFLINE=0\nFROM python:3.11-slim\nCOPY wheel[s] /w/\n"
    assert offline_gaps(unused) == ["ARG BASE_IMAGE with FROM ${BASE_IMAGE}"]
    braces_free = "ARG BASE_IMAGE\nFROM $BASE_IMAGE AS deps\nARG OFFLINE\nCOPY wheels/ /w/\n"
    assert offline_gaps(braces_free) == []


def test_offline_failure_says_the_build_has_no_network() -> None:
    lacks_wheels = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG OFFLINE=0\nRUN pip install x\n"
    hint = network_hint(["x", PIP_DNS], lacks_wheels, offline=True)
    assert hint is not None
    assert hint.startswith("the offline build has no network")
    assert "the Dockerfile lacks a wheels stage" in hint
    assert "OFFLINE build arg" not in hint


def test_a_long_log_line_is_shortened_around_the_evidence() -> None:
    hint = network_hint(["y" * 300 + " " + PIP_DNS + " " + "x" * 500], PLAIN, offline=False)
    assert hint is not None
    assert "Temporary failure in name resolution" in hint
    assert "x" * 100 not in hint and "y" * 100 not in hint
    assert hint.count("…") == 2
