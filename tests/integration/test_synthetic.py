"""Synthetic traffic end to end: the marker on every gate, watch and smoke request, the
[slo] tag filter, and the example service marking, then cleaning up, what it wrote.

Locust runs for real against a recording HTTP server on 127.0.0.1; the example service
runs in-process (its ASGI app through httpx) on real PostgreSQL and Redis, and the cleanup
runs as the configured after_gate hook, a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from conftest import REPO_ROOT, Project

from releasegate import __version__
from releasegate.config import SloSection
from releasegate.errors import ConfigError
from releasegate.gates.slo import run_slo_gate
from releasegate.gates.slo_verdicts import Verdict
from releasegate.gates.smoke import parse_smoke, run_smoke
from releasegate.hooks import run_hook

UA = f"releasegate/{__version__} (synthetic)"
EXAMPLE_APP = REPO_ROOT / "examples" / "app"


# -- a server that records who asked what --------------------------------------------


class Recorder(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.seen: list[tuple[str, str, str | None, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> set[str]:
        with self.lock:
            return {path for _, path, _, _ in self.seen}


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Recorder

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.seen.append(
                (
                    self.command,
                    self.path.split("?")[0],
                    self.headers.get("X-Releasegate-Synthetic"),
                    self.headers.get("User-Agent"),
                )
            )
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    srv = Recorder()
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


# A user-written locustfile: two client kinds, a tagged write task, its own headers.
LOCUSTFILE = """\
from locust import FastHttpUser, HttpUser, constant_throughput, tag, task


class Reader(FastHttpUser):
    wait_time = constant_throughput(10)

    @tag("read")
    @task(3)
    def read(self):
        self.client.get("/read", name="GET /read")

    @tag("write")
    @task(1)
    def write(self):
        self.client.post("/write", json={}, name="POST /write",
                         headers={"x-releasegate-synthetic": "spoofed"})


class Browser(HttpUser):
    wait_time = constant_throughput(10)

    @tag("read")
    @task
    def browse(self):
        self.client.get("/browse", name="GET /browse", headers={"User-Agent": "own-agent"})
