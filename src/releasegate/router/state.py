"""The router's state as HAProxy reports it: both colors, read over the runtime API.

The **live color** is read from HAProxy itself, never from a file of ours: it is the
color in state ``ready`` with a weight above 0 (the larger weight during a canary). The
other color is the **standby**, where the next deploy goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, InfraError
from releasegate.router.config import COLORS, router_config
from releasegate.router.process import runtime_client
from releasegate.router.runtime import (
    AdminState,
    RuntimeClient,
    ServerState,
    parse_info,
    parse_servers_state,
    parse_stat_csv,
)

# Last-check statuses that mean "the server answered its health check" (show stat).
_CHECK_PASSED = ("L7OK", "L7OKC")


def other_color(color: str) -> str:
    """The other one of blue and green."""
    return COLORS[1] if color == COLORS[0] else COLORS[0]


def check_color(color: str) -> str:
    """``color`` when it is blue or green; :class:`ConfigError` otherwise."""
    if color not in COLORS:
        raise ConfigError(f"unknown color {color!r}: use blue or green")
    return color


# -- state --------------------------------------------------------------------------


@dataclass(frozen=True)
class ColorState:
    """One color as HAProxy sees it."""

    color: str
    address: str
    admin: AdminState  # ready, drain or maint (set through the runtime API)
    op_state: str  # running, stopped, starting or stopping (health checks)
    status: str  # show stat's status: UP, DOWN, DRAIN, MAINT, "UP 1/2", ...
    weight: int
    check: str  # last health check, e.g. "L7OK 200" or "L4CON Connection refused"
    check_passed: bool
    sessions: int  # current sessions
    total: int  # sessions since start

    @property
    def serving(self) -> bool:
        """Whether the color receives new requests by configuration (ready, weight > 0)."""
        return self.admin == "ready" and self.weight > 0

    @property
    def healthy(self) -> bool:
        """Whether HAProxy considers the color up and its last health check passed."""
        return self.op_state == "running" and self.check_passed

    def describe(self) -> str:
        return f"{self.color} is {self.status} ({self.check or 'not checked yet'})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "address": self.address,
            "admin": self.admin,
            "op_state": self.op_state,
            "status": self.status,
            "weight": self.weight,
            "check": self.check,
            "healthy": self.healthy,
            "serving": self.serving,
            "sessions": self.sessions,
            "total_sessions": self.total,
        }


@dataclass(frozen=True)
class RouterState:
    """Both colors, read from the runtime API at one moment."""

    backend: str
    socket: str
    colors: dict[str, ColorState]
    pid: int | None = None
    version: str | None = None
    uptime_s: int | None = None

    def __getitem__(self, color: str) -> ColorState:
        return self.colors[color]

    @property
    def live(self) -> str | None:
        """The color serving new requests: ready with weight > 0 (the heavier in a canary).

        ``None`` when no color serves, or two serve with equal weights.
        """
        serving = sorted(
            (c for c in self.colors.values() if c.serving), key=lambda c: c.weight, reverse=True
        )
        if not serving or (len(serving) > 1 and serving[0].weight == serving[1].weight):
            return None
        return serving[0].color

    @property
    def standby(self) -> str | None:
        """The color not live: where the next deploy goes."""
        live = self.live
        return None if live is None else other_color(live)

    @property
    def canary(self) -> str | None:
        """The standby color when it also receives a share of new requests."""
        standby = self.standby
        return standby if standby is not None and self.colors[standby].serving else None

    @property
    def weights(self) -> dict[str, int]:
        """Effective share of new requests per color (0 unless ready)."""
        return {name: c.weight if c.serving else 0 for name, c in self.colors.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "socket": self.socket,
            "pid": self.pid,
            "version": self.version,
            "uptime_s": self.uptime_s,
            "live": self.live,
            "standby": self.standby,
            "canary": self.canary,
            "colors": {name: c.to_dict() for name, c in self.colors.items()},
        }


# -- reading the runtime state --------------------------------------------------------


def client_for(settings: Settings) -> RuntimeClient:
    """A runtime API client for the router of ``settings``."""
    return runtime_client(settings, router_config(settings))


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def read_state(client: RuntimeClient, backend: str, *, with_info: bool = True) -> RouterState:
    """Both colors of ``backend`` as the HAProxy behind ``client`` sees them.

    One round trip: ``show servers state``, ``show stat`` and ``show info`` are sent
    together.
    """
    commands = [f"show servers state {backend}", f"show stat {backend} 4 -1"]
    answers = client.query([*commands, "show info"] if with_info else commands)
    servers: dict[str, ServerState] = {
        s.name: s for s in parse_servers_state(answers[0]) if s.backend == backend
    }
    missing = [color for color in COLORS if color not in servers]
    if missing:
        raise InfraError(
            f"the HAProxy at {client.socket_path} has no server {backend}/{missing[0]}"
            " (was it started from another config?)"
        )
    stats = {
        row.get("svname", ""): row
        for row in parse_stat_csv(answers[1])
        if row.get("pxname") == backend
    }
    colors = {}
    for color in COLORS:
        server, stat = servers[color], stats.get(color, {})
        check_status = stat.get("check_status", "").lstrip("* ")
        detail = stat.get("check_code") or stat.get("check_desc", "")
        colors[color] = ColorState(
            color=color,
            address=f"{server.address}:{server.port}",
            admin=server.admin,
            op_state=server.op_state,
            status=stat.get("status", "unknown"),
            weight=server.weight,
            check=f"{check_status} {detail}".strip(),
            check_passed=check_status in _CHECK_PASSED,
            sessions=_int(stat.get("scur")),
            total=_int(stat.get("stot")),
        )
    pid = version = uptime = None
    if with_info:
        info = parse_info(answers[2])
        pid = _int(info.get("Pid")) or None
        version = info.get("Version")
        uptime = _int(info.get("Uptime_sec"))
    return RouterState(
        backend=backend,
        socket=str(client.socket_path),
        colors=colors,
        pid=pid,
        version=version,
        uptime_s=uptime,
    )


def router_status(settings: Settings) -> RouterState:
    """The router's current state; :class:`InfraError` when its runtime API is unreachable."""
    config = router_config(settings)
    return read_state(runtime_client(settings, config), config.backend)


def live_color(settings: Settings) -> str | None:
    """The color serving new requests now (see :attr:`RouterState.live`)."""
    return router_status(settings).live


def default_wait(settings: Settings) -> float:
    """How long a switch waits for its target to pass a health check: 3 intervals, >= 1 s."""
    return max(1.0, 3 * settings.raw.router.check_interval)


def wait_healthy(
    settings: Settings, colors: list[str], timeout: float, *, poll: float = 0.05
) -> RouterState:
    """Wait until HAProxy sees every color of ``colors`` up with a passed health check.

    Returns the state that showed them healthy; :class:`CheckFailed` after ``timeout``.
    """
    config = router_config(settings)
    client = runtime_client(settings, config)
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(client, config.backend, with_info=False)
        sick = [state[color] for color in colors if not state[color].healthy]
        if not sick:
            return state
        if time.monotonic() >= deadline:
            raise CheckFailed(
                f"{sick[0].describe()} after waiting {timeout:g}s: it cannot take traffic"
            )
        time.sleep(poll)


def wait_drained(settings: Settings, color: str, timeout: float, *, poll: float = 0.1) -> bool:
    """Wait until ``color`` has no open session left; False if some remain at ``timeout``."""
    check_color(color)
    config = router_config(settings)
    client = runtime_client(settings, config)
    deadline = time.monotonic() + timeout
    while True:
        if read_state(client, config.backend, with_info=False)[color].sessions == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
