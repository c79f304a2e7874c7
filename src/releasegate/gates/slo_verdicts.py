"""The SLO gate's verdict logic: each rule judged on the window, the run, the comparison.

Pure functions over Locust's figures (no process is run here):

- a rule **passes** or **fails** on its observed value; it is **inconclusive** when its
  scope saw no request or the value cannot be measured (percentiles without window data);
- the whole run is **inconclusive**, never a pass, when the measurement cannot be trusted;
- an early abort (a rule exceeded ``abort_factor`` times its limit while running) fails;
- against a baseline, green fails when it is worse than blue beyond the margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from releasegate.gates.locust_runner import LocustRun
from releasegate.gates.locust_stats import WindowStats
from releasegate.gates.thresholds import Threshold, format_observed, format_value

if TYPE_CHECKING:
    from releasegate.config import SloCompareSection


# An early abort needs at least this many requests in the rule's scope (and
# min_requests in total), so that one slow request cannot stop a run.
ABORT_MIN_SCOPE_REQUESTS = 50


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass
class RuleResult:
    """One threshold rule judged on one scope."""

    scope: str
    rule: str
    metric: str
    op: str
    limit: float
    observed: float | None
    verdict: Verdict
    note: str = ""

    @property
    def observed_text(self) -> str:
        if self.observed is None:
            return "-"
        return format_observed(self.metric, self.op, self.limit, self.observed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "rule": self.rule,
            "metric": self.metric,
            "op": self.op,
            "limit": self.limit,
            "observed": None if self.observed is None else round(self.observed, 6),
            "observed_text": self.observed_text,
            "verdict": str(self.verdict),
            "note": self.note,
        }


@dataclass
class Comparison:
    """Green against blue on one metric of one scope."""

    scope: str
    metric: str
    baseline: float | None
    candidate: float | None
    allowed: float | None
    verdict: Verdict
    rule: str

    def to_dict(self) -> dict[str, Any]:
        def num(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "scope": self.scope,
            "metric": self.metric,
            "rule": self.rule,
            "baseline": num(self.baseline),
            "candidate": num(self.candidate),
            "allowed": num(self.allowed),
            "verdict": str(self.verdict),
        }

    def cells(self) -> list[str]:
        def show(value: float | None) -> str:
            return "-" if value is None else format_value(self.metric, value)

        return [
            self.scope,
            self.rule,
            show(self.baseline),
            show(self.candidate),
            show(self.allowed),
            str(self.verdict),
        ]


@dataclass
class Evaluation:
    """Rule results and the verdict they add up to, with the reasons for it."""

    rules: list[RuleResult]
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    # False when the run as a whole cannot be judged (problems, too few requests, abort).
    conclusive: bool = True


# -- pure verdict logic ----------------------------------------------------------------


def run_problems(run: LocustRun, label: str = "") -> list[str]:
    """Reasons why a run's measurements cannot be trusted (they make a gate inconclusive)."""
    prefix = f"{label}: " if label else ""
    problems = []
    saturation = run.saturation()
    if saturation:
        problems.append(
            f"{prefix}the load generator was saturated ({'; '.join(saturation)});"
            " use slo.processes or fewer users"
        )
    if run.timed_out:
        timeout = run.plan.wall_timeout_s
        problems.append(f"{prefix}Locust hit its wall-clock timeout of {timeout:g}s")
    return problems


def evaluate(
    thresholds: Sequence[Threshold],
    window: WindowStats | None,
    *,
    min_requests: int,
    problems: Sequence[str] = (),
    aborted: str | None = None,
) -> Evaluation:
    """Judge every rule on the window; see the module docstring for the verdict rules."""
    results = []
    for rule in thresholds:
        observed: float | None = None
        note = ""
        if window is None:
            note = "no measurements"
        else:
            scope = window.scope(rule.scope)
            observed = scope.metric(rule.metric)
            if observed is None:
                note = (
                    f"no requests named {rule.scope!r} after the warm-up"
                    if scope.requests == 0
                    else f"{rule.metric} cannot be measured from {window.source} data"
                )
        if observed is None:
            verdict = Verdict.INCONCLUSIVE
        else:
            verdict = Verdict.PASS if rule.passes(observed) else Verdict.FAIL
        results.append(
            RuleResult(
                scope=rule.scope,
                rule=rule.describe(),
                metric=rule.metric,
                op=rule.op,
                limit=rule.limit,
                observed=observed,
                verdict=verdict,
                note=note,
            )
        )

    reasons = list(problems)
    if window is None:
        reasons.append("no requests were measured after the warm-up")
    elif window.requests < min_requests:
        reasons.append(
            f"only {window.requests} requests after the warm-up (min_requests is {min_requests})"
        )

    if aborted:
        return Evaluation(
            results, Verdict.FAIL, [f"aborted early: {aborted}", *reasons], conclusive=False
        )
    if reasons:
        for result in results:
            if result.verdict is not Verdict.INCONCLUSIVE:
                result.note = f"would {result.verdict}; the run is not conclusive"
                result.verdict = Verdict.INCONCLUSIVE
        return Evaluation(results, Verdict.INCONCLUSIVE, reasons, conclusive=False)
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    if failed:
        return Evaluation(
            results,
            Verdict.FAIL,
            [f"{r.scope}: {r.rule} (observed {r.observed_text})" for r in failed],
        )
    unknown = [r for r in results if r.verdict is Verdict.INCONCLUSIVE]
    if unknown:
        return Evaluation(
            results, Verdict.INCONCLUSIVE, [f"{r.scope}: {r.rule}: {r.note}" for r in unknown]
        )
    return Evaluation(results, Verdict.PASS, [])


