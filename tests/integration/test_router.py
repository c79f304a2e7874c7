"""The router with a real HAProxy in front of two real HTTP backends.

Each test gets its own HAProxy (host binary, daemon, runtime dir in tmp_path) on a free
port, and two threaded HTTP servers that answer with their color. Nothing is mocked:
traffic is checked by sending requests through HAProxy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import free_port, local_haproxy_image

from releasegate.config import Settings, load_config
from releasegate.errors import CheckFailed, ConfigError, InfraError, RollbackFailed, StateError
from releasegate.router.config import COLOR_HEADER
from releasegate.router.manager import router_down, router_up
from releasegate.router.runtime import RuntimeClient
from releasegate.router.state import router_status, wait_drained, wait_healthy
from releasegate.router.switching import promote, rollback, set_weight

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

RELEASEGATE = str(Path(sys.executable).parent / "releasegate")


class ColorServer:
    """A threaded HTTP/1.1 server answering every GET with its color; /healthz can fail."""

    def __init__(self, color: str, port: int) -> None:
        self.color = color
        self.port = port
        self.healthy = True
        self.hits: Counter[str] = Counter()  # "METHOD /path" -> requests received
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def do_GET(self) -> None:
                owner.hits[f"{self.command} {self.path}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path == "/drop":  # close the connection without an answer
                    self.close_connection = True
                    return
                ok = owner.healthy or self.path != "/healthz"
                status = 500 if self.path == "/boom" else 200 if ok else 503
                body = owner.color.encode()
                self.send_response(status)
                self.send_header("X-Color", owner.color)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # health checks close their connections early

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Router:
    settings: Settings
    config_path: Path
    url: str
    blue: ColorServer
    green: ColorServer

    def colors(self, count: int, *, fresh: bool = True) -> Counter[str]:
        """The color header of ``count`` requests through the router."""
        seen: Counter[str] = Counter()
        # fresh: a new connection for every request (no keep-alive).
        limits = httpx.Limits(max_keepalive_connections=0 if fresh else 10)
        with httpx.Client(timeout=5, limits=limits) as client:
            for _ in range(count):
                # Each request as a new client: a sticky color cookie would pin a canary.
                client.cookies.clear()
                response = client.get(self.url)
                assert response.status_code == 200
                seen[response.headers[COLOR_HEADER]] += 1
        return seen

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RELEASEGATE_CONFIG": str(self.config_path)}
        env.pop("RELEASEGATE_DEBUG", None)
        return subprocess.run(
            [RELEASEGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )


CONFIG = """\
[service]
name = "notes"

[deploy]
blue_port = {blue}
green_port = {green}

