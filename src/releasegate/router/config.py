"""The HAProxy configuration of the router: one frontend, one backend, blue and green.

Both colors are declared up front, so that every later change (canary weights, promote,
rollback) goes through the runtime API and HAProxy never needs a reload. The initial
state is **blue live** (weight 100) and **green standby** (weight 0, health-checked, so
``router status`` shows whether a new green is healthy before it gets traffic).

Every request is logged, one line each, into an in-memory ring buffer that releasegate
reads through the runtime API to judge a canary on real traffic
(:mod:`releasegate.canary.traffic`); while both colors take traffic, a cookie keeps each
client on the color it got (:func:`_sticky_colors`).

HAProxy's own server-state file carries the runtime state across a restart of the
router: :func:`releasegate.router.manager.router_down` dumps ``show servers state`` into
it, and the generated config loads it on start. :func:`filter_state_file` drops a saved
state whose addresses no longer match the config, so that a changed port always wins.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from releasegate.config import Settings
from releasegate.errors import ConfigError
from releasegate.hosts.transport import is_remote

COLORS: tuple[str, str] = ("blue", "green")
BACKEND_HOST = "127.0.0.1"
# Initial weights: blue live, green standby. Colors always share 100 between them.
INITIAL_WEIGHTS = {"blue": 100, "green": 0}
TOTAL_WEIGHT = 100
# HAProxy takes a unix socket path of at most 97 bytes (sun_path's 108 less its own
# suffix for the temporary name it binds first).
MAX_SOCKET_PATH = 97
# HAProxy's "all-retryable-errors" minus 500 and response-timeout (see render_config).
RETRY_ON = (
    "conn-failure",
    "empty-response",
    "junk-response",
    "0rtt-rejected",
    "502",
    "503",
    "504",
)
# With DOCKER_HOST=ssh:// the router's files live in a Docker volume on the remote host,
# mounted here in the router container; nothing is written on this machine.
REMOTE_RUNTIME_DIR = Path("/var/lib/releasegate-router")
# Response header naming the color that served a request, for smoke tests and humans.
COLOR_HEADER = "X-Releasegate-Color"
# The in-memory ring buffer HAProxy logs every request into, one line each, read back
# through the runtime API (``show events``) to judge a canary on real traffic
# (releasegate.canary.traffic parses the lines).
TRAFFIC_RING = "traffic"
TRAFFIC_LOG_FORMAT = "%pid %rt %s %ST %Ta %ts"
TRAFFIC_LINE_MAX = 256
# The cookie that keeps a client on the color it got during a canary (see render_config).
STICKY_COOKIE = "RGCOLOR"


@dataclass(frozen=True)
class RouterPaths:
    """Files of one router in its runtime directory."""

    runtime_dir: Path

    @property
    def config(self) -> Path:
        return self.runtime_dir / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        """The admin socket: in the runtime directory, or, where that path is too long
        for HAProxy (a checkout deep in a CI workspace), in a short folder of its own
        under the temporary directory, named after the runtime directory."""
        path = self.runtime_dir / "admin.sock"
        if len(str(path).encode()) <= MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.runtime_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"releasegate-router-{digest}" / "admin.sock"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "haproxy.pid"

    @property
    def state_file(self) -> Path:
        return self.runtime_dir / "servers.state"

    @property
    def log(self) -> Path:
        """What haproxy printed while starting (its alerts and warnings)."""
        return self.runtime_dir / "haproxy.log"


@dataclass(frozen=True)
class RouterConfig:
    """Everything the generated haproxy.cfg depends on, resolved from the settings."""

    service: str
    bind: str
    ports: dict[str, int]
    paths: RouterPaths
    health_path: str
    check_interval: float
    maxconn: int
    connect_timeout: float
    client_timeout: float
    server_timeout: float
    stop_timeout: float
    # router.traffic_ring_size: the default 1 MiB holds some 15 s at 2,000 requests/s.
    traffic_ring_size: int

    @property
    def backend(self) -> str:
        return self.service

    @property
    def frontend(self) -> str:
        return f"{self.service}-in"


def router_config(settings: Settings) -> RouterConfig:
    """The router's configuration for ``settings``; :class:`ConfigError` when unusable."""
    section = settings.raw.router
    deploy = settings.raw.deploy
    if deploy.blue_port == deploy.green_port:
        raise ConfigError(
            f"deploy.blue_port and deploy.green_port are both {deploy.blue_port}:"
            " blue and green need ports of their own"
        )
    remote = is_remote(settings)
    paths = RouterPaths(
        REMOTE_RUNTIME_DIR if remote else settings.resolve_path(section.runtime_dir)
    )
    socket = str(paths.socket)
    if len(socket.encode()) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"router.runtime_dir is too deep for a unix socket: {socket}"
            f" is {len(socket.encode())} bytes, the limit is {MAX_SOCKET_PATH}"
        )
    return RouterConfig(
        service=settings.service,
        bind=section.bind,
        ports={"blue": deploy.blue_port, "green": deploy.green_port},
        paths=paths,
        health_path=section.health_path,
        check_interval=section.check_interval,
        maxconn=section.maxconn,
        connect_timeout=section.connect_timeout,
        client_timeout=section.client_timeout,
        server_timeout=section.server_timeout,
        stop_timeout=section.stop_timeout,
        traffic_ring_size=section.traffic_ring_size,
    )


def haproxy_duration(seconds: float) -> str:
    """A duration as HAProxy reads it, in whole milliseconds (at least 1 ms)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"invalid duration for HAProxy: {seconds!r}")
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def quote_path(path: Path) -> str:
    """A path as one HAProxy config word: single quotes, so that ``$`` and ``#`` stay literal."""
    text = str(path)
    if "'" in text or "\n" in text or "\r" in text:
        raise ConfigError(f"the router cannot use a path with a quote or newline: {text!r}")
    return f"'{text}'"


