"""Request names read from a locustfile's source, and threshold scopes checked against them."""

from __future__ import annotations

from pathlib import Path

from releasegate.gates.locustfile import request_names, unknown_scopes

REPO_ROOT = Path(__file__).resolve().parents[2]

SOURCE = """
import os
from locust import HttpUser, task

MAX = int(os.environ.get("MAX_ID", "10"))

class Reader(HttpUser):
    @task
    def listing(self):
        self.client.get("/documents?owner_id=1", name="GET /documents")

    @task
    def health(self):
        self.client.get("/healthz")

    @task
    def raw(self):
        self.client.request("DELETE", "/cache", name="purge")

    @task
    def wrapped(self):
        with self.client.post("/sessions", json={}, name="POST /sessions", catch_response=True):
            pass
"""


def test_names_come_from_name_or_path_with_their_method() -> None:
    names = request_names(SOURCE)
    assert not names.dynamic
    assert names.names == {
        ("GET", "GET /documents"),
        ("GET", "/healthz"),
        ("DELETE", "purge"),
        ("POST", "POST /sessions"),
    }
    # os.environ.get(...) is not a request.
    assert not names.covers("MAX_ID")


def test_a_scope_is_a_name_or_method_plus_name() -> None:
    names = request_names(SOURCE)
    assert names.covers("GET /documents")
    assert names.covers("/healthz")
    assert names.covers("GET /healthz")
    assert names.covers("DELETE purge")
    assert not names.covers("POST /healthz")
    assert unknown_scopes(
        ["total", "GET /documents", "GET /document", "/healthz", "GET /document"], names
    ) == ["GET /document"]


def test_a_name_computed_at_run_time_checks_no_scope() -> None:
    names = request_names(
        "class U:\n    def t(self, i):\n        self.client.get(f'/items/{i}')\n"
        "        self.client.get('/x', name='x')\n"
    )
    assert names.dynamic
    assert unknown_scopes(["nothing like it"], names) == []


def test_no_request_named_statically_checks_no_scope() -> None:
    names = request_names("def t(session):\n    session.send()\n")
    assert unknown_scopes(["GET /x"], names) == []


def test_other_calls_that_name_a_request_count() -> None:
    names = request_names("events.request.fire(request_type='grpc', name='Search')\n")
    assert names.covers("Search")
    assert names.covers("grpc Search")


def test_the_example_locustfile_names_its_endpoints() -> None:
    names = request_names((REPO_ROOT / "loadtests" / "locustfile.py").read_text())
    for scope in ("GET /documents", "GET /documents/{id}", "POST /sessions", "GET /healthz"):
        assert names.covers(scope)
    assert unknown_scopes(["GET /documents", "GET /notes"], names) == ["GET /notes"]
