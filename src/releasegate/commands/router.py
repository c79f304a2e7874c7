"""``releasegate router``: run HAProxy in front of blue and green, switch traffic.

A thin layer over :mod:`releasegate.router.manager` (up, down),
:mod:`releasegate.router.state` (status) and :mod:`releasegate.router.switching`
(weight, promote, rollback); every change goes through the HAProxy runtime API, never
a reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from releasegate.cli import CliState, pass_state

if TYPE_CHECKING:
    from releasegate.router.state import RouterState
    from releasegate.router.switching import SwitchResult

COLOR = click.Choice(["blue", "green"])


def _echo(text: str = "") -> None:
    from releasegate.output import echo

    echo(text)


def _echo_json(data: object) -> None:
    from releasegate.output import echo_json

    echo_json(data)


def _wait_option(value: str | None) -> float | None:
    if value is None:
        return None
    from releasegate.config import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from None


wait_option = click.option(
    "--wait",
    metavar="DURATION",
    help="How long to wait for the target color to pass its health check"
    " (default: 3 check intervals, at least 1s).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _print_state(state: RouterState) -> None:
    from releasegate.output import table

    _echo(
        f"router: pid {state.pid}, HAProxy {state.version}, up {state.uptime_s}s,"
        f" runtime API {state.socket}"
    )
    rows = [
        (
            c.color,
            c.address,
            c.admin,
            c.status,
            c.weight,
            c.check,
            c.sessions,
            "live" if state.live == c.color else "canary" if state.canary == c.color else "",
        )
        for c in state.colors.values()
    ]
    _echo(
        table(["color", "address", "admin", "status", "weight", "check", "sessions", "role"], rows)
    )
    _echo(f"live: {state.live or 'none'}; next deploy goes to: {state.standby or 'undecided'}")


def _print_switch(result: SwitchResult, as_json: bool) -> None:
    if as_json:
        _echo_json(result.to_dict())
        return
    weights = ", ".join(f"{color} {weight}" for color, weight in result.after.weights.items())
    _echo(
        f"{result.action}: live {result.before.live or 'none'} -> {result.after.live or 'none'}"
        f" ({weights}); switched in {result.switch_s * 1000:.1f} ms"
        f" ({result.duration_s * 1000:.0f} ms with checks)"
    )


@click.group("router")
def router() -> None:
    """Run HAProxy in front of blue and green; switch traffic via its runtime API."""


@router.command("up")
@json_option
@pass_state
def up(state: CliState, as_json: bool) -> int:
    """Start the router (nothing to do if it runs).

    Generates haproxy.cfg in router.runtime_dir, checks it with haproxy -c and starts
    HAProxy with blue live, or with the weights saved by the last 'router down'.
    """
    from releasegate.router.manager import router_up

    result = router_up(state.settings())
    if as_json:
        _echo_json(result.to_dict())
        return 0
    if result.started:
        restored = "; restored the saved weights" if result.restored_state else ""
        _echo(
            f"router started ({result.mode}, {result.process}) on {result.bind};"
            f" runtime API {result.socket}{restored}"
        )
    else:
        _echo(f"router already running ({result.mode}, {result.process}) on {result.bind}")
        if result.config_stale:
            _echo(
                "note: its config differs from the current settings;"
                " run 'router down' then 'router up' to apply them"
            )
    return 0


@router.command("down")
@click.option(
    "--forget", is_flag=True, help="Discard the runtime state: next start is blue live again."
)
@json_option
@pass_state
def down(state: CliState, forget: bool, as_json: bool) -> int:
    """Stop the router softly, saving its weights.

    Open connections finish (up to router.stop_timeout); the next 'router up' restores
    the same live color unless --forget is given.
    """
    from releasegate.router.manager import router_down

    result = router_down(state.settings(), forget=forget)
    if as_json:
        _echo_json(result.to_dict())
        return 0
    if not result.stopped:
        _echo("router is not running")
    else:
        saved = "; weights saved for the next start" if result.saved_state else ""
        _echo(f"router stopped in {result.duration_s:.1f}s{saved}")
    for note in result.notes:
        _echo(f"note: {note}")
    return 0


@router.command("status")
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> int:
    """Show both colors and which one is live.

    Per color: admin state, health, weight and open sessions, read from the runtime API.
    """
    from releasegate.router.state import router_status

    result = router_status(state.settings())
    if as_json:
        _echo_json(result.to_dict())
    else:
        _print_state(result)
    return 0


@router.command("weight")
@click.argument("color", type=COLOR)
@click.argument("weight", type=click.IntRange(0, 100))
@wait_option
@json_option
@pass_state
def weight(state: CliState, color: str, weight: int, wait: str | None, as_json: bool) -> int:
    """Split new requests: COLOR gets WEIGHT percent.

    The other color gets the rest. 1 to 99 is a canary; 100 or 0 is a full switch
    that drains the color left at 0.
    """
    from releasegate.router.switching import set_weight

    _print_switch(set_weight(state.settings(), color, weight, wait=_wait_option(wait)), as_json)
    return 0


@router.command("promote")
@click.argument("color", type=COLOR, required=False)
@wait_option
@json_option
@pass_state
def promote(state: CliState, color: str | None, wait: str | None, as_json: bool) -> int:
    """Send all new requests to COLOR (default: the standby).

    The other color is drained: its open connections finish, it gets no new ones.
    """
    from releasegate.router.switching import promote as promote_color

    _print_switch(promote_color(state.settings(), color, wait=_wait_option(wait)), as_json)
    return 0


@router.command("rollback")
@click.argument("color", type=COLOR, required=False)
@wait_option
@json_option
@pass_state
def rollback(state: CliState, color: str | None, wait: str | None, as_json: bool) -> int:
    """Send all new requests back to the drained color.

    Undoes a promote (or ends a canary on the live color); COLOR names the target
    explicitly. The other color is drained.
    """
    from releasegate.router.switching import rollback as rollback_color

    _print_switch(rollback_color(state.settings(), color, wait=_wait_option(wait)), as_json)
    return 0