def render_config(config: RouterConfig) -> str:
    """The text of haproxy.cfg for ``config``."""
    paths = config.paths
    check = f"check inter {haproxy_duration(config.check_interval)} fall 2 rise 1"
    servers = [
        f"    server {color} {BACKEND_HOST}:{config.ports[color]}"
        f" weight {INITIAL_WEIGHTS[color]} {check}"
        for color in COLORS
    ]
    lines = [
        "# Generated by releasegate; changes are made through the runtime API, never by",
        "# editing this file and reloading.",
        "global",
        f"    stats socket {quote_path(paths.socket)} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    server-state-file {quote_path(paths.state_file)}",
        f"    maxconn {config.maxconn}",
        f"    hard-stop-after {haproxy_duration(config.stop_timeout)}",
        "",
        *_traffic_ring(config.traffic_ring_size),
        "defaults",
        "    mode http",
        f"    timeout connect {haproxy_duration(config.connect_timeout)}",
        f"    timeout client {haproxy_duration(config.client_timeout)}",
        f"    timeout server {haproxy_duration(config.server_timeout)}",
        f"    timeout http-request {haproxy_duration(min(config.client_timeout, 10.0))}",
        f"    timeout http-keep-alive {haproxy_duration(min(config.client_timeout, 10.0))}",
        f"    timeout queue {haproxy_duration(config.connect_timeout)}",
        f"    timeout check {haproxy_duration(config.connect_timeout)}",
        "",
        f"frontend {config.frontend}",
        f"    bind {config.bind}",
        f"    log ring@{TRAFFIC_RING} format raw local0 info",
        f'    log-format "{TRAFFIC_LOG_FORMAT}"',
        # A connection that sent no request (a port probe) is no request of a color.
        "    option dontlognull",
        f"    default_backend {config.backend}",
        "",
        f"backend {config.backend}",
        "    balance roundrobin",
        "    load-server-state-from-file global",
        f"    option httpchk GET {config.health_path}",
        "    http-check expect status 200",
        # A request that meets a server going away is sent again, to the other color
        # (redispatch on every retry, not only the last). These are the errors of a
        # server that is stopping; a 500 is the application's answer and is passed on,
        # so that errors stay visible to clients and to the SLO gates.
        "    option redispatch 1",
        "    retries 3",
        f"    retry-on {' '.join(RETRY_ON)}",
        # ... but a POST or PATCH that reached a server is never sent twice: only
        # connection failures are retried for them.
        "    acl releasegate_non_idempotent method POST PATCH",
        "    http-request disable-l7-retry if releasegate_non_idempotent",
        "    http-reuse safe",
        f"    http-response set-header {COLOR_HEADER} %[srv_name]",
        *_sticky_colors(),
        *servers,
        "",
    ]
    return "\n".join(lines)


def _traffic_ring(size: int) -> list[str]:
    """The ring section the frontend logs every request into (``format raw``: the line
    alone, no syslog header)."""
    return [
        f"ring {TRAFFIC_RING}",
        "    description releasegate-traffic",
        "    format raw",
        f"    maxlen {TRAFFIC_LINE_MAX}",
        f"    size {size}",
        "",
    ]


def _sticky_colors() -> list[str]:
    """Backend rules that keep a client on its color while both colors take traffic.

    HAProxy's ``cookie`` directive is not used, for two reasons: it sets its cookie on
    every response, so when a canary starts every returning client would already be
    pinned to the live color; and it honours a cookie of a server that is draining, so
    a rollback would leave green's clients on green. Instead the cookie is set, and
    honoured, only while ``nbsrv`` counts two usable servers: a server at weight 0,
    draining, in maintenance or down is not usable. Outside a canary, after a rollback
    or a promote, every request goes to the color that has the weight, whatever the
    cookie says, and no cookie is set.
    """
    canary = "{ nbsrv ge 2 }"
    return [
        f"    http-request set-var(txn.sticky_color) req.cook({STICKY_COOKIE})",
        *(
            f"    use-server {color} if {canary} {{ req.cook({STICKY_COOKIE}) -m str {color} }}"
            for color in COLORS
        ),
        "    http-response set-var(txn.served_color) srv_name",
        f'    http-response add-header Set-Cookie "{STICKY_COOKIE}=%[srv_name]; Path=/;'
        f' HttpOnly; SameSite=Lax" if {canary}'
        " !{ var(txn.sticky_color),strcmp(txn.served_color) eq 0 }",
    ]


def generate_config(settings: Settings) -> str:
    """The text of haproxy.cfg for ``settings``."""
    return render_config(router_config(settings))


def filter_state_file(text: str, config: RouterConfig) -> str | None:
    """The saved ``show servers state`` when it still applies to ``config``, else ``None``.

    Both colors must be there with the backend, address and port of the config. All or
    nothing: when a port changed, the router starts from its initial state (blue live)
    rather than from half a saved state, or with traffic sent to an old address.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        return None
    header = next((line for line in lines[1:] if line.startswith("#")), None)
    if header is None:
        return None
    columns = header.lstrip("# ").split()
    kept: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        fields = dict(zip(columns, line.split(), strict=False))
        color = fields.get("srv_name", "")
        if fields.get("be_name") != config.backend or color not in config.ports:
            continue
        if fields.get("srv_addr") != BACKEND_HOST or fields.get("srv_port") != str(
            config.ports[color]
        ):
            return None
        kept[color] = line
    # All or nothing: half a saved state could leave no color serving.
    if set(kept) != set(COLORS):
        return None
    return "\n".join(["1", header, *(kept[color] for color in COLORS)]) + "\n"