def abort_reason(
    thresholds: Sequence[Threshold], window: WindowStats, *, factor: float, min_requests: int
) -> str | None:
    """Why to stop a run now: an upper-bound rule exceeded ``factor`` times its limit.

    Only latency and error-rate caps count (counts and rates grow during a run), and only
    once the window holds ``min_requests`` requests and the scope at least
    :data:`ABORT_MIN_SCOPE_REQUESTS` (or ``min_requests`` when that is smaller).
    """
    if window.requests < min_requests:
        return None
    for rule in thresholds:
        if not rule.is_upper_bound or rule.metric in ("requests", "rps"):
            continue
        scope = window.scope(rule.scope)
        if scope.requests < min(min_requests, ABORT_MIN_SCOPE_REQUESTS):
            continue
        observed = scope.metric(rule.metric)
        if observed is None:
            continue
        if observed > rule.limit * factor or (rule.limit == 0 and observed > 0):
            return (
                f"{rule.scope}: {rule.describe()} observed"
                f" {format_value(rule.metric, observed)}, over {factor:g}x the limit"
            )
    return None


def compare_windows(
    baseline: WindowStats | None,
    candidate: WindowStats | None,
    settings: SloCompareSection,
    baseline_name: str = "blue",
) -> list[Comparison]:
    """Green (candidate) against blue (baseline) per scope: latency metric and error rate.

    ``baseline_name`` names the baseline in the rules' text (a canary of blue is compared
    with green)."""
    comparisons = []
    margin_pct = f"{settings.latency_margin * 100:g}%"
    slack = format_value(settings.latency_metric, settings.latency_slack * 1000, exact=True)
    error_margin = format_value("error_rate", settings.error_rate_margin, exact=True)
    for scope_name in settings.scopes:
        base = baseline.scope(scope_name) if baseline is not None else None
        cand = candidate.scope(scope_name) if candidate is not None else None
        for metric, rule in (
            (
                settings.latency_metric,
                f"{settings.latency_metric} <= {baseline_name} +{margin_pct} +{slack}",
            ),
            ("error_rate", f"error_rate <= {baseline_name} +{error_margin}"),
        ):
            b = base.metric(metric) if base is not None else None
            c = cand.metric(metric) if cand is not None else None
            allowed: float | None = None
            if b is not None:
                if metric == "error_rate":
                    allowed = b + settings.error_rate_margin
                else:
                    allowed = b * (1 + settings.latency_margin) + settings.latency_slack * 1000
            if allowed is None or c is None:
                verdict = Verdict.INCONCLUSIVE
            else:
                verdict = Verdict.PASS if c <= allowed else Verdict.FAIL
            comparisons.append(Comparison(scope_name, metric, b, c, allowed, verdict, rule))
    return comparisons


def combine(
    evaluation: Evaluation,
    comparisons: Sequence[Comparison],
    names: tuple[str, str] = ("green", "blue"),
) -> Evaluation:
    """Fold comparison results into the evaluation of green's own rules.

    ``names`` are the candidate's and the baseline's in the reasons' text.

    When the run itself is not conclusive (or was aborted), the comparisons cannot
    change the verdict and are marked inconclusive too.
    """
    if not evaluation.conclusive:
        for comparison in comparisons:
            comparison.verdict = Verdict.INCONCLUSIVE
        return evaluation
    reasons = list(evaluation.reasons)
    failed = [c for c in comparisons if c.verdict is Verdict.FAIL]
    unknown = [c for c in comparisons if c.verdict is Verdict.INCONCLUSIVE]
    for c in failed:
        reasons.append(
            f"{c.scope}: {names[0]} {c.metric} {format_value(c.metric, c.candidate or 0)} is"
            f" worse than {names[1]}'s {format_value(c.metric, c.baseline or 0)} beyond the margin"
            f" (allowed {format_value(c.metric, c.allowed or 0)})"
        )
    reasons += [f"{c.scope}: {c.rule}: no data to compare" for c in unknown]
    verdict = evaluation.verdict
    if verdict is Verdict.FAIL or failed:
        verdict = Verdict.FAIL
    elif verdict is Verdict.INCONCLUSIVE or unknown:
        verdict = Verdict.INCONCLUSIVE
    return Evaluation(evaluation.rules, verdict, reasons)