"""


def slo(tmp_path: Path, **values: Any) -> SloSection:
    locustfile = tmp_path / "locustfile.py"
    locustfile.write_text(LOCUSTFILE)
    return SloSection.model_validate(
        {
            "locustfile": str(locustfile),
            "users": 4,
            "spawn_rate": 4,
            "warmup": "1s",
            "duration": "2s",
            "min_requests": 20,
            "thresholds": {"total": ["error_rate < 1%"]},
            **values,
        }
    )


def test_gate_requests_carry_the_marker_and_excluded_tasks_never_run(
    tmp_path: Path, recorder: Recorder
) -> None:
    section = slo(tmp_path, exclude_tags=["write"])
    result = run_slo_gate(
        section, tmp_path, recorder.url, out_dir=tmp_path / "out", synthetic_id=42
    )
    assert result.verdict is Verdict.PASS, result.reasons
    assert result.to_dict()["synthetic_marker"] == "42"
    assert recorder.paths() == {"/read", "/browse"}  # no write, from any client
    markers = {(path, marker, agent) for _, path, marker, agent in recorder.seen}
    assert markers == {("/read", "42", UA), ("/browse", "42", "own-agent")}


def test_a_manual_gate_is_marked_manual_and_tags_select_tasks(
    tmp_path: Path, recorder: Recorder
) -> None:
    result = run_slo_gate(slo(tmp_path, tags=["write"]), tmp_path, recorder.url)
    assert result.marker == "manual"
    assert recorder.paths() == {"/write"}
    # The locustfile's own spelling of the header never survives.
    assert {marker for *_, marker, _ in recorder.seen} == {"manual"}


@pytest.mark.parametrize("processes", [1, 2])
def test_a_filter_leaving_no_task_is_a_config_error_before_any_load(
    tmp_path: Path, recorder: Recorder, processes: int
) -> None:
    section = slo(tmp_path, exclude_tags=["read", "write"], processes=processes)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        run_slo_gate(section, tmp_path, recorder.url, out_dir=tmp_path / "out")
    # The --processes workers of the exited master are swept, not left to time out.
    assert time.monotonic() - started < 30
    assert "leave no task of locustfile.py to run" in str(info.value)
    assert "exclude_tags ['read', 'write']" in str(info.value)
    assert recorder.seen == []


def test_cli_gate_with_no_task_left_exits_2_with_one_error_line(
    tmp_path: Path, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    from releasegate.cli import main

    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    config = tmp_path / "releasegate.toml"
    config.write_text(
        '[service]\nname = "notes"\n\n[slo]\nlocustfile = "locustfile.py"\n'
        'tags = ["nothing"]\n\n[slo.thresholds]\ntotal = ["error_rate < 1%"]\n'
    )
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config), "gate", "--target", recorder.url, "--json"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("error:") == 1 and err.startswith("error: slo.tags / slo.exclude_tags")
    assert recorder.seen == []


def test_smoke_requests_carry_the_marker(recorder: Recorder) -> None:
    spec = parse_smoke(
        {
            "defaults": {"headers": {"X-RELEASEGATE-SYNTHETIC": "spoofed"}},
            "checks": [
                {"name": "plain", "path": "/a"},
                {"name": "own agent", "path": "/b", "headers": {"user-agent": "probe/1"}},
            ],
        }
    )
    report = run_smoke(spec, recorder.url, synthetic_id=17)
    assert report.ok and report.to_dict()["synthetic_marker"] == "17"
    assert sorted(recorder.seen) == [("GET", "/a", "17", UA), ("GET", "/b", "17", "probe/1")]
    run_smoke(spec, recorder.url)
    assert recorder.seen[-1][2] == "manual"


# -- the example service: marked writes, and their cleanup ------------------------------


@pytest.fixture
def example_app_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLE_APP))
    try:
        yield
    finally:
        sys.path.remove(str(EXAMPLE_APP))


@pytest.fixture
def own_redis(redis_server_url: str) -> Iterator[str]:
    """An empty logical Redis database of its own (high numbers: other suites start at 1)."""
    url = f"{redis_server_url.rsplit('/', 1)[0]}/{random.randint(40, 63)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def migrated(project: Project, revision: str) -> None:
    """The example schema at ``revision`` with two users (ids 1 and 2)."""
    from releasegate.migrations.commands import up

    up(project.settings(), revision)
    name = "full_name" if revision == "0002" else "display_name"
    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO users (email, {name})"
            " VALUES ('a@example.com', 'A'), ('b@example.com', 'B')"
        )


Calls = Callable[[httpx.AsyncClient], Any]


def with_app(env: dict[str, str], calls: Calls, base_url: str = "http://green:18082") -> Any:
    from notes_app.main import create_app
    from notes_app.settings import load_settings

    async def go() -> Any:
        app = create_app(load_settings(env))
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url=base_url) as http,
        ):
            return await calls(http)

    return asyncio.run(go())


def marked(marker: str) -> dict[str, str]:
    return {"X-Releasegate-Synthetic": marker}


async def _writes(http: httpx.AsyncClient) -> dict[str, list[Any]]:
    made: dict[str, list[Any]] = {"docs": [], "sessions": []}
    for marker in (None, None, "41", "41", "99"):
        headers = marked(marker) if marker else {}
        doc = await http.post(
            "/documents", json={"owner_id": 1, "title": f"t {marker}"}, headers=headers
        )
        session = await http.post("/sessions", json={"user_id": 1}, headers=headers)
        assert doc.status_code == 201 and session.status_code == 201, (doc.text, session.text)
        made["docs"].append((doc.json()["id"], marker))
        made["sessions"].append((session.json()["id"], marker))
    # A real user's owner list and a marked document end up in the cache.
    assert (await http.get("/documents?owner_id=1")).status_code == 200
    assert (await http.get(f"/documents/{made['docs'][2][0]}")).status_code == 200
    assert (await http.get(f"/documents/{made['docs'][0][0]}")).status_code == 200
    bad = await http.post(
        "/sessions", json={"user_id": 1}, headers=marked("not a marker; DROP TABLE")
    )
    made["bad_status"] = [bad.status_code]
    return made


def test_marked_writes_are_cleaned_by_the_after_gate_hook_and_real_ones_stay(
    project: Project, own_redis: str, example_app_path: None
) -> None:
    migrated(project, "head")
    env = {"NOTES_DATABASE_URL": project.url, "NOTES_REDIS_URL": own_redis, "NOTES_VARIANT": "v2"}
    made = with_app(env, _writes)
    assert made["bad_status"] == [400]
    doc_41 = [doc for doc, marker in made["docs"] if marker == "41"]
    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO document_chunks (document_id, ord, text)"
            " VALUES (%s, 0, 'x'), (%s, 1, 'y')",
            (doc_41[0], doc_41[0]),
        )
        details = dict(
            conn.execute(
                "SELECT (detail->>'document_id')::bigint, detail FROM audit_log"
            ).fetchall()
        )
    for doc, marker in made["docs"]:
        assert details[doc].get("synthetic") == marker  # None: real traffic, no field
    client = redis.Redis.from_url(own_redis)
    for session, marker in made["sessions"]:
        assert json.loads(client.get(f"session:{session}") or b"{}").get("synthetic") == marker
    cached = sorted(k.decode() for k in client.scan_iter(match="cache:*"))
    assert cached == [
        f"cache:v2:doc:{made['docs'][0][0]}",
        f"cache:v2:doc:{doc_41[0]}",
        "cache:v2:docs:owner:1:50",
    ]

    # The hook, as releasegate.toml configures it, with the store URLs in its environment.
    script = REPO_ROOT / "scripts" / "cleanup_synthetic.py"
    project.write_config(
        project.config_path.read_text()
        + f'\n[hooks]\nafter_gate = ["{sys.executable}", "{script}"]\n'
    )
    settings = project.settings(NOTES_REDIS_URL=own_redis)
    result = run_hook(settings, "after_gate", release_id=41, color="green")
    assert result is not None and result.ok, result.to_dict()
    assert "synthetic data marked '41': deleted" in result.stdout_tail
    assert f"2 documents ({doc_41[0]}, {doc_41[1]}), 2 chunks, 2 audit_log rows" in (
        result.stdout_tail
    )
    assert "redis: 2 sessions, 2 stale cache entries" in result.stdout_tail

    with psycopg.connect(project.url, autocommit=True) as conn:
        docs = {r[0] for r in conn.execute("SELECT id FROM documents").fetchall()}
        audit = {r[0] for r in conn.execute("SELECT detail->>'synthetic' FROM audit_log")}
        chunks = conn.execute("SELECT count(*) FROM document_chunks").fetchone()
    assert docs == {doc for doc, marker in made["docs"] if marker != "41"}
    assert audit == {None, "99"} and chunks == (0,)
    sessions = {k.decode().removeprefix("session:") for k in client.scan_iter(match="session:*")}
    assert sessions == {s for s, marker in made["sessions"] if marker != "41"}
    # The real document's cache entry stays; the owner list that showed a deleted one goes.
    assert [k.decode() for k in client.scan_iter(match="cache:*")] == [
        f"cache:v2:doc:{made['docs'][0][0]}"
    ]

    # Again: nothing left with that marker. A dry run of another marker deletes nothing.
    again = run_hook(settings, "after_gate", release_id=41, color="green")
    assert again is not None and "0 documents, 0 chunks, 0 audit_log rows" in again.stdout_tail
    from notes_app.cleanup_synthetic import cleanup

    dry = cleanup("99", project.url, own_redis, dry_run=True)
    assert (len(dry.documents), dry.audit_log, dry.sessions) == (1, 1, 1)
    assert "would delete" in dry.render()
    with psycopg.connect(project.url) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone() == (3,)
    assert client.exists(f"session:{made['sessions'][4][0]}")
    client.close()


def test_cleanup_usage_errors(capsys: pytest.CaptureFixture[str], example_app_path: None) -> None:
    from notes_app.cleanup_synthetic import main

    assert main([], {}) == 2
    assert (
        capsys.readouterr().err == "error: --marker (or RELEASEGATE_SYNTHETIC_MARKER) is not set\n"
    )
    env = {"RELEASEGATE_SYNTHETIC_MARKER": "5", "NOTES_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert main([], env) == 2
    assert capsys.readouterr().err == "error: NOTES_DATABASE_URL is not set\n"
    env["NOTES_DATABASE_URL"] = "postgresql://u:pw-Zq8@127.0.0.1:1/none"
    assert main(["--marker", "bad marker"], env) == 2
    assert capsys.readouterr().err.startswith("error: invalid marker")
    assert main([], env) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: store unreachable:") and err.count("\n") == 1
    assert "pw-Zq8" not in err


def test_a_v1_session_marker_survives_the_redis_migration_up_and_down(
    project: Project, own_redis: str, example_app_path: None
) -> None:
    migrated(project, "0002")
    env = {"NOTES_DATABASE_URL": project.url, "NOTES_REDIS_URL": own_redis, "NOTES_VARIANT": "v1"}

    async def sessions(http: httpx.AsyncClient) -> list[str]:
        ids = []
        for headers in (marked("7"), {}):
            response = await http.post("/sessions", json={"user_id": 2}, headers=headers)
            assert response.status_code == 201
            ids.append(response.json()["id"])
        return ids

    synthetic_id, real_id = with_app(env, sessions)
    client = redis.Redis.from_url(own_redis)
    v1 = json.loads(client.get(f"sess:{synthetic_id}") or b"{}")
    assert v1["synthetic"] == "7" and v1["userId"] == 2 and "theme" not in v1
    assert "synthetic" not in json.loads(client.get(f"sess:{real_id}") or b"{}")

    from releasegate.migrations import redis as redis_migrations

    project.write_config(
        project.config_path.read_text()
        + f'\n[redis]\nurl_env = "NOTES_REDIS_URL"\nmigrations = "{REPO_ROOT}/migrations/redis"\n'
    )
    settings = project.settings(NOTES_REDIS_URL=own_redis)
    redis_migrations.up(settings)
    v2 = json.loads(client.get(f"session:{synthetic_id}") or b"{}")
    assert v2["synthetic"] == "7" and v2["user_id"] == 2 and v2["theme"] == "light"
    redis_migrations.down(settings, "base")
    assert json.loads(client.get(f"sess:{synthetic_id}") or b"{}") == v1
    client.close()


# -- v2-watch-bad: passes what a gate sends, fails what comes after the promotion ------


def test_watch_bad_fails_requests_through_the_router_or_from_users(
    project: Project, own_redis: str, example_app_path: None
) -> None:
    migrated(project, "head")
    env = {
        "NOTES_DATABASE_URL": project.url,
        "NOTES_REDIS_URL": own_redis,
        "NOTES_VARIANT": "v2-watch-bad",
    }
    gate = marked("12")
    router = {**gate, "Host": "127.0.0.1:18080"}

    async def traffic(http: httpx.AsyncClient) -> dict[str, Any]:
        async def get(path: str, headers: dict[str, str], n: int) -> list[int]:
            return [(await http.get(path, headers=headers)).status_code for _ in range(n)]

        direct = await get("/documents?owner_id=1", gate, 30)
        direct += [(await http.post("/sessions", json={"user_id": 1}, headers=gate)).status_code]
        return {
            "direct": direct,
            "routed": await get("/documents?owner_id=1", router, 10),
            "health": await get("/healthz", {"Host": "127.0.0.1:18080"}, 3),
            "again": await get("/documents?owner_id=2", gate, 3),
            "users": await get("/documents?owner_id=2", {}, 4),
            "variant": (await http.get("/version")).json()["variant"],
        }

    seen = with_app(env, traffic)
    assert seen["variant"] == "v2-watch-bad"
    assert seen["direct"] == [200] * 30 + [201]
    assert seen["routed"] == [200, 500] * 5  # every other one, deterministically
    assert seen["health"] == [200] * 3
    assert seen["again"] == [200] * 3  # marked and straight to the color: still fine
    assert seen["users"] == [200, 500] * 2  # unmarked: real users see the defect

    # NOTES_FAIL_AFTER: the same defect after N API requests, whatever they carry.
    counted = with_app(
        {**env, "NOTES_FAIL_AFTER": "3", "NOTES_WATCH_BAD_ERROR_RATE": "1"},
        lambda http: _statuses(http, "/documents?owner_id=1", gate, 5),
    )
    assert counted == [200, 200, 200, 500, 500]


async def _statuses(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], n: int
) -> list[int]:
    return [(await http.get(path, headers=headers)).status_code for _ in range(n)]
