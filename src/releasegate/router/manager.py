"""Running the router and switching traffic between blue and green.

The router is one HAProxy process (a host binary or a container) with one backend named
after the service and two servers, ``blue`` and ``green``. Traffic moves only through the
runtime API (:mod:`releasegate.router.runtime`), never by a reload, so a switch touches
no open connection and takes one round trip on a unix socket.

The **live color** is read from HAProxy itself, never from a file of ours: it is the
color in state ``ready`` with a weight above 0 (the larger weight during a canary). The
other color is the **standby**, where the next deploy goes. ``promote`` moves all new
requests to a color and *drains* the other (open connections finish, no new ones);
``rollback`` moves them back to the drained color.

Nothing here writes the release ledger; every function returns a result whose
``to_dict()`` the release pipeline records.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, InfraError, RollbackFailed, StateError
from releasegate.router.config import (
    BACKEND_HOST,
    COLORS,
    TOTAL_WEIGHT,
    RouterConfig,
    RouterPaths,
    filter_state_file,
    render_config,
    router_config,
)
from releasegate.router.runtime import (
    AdminState,
    RuntimeClient,
    ServerState,
    parse_info,
    parse_servers_state,
    parse_stat_csv,
    set_state_command,
    set_weight_command,
)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

# How long ``router up`` waits for the runtime API of a fresh HAProxy.
START_TIMEOUT = 10.0
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


@dataclass(frozen=True)
class SwitchResult:
    """What a weight change, promote or rollback did."""

    action: str  # weight, promote or rollback
    before: RouterState
    after: RouterState
    commands: list[str]
    switch_s: float  # the runtime API round trip that changed the weights
    duration_s: float  # the whole operation, checks and read-back included

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "live_before": self.before.live,
            "live_after": self.after.live,
            "weights_before": self.before.weights,
            "weights_after": self.after.weights,
            "commands": self.commands,
            "switch_ms": round(self.switch_s * 1000, 3),
            "duration_ms": round(self.duration_s * 1000, 3),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


@dataclass(frozen=True)
class UpResult:
    """What ``router up`` found or did."""

    started: bool  # False: it was already running
    mode: str
    bind: str
    process: str  # "pid 1234" or "container <id>"
    config: str
    socket: str
    restored_state: bool = False  # weights and states came from the saved state file
    config_stale: bool = False  # running with a config other than the one generated now
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "mode": self.mode,
            "bind": self.bind,
            "process": self.process,
            "config": self.config,
            "socket": self.socket,
            "restored_state": self.restored_state,
            "config_stale": self.config_stale,
            "duration_ms": round(self.duration_s * 1000, 3),
        }


@dataclass(frozen=True)
class DownResult:
    """What ``router down`` did."""

    stopped: bool  # False: it was not running
    mode: str
    saved_state: bool = False
    forced: bool = False  # the soft stop timed out and haproxy was killed
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped,
            "mode": self.mode,
            "saved_state": self.saved_state,
            "forced": self.forced,
            "duration_ms": round(self.duration_s * 1000, 3),
            "notes": self.notes,
        }


# -- reading the runtime state --------------------------------------------------------


def client_for(settings: Settings) -> RuntimeClient:
    """A runtime API client for the router of ``settings``."""
    return RuntimeClient(router_config(settings).paths.socket)


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
    return read_state(RuntimeClient(config.paths.socket), config.backend)


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
    client = RuntimeClient(config.paths.socket)
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
    client = RuntimeClient(config.paths.socket)
    deadline = time.monotonic() + timeout
    while True:
        if read_state(client, config.backend, with_info=False)[color].sessions == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


# -- switching ------------------------------------------------------------------------


def switch_commands(backend: str, weights: dict[str, int], drain: set[str]) -> list[str]:
    """Runtime API commands that give each color its weight, then drain ``drain``.

    Colors that gain traffic are made ready and weighted first, so that at no moment
    does no color serve.
    """
    commands = []
    for color in COLORS:
        if weights[color] > 0:
            commands.append(set_state_command(backend, color, "ready"))
            commands.append(set_weight_command(backend, color, weights[color]))
    for color in COLORS:
        if weights[color] == 0:
            commands.append(set_weight_command(backend, color, 0))
            if color in drain:
                commands.append(set_state_command(backend, color, "drain"))
    return commands


def _switch(
    settings: Settings,
    action: str,
    weights: dict[str, int],
    drain: set[str],
    wait: float | None,
    *,
    rollback: bool = False,
) -> SwitchResult:
    started = time.perf_counter()
    config = router_config(settings)
    client = RuntimeClient(config.paths.socket)
    before = read_state(client, config.backend, with_info=False)
    receivers = [color for color in COLORS if weights[color] > 0]
    # A color in maintenance is not health-checked: bring it back without traffic first.
    waking = [color for color in receivers if before[color].admin == "maint"]
    if waking:
        client.run_batch(
            [
                command
                for color in waking
                for command in (
                    set_weight_command(config.backend, color, 0),
                    set_state_command(config.backend, color, "ready"),
                )
            ]
        )
    if any(not before[color].healthy for color in receivers):
        try:
            wait_healthy(settings, receivers, default_wait(settings) if wait is None else wait)
        except CheckFailed as exc:
            if rollback:
                raise RollbackFailed(f"cannot roll back: {exc}") from None
            raise
    commands = switch_commands(config.backend, weights, drain)
    switch_started = time.perf_counter()
    client.run_batch(commands)
    switch_s = time.perf_counter() - switch_started
    after = read_state(client, config.backend)
    for color in COLORS:
        want_admin = "drain" if color in drain else "ready" if weights[color] else None
        got = after[color]
        if got.weight != weights[color] or (want_admin and got.admin != want_admin):
            raise InfraError(
                f"{action} did not take: {color} is {got.admin} with weight {got.weight},"
                f" expected {want_admin or 'any state'} with weight {weights[color]}"
            )
    return SwitchResult(
        action=action,
        before=before,
        after=after,
        commands=commands,
        switch_s=switch_s,
        duration_s=time.perf_counter() - started,
    )


def promote(
    settings: Settings, color: str | None = None, *, wait: float | None = None
) -> SwitchResult:
    """Send every new request to ``color`` (default: the standby) and drain the other.

    The promoted color is made ``ready`` with weight 100; the other gets weight 0 and
    state ``drain``: its open connections finish, it gets no new ones. The target must
    pass HAProxy's health check (waiting up to ``wait`` seconds, by default
    :func:`default_wait`), else :class:`CheckFailed`.
    """
    if color is None:
        state = router_status(settings)
        if state.standby is None:
            raise StateError(f"no live color ({_weights_text(state)}): name the color to promote")
        color = state.standby
    check_color(color)
    return _switch(
        settings,
        "promote",
        {color: TOTAL_WEIGHT, other_color(color): 0},
        {other_color(color)},
        wait,
    )


def rollback(
    settings: Settings, color: str | None = None, *, wait: float | None = None
) -> SwitchResult:
    """Send every new request back to the previous color and drain the other.

    The previous color is the drained one (the color a promote took traffic from), or
    during a canary the heavier one. :class:`StateError` when neither exists and no
    ``color`` is given; :class:`RollbackFailed` when the target is not healthy. A second
    rollback moves traffic back again, to the color the first one drained.
    """
    if color is None:
        state = router_status(settings)
        live = state.live
        drained = [c for c in COLORS if state[c].admin == "drain"]
        if state.canary is not None and live is not None:
            color = live
        elif live is not None and drained == [other_color(live)]:
            color = drained[0]
        else:
            raise StateError(
                f"nothing to roll back to ({_weights_text(state)}, no drained color):"
                " name the color to send traffic to"
            )
    check_color(color)
    return _switch(
        settings,
        "rollback",
        {color: TOTAL_WEIGHT, other_color(color): 0},
        {other_color(color)},
        wait,
        rollback=True,
    )


def set_weight(
    settings: Settings, color: str, weight: int, *, wait: float | None = None
) -> SwitchResult:
    """Give ``color`` ``weight`` percent of new requests and the other color the rest.

    1 to 99 is a canary: both colors are ready. 100 is the same as :func:`promote` of
    ``color``, 0 the same as promoting the other color (the one left at 0 is drained).
    """
    check_color(color)
    if not 0 <= weight <= TOTAL_WEIGHT:
        raise ConfigError(f"a weight is a percentage from 0 to 100, not {weight}")
    weights = {color: weight, other_color(color): TOTAL_WEIGHT - weight}
    drain = {c for c, w in weights.items() if w == 0}
    return _switch(settings, "weight", weights, drain, wait)


def _weights_text(state: RouterState) -> str:
    return ", ".join(f"{c} {state[c].admin} weight {state[c].weight}" for c in COLORS)


# -- running HAProxy ------------------------------------------------------------------


class _Runner(Protocol):
    mode: str

    def running(self) -> str | None:
        """A description such as 'pid 42' or 'container 3f2a' when HAProxy runs, else None."""

    def validate(self, path: Path) -> None: ...

    def start(self) -> str: ...

    def stop(self, timeout: float) -> bool:
        """Soft-stop; True when it had to be killed."""

    def failure(self) -> str:
        """Why a start failed, from what HAProxy printed."""


def _alerts(output: str, config: RouterConfig, candidate: Path | None = None) -> str:
    """HAProxy's alert lines, shortened to one line."""
    alerts = []
    for line in output.splitlines():
        if "[ALERT]" not in line:
            continue
        text = line.split("] ", 1)[-1]
        # "   (1234) : config : parsing [...]" -> "parsing [...]"
        parts = [p.strip() for p in text.split(" : ")]
        text = " : ".join(p for p in parts[1:] if p != "config") if len(parts) > 1 else text
        if text.startswith(("Error(s) found in configuration", "Fatal errors found")):
            continue
        if candidate is not None:
            text = text.replace(str(candidate), config.paths.config.name)
            text = text.replace(candidate.name, config.paths.config.name)
        alerts.append(" ".join(text.split()))
    if not alerts:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        return lines[-1] if lines else "no message"
    return "; ".join(alerts[:3])


