"""The canary steps of a release: weight steps judged on real traffic, and pauses.

With ``[release.canary]`` the steps between the gate and the promotion are, for
``steps = ["5%", "25%", "pause", "50%", "100%"]``::

    canary 5%  ->  canary 25%  ->  pause after 25%  ->  canary 50%  ->  promote (100%)

A weight step gives the new color its share of new requests through the router's runtime
API, waits the step's duration while the router logs every request
(:class:`~releasegate.canary.traffic.TrafficReader`), and judges the window
(:func:`~releasegate.canary.analysis.judge_step`): the new color against its rules and
against the old color on the same traffic. The window is judged at every read: a
failure ends the step at once (before ``min_requests`` only when the analysis finds the
new color beyond a limit beyond doubt), a pass waits for the end of the window. Too few
requests extends the step by its duration, up to ``max_extensions`` times, then fails; a
step whose minimum can never be reached at the observed rate fails at once and says why.
A failed step sends every new request back to the old color before it returns; the
release's rollback follows.

A ``pause`` ends the run in the ``paused`` outcome (:data:`ExitCode.PAUSED`) with the
weight in place; ``release --resume`` continues with the next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from releasegate import db
from releasegate.config import Settings
from releasegate.config_release import FULL_WEIGHT, RATE_METRICS, CanaryStep
from releasegate.errors import InfraError
from releasegate.ledger import StepStatus
from releasegate.pipeline.context import CANARY, REDIS, ReleaseContext, StepOutcome

if TYPE_CHECKING:
    from releasegate.canary.analysis import StepVerdict
    from releasegate.canary.traffic import ColorTraffic, TrafficReader
    from releasegate.config import SloCompareSection

Step = Callable[[ReleaseContext], StepOutcome]
# How often a weight step reads the router's log: the running counts on the terminal.
TICK_S = 1.0
# How long a step waits for an unreachable router to answer before it leaves the traffic
# to the rollback (which starts the router again if it must).
ROUTER_WAIT_S = 30.0


# -- the step list ----------------------------------------------------------------------


def step_name(step: CanaryStep, previous: CanaryStep | None) -> str:
    """``canary 5%`` for a weight; ``pause after 25%`` for a pause (unique, since weights
    increase and never two pauses follow each other)."""
    if step.is_pause:
        assert previous is not None  # the config refuses a pause first
        return f"pause after {previous.label}"
    return f"canary {step.label}"


def with_canary(settings: Settings, steps: list[tuple[str, Step]]) -> list[tuple[str, Step]]:
    """``steps`` with the canary's steps before ``promote`` (unchanged without a canary)."""
    canary = settings.raw.release.canary
    if canary is None:
        return steps
    added: list[tuple[str, Step]] = []
    previous = None
    for step in canary.plan:
        if step.weight is None:
            added.append((step_name(step, previous), pause))
        else:
            added.append((step_name(step, previous), partial(weight_step, weight=step.weight)))
        previous = step
    at = [name for name, _ in steps].index("promote")
    return [*steps[:at], *added, *steps[at:]]


# -- the rules ------------------------------------------------------------------------


def canary_rules(settings: Settings) -> dict[str, list[str]]:
    """The rules on the new color: ``[release.canary] thresholds``, else the gate's
    ``total`` rules without its rate rules (real traffic's volume is the users')."""
    from releasegate.gates.thresholds import TOTAL_SCOPE, parse_threshold

    canary = settings.raw.release.canary
    if canary is not None and canary.thresholds is not None:
        return {TOTAL_SCOPE: list(canary.thresholds)}
    gate = settings.raw.slo.thresholds.get(TOTAL_SCOPE, [])
    return {TOTAL_SCOPE: [r for r in gate if parse_threshold(r).metric not in RATE_METRICS]}


def canary_compare(settings: Settings) -> SloCompareSection | None:
    """The margins against the old color ([slo.compare]'s), or None without a comparison."""
    canary = settings.raw.release.canary
    if canary is None or not canary.compare:
        return None
    return settings.raw.slo.compare.model_copy(update={"enabled": True})


def unreachable_reason(
    new_requests: int, elapsed_s: float, remaining_s: float, min_requests: int, weight: int
) -> str | None:
    """Why ``min_requests`` cannot be reached in the step's remaining time (extensions
    included) at the rate the new color has had so far; None while it still can."""
    rate = new_requests / elapsed_s if elapsed_s > 0 else 0.0
    expected = new_requests + rate * remaining_s
    if expected >= min_requests:
        return None
    total = elapsed_s + remaining_s
    return (
        f"at the observed {rate:.2f} requests/s on {weight}% of the traffic, the new color"
        f" would serve about {int(expected)} requests in {total:.0f}s (extensions included),"
        f" fewer than min_requests = {min_requests}: raise the duration or the weight,"
        " or lower min_requests"
    )


