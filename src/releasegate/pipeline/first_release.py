"""A service's first release: no color is live and no container of the service exists.

The release then has nothing to stand beside. It deploys blue, runs backup, migrate,
smoke and the SLO gate (with no comparison: there is no live color to compare with),
promotes blue, watches it, and stops nothing at finalize. Its rollback stops blue and
leaves the router with no live color, as it was before the release.

Whether a release is the first is read from what the router and Docker report, never
guessed. Two situations look like a first release but are refused, because going on
would replace something nobody can tell is unused:

- the router has no live color, yet containers of the service exist: nothing tells
  which of them serves, or what they hold;
- the router's live color passes its health check, yet no container of the service
  runs as that color: something else answers on its port.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The color a first release deploys (a fresh router also starts with it in front).
FIRST_COLOR = "blue"


@dataclass(frozen=True)
class Standing:
    """What preflight found: the router's live color and the service's containers."""

    service: str
    live: str | None  # None: no color is live, or the router is not running
    live_healthy: bool  # the live color passes HAProxy's health check
    containers: Mapping[str, str]  # color -> Docker status, for each color with a container
    ports: Mapping[str, int]  # color -> host port


@dataclass(frozen=True)
class Verdict:
    """Whether the release is a first release, or why it must not go on."""

    first_release: bool
    refusal: str | None = None


def judge(standing: Standing) -> Verdict:
    """Decide between an ordinary release, a first release and a refusal (module docs).

    With containers and a live color, the release is an ordinary one; preflight then
    checks that the live color is healthy.
    """
    containers = standing.containers
    if containers:
        if standing.live is not None:
            return Verdict(False)
        found = ", ".join(f"{color} ({status})" for color, status in sorted(containers.items()))
        stops = "; ".join(f"releasegate stop --color {color}" for color in sorted(containers))
        return Verdict(
            False,
            f"the router has no live color, yet containers of {standing.service} exist:"
            f" {found}; a release does not replace what may be serving. Promote the one"
            " that serves (releasegate router promote COLOR), or remove them and release"
            f" again as a first release ({stops})",
        )
    if standing.live is not None and standing.live_healthy:
        port = standing.ports.get(standing.live)
        return Verdict(
            False,
            f"the router's live color {standing.live} passes its health check, yet no"
            f" {standing.live} container of {standing.service} exists: something else"
            f" answers on port {port}; stop it (or change deploy.{standing.live}_port)"
            " and release again",
        )
    return Verdict(True)
