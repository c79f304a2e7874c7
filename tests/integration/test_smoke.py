"""Smoke checks against a real HTTP server on 127.0.0.1: assertions, retries, files, CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import free_port

from releasegate.cli import main
from releasegate.errors import ConfigError
from releasegate.gates.smoke import load_smoke_file, parse_smoke, run_smoke

TOKEN = "smoke-T0ken-8c1e"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    flaky_failures = 0
    seen: list[tuple[str, str, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.seen.append((self.command, url.path, dict(self.headers), body))
        route = (self.command, url.path)
        if route == ("GET", "/healthz"):
            self._send(200, {"status": "ok"})
        elif route == ("GET", "/documents"):
            owner = int(query.get("owner_id", "0"))
            self._send(200, [{"id": 7, "owner_id": owner, "title": "notes"}])
        elif route == ("GET", "/documents/7"):
            document = {
                "id": 7,
                "title": "Notes of Ann",
                "tags": ["a", "b"],
                "owner": {"id": 3, "name": "Ann"},
                "score": 1.5,
                "deleted": None,
                "public": True,
            }
            self._send(200, document)
        elif route == ("POST", "/sessions"):
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"detail": "no token"})
                return
            self._send(201, {"id": "s-1", **json.loads(body or b"{}")})
        elif route == ("POST", "/echo"):
            self._send(200, body, self.headers.get("Content-Type", "text/plain"))
        elif route == ("GET", "/flaky"):
            if self.server.flaky_failures > 0:
                self.server.flaky_failures -= 1
                self._send(503, {"detail": "warming up"})
            else:
                self._send(200, {"status": "ok"})
        elif route == ("GET", "/slow"):
            time.sleep(float(query.get("ms", "200")) / 1000)
            self._send(200, {"status": "ok"})
        elif route == ("GET", "/html"):
            self._send(500, b"<html>Internal   Server\nError</html>", "text/html")
        else:
            self._send(404, {"detail": "not found"})

    do_GET = _route
    do_POST = _route


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def url_of(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


GOOD_TOML = """\
[defaults]
timeout = "2s"
headers = { Accept = "application/json" }
headers_env = { Authorization = "SMOKE_AUTH" }

[[checks]]
name = "liveness"
path = "/healthz"
max_latency = "1s"
expect = [{ field = "status", equals = "ok" }]

[[checks]]
name = "owner documents"
path = "/documents"
query = { owner_id = 3 }
expect = [{ field = "$", type = "array" }, { field = "0.owner_id", equals = 3 }]

[[checks]]
name = "one document"
path = "/documents/7"
expect = [
  { field = "id", equals = 7, type = "integer" },
  { field = "score", type = "number" },
  { field = "owner.name", equals = "Ann" },
  { field = "tags", contains = "b", type = "array" },
  { field = "title", contains = "Ann" },
  { field = "owner", contains = "id", type = "object" },
  { field = "deleted", exists = true, type = "null" },
  { field = "public", equals = true, type = "boolean" },
  { field = "secret", exists = false },
  { field = "$.tags.1", equals = "b" },
]

[[checks]]
name = "create session"
method = "post"
path = "/sessions"
json = { user_id = 1, theme = "dark" }
status = [200, 201]
expect = [{ field = "id", equals = "s-1" }, { field = "theme", equals = "dark" }]

[[checks]]
name = "text body"
method = "POST"
path = "/echo"
headers = { Content-Type = "text/plain" }
body = "hello smoke"
"""

GOOD_YAML = """\
defaults:
  timeout: 2s
  headers: {Accept: application/json}
  headers_env: {Authorization: SMOKE_AUTH}
checks:
  - name: liveness
    path: /healthz
    max_latency: 1s
    expect:
      - {field: status, equals: ok}
  - name: create session
    method: POST
    path: /sessions
    json: {user_id: 1}
    status: 201
    expect:
      - {field: user_id, equals: 1}
