"""The verdict of one canary step, on the real traffic the router logged.

A step passes when green served at least ``min_requests`` requests, met every rule of
the threshold grammar (:mod:`releasegate.gates.thresholds`, scope ``total``: real
traffic carries no request names) and, when a comparison is configured, was no worse
than blue over the same window beyond the margins of
:class:`~releasegate.config.SloCompareSection`. The rules, the comparison and the way
they add up are the SLO gate's own (:mod:`releasegate.gates.slo_verdicts`): here they
run on the router's figures instead of Locust's.

Too few requests on green is **inconclusive**, never a pass: the reason says how many
arrived and how many were needed, so that the pipeline can extend the step or fail it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from releasegate.canary.traffic import ColorTraffic, nearest_rank
from releasegate.errors import ConfigError
from releasegate.gates.histogram import Histogram
from releasegate.gates.locust_stats import ScopeStats, WindowStats
from releasegate.gates.slo_verdicts import (
    Verdict,
    combine,
    compare_windows,
    evaluate,
)
from releasegate.gates.thresholds import TOTAL_SCOPE, Threshold, parse_thresholds

if TYPE_CHECKING:
    from releasegate.config import SloCompareSection

StepOutcome = Literal["pass", "fail", "inconclusive"]
_OUTCOMES: dict[Verdict, StepOutcome] = {
    Verdict.PASS: "pass",
    Verdict.FAIL: "fail",
    Verdict.INCONCLUSIVE: "inconclusive",
}


@dataclass(frozen=True)
class StepVerdict:
    """The verdict of a canary step and what it rests on, JSON-ready for the report.

    ``green`` and ``blue`` are :meth:`ColorTraffic.summary` of the window (requests,
    errors, error rate, rps, p50/p95/p99 in ms); ``rules`` holds one entry per rule on
    green and ``comparisons`` one per comparison with blue, as the SLO gate reports them.
    """

    verdict: StepOutcome
    reason: str
    green: dict[str, Any]
    blue: dict[str, Any]
    rules: tuple[dict[str, Any], ...] = ()
    comparisons: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "green": self.green,
            "blue": self.blue,
            "rules": list(self.rules),
            "comparisons": list(self.comparisons),
        }


class _SortedLatencies(Histogram):
    """The exact latencies of a window behind the histogram interface the SLO verdict
    logic reads, so that a rule sees the same percentiles as the report."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[float, ...]) -> None:
        super().__init__()
        self.values = values
        self.count = len(values)
        self.total = float(sum(values))
        if values:
            self.min, self.max = values[0], values[-1]

    def percentile(self, q: float) -> float | None:
        return nearest_rank(self.values, q)


class _TrafficWindow(WindowStats):
    """One color's traffic as the SLO gate's window statistics: a single ``total`` scope
    whose latencies are exact (the base class would merge them into a new histogram)."""

    def __init__(self, traffic: ColorTraffic) -> None:
        super().__init__(duration_s=traffic.duration_s, entries=[], source="router")
        self.total = ScopeStats(
            TOTAL_SCOPE,
            traffic.requests,
            traffic.errors,
            traffic.duration_s,
            _SortedLatencies(traffic.latencies_ms),
        )

    @property
    def requests(self) -> int:
        return self.total.requests

    def scope(self, name: str) -> ScopeStats:
        if name == TOTAL_SCOPE:
            return self.total
        return ScopeStats(name, 0, 0, self.duration_s)


def step_thresholds(rules: Mapping[str, Sequence[str]]) -> list[Threshold]:
    """Parse a step's rules; :class:`ConfigError` for bad grammar or a scope not ``total``."""
    others = [scope for scope in rules if scope != TOTAL_SCOPE]
    if others:
        raise ConfigError(
            f"canary rules apply to all real traffic: use the scope {TOTAL_SCOPE!r},"
            f" not {others[0]!r}"
        )
    return parse_thresholds(rules)


def judge_step(
    green: ColorTraffic,
    blue: ColorTraffic,
    *,
    rules: Mapping[str, Sequence[str]],
    compare: SloCompareSection | None,
    min_requests: int,
) -> StepVerdict:
    """Judge one step: green's own rules, then green against blue over the same window.

    ``rules`` is ``{"total": ["p95 < 300ms", "error_rate < 1%"]}`` in the SLO gate's
    grammar. ``compare`` gives the margins of green against blue (its ``latency_metric``,
    ``latency_margin``, ``latency_slack`` and ``error_rate_margin``; its ``scopes`` do not
    apply, the whole traffic is compared); with ``None`` or ``enabled = false`` there is
    no comparison. Fewer than ``min_requests`` on green, or on blue when comparing, is
    inconclusive. A bad rule raises :class:`ConfigError`.
    """
    if min_requests < 1:
        raise ValueError(f"min_requests must be at least 1, not {min_requests}")
    thresholds = step_thresholds(rules)
    margins = compare if compare is not None and compare.enabled else None
    green_summary, blue_summary = green.summary(), blue.summary()
    short = [
        f"{traffic.color} served {traffic.requests} of the {min_requests} requests needed"
        for traffic in ((green, blue) if margins is not None else (green,))
        if traffic.requests < min_requests
    ]
    if short:
        return StepVerdict("inconclusive", "; ".join(short), green_summary, blue_summary)

    evaluation = evaluate(thresholds, _TrafficWindow(green), min_requests=min_requests)
    comparisons = []
    if margins is not None:
        whole = margins.model_copy(update={"scopes": [TOTAL_SCOPE]})
        comparisons = compare_windows(_TrafficWindow(blue), _TrafficWindow(green), whole)
        evaluation = combine(evaluation, comparisons)
    if evaluation.verdict is Verdict.PASS:
        checks = [f"{len(thresholds)} rule(s) met"] if thresholds else []
        if comparisons:
            checks.append(f"no worse than blue ({blue.requests} requests) within the margins")
        reason = f"green served {green.requests} requests" + (
            ": " + ", ".join(checks) if checks else ""
        )
    else:
        reason = "; ".join(evaluation.reasons)
    return StepVerdict(
        verdict=_OUTCOMES[evaluation.verdict],
        reason=reason,
        rules=tuple(result.to_dict() for result in evaluation.rules),
        comparisons=tuple(comparison.to_dict() for comparison in comparisons),
        green=green_summary,
        blue=blue_summary,
    )