# -- a weight step --------------------------------------------------------------------


@dataclass
class _Window:
    """The traffic of one weight step so far: each drain of the router's log, per color."""

    new_color: str
    old_color: str
    drains: list[dict[str, ColorTraffic]] = field(default_factory=list)

    def add(self, drained: dict[str, ColorTraffic]) -> None:
        self.drains.append(drained)

    def traffic(self, color: str) -> ColorTraffic:
        from releasegate.canary.traffic import ColorTraffic

        # Combined when judged (one sort), not merged at every drain.
        return ColorTraffic.combine(color, [drained[color] for drained in self.drains])

    def requests(self, color: str) -> int:
        return sum(drained[color].requests for drained in self.drains)

    def counts(self) -> str:
        return "; ".join(
            f"{color} {self.requests(color)} req"
            f" {sum(drained[color].errors for drained in self.drains)} err"
            for color in (self.new_color, self.old_color)
        )


def _catch_up_redis(ctx: ReleaseContext) -> None:
    # The new color reads the new layout: carry over what the live one wrote meanwhile.
    # Qdrant waits for the promotion, whose catch-up also moves the alias.
    if any(c["kind"] == REDIS for c in ctx.changes):
        from releasegate.migrations import stores

        stores.catch_up(ctx.settings, REDIS)


def _set_weight(ctx: ReleaseContext, weight: int) -> dict[str, Any]:
    from releasegate.router import switching

    assert ctx.target is not None
    if any(c["kind"] == CANARY for c in ctx.changes):
        ctx.update_change(CANARY, weight=weight)
    else:
        ctx.record_change(CANARY, **{"from": ctx.live_before, "to": ctx.target, "weight": weight})
    result = switching.set_weight(ctx.settings, ctx.target, weight)
    switch: dict[str, Any] = result.to_dict()
    ctx.sections.setdefault("router", []).append(switch)
    return switch


def _observe(
    ctx: ReleaseContext, weight: int, reader: TrafficReader, window: _Window, until: float
) -> StepVerdict:
    """Read the router's log every tick until ``until``, showing the running counts, and
    judge what came so far: a failure ends the step at once (the analysis fails early
    only beyond doubt), anything else waits for the end of the window."""
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(TICK_S, left))
        window.add(reader.drain())
        left = max(0.0, until - time.monotonic())
        ctx.step_progress(
            f"canary {weight}%", f"weight {weight}%: {window.counts()}; {left:.0f}s left"
        )
        verdict = _judge(ctx.settings, window)
        if verdict.verdict == "fail":
            return verdict
    return _judge(ctx.settings, window)


def _judge(settings: Settings, window: _Window) -> StepVerdict:
    from releasegate.canary.analysis import judge_step

    canary = settings.raw.release.canary
    assert canary is not None
    return judge_step(
        window.traffic(window.new_color),
        window.traffic(window.old_color),
        rules=canary_rules(settings),
        compare=canary_compare(settings),
        min_requests=canary.min_requests,
    )


def weight_step(ctx: ReleaseContext, weight: int) -> StepOutcome:
    """``weight`` percent of new requests to the new color for the step's duration (and
    its extensions), judged on what the router logged; see the module docs."""
    from releasegate.canary.traffic import TrafficReader

    canary = ctx.settings.raw.release.canary
    assert canary is not None and ctx.target is not None
    if ctx.live_before is None:
        return StepOutcome.skip("first release: no live version to share the traffic with")
    name = f"canary {weight}%"
    _catch_up_redis(ctx)
    reader = TrafficReader.for_settings(ctx.settings)
    started = time.monotonic()
    window = _Window(ctx.target, ctx.live_before)
    extensions = 0
    try:
        reader.skip_backlog()  # the window starts with this step's weight
        switch = _set_weight(ctx, weight)
        until = time.monotonic() + canary.duration
        while True:
            verdict = _observe(ctx, weight, reader, window, until)
            if verdict.verdict != "inconclusive":
                break
            elapsed = time.monotonic() - started
            left = (canary.max_extensions - extensions) * canary.duration
            why = unreachable_reason(
                window.requests(window.new_color), elapsed, left, canary.min_requests, weight
            )
            if why is not None:
                verdict = replace(verdict, reason=f"{verdict.reason}: {why}")
                break
            if extensions == canary.max_extensions:
                verdict = replace(
                    verdict, reason=f"{verdict.reason} after {extensions} extension(s)"
                )
                break
            extensions += 1
            until += canary.duration
            ctx.progress(f"{name}: inconclusive ({verdict.reason}); extended ({extensions})")
    except InfraError as exc:
        return _router_lost(ctx, name, weight, exc, window, time.monotonic() - started)
    record = _record(weight, time.monotonic() - started, extensions, verdict.to_dict(), switch)
    _keep(ctx, record)
    summary = f"{verdict.verdict}: {verdict.reason}"
    if verdict.verdict == "pass":
        return StepOutcome(True, f"{window.counts()}; {summary}", record)
    back = _back_to_old(ctx)
    return StepOutcome(False, f"{summary}; {back}", record)


