"""Switching traffic between blue and green: promote, rollback, canary weights, withdraw.

Traffic moves only through the runtime API (:mod:`releasegate.router.runtime`), never by
a reload, so a switch touches no open connection and takes one round trip on a unix
socket. ``promote`` moves all new requests to a color and *drains* the other (open
connections finish, no new ones); ``rollback`` moves them back to the drained color.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, InfraError, RollbackFailed, StateError
from releasegate.router.config import COLORS, TOTAL_WEIGHT, router_config
from releasegate.router.process import runtime_client
from releasegate.router.runtime import set_state_command, set_weight_command
from releasegate.router.state import (
    RouterState,
    check_color,
    default_wait,
    other_color,
    read_state,
    router_status,
    wait_healthy,
)


@dataclass(frozen=True)
class SwitchResult:
    """What a weight change, promote or rollback did."""

    action: str  # weight, promote, rollback or withdraw
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
    client = runtime_client(settings, config)
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


def withdraw(settings: Settings) -> SwitchResult:
    """Send no new request to either color: the router of a service with no live version.

    Both colors get weight 0 (open connections finish). A first release does this before
    it deploys blue, so that blue gets no traffic before its gates pass, and its rollback
    returns to it; a later :func:`promote` makes a color live again.
    """
    return _switch(settings, "withdraw", dict.fromkeys(COLORS, 0), set(), None)


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
