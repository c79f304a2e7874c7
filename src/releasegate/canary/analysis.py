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

Too few requests can still **fail**, so that a bad canary is stopped after a handful of
its users' requests rather than after ``min_requests``: when, with 99.9% confidence,
green's error rate or its share of slow requests is already beyond a limit (the Wilson
lower bound of the observed share is above what the limit allows), or one request
already broke a ``max`` rule. The pipeline judges a step again at every read of the
router, hence the high confidence: chance alone must not fail a step.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
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
from releasegate.gates.thresholds import (
    PERCENTILES,
    TOTAL_SCOPE,
    Threshold,
    format_value,
    parse_thresholds,
)

if TYPE_CHECKING:
    from releasegate.config import SloCompareSection

# An early failure is certain at 99.9% (one-sided normal quantile) and rests on at
# least this many requests of green.
EARLY_FAIL_Z = 3.09
EARLY_FAIL_MIN_REQUESTS = 10

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
    errors, error rate, rps, p50/p95/p99 in ms) of the color under test and of the live
    one, each naming its color (a canary of blue has ``green["color"] == "blue"``);
    ``rules`` holds one entry per rule on the color under test and ``comparisons`` one per
    comparison with the live one, as the SLO gate reports them.
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


def wilson_lower(hits: int, total: int, z: float = EARLY_FAIL_Z) -> float:
    """The Wilson score lower bound of the share ``hits / total`` (0.0 when empty)."""
    if total <= 0:
        return 0.0
    share = hits / total
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    return max(0.0, (share + z * z / (2 * total) - spread) / (1 + z * z / total))


@dataclass(frozen=True)
class _Cap:
    """An upper bound on one of green's figures: a rule, or blue's figure plus a margin."""

    text: str
    metric: str  # error_rate, max or a percentile
    limit: float
    inclusive: bool  # True: the figure may equal the limit (``<=``)


def _caps(
    thresholds: Sequence[Threshold],
    blue: ColorTraffic,
    margins: SloCompareSection | None,
    min_requests: int,
) -> Iterator[_Cap]:
    for rule in thresholds:
        if rule.is_upper_bound and rule.metric in ("error_rate", "max", *PERCENTILES):
            yield _Cap(rule.describe(), rule.metric, rule.limit, rule.op == "<=")
    if margins is None or blue.requests < min_requests:
        return
    margin = format_value("error_rate", margins.error_rate_margin, exact=True)
    allowed = blue.error_rate() + margins.error_rate_margin
    yield _Cap(f"error_rate <= {blue.color} +{margin}", "error_rate", allowed, True)
    metric = margins.latency_metric
    baseline = blue.percentile(PERCENTILES[metric]) if metric in PERCENTILES else None
    if baseline is not None:
        allowed = baseline * (1 + margins.latency_margin) + margins.latency_slack * 1000
        yield _Cap(
            f"{metric} <= {blue.color}'s {format_value(metric, baseline)} + margins",
            metric,
            allowed,
            True,
        )


def early_failure(
    green: ColorTraffic,
    blue: ColorTraffic,
    thresholds: Sequence[Threshold],
    margins: SloCompareSection | None,
    min_requests: int,
) -> str | None:
    """Why green already fails, before ``min_requests`` (see the module docstring); None
    while nothing is certain yet. Comparisons count only once blue has ``min_requests``."""
    if green.requests < EARLY_FAIL_MIN_REQUESTS:
        return None
    latencies = green.latencies_ms
    for cap in _caps(thresholds, blue, margins, min_requests):
        limit = format_value(cap.metric, cap.limit)
        if cap.metric == "error_rate":
            hits, total, allowed = green.errors, green.requests, cap.limit
            what = f"{hits} of {total} requests failed"
        else:
            # Requests beyond the limit: at or above it for "<", above it for "<=".
            within = (bisect.bisect_right if cap.inclusive else bisect.bisect_left)(
                latencies, cap.limit
            )
            hits, total = len(latencies) - within, len(latencies)
            allowed = 0.0 if cap.metric == "max" else 1 - PERCENTILES[cap.metric] / 100
            what = (
                f"{hits} of {total} requests took {'over' if cap.inclusive else 'at least'} {limit}"
            )
        if cap.metric == "max":
            certain = hits > 0
        else:
            certain = wilson_lower(hits, total) > allowed
            what += ", beyond the limit with 99.9% confidence"
        if certain:
            return f"{cap.text}: {what} (before the {min_requests} requests of a full verdict)"
    return None


def judge_step(
    green: ColorTraffic,
    blue: ColorTraffic,
    *,
    rules: Mapping[str, Sequence[str]],
    compare: SloCompareSection | None,
    min_requests: int,
) -> StepVerdict:
    """Judge one step: green's own rules, then green against blue over the same window.

    ``green`` is the traffic of the color under test (the new version) and ``blue`` that
    of the live one, whichever colors they are: the texts name ``ColorTraffic.color``.

    ``rules`` is ``{"total": ["p95 < 300ms", "error_rate < 1%"]}`` in the SLO gate's
    grammar. ``compare`` gives the margins of green against blue (its ``latency_metric``,
    ``latency_margin``, ``latency_slack`` and ``error_rate_margin``; its ``scopes`` do not
    apply, the whole traffic is compared); with ``None`` or ``enabled = false`` there is
    no comparison. Fewer than ``min_requests`` on green, or on blue when comparing, is
    inconclusive, unless green already fails beyond doubt (:func:`early_failure`). A bad
    rule raises :class:`ConfigError`.
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
        early = early_failure(green, blue, thresholds, margins, min_requests)
        if early is not None:
            return StepVerdict("fail", early, green_summary, blue_summary)
        return StepVerdict("inconclusive", "; ".join(short), green_summary, blue_summary)

    evaluation = evaluate(thresholds, _TrafficWindow(green), min_requests=min_requests)
    comparisons = []
    if margins is not None:
        whole = margins.model_copy(update={"scopes": [TOTAL_SCOPE]})
        comparisons = compare_windows(
            _TrafficWindow(blue), _TrafficWindow(green), whole, baseline_name=blue.color
        )
        evaluation = combine(evaluation, comparisons, names=(green.color, blue.color))
    if evaluation.verdict is Verdict.PASS:
        checks = [f"{len(thresholds)} rule(s) met"] if thresholds else []
        if comparisons:
            checks.append(
                f"no worse than {blue.color} ({blue.requests} requests) within the margins"
            )
        reason = f"{green.color} served {green.requests} requests" + (
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