def _record(
    weight: int,
    duration_s: float,
    extensions: int,
    verdict: dict[str, Any],
    switch: dict[str, Any] | None,
) -> dict[str, Any]:
    """One step as the report and the ledger keep it."""
    return {
        "weight": weight,
        "duration_s": round(duration_s, 3),
        "extensions": extensions,
        "switch_ms": None if switch is None else switch.get("switch_ms"),
        **verdict,
    }


def _keep(ctx: ReleaseContext, record: dict[str, Any]) -> None:
    steps = ctx.sections.setdefault("canary", {"steps": []})["steps"]
    steps.append(record)
    # A resumed release rebuilds its report's canary section from here.
    ctx.ledger.merge_summary(ctx.release_id, {"canary": ctx.sections["canary"]})


def _back_to_old(ctx: ReleaseContext) -> str:
    """Every new request to the old color now, ahead of the rest of the rollback."""
    from releasegate.router import switching

    assert ctx.live_before is not None
    try:
        result = switching.rollback(ctx.settings, ctx.live_before)
    except Exception as exc:  # the rollback's own switch tries again
        return f"traffic back to {ctx.live_before} failed ({db.first_line(exc)})"
    ctx.sections.setdefault("router", []).append(result.to_dict())
    return f"traffic back to {ctx.live_before} in {result.duration_s * 1000:.0f} ms"


def _router_lost(
    ctx: ReleaseContext,
    name: str,
    weight: int,
    error: InfraError,
    window: _Window,
    elapsed_s: float,
) -> StepOutcome:
    """The router stopped answering mid-step: traffic back to the old color as soon as it
    answers again (within :data:`ROUTER_WAIT_S`), the ledger told each time."""
    from releasegate.router import switching

    assert ctx.live_before is not None
    lost = db.first_line(error)
    ctx.ledger.record_event(
        ctx.release_id, name, StepStatus.INFO, None, {"router": "unreachable", "error": lost}
    )
    ctx.progress(f"{name}: the router does not answer ({lost}); waiting for it")
    waited_from = time.monotonic()
    answer: dict[str, Any] = {"router": "still unreachable", "waited_s": ROUTER_WAIT_S}
    while time.monotonic() - waited_from < ROUTER_WAIT_S:
        try:
            result = switching.rollback(ctx.settings, ctx.live_before)
        except InfraError:
            time.sleep(0.2)
            continue
        ctx.sections.setdefault("router", []).append(result.to_dict())
        answer = {
            "router": "answered",
            "traffic_back_to": ctx.live_before,
            "after_s": round(time.monotonic() - waited_from, 3),
        }
        break
    ctx.ledger.record_event(ctx.release_id, name, StepStatus.INFO, None, answer)
    reason = f"the router stopped answering during the step ({lost})"
    verdict = {
        "verdict": "fail",
        "reason": reason,
        "green": window.traffic(window.new_color).summary(),
        "blue": window.traffic(window.old_color).summary(),
        "router": answer,
    }
    record = _record(weight, elapsed_s, 0, verdict, None)
    _keep(ctx, record)
    if answer["router"] == "answered":
        back = f"traffic back to {ctx.live_before} {answer['after_s']:.1f}s later"
    else:
        back = f"no answer in {ROUTER_WAIT_S:.0f}s: the rollback starts it again"
    return StepOutcome(False, f"{reason}; {back}", record)


# -- a pause --------------------------------------------------------------------------


def pause(ctx: ReleaseContext) -> StepOutcome:
    """End the run here, the weight in place: ``release --resume`` continues with the
    next step, ``releasegate rollback`` undoes the release."""
    if ctx.live_before is None:
        return StepOutcome.skip("first release: nothing to pause on")
    canary = next((c for c in ctx.changes if c["kind"] == CANARY), None)
    weight = canary["weight"] if canary is not None else 0
    return StepOutcome(
        True,
        f"{ctx.target} at {weight}% of new requests, {ctx.live_before} at"
        f" {FULL_WEIGHT - weight}%: 'releasegate release --resume' continues,"
        " 'releasegate rollback' undoes the release",
        {"weight": weight},
        paused=True,
    )