"""

ENV = {"SMOKE_AUTH": f"Bearer {TOKEN}"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_passing_checks_from_toml(tmp_path: Path, server: _Server) -> None:
    spec = load_smoke_file(write(tmp_path, "smoke.toml", GOOD_TOML))
    report = run_smoke(spec, url_of(server) + "/", env=ENV)
    assert report.ok, report.render_text()
    assert [r.name for r in report.results] == [
        "liveness",
        "owner documents",
        "one document",
        "create session",
        "text body",
    ]
    assert [r.status for r in report.results] == [200, 200, 200, 201, 200]
    assert all(r.attempts == 1 and r.latency_ms is not None for r in report.results)
    # What the server received: query, JSON body, text body, env-provided header.
    by_path = {(m, p): (h, b) for m, p, h, b in server.seen}
    headers, body = by_path[("POST", "/sessions")]
    assert json.loads(body) == {"user_id": 1, "theme": "dark"}
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/json"
    assert by_path[("POST", "/echo")][1] == b"hello smoke"
    data = report.to_dict()
    assert data["ok"] and data["passed"] == 5 and data["failed"] == 0
    assert TOKEN not in json.dumps(data) + report.render_text()
    assert "5/5 checks passed; passed" in report.render_text()


def test_yaml_file_runs_like_toml(tmp_path: Path, server: _Server) -> None:
    spec = load_smoke_file(write(tmp_path, "smoke.yaml", GOOD_YAML))
    assert [c.name for c in spec.checks] == ["liveness", "create session"]
    assert spec.checks[0].max_latency == 1.0
    report = run_smoke(spec, url_of(server), env=ENV)
    assert report.ok, report.render_text()
    assert report.results[1].status == 201


def test_failed_assertions_say_what_differs(server: _Server) -> None:
    spec = parse_smoke(
        {
            "checks": [
                {
                    "name": "document",
                    "path": "/documents/7",
                    "expect": [
                        {"field": "id", "equals": "7"},
                        {"field": "public", "equals": 1},
                        {"field": "owner.email", "exists": True},
                        {"field": "owner", "exists": False},
                        {"field": "score", "type": "integer"},
                        {"field": "tags", "contains": "z"},
                        {"field": "tags.5", "equals": "a"},
                        {"field": "title.x", "type": "string"},
                    ],
                },
                {"name": "wrong status", "path": "/html", "status": 200},
                {
                    "name": "not json",
                    "path": "/echo",
                    "method": "POST",
                    "body": "plain",
                    "expect": [{"field": "a", "exists": True}],
                },
            ]
        }
    )
    report = run_smoke(spec, url_of(server), env={})
    assert not report.ok
    document, status, not_json = report.results
    assert document.failures == [
        "id: 7 != '7'",
        "public: True != 1",
        "owner.email: missing",
        "owner: present ({'id': 3, 'name': 'Ann'}), expected absent",
        "score: type number, expected integer",
        "tags: ['a', 'b'] does not contain 'z'",
        "tags.5: missing",
        "title.x: missing",
    ]
    assert status.failures == [
        "status 500, expected 200 (body: <html>Internal Server Error</html>)"
    ]
    assert not_json.failures == ["response is not JSON"]
    text = report.render_text()
    assert "0/3 checks passed; FAILED" in text and "owner.email: missing" in text


def test_retries_until_the_check_passes(server: _Server) -> None:
    server.flaky_failures = 2
    spec = parse_smoke(
        {
            "defaults": {"retries": 2, "retry_delay": "10ms"},
            "checks": [{"name": "flaky", "path": "/flaky"}],
        }
    )
    result = run_smoke(spec, url_of(server)).results[0]
    assert result.ok and result.attempts == 3 and result.status == 200
    assert sum(1 for _, path, _, _ in server.seen if path == "/flaky") == 3


def test_retries_run_out(server: _Server) -> None:
    server.flaky_failures = 5
    spec = parse_smoke(
        {"checks": [{"name": "flaky", "path": "/flaky", "retries": 1, "retry_delay": 0}]}
    )
    result = run_smoke(spec, url_of(server)).results[0]
    assert not result.ok and result.attempts == 2
    assert result.failures[0].startswith("status 503, expected 200")


def test_latency_limit_and_timeout(server: _Server) -> None:
    spec = parse_smoke(
        {
            "checks": [
                {"name": "too slow", "path": "/slow", "query": {"ms": 150}, "max_latency": "20ms"},
                {"name": "timeout", "path": "/slow", "query": {"ms": 1000}, "timeout": "100ms"},
            ]
        }
    )
    slow, timeout = run_smoke(spec, url_of(server)).results
    assert slow.status == 200 and slow.latency_ms is not None and slow.latency_ms >= 150
    assert len(slow.failures) == 1 and slow.failures[0].endswith("> max 20ms")
    assert timeout.status is None and timeout.failures == ["no response within 0.1s"]


def test_unreachable_target_fails_each_check() -> None:
    spec = parse_smoke({"checks": [{"name": "liveness", "path": "/healthz"}]})
    report = run_smoke(spec, f"http://127.0.0.1:{free_port()}")
    assert not report.ok
    assert report.results[0].status is None
    assert report.results[0].failures[0].startswith("request failed: ConnectError")


def test_missing_header_variable_is_a_config_error(server: _Server) -> None:
    spec = parse_smoke(
        {"checks": [{"name": "s", "path": "/healthz", "headers_env": {"X-Token": "NO_SUCH_VAR"}}]}
    )
    with pytest.raises(ConfigError, match="environment variable NO_SUCH_VAR"):
        run_smoke(spec, url_of(server), env={})
    assert server.seen == []


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("smoke.toml", "[[checks]\nname = 1", "smoke.toml: invalid TOML"),
        ("smoke.yaml", "checks: [\n  - name: x", "smoke.yaml: invalid YAML"),
        ("smoke.yaml", "- just\n- a list\n", "expected a table/mapping with 'checks'"),
        ("smoke.toml", "[defaults]\nretries = 1\n", "missing required key 'checks'"),
        ("smoke.toml", "checks = []\n", "checks: List should have at least 1 item"),
        (
            "smoke.toml",
            '[[checks]]\nname = "a"\npath = "/"\nstatuss = 200\n',
            "unknown key 'checks.0.statuss'",
        ),
        (
            "smoke.toml",
            '[[checks]]\nname = "a"\npath = "/"\nexpect = [{ field = "x", equal = 1 }]\n',
            "unknown key 'checks.0.expect.0.equal'",
        ),
        (
            "smoke.toml",
            '[[checks]]\nname = "a"\npath = "/"\nexpect = [{ field = "x" }]\n',
            "needs one of equals, exists, type, contains",
        ),
        ("smoke.toml", '[[checks]]\nname = "a"\npath = "/"\nstatus = 999\n', "HTTP status"),
        ("smoke.toml", '[[checks]]\nname = "a"\npath = "healthz"\n', "starting with '/'"),
        ("smoke.toml", '[[checks]]\nname = "a"\npath = "/"\nmethod = "FETCH"\n', "FETCH"),
        (
            "smoke.toml",
            '[[checks]]\nname = "a"\npath = "/"\nbody = "x"\njson = {a = 1}\n',
            "set json or body, not both",
        ),
        (
            "smoke.toml",
            '[[checks]]\nname = "a"\npath = "/"\n[[checks]]\nname = "a"\npath = "/b"\n',
            "duplicate check name 'a'",
        ),
        (
            "smoke.toml",
            '[[checks]]\nname = "a"\npath = "/"\nexpect = [{ field = "a..b", exists = true }]\n',
            "malformed dotted path",
        ),
        ("smoke.toml", '[[checks]]\nname = "a"\npath = "/"\ntimeout = "soon"\n', "duration"),
        ("smoke.json", "{}", "unsupported check file type"),
    ],
)
def test_bad_files_are_config_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_smoke_file(write(tmp_path, name, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smoke check file not found"):
        load_smoke_file(tmp_path / "nope.toml")


def test_the_example_smoke_file_is_valid() -> None:
    spec = load_smoke_file(Path(__file__).resolve().parents[2] / "smoke.toml")
    assert {"liveness", "readiness", "create a session"} <= {c.name for c in spec.checks}


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_cli_smoke_exit_codes(
    tmp_path: Path,
    server: _Server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMOKE_AUTH", f"Bearer {TOKEN}")
    good = write(tmp_path, "good.toml", GOOD_TOML)
    code, out, _ = _cli(
        ["smoke", "--target", url_of(server), "--file", str(good), "--json"], capsys
    )
    assert code == 0
    data = json.loads(out)
    assert data["ok"] and len(data["checks"]) == 5
    assert TOKEN not in out

    bad = write(tmp_path, "bad.toml", '[[checks]]\nname = "x"\npath = "/nope"\n')
    code, out, _ = _cli(["smoke", "--target", url_of(server), "--file", str(bad)], capsys)
    assert code == 1
    assert "status 404, expected 200" in out and "0/1 checks passed; FAILED" in out

    broken = write(tmp_path, "broken.toml", '[[checks]]\nname = "x"\n')
    code, _, err = _cli(["smoke", "--target", url_of(server), "--file", str(broken)], capsys)
    assert code == 2
    assert err.startswith("error: broken.toml: missing required key 'checks.0.path'")

    code, _, err = _cli(["smoke", "--target", "ftp://x", "--file", str(good)], capsys)
    assert code == 2 and "invalid target URL" in err


def test_cli_smoke_uses_the_config(
    tmp_path: Path, server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "checks.yml", "checks:\n  - {name: live, path: /healthz}\n")
    config = write(
        tmp_path,
        "releasegate.toml",
        f'[service]\nname = "notes"\n\n[smoke]\nfile = "checks.yml"\nhost = "{url_of(server)}"\n',
    )
    code, out, _ = _cli(["--config", str(config), "smoke"], capsys)
    assert code == 0, out
    assert "1/1 checks passed" in out