[router]
bind = "127.0.0.1:{port}"
runtime_dir = "rt"
check_interval = "100ms"
stop_timeout = "2s"
"""


def write_config(root: Path, blue: int, green: int, port: int) -> Path:
    path = root / "releasegate.toml"
    path.write_text(CONFIG.format(blue=blue, green=green, port=port), encoding="utf-8")
    return path


@pytest.fixture
def backends() -> Iterator[tuple[ColorServer, ColorServer]]:
    blue, green = ColorServer("blue", free_port()), ColorServer("green", free_port())
    blue.start()
    green.start()
    try:
        yield blue, green
    finally:
        blue.stop()
        green.stop()


@pytest.fixture
def stopped_router(tmp_path: Path, backends: tuple[ColorServer, ColorServer]) -> Iterator[Router]:
    """A router config for the two backends; HAProxy is stopped again at teardown."""
    blue, green = backends
    port = free_port()
    path = write_config(tmp_path, blue.port, green.port, port)
    settings = load_config(path, env={})
    router = Router(settings, path, f"http://127.0.0.1:{port}/", blue, green)
    try:
        yield router
    finally:
        router_down(settings, forget=True)
        pidfile = tmp_path / "rt" / "haproxy.pid"
        assert not pidfile.exists(), "router_down left haproxy running"


@pytest.fixture
def router(stopped_router: Router) -> Router:
    """A running router whose two colors passed their first health check."""
    result = router_up(stopped_router.settings)
    assert result.started
    wait_healthy(stopped_router.settings, ["blue", "green"], timeout=5)
    return stopped_router


def haproxy_pid(router: Router) -> int:
    return int((router.settings.root / "rt" / "haproxy.pid").read_text().split()[0])


# -- lifecycle ------------------------------------------------------------------------


def test_up_starts_once_and_sends_everything_to_blue(router: Router) -> None:
    pid = haproxy_pid(router)
    again = router_up(router.settings)
    assert not again.started
    assert again.process == f"pid {pid}"
    assert not again.config_stale
    assert router.colors(20) == Counter({"blue": 20})
    state = router_status(router.settings)
    assert state.pid == pid
    assert (state.live, state.standby, state.canary) == ("blue", "green", None)
    assert state["blue"].weight == 100 and state["green"].weight == 0
    assert state["green"].healthy  # green is checked while on standby
    assert state["blue"].total >= 20


def test_up_reports_a_stale_config(router: Router) -> None:
    text = router.config_path.read_text().replace('check_interval = "100ms"', "check_interval = 2")
    router.config_path.write_text(text)
    again = router_up(load_config(router.config_path, env={}))
    assert not again.started
    assert again.config_stale


def test_down_stops_haproxy_and_frees_the_port(router: Router) -> None:
    pid = haproxy_pid(router)
    result = router_down(router.settings)
    assert result.stopped and result.saved_state and not result.forced
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(router.url, timeout=2)
    assert not router_down(router.settings).stopped  # idempotent


# -- switching ------------------------------------------------------------------------


def test_canary_weight_sends_about_ten_percent_to_green(router: Router) -> None:
    result = set_weight(router.settings, "green", 10)
    assert result.after.weights == {"blue": 90, "green": 10}
    assert (result.after.live, result.after.canary) == ("blue", "green")
    seen = router.colors(200, fresh=False)
    assert 8 <= seen["green"] <= 40, seen
    assert seen["blue"] + seen["green"] == 200


def test_promote_then_rollback(router: Router) -> None:
    result = promote(router.settings)
    assert (result.before.live, result.after.live) == ("blue", "green")
    assert result.after["blue"].admin == "drain"
    assert result.after["blue"].weight == 0
    assert result.commands[-1] == "set server notes/blue state drain"
    assert result.switch_s < result.duration_s
    data = result.to_dict()
    assert data["weights_after"] == {"blue": 0, "green": 100}
    assert data["live_before"] == "blue"
    json.dumps(data)
    assert router.colors(30) == Counter({"green": 30})
    assert router.colors(30, fresh=False) == Counter({"green": 30})

    back = rollback(router.settings)
    assert (back.before.live, back.after.live) == ("green", "blue")
    assert back.after["green"].admin == "drain"
    assert router.colors(30) == Counter({"blue": 30})


def test_promote_twice_swaps_the_roles_again(router: Router) -> None:
    assert promote(router.settings).after.live == "green"
    # The next deploy goes to blue; promoting it makes blue live and drains green.
    assert router_status(router.settings).standby == "blue"
    second = promote(router.settings)
    assert second.after.live == "blue"
    assert second.after["green"].admin == "drain"
    assert router.colors(10) == Counter({"blue": 10})


def test_rollback_of_a_canary_returns_everything_to_the_live_color(router: Router) -> None:
    set_weight(router.settings, "green", 25)
    result = rollback(router.settings)
    assert result.after.weights == {"blue": 100, "green": 0}
    assert result.after["green"].admin == "drain"
    assert router.colors(20) == Counter({"blue": 20})


def test_rollback_without_a_previous_color_is_refused(router: Router) -> None:
    with pytest.raises(StateError, match="nothing to roll back to"):
        rollback(router.settings)
    assert router_status(router.settings).live == "blue"


def wait_unhealthy(router: Router, color: str) -> None:
    deadline = time.monotonic() + 5
    while router_status(router.settings)[color].healthy:
        assert time.monotonic() < deadline, f"{color} never failed its health check"
        time.sleep(0.05)


def test_promote_refuses_an_unhealthy_color(router: Router) -> None:
    router.green.healthy = False
    wait_unhealthy(router, "green")
    with pytest.raises(CheckFailed, match="green is DOWN"):
        promote(router.settings, wait=0.3)
    with pytest.raises(CheckFailed, match="green"):
        set_weight(router.settings, "green", 10, wait=0.3)
    state = router_status(router.settings)
    assert state.weights == {"blue": 100, "green": 0}
    assert router.colors(10) == Counter({"blue": 10})

    # A rollback to a color that cannot serve is a rollback that failed.
    router.green.healthy = True
    wait_healthy(router.settings, ["green"], timeout=5)
    promote(router.settings)
    router.blue.healthy = False
    wait_unhealthy(router, "blue")
    with pytest.raises(RollbackFailed, match="blue is DOWN"):
        rollback(router.settings, wait=0.5)
    assert router_status(router.settings).live == "green"


def test_promote_waits_for_a_color_that_comes_up(router: Router) -> None:
    router.green.healthy = False
    wait_unhealthy(router, "green")
    threading.Timer(0.3, lambda: setattr(router.green, "healthy", True)).start()
    result = promote(router.settings, wait=5)
    assert result.after.live == "green"
    assert result.duration_s >= 0.25


def test_promote_brings_a_color_back_from_maintenance(router: Router) -> None:
    client = RuntimeClient(router.settings.root / "rt" / "admin.sock")
    client.disable_server("notes", "green")
    state = router_status(router.settings)
    assert state["green"].admin == "maint"
    assert state.standby == "green"
    result = promote(router.settings)
    assert result.before["green"].admin == "maint"
    assert result.after.live == "green"
    assert router.colors(10) == Counter({"green": 10})


def test_weights_and_states_survive_a_restart(router: Router) -> None:
    promote(router.settings)
    down = router_down(router.settings)
    assert down.saved_state
    up = router_up(router.settings)
    assert up.started and up.restored_state
    assert router_status(router.settings).live == "green"
    assert router.colors(10) == Counter({"green": 10})

    router_down(router.settings, forget=True)
    up = router_up(router.settings)
    assert not up.restored_state
    assert router_status(router.settings).live == "blue"


def test_a_changed_port_discards_the_saved_state(router: Router) -> None:
    promote(router.settings)
    router_down(router.settings)
    moved = ColorServer("green", free_port())
    moved.start()
    try:
        text = router.config_path.read_text().replace(
            f"green_port = {router.green.port}", f"green_port = {moved.port}"
        )
        router.config_path.write_text(text)
        settings = load_config(router.config_path, env={})
        up = router_up(settings)
        assert up.started and not up.restored_state
        state = router_status(settings)
        assert state.live == "blue"
        assert state["green"].address == f"127.0.0.1:{moved.port}"
    finally:
        moved.stop()


def test_wait_drained_sees_no_sessions_on_an_idle_color(router: Router) -> None:
    promote(router.settings)
    assert wait_drained(router.settings, "blue", timeout=2)


def test_retries_cover_dropped_connections_not_app_errors(router: Router) -> None:
    set_weight(router.settings, "green", 50)

    def hits(key: str) -> int:
        return router.blue.hits[key] + router.green.hits[key]

    base = router.url.rstrip("/")
    # A GET whose connection is dropped is retried (3 times), on both colors.
    assert httpx.get(f"{base}/drop", timeout=10).status_code == 502
    assert hits("GET /drop") == 4
    assert router.blue.hits["GET /drop"] > 0 and router.green.hits["GET /drop"] > 0
    # A POST that reached a server is never sent twice.
    assert httpx.post(f"{base}/drop", content=b"x", timeout=10).status_code == 502
    assert hits("POST /drop") == 1
    # An application error is the answer: passed on, not retried.
    assert httpx.get(f"{base}/boom", timeout=10).status_code == 500
    assert hits("GET /boom") == 1


# -- the runtime API directly ---------------------------------------------------------


def test_runtime_client_commands(router: Router) -> None:
    client = RuntimeClient(router.settings.root / "rt" / "admin.sock")
    assert client.get_weight("notes", "blue") == (100, 100)
    client.set_weight("notes", "green", 7)
    assert client.get_weight("notes", "green") == (7, 0)
    client.disable_server("notes", "green")
    green = next(s for s in client.show_servers_state("notes") if s.name == "green")
    assert green.admin == "maint"
    client.enable_server("notes", "green")
    client.set_state("notes", "green", "drain")
    stat = {r["svname"]: r for r in client.show_stat("notes", servers_only=True)}
    assert stat["green"]["status"].startswith("DRAIN")
    client.set_state("notes", "green", "ready")
    client.set_health("notes", "green", "down")
    assert router_status(router.settings)["green"].op_state == "stopped"
    with pytest.raises(InfraError, match="No such server"):
        client.set_weight("notes", "purple", 1)


def test_unreachable_runtime_api_is_an_infra_error(router: Router, tmp_path: Path) -> None:
    wrong = RuntimeClient(tmp_path / "nowhere.sock")
    with pytest.raises(InfraError) as info:
        wrong.show_info()
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere.sock") in message

    router_down(router.settings)
    with pytest.raises(InfraError, match="runtime API unreachable"):
        promote(router.settings)
    result = router.cli("router", "status")
    assert result.returncode == 3
    assert result.stderr.startswith("error: HAProxy runtime API unreachable at ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_bind_is_rejected_by_haproxy_check(stopped_router: Router) -> None:
    env = {"RELEASEGATE_ROUTER__BIND": "nonsense"}
    settings = load_config(stopped_router.config_path, env=env)
    with pytest.raises(ConfigError, match=r"haproxy rejected the router config: .*'bind'"):
        router_up(settings)
    assert not (settings.root / "rt" / "haproxy.pid").exists()
    result = subprocess.run(
        [RELEASEGATE, "--config", str(stopped_router.config_path), "router", "up"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "missing port" in result.stderr


def test_port_in_use_is_an_infra_error(stopped_router: Router) -> None:
    port = stopped_router.url.rsplit(":", 1)[1].strip("/")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", int(port)))
        taken.listen()
        with pytest.raises(InfraError, match=r"haproxy did not start: .*cannot bind"):
            router_up(stopped_router.settings)


# -- the CLI --------------------------------------------------------------------------


def test_cli_round_trip(stopped_router: Router) -> None:
    up = stopped_router.cli("router", "up")
    assert up.returncode == 0, up.stderr
    assert "router started (host, pid " in up.stdout
    assert "already running" in stopped_router.cli("router", "up").stdout
    wait_healthy(stopped_router.settings, ["blue", "green"], timeout=5)

    status = stopped_router.cli("router", "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["live"] == "blue"
    assert data["colors"]["green"]["weight"] == 0

    weight = stopped_router.cli("router", "weight", "green", "10")
    assert weight.returncode == 0, weight.stderr
    assert "(blue 90, green 10)" in weight.stdout

    promoted = stopped_router.cli("router", "promote", "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["live_after"] == "green"
    assert stopped_router.colors(5) == Counter({"green": 5})

    back = stopped_router.cli("router", "rollback")
    assert back.returncode == 0, back.stderr
    assert "rollback: live green -> blue" in back.stdout

    text = stopped_router.cli("router", "status").stdout
    assert "live: blue; next deploy goes to: green" in text

    bad = stopped_router.cli("router", "weight", "purple", "10")
    assert bad.returncode == 2

    down = stopped_router.cli("router", "down")
    assert down.returncode == 0, down.stderr
    assert "router stopped" in down.stdout


# -- zero downtime --------------------------------------------------------------------


def load(url: str, seconds: float, workers: int = 4) -> tuple[Counter[str], list[str]]:
    """Keep-alive GETs from ``workers`` threads for ``seconds``: (statuses/colors, errors)."""
    seen: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        local: Counter[str] = Counter()
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < stop_at:
                try:
                    response = client.get(url)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                local[f"{response.status_code} {response.headers.get(COLOR_HEADER)}"] += 1
        with lock:
            seen.update(local)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen, errors


def test_no_failed_request_while_switching_under_load(router: Router) -> None:
    results: dict[str, tuple[Counter[str], list[str]]] = {}
    loader = threading.Thread(target=lambda: results.setdefault("load", load(router.url, 2.0)))
    loader.start()
    time.sleep(0.2)
    for _ in range(5):
        promote(router.settings)
        time.sleep(0.1)
        rollback(router.settings)
        time.sleep(0.1)
    loader.join()
    seen, errors = results["load"]
    assert errors == []
    assert sum(seen.values()) > 100
    assert {key.split()[0] for key in seen} == {"200"}, seen
    assert seen["200 blue"] > 0 and seen["200 green"] > 0


def test_no_failed_request_when_a_serving_color_dies(router: Router) -> None:
    """A request that meets a dead server is retried on the other color (retry-on)."""
    set_weight(router.settings, "green", 50)
    results: dict[str, tuple[Counter[str], list[str]]] = {}
    loader = threading.Thread(target=lambda: results.setdefault("load", load(router.url, 1.5)))
    loader.start()
    time.sleep(0.4)
    router.blue.stop()  # abruptly: connections refused until the checks mark it down
    loader.join()
    seen, errors = results["load"]
    assert errors == []
    assert {key.split()[0] for key in seen} == {"200"}, seen
    assert seen["200 green"] > seen["200 blue"] > 0
    assert not router_status(router.settings)["blue"].healthy


# -- container mode -------------------------------------------------------------------


def test_container_mode(tmp_path: Path, backends: tuple[ColorServer, ColorServer]) -> None:
    image = local_haproxy_image()
    blue, green = backends
    port = free_port()
    path = write_config(tmp_path, blue.port, green.port, port)
    service = f"rgtest-{os.getpid()}-{port}"
    text = path.read_text().replace('name = "notes"', f'name = "{service}"')
    path.write_text(text + f'mode = "container"\nimage = "{image}"\n')
    settings = load_config(path, env={})
    router = Router(settings, path, f"http://127.0.0.1:{port}/", blue, green)
    try:
        bad = load_config(path, env={"RELEASEGATE_ROUTER__BIND": "nonsense"})
        with pytest.raises(ConfigError, match="missing port"):
            router_up(bad)
        up = router_up(settings)
        assert up.started and up.mode == "container"
        assert up.process.startswith("container ")
        assert not router_up(settings).started
        wait_healthy(settings, ["blue", "green"], timeout=10)
        assert router.colors(10) == Counter({"blue": 10})
        assert promote(settings).after.live == "green"
        assert router.colors(10) == Counter({"green": 10})
        down = router_down(settings)
        assert down.stopped and down.saved_state
        with pytest.raises(httpx.ConnectError):
            httpx.get(router.url, timeout=2)
        assert router_up(settings).restored_state
        assert router_status(settings).live == "green"
    finally:
        router_down(settings, forget=True)
    import docker

    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(f"releasegate-router-{service}")
