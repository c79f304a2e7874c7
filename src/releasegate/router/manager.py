"""Starting and stopping the router (HAProxy in front of blue and green).

The router is one HAProxy process (a host binary or a container) with one backend named
after the service and two servers, ``blue`` and ``green``. This module starts and stops
it (:func:`router_up`, :func:`router_down`); its state is read by
:mod:`releasegate.router.state`, traffic is switched by :mod:`releasegate.router.switching`
and the process is run by :mod:`releasegate.router.process`.

Nothing here writes the release ledger; every function returns a result whose
``to_dict()`` the release pipeline records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from releasegate.config import Settings
from releasegate.errors import InfraError
from releasegate.hosts.transport import transport
from releasegate.router.config import (
    BACKEND_HOST,
    RouterConfig,
    filter_state_file,
    render_config,
    router_config,
)
from releasegate.router.process import Runner, runner_for, wait_until
from releasegate.router.runtime import RuntimeClient

# How long ``router up`` waits for the runtime API of a fresh HAProxy.
START_TIMEOUT = 10.0


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


def _restore_state_file(runner: Runner, config: RouterConfig) -> bool:
    """Keep only the saved server states that still match the config; True if any."""
    text = runner.read_file(config.paths.state_file)
    if text is None:
        return False
    kept = filter_state_file(text, config)
    if kept is None:
        runner.discard_file(config.paths.state_file)
        return False
    runner.write_file(config.paths.state_file, kept)
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
    runner = runner_for(settings, config)
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
        stale = runner.read_file(paths.config) != text
        return replace(
            result,
            process=process,
            config_stale=stale,
            duration_s=time.perf_counter() - started,
        )
    runner.install_config(text)
    restored = _restore_state_file(runner, config)
    process = runner.start()
    client = RuntimeClient(runner.admin_socket(), timeout=2.0)

    answered = False

    def answered_or_died() -> bool:
        nonlocal answered
        try:
            client.command("show info")
        except InfraError:
            pass
        else:
            answered = True
            return True
        return runner.running() is None

    wait_until(answered_or_died, START_TIMEOUT, poll=0.02)
    if not answered:
        reason = runner.failure()
        runner.stop(1.0)
        raise InfraError(
            f"haproxy did not start: {reason}"
            if runner.running() is None
            else f"haproxy started but its runtime API at {client.socket_path} did not answer"
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
    runner = runner_for(settings, config)
    try:
        text = RuntimeClient(runner.admin_socket(), timeout=2.0).command(
            f"show servers state {config.backend}"
        )
    except InfraError:
        return False
    if filter_state_file(text, config) is None:
        return False
    runner.write_file(config.paths.state_file, text)
    return True


def router_down(settings: Settings, *, forget: bool = False) -> DownResult:
    """Stop the router: a soft stop that lets open connections finish.

    The runtime state (weights, ready/drain) is saved first so that the next
    :func:`router_up` restores the same live color; ``forget`` discards it instead, and
    the next start is back at blue live, green standby. Idempotent.
    """
    started = time.perf_counter()
    config = router_config(settings)
    runner = runner_for(settings, config)
    notes = []
    if runner.running() is None:
        if forget:
            runner.discard_file(config.paths.state_file)
        return DownResult(stopped=False, mode=runner.mode, duration_s=time.perf_counter() - started)
    saved = False
    if forget:
        runner.discard_file(config.paths.state_file)
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
    """The URL at which releasegate reaches the service through the router: the bind
    address as the Docker host sees it, reached the way the transport reaches that host
    (over ssh, through a forwarded port)."""
    bind = settings.raw.router.bind
    host, _, port = bind.rpartition(":")
    if host in ("", "*", "0.0.0.0", "::", "[::]"):
        host = BACKEND_HOST
    return transport(settings).color_url(int(port), host)
