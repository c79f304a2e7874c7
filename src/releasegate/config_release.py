"""``[release]`` and ``[release.canary]``: the pipeline's own settings.

A canary is a list of steps, each a share of new requests for the new color (``"5%"``)
or a ``"pause"``; ``"100%"`` is the promotion itself. Without ``[release.canary]`` the
release switches in one step, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from releasegate.config_base import Duration, Section, threshold_rules

PAUSE = "pause"
FULL_WEIGHT = 100
_WEIGHT_RE = re.compile(r"^\s*([0-9]+)\s*%\s*$")
_FRACTION_RE = re.compile(r"^\s*[0-9]*\.[0-9]+\s*%\s*$")
# Rules about the amount of traffic judge the users' load, not the new version.
RATE_METRICS = ("rps", "requests")


@dataclass(frozen=True)
class CanaryStep:
    """One step of a canary: a weight for the new color, or a pause (``weight`` None)."""

    weight: int | None

    @property
    def is_pause(self) -> bool:
        return self.weight is None

    @property
    def label(self) -> str:
        return PAUSE if self.weight is None else f"{self.weight}%"


def parse_step(value: object) -> CanaryStep:
    """``"5%"`` or ``"pause"`` as a :class:`CanaryStep`; ValueError with the fix otherwise."""
    if isinstance(value, str) and value.strip().lower() == PAUSE:
        return CanaryStep(None)
    if isinstance(value, str) and (match := _WEIGHT_RE.match(value)):
        return CanaryStep(int(match.group(1)))
    if isinstance(value, str) and _FRACTION_RE.match(value):
        raise ValueError(f"{value!r}: the router's weights are whole percentages")
    raise ValueError(f'{value!r} is not a step: write a percentage such as "5%", or "pause"')


def check_steps(steps: list[CanaryStep]) -> list[CanaryStep]:
    """``steps`` when they make a canary; ValueError naming the first problem otherwise."""
    if not any(not step.is_pause for step in steps):
        raise ValueError(
            'no weight step: list them, e.g. ["5%", "25%", "100%"], or remove'
            " [release.canary] to switch in one step"
        )
    if steps[0].is_pause:
        raise ValueError("'pause' cannot be the first step: nothing has been judged yet")
    previous: CanaryStep | None = None
    heaviest = 0
    for step in steps:
        if previous is not None and previous.weight == FULL_WEIGHT:
            raise ValueError("nothing can follow 100% (the promotion)")
        if step.is_pause and previous is not None and previous.is_pause:
            raise ValueError("two pauses in a row")
        if step.weight is not None:
            if step.weight == 0:
                raise ValueError("0% sends the new version nothing: start at 1% or more")
            if step.weight > FULL_WEIGHT:
                raise ValueError(f"{step.label} is above 100%")
            if step.weight < heaviest:
                raise ValueError(f"steps must increase: {step.label} comes after {heaviest}%")
            if step.weight == heaviest:
                raise ValueError(f"{step.label} is listed twice: steps must increase")
            heaviest = step.weight
        previous = step
    return steps


class CanarySection(Section):
    """``[release.canary]``: weight steps judged on the router's own record of real traffic."""

    steps: list[str]
    # How long each weight step sends its share of real traffic to the new color.
    duration: Duration = Field(default=30.0, gt=0)
    # Requests the new color must have served in a step before it can be judged.
    min_requests: int = Field(default=50, ge=1)
    # A step with too few requests is extended by its duration up to this many times,
    # then fails: it never passes on too little traffic.
    max_extensions: int = Field(default=2, ge=0, le=100)
    # Rules on the new color's real traffic (the "total" rule grammar of [slo.thresholds]);
    # absent: the gate's "total" rules without its rate rules (rps, requests).
    thresholds: list[str] | None = None
    # Compare the new color with the old one on the same traffic and window, with the
    # margins of [slo.compare] (whether or not the gate compares).
    compare: bool = True

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: object) -> list[str]:
        # Before pydantic's own check: a number such as 5 gets the step grammar's message.
        if not isinstance(value, list):
            raise ValueError('expected a list of steps, e.g. ["5%", "25%", "pause", "100%"]')
        return [step.label for step in check_steps([parse_step(item) for item in value])]

    @field_validator("thresholds")
    @classmethod
    def _rules(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from releasegate.gates.thresholds import parse_threshold

        threshold_rules({"total": value})
        for rule in value:
            if parse_threshold(rule).metric in RATE_METRICS:
                raise ValueError(
                    f"{rule!r}: the amount of real traffic is the users', not the new"
                    " version's; judge latency and error_rate"
                )
        return value

    @property
    def plan(self) -> list[CanaryStep]:
        """The steps to run before the promotion (``100%`` is the promotion itself)."""
        return [s for s in map(parse_step, self.steps) if s.weight != FULL_WEIGHT]


class ReleaseSection(Section):
    """``releasegate release``: the pipeline's own settings."""

    verify_backup: bool = True
    # The Locust SLO gate against the new color before any real traffic reaches it. An
    # environment where synthetic load must not run turns it off and relies on the canary.
    slo_gate: bool = True
    # Post-promotion watch through the router: smoke, then a short SLO check this long.
    watch: Duration = 10.0
    watch_users: int = Field(default=5, ge=1)
    # The watch's own [slo.thresholds]; when absent, the gate's with its rate rules (rps,
    # requests) scaled to the watch's users and window.
    watch_thresholds: dict[str, list[str]] | None = None
    # Where JSON and Markdown evidence reports are written.
    report_dir: Path = Path(".releasegate/reports")
    # Scopes whose items the live version updates in place ("redis:sess:*",
    # "postgres:public.users", "qdrant:documents"): the rollback's verification reports a
    # changed pre-release item there instead of failing. A missing one always fails.
    live_updates: list[str] = Field(default_factory=list)
    # Contract revisions wait for --allow-contract, or apply by themselves in a later
    # release once the first release that deferred them has been live this long.
    contract_bake: Duration | None = None
    # Absent: one switch from the old color to the new one.
    canary: CanarySection | None = None

    @field_validator("watch_thresholds")
    @classmethod
    def _watch_rules(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        return None if value is None else threshold_rules(value)

    @field_validator("live_updates")
    @classmethod
    def _scoped(cls, value: list[str]) -> list[str]:
        for item in value:
            store, _, scope = item.partition(":")
            if store not in ("postgres", "redis", "qdrant") or not scope:
                raise ValueError(
                    f"{item!r}: write STORE:SCOPE, e.g. 'redis:sess:*' or 'postgres:public.users'"
                )
        return value