def find_haproxy(binary: str) -> str:
    """The haproxy executable: a path, or a name on PATH or in the sbin folders."""
    if "/" in binary:
        if os.access(binary, os.X_OK):
            return binary
    else:
        found = shutil.which(binary) or shutil.which(binary, path="/usr/local/sbin:/usr/sbin:/sbin")
        if found:
            return found
    raise InfraError(
        f"haproxy executable {binary!r} not found: install HAProxy (apt-get install haproxy)"
        " or set router.binary"
    )


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name in parentheses; a zombie has exited.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class _HostRunner:
    mode = "host"

    def __init__(self, settings: Settings, config: RouterConfig) -> None:
        self.settings = settings
        self.config = config
        self.paths = config.paths

    def _pid(self) -> int | None:
        try:
            pid = int(self.paths.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # Never signal a process that merely reuses the pid.
        if str(self.paths.config).encode() not in cmdline:
            return None
        return pid

    def running(self) -> str | None:
        pid = self._pid()
        return None if pid is None else f"pid {pid}"

    def _haproxy(self) -> str:
        return find_haproxy(self.settings.raw.router.binary)

    def validate(self, path: Path) -> None:
        result = subprocess.run(
            [self._haproxy(), "-c", "-f", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise ConfigError(
                "haproxy rejected the router config: "
                + _alerts(result.stdout + result.stderr, self.config, path)
            )

    def start(self) -> str:
        with self.paths.log.open("w") as log:
            result = subprocess.run(
                [
                    self._haproxy(),
                    "-D",
                    "-p",
                    str(self.paths.pidfile),
                    "-f",
                    str(self.paths.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=30,
            )
        if result.returncode != 0:
            raise InfraError(f"haproxy did not start: {self.failure()}")
        return self.running() or "pid ?"

    def failure(self) -> str:
        try:
            return _alerts(self.paths.log.read_text(errors="replace"), self.config)
        except OSError:
            return "no output"

    def stop(self, timeout: float) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        forced = False
        # SIGUSR1: soft stop. Stop listening, let open connections finish.
        for sig, grace in (
            (signal.SIGUSR1, timeout + 1.0),
            (signal.SIGTERM, 2.0),
            (signal.SIGKILL, 2.0),
        ):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_until(lambda: not _pid_alive(pid), grace):
                break
            forced = True
        else:
            raise InfraError(f"haproxy (pid {pid}) did not stop")
        for path in (self.paths.pidfile, self.paths.socket):
            path.unlink(missing_ok=True)
        return forced


def _wait_until(predicate: Any, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


class _ContainerRunner:
    """HAProxy in a container: host network, runtime dir bind-mounted at the same path."""

    mode = "container"

    def __init__(self, settings: Settings, config: RouterConfig) -> None:
        self.settings = settings
        self.config = config
        self.paths = config.paths
        self.image = settings.raw.router.image
        self.name = f"releasegate-router-{settings.service}"
        self._docker: DockerClient | None = None

    @property
    def docker(self) -> DockerClient:
        if self._docker is None:
            import docker

            try:
                self._docker = docker.from_env(timeout=30)
                self._docker.ping()
            except docker.errors.DockerException as exc:
                raise InfraError(f"Docker is unreachable: {_docker_reason(exc)}") from None
        return self._docker

    def _container(self) -> Container | None:
        import docker

        try:
            return self.docker.containers.get(self.name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise InfraError(f"Docker: {_docker_reason(exc)}") from None

    def running(self) -> str | None:
        container = self._container()
        if container is None or container.status != "running":
            return None
        return f"container {container.short_id}"

    @property
    def _volumes(self) -> dict[str, dict[str, str]]:
        folder = str(self.paths.runtime_dir)
        return {folder: {"bind": folder, "mode": "rw"}}

    @property
    def _labels(self) -> dict[str, str]:
        return {"releasegate.service": self.settings.service, "releasegate.role": "router"}

    # The socket and state file belong to whoever runs releasegate.
    _user = f"{os.getuid()}:{os.getgid()}"

    def validate(self, path: Path) -> None:
        import docker

        try:
            self.docker.containers.run(
                self.image,
                ["haproxy", "-c", "-f", str(path)],
                remove=True,
                stdout=True,
                stderr=True,
                network_mode="host",
                volumes=self._volumes,
                user=self._user,
                labels=self._labels,
            )
        except docker.errors.ContainerError as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise ConfigError(
                "haproxy rejected the router config: " + _alerts(stderr, self.config, path)
            ) from None
        except docker.errors.DockerException as exc:
            raise InfraError(
                f"cannot run router image {self.image}: {_docker_reason(exc)}"
            ) from None

    def start(self) -> str:
        import docker

        old = self._container()
        try:
            if old is not None:
                old.remove(force=True)
            container = self.docker.containers.run(
                self.image,
                ["haproxy", "-f", str(self.paths.config)],
                name=self.name,
                detach=True,
                restart_policy={"Name": "always"},
                network_mode="host",
                volumes=self._volumes,
                user=self._user,
                labels=self._labels,
            )
        except docker.errors.DockerException as exc:
            raise InfraError(
                f"cannot start router image {self.image}: {_docker_reason(exc)}"
            ) from None
        return f"container {container.short_id}"

    def failure(self) -> str:
        container = self._container()
        if container is None:
            return "the container is gone"
        logs = container.logs(tail=20).decode(errors="replace")
        return _alerts(logs, self.config)

    def stop(self, timeout: float) -> bool:
        import docker

        container = self._container()
        if container is None:
            return False
        forced = False
        try:
            if container.status == "running":
                container.kill(signal="SIGUSR1")
                try:
                    container.wait(timeout=timeout + 1.0)
                except Exception:  # requests' ReadTimeout: the soft stop did not finish
                    container.kill()
                    forced = True
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot stop the router container: {_docker_reason(exc)}") from None
        self.paths.socket.unlink(missing_ok=True)
        return forced


def _docker_reason(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return " ".join(str(text).split())[:300]


def _runner(settings: Settings, config: RouterConfig) -> _Runner:
    if settings.raw.router.mode == "container":
        return _ContainerRunner(settings, config)
    return _HostRunner(settings, config)


def _restore_state_file(paths: RouterPaths, config: RouterConfig) -> bool:
    """Keep only the saved server states that still match the config; True if any."""
    try:
        text = paths.state_file.read_text()
    except FileNotFoundError:
        return False
    kept = filter_state_file(text, config)
    if kept is None:
        paths.state_file.unlink(missing_ok=True)
        return False
    paths.state_file.write_text(kept)
    return True


def router_up(settings: Settings) -> UpResult:
    """Start the router unless it runs already.

    Generates haproxy.cfg in ``router.runtime_dir``, validates it with ``haproxy -c``
    (:class:`ConfigError` with HAProxy's message when it is rejected), starts HAProxy
    (a daemon with a pidfile, or a container) and waits for its runtime API. The
    weights and states saved by :func:`router_down` are restored when the addresses
    still match. When the router already runs, nothing is changed; ``config_stale``
    tells whether its config differs from the one generated now.
    """
    started = time.perf_counter()
    config = router_config(settings)
    paths = config.paths
    text = render_config(config)
    paths.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    runner = _runner(settings, config)
    result = UpResult(
        started=False,
        mode=runner.mode,
        bind=config.bind,
        process="",
        config=str(paths.config),
        socket=str(paths.socket),
    )
    process = runner.running()
    if process is not None:
        try:
            stale = paths.config.read_text() != text
        except OSError:
            stale = True
        return replace(
            result,
            process=process,
            config_stale=stale,
            duration_s=time.perf_counter() - started,
        )
    candidate = paths.runtime_dir / "haproxy.cfg.new"
    candidate.write_text(text)
    try:
        runner.validate(candidate)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    os.replace(candidate, paths.config)
    restored = _restore_state_file(paths, config)
    paths.socket.unlink(missing_ok=True)
    process = runner.start()
    client = RuntimeClient(paths.socket, timeout=2.0)

    answered = False

    def answered_or_died() -> bool:
        nonlocal answered
        if paths.socket.exists():
            try:
                client.command("show info")
            except InfraError:
                pass
            else:
                answered = True
                return True
        return runner.running() is None

    _wait_until(answered_or_died, START_TIMEOUT, poll=0.02)
    if not answered:
        reason = runner.failure()
        runner.stop(1.0)
        raise InfraError(
            f"haproxy did not start: {reason}"
            if runner.running() is None
            else f"haproxy started but its runtime API at {paths.socket} did not answer"
            f" within {START_TIMEOUT:g}s: {reason}"
        )
    return replace(
        result,
        started=True,
        process=runner.running() or process,
        restored_state=restored,
        duration_s=time.perf_counter() - started,
    )


def save_state(settings: Settings) -> bool:
    """Dump the servers' runtime state where the next start loads it; False if unreachable."""
    config = router_config(settings)
    try:
        text = RuntimeClient(config.paths.socket, timeout=2.0).command(
            f"show servers state {config.backend}"
        )
    except InfraError:
        return False
    if filter_state_file(text, config) is None:
        return False
    tmp = config.paths.state_file.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, config.paths.state_file)
    return True


def router_down(settings: Settings, *, forget: bool = False) -> DownResult:
    """Stop the router: a soft stop that lets open connections finish.

    The runtime state (weights, ready/drain) is saved first so that the next
    :func:`router_up` restores the same live color; ``forget`` discards it instead, and
    the next start is back at blue live, green standby. Idempotent.
    """
    started = time.perf_counter()
    config = router_config(settings)
    runner = _runner(settings, config)
    notes = []
    if runner.running() is None:
        if forget:
            config.paths.state_file.unlink(missing_ok=True)
        return DownResult(stopped=False, mode=runner.mode, duration_s=time.perf_counter() - started)
    saved = False
    if forget:
        config.paths.state_file.unlink(missing_ok=True)
    else:
        saved = save_state(settings)
        if not saved:
            notes.append("the runtime state could not be saved; the next start uses the config")
    forced = runner.stop(settings.raw.router.stop_timeout)
    if forced:
        notes.append("the soft stop timed out: haproxy was killed")
    return DownResult(
        stopped=True,
        mode=runner.mode,
        saved_state=saved,
        forced=forced,
        duration_s=time.perf_counter() - started,
        notes=notes,
    )


def router_address(settings: Settings) -> str:
    """The URL clients use to reach the service through the router."""
    bind = settings.raw.router.bind
    host, _, port = bind.rpartition(":")
    if host in ("", "*", "0.0.0.0", "::", "[::]"):
        host = BACKEND_HOST
    return f"http://{host}:{port}"
