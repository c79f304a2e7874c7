"""The SLO gate: load a target with Locust, judge each threshold rule, report.

:func:`run_gate` is the entry point (the CLI's ``releasegate gate``). It parses the
rules, runs Locust (:mod:`releasegate.gates.locust_runner`) against one URL (a color's
port or the router) and evaluates every rule on the post-warm-up window:

- a rule **passes** or **fails** on its observed value; it is **inconclusive** when its
  scope saw no request or the value cannot be measured (percentiles without window data);
- the whole run is **inconclusive**, never a pass, when the measurement cannot be trusted:
  fewer than ``min_requests`` requests after the warm-up, a CPU-saturated load
  generator, a run that hit its wall-clock timeout, or no window data at all;
- an early abort (a rule exceeded ``abort_factor`` times its limit while running) fails.

With a baseline (``--compare-with``, normally the live color) both colors get the same
load at the same time (two concurrent Locust processes, half the users each) and green
fails when its latency or error rate is worse than blue's by more than the configured
margins. Results render as a text table, JSON, Markdown and JUnit XML.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from releasegate.errors import ConfigError
from releasegate.gates import synthetic
from releasegate.gates.locust_runner import (
    LocustPlan,
    LocustRun,
    check_locustfile,
    check_target,
    describe_plan,
    run_concurrently,
)
from releasegate.gates.locust_stats import WindowStats
from releasegate.gates.thresholds import (
    Threshold,
    format_observed,
    format_value,
    parse_thresholds,
)
from releasegate.output import markdown_table, table
from releasegate.secrets import mask_url, redact

if TYPE_CHECKING:
    from releasegate.config import Settings, SloCompareSection, SloSection

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
    baseline: WindowStats | None, candidate: WindowStats | None, settings: SloCompareSection
) -> list[Comparison]:
    """Green (candidate) against blue (baseline) per scope: latency metric and error rate."""
    comparisons = []
    margin_pct = f"{settings.latency_margin * 100:g}%"
    slack = format_value(settings.latency_metric, settings.latency_slack * 1000, exact=True)
    error_margin = format_value("error_rate", settings.error_rate_margin, exact=True)
    for scope_name in settings.scopes:
        base = baseline.scope(scope_name) if baseline is not None else None
        cand = candidate.scope(scope_name) if candidate is not None else None
        for metric, rule in (
            (settings.latency_metric, f"{settings.latency_metric} <= blue +{margin_pct} +{slack}"),
            ("error_rate", f"error_rate <= blue +{error_margin}"),
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


def combine(evaluation: Evaluation, comparisons: Sequence[Comparison]) -> Evaluation:
    """Fold comparison results into the evaluation of green's own rules.

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
            f"{c.scope}: green {c.metric} {format_value(c.metric, c.candidate or 0)} is worse"
            f" than blue's {format_value(c.metric, c.baseline or 0)} beyond the margin"
            f" (allowed {format_value(c.metric, c.allowed or 0)})"
        )
    reasons += [f"{c.scope}: {c.rule}: no data to compare" for c in unknown]
    verdict = evaluation.verdict
    if verdict is Verdict.FAIL or failed:
        verdict = Verdict.FAIL
    elif verdict is Verdict.INCONCLUSIVE or unknown:
        verdict = Verdict.INCONCLUSIVE
    return Evaluation(evaluation.rules, verdict, reasons)


# -- the gate result --------------------------------------------------------------------


@dataclass
class GateResult:
    """Everything a gate run decided and where Locust's own reports are."""

    target: str
    verdict: Verdict
    reasons: list[str]
    rules: list[RuleResult]
    run: LocustRun
    out_dir: Path
    baseline: str | None = None
    baseline_run: LocustRun | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    duration_s: float = 0.0
    marker: str = synthetic.MANUAL  # the X-Releasegate-Synthetic value of every request

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "target": self.target,
            "baseline": self.baseline,
            "reasons": self.reasons,
            "rules": [r.to_dict() for r in self.rules],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "run": self.run.to_dict(),
            "baseline_run": None if self.baseline_run is None else self.baseline_run.to_dict(),
            "out_dir": str(self.out_dir),
            "duration_s": round(self.duration_s, 3),
            "synthetic_marker": self.marker,
        }

    def _rule_rows(self) -> list[list[str]]:
        return [[r.scope, r.rule, r.observed_text, str(r.verdict), r.note] for r in self.rules]

    def _scope_rows(self, run: LocustRun) -> list[list[str]]:
        window = run.window
        if window is None:
            return []
        rows = []
        for name in window.scope_names():
            s = window.scope(name)

            def ms(metric: str, s: Any = s) -> str:
                value = s.metric(metric)
                return "-" if value is None else f"{value:.1f}"

            error_rate = s.metric("error_rate")
            rps = s.metric("rps")
            rows.append(
                [
                    name,
                    str(s.requests),
                    str(s.failures),
                    "-" if error_rate is None else f"{error_rate * 100:.2f}%",
                    "-" if rps is None else f"{rps:.1f}",
                    ms("p50"),
                    ms("p95"),
                    ms("p99"),
                    ms("max"),
                ]
            )
        return rows

    _SCOPE_HEADERS = ("scope", "requests", "failures", "errors", "rps", "p50 ms", "p95 ms")
    _SCOPE_HEADERS_ALL = (*_SCOPE_HEADERS, "p99 ms", "max ms")

    def _window_line(self, run: LocustRun, label: str) -> str:
        window = run.window
        if window is None:
            return f"{label}: no measurements after the warm-up"
        return (
            f"{label}: {window.requests} requests in {window.duration_s:.1f}s after"
            f" {run.plan.warmup:g}s warm-up ({run.plan.users} users, {window.source} data)"
        )

    def render_text(self) -> str:
        """A plain-text report: verdict, rule table, per-scope figures, reasons, paths."""
        lines = [f"SLO gate: {str(self.verdict).upper()}  target {self.target}"]
        if self.baseline:
            lines[0] += f"  baseline {self.baseline}"
        lines.append(self._window_line(self.run, "green" if self.baseline else "window"))
        if self.baseline_run is not None:
            lines.append(self._window_line(self.baseline_run, "blue"))
        lines += ["", table(["scope", "rule", "observed", "verdict", "note"], self._rule_rows())]
        if self.comparisons:
            lines += [
                "",
                table(
                    ["scope", "comparison", "blue", "green", "allowed", "verdict"],
                    [c.cells() for c in self.comparisons],
                ),
            ]
        labelled = (("green" if self.baseline else "", self.run), ("blue", self.baseline_run))
        for label, run in labelled:
            if run is not None and run.window is not None:
                lines += ["", *([f"{label}:"] if label else [])]
                lines.append(table(self._SCOPE_HEADERS_ALL, self._scope_rows(run)))
        if self.reasons:
            lines += ["", "reasons:", *(f"  - {reason}" for reason in self.reasons)]
        notes = [*self.run.notes, *(self.baseline_run.notes if self.baseline_run else [])]
        if notes:
            lines += ["", "notes:", *(f"  - {note}" for note in notes)]
        lines += ["", f"Locust report: {self.run.plan.html_report}"]
        lines.append(f"Locust CSV:    {self.run.plan.csv_prefix}_stats*.csv")
        return "\n".join(lines)

    def render_markdown(self) -> str:
        """A Markdown report for a pull request or job summary."""
        title = f"### SLO gate: **{str(self.verdict).upper()}** for `{self.target}`"
        if self.baseline:
            title += f" (baseline `{self.baseline}`)"
        parts = [title, "", self._window_line(self.run, "green" if self.baseline else "window")]
        if self.baseline_run is not None:
            parts += ["", self._window_line(self.baseline_run, "blue")]
        parts += [
            "",
            markdown_table(["scope", "rule", "observed", "verdict", "note"], self._rule_rows()),
        ]
        if self.comparisons:
            parts += [
                "",
                markdown_table(
                    ["scope", "comparison", "blue", "green", "allowed", "verdict"],
                    [c.cells() for c in self.comparisons],
                ),
            ]
        if self.run.window is not None:
            parts += ["", markdown_table(self._SCOPE_HEADERS_ALL, self._scope_rows(self.run))]
        if self.reasons:
            parts += ["", *(f"- {reason}" for reason in self.reasons)]
        parts += ["", f"Locust report: `{self.run.plan.html_report}`"]
        return "\n".join(parts)

    def render_junit(self) -> str:
        """JUnit XML: one testcase per rule (and per comparison)."""
        suite = ElementTree.Element(
            "testsuite",
            name="releasegate.slo",
            tests=str(len(self.rules) + len(self.comparisons)),
            failures=str(
                sum(r.verdict is Verdict.FAIL for r in self.rules)
                + sum(c.verdict is Verdict.FAIL for c in self.comparisons)
            ),
            errors=str(
                sum(r.verdict is Verdict.INCONCLUSIVE for r in self.rules)
                + sum(c.verdict is Verdict.INCONCLUSIVE for c in self.comparisons)
            ),
            skipped="0",
            time=f"{self.duration_s:.3f}",
            timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        )
        props = ElementTree.SubElement(suite, "properties")
        for name, value in (
            ("verdict", str(self.verdict)),
            ("target", self.target),
            ("baseline", self.baseline or ""),
            ("html_report", str(self.run.plan.html_report)),
            ("stats_csv", f"{self.run.plan.csv_prefix}_stats.csv"),
        ):
            ElementTree.SubElement(props, "property", name=name, value=value)
        for rule in self.rules:
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"slo.{rule.scope}", name=rule.rule, time="0"
            )
            message = f"observed {rule.observed_text}" + (f"; {rule.note}" if rule.note else "")
            if rule.verdict is Verdict.FAIL:
                ElementTree.SubElement(case, "failure", type="threshold", message=message)
            elif rule.verdict is Verdict.INCONCLUSIVE:
                ElementTree.SubElement(case, "error", type="inconclusive", message=message)
            else:
                ElementTree.SubElement(case, "system-out").text = message
        for comp in self.comparisons:
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"slo.compare.{comp.scope}", name=comp.rule, time="0"
            )
            _, _, blue, green, allowed, _ = comp.cells()
            message = f"blue {blue}, green {green}, allowed {allowed}"
            if comp.verdict is Verdict.FAIL:
                ElementTree.SubElement(case, "failure", type="comparison", message=message)
            elif comp.verdict is Verdict.INCONCLUSIVE:
                ElementTree.SubElement(case, "error", type="inconclusive", message=message)
        if self.reasons:
            ElementTree.SubElement(suite, "system-out").text = "\n".join(self.reasons)
        root = ElementTree.Element("testsuites")
        root.append(suite)
        ElementTree.indent(root)
        xml = ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
        return redact(xml) + "\n"


# -- running the gate -------------------------------------------------------------------


def default_out_dir(root: Path) -> Path:
    """``<config dir>/.releasegate/gates/<UTC timestamp>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return root / ".releasegate" / "gates" / stamp


def run_slo_gate(
    slo: SloSection,
    root: Path,
    target: str | None,
    *,
    compare_with: str | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    synthetic_id: int | str | None = None,
) -> GateResult:
    """Run the gate described by an ``[slo]`` section against ``target``.

    ``root`` resolves a relative locustfile. Every input is validated before Locust starts:
    the rules, the URLs, the locustfile (compiled), the distributed settings. Every request
    carries ``X-Releasegate-Synthetic: <synthetic_id>`` (``manual`` when None); only the
    locustfile's tasks that ``slo.tags`` / ``slo.exclude_tags`` let through run, and a
    filter that leaves none is a :class:`ConfigError` before any load is sent.
    """
    marker = synthetic.marker_for(synthetic_id)
    thresholds = parse_thresholds(slo.thresholds)
    if not thresholds:
        raise ConfigError("slo.thresholds is empty: the gate has no rule to check")
    chosen = target or slo.host
    if not chosen:
        raise ConfigError("no target: pass --target URL or set slo.host")
    host = check_target(chosen)
    baseline = check_target(compare_with) if compare_with else None
    locustfile = slo.locustfile if slo.locustfile.is_absolute() else root / slo.locustfile
    check_locustfile(locustfile)
    if slo.processes > 1 and slo.workers > 0:
        raise ConfigError("slo.processes and slo.workers exclude each other")
    if baseline and slo.workers > 0:
        raise ConfigError("the comparative gate runs locally: set slo.workers = 0")
    out = (out_dir or default_out_dir(root)).resolve()

    def plan(url: str, where: Path, users: int, rate: float) -> LocustPlan:
        return LocustPlan(
            locustfile=locustfile.resolve(),
            host=url,
            out_dir=where,
            users=users,
            spawn_rate=rate,
            warmup=slo.warmup,
            duration=slo.duration,
            processes=slo.processes,
            workers=slo.workers,
            master_bind_host=slo.master_bind_host,
            master_bind_port=slo.master_bind_port,
            synthetic=marker,
            tags=None if slo.tags is None else tuple(slo.tags),
            exclude_tags=tuple(slo.exclude_tags or ()) or None,
        )

    if baseline:
        users = max(1, slo.users // 2)
        rate = slo.spawn_rate / 2
        plans = [plan(host, out / "green", users, rate), plan(baseline, out / "blue", users, rate)]
    else:
        plans = [plan(host, out, slo.users, slo.spawn_rate)]
    if progress:
        for label, item in zip(("green", "blue"), plans, strict=False):
            progress(f"{label + ' ' if baseline else ''}{describe_plan(item)}")

    factor = slo.abort_factor

    def abort_check(index: int, window: WindowStats) -> str | None:
        if factor is None or index != 0:
            return None
        return abort_reason(thresholds, window, factor=factor, min_requests=slo.min_requests)

    started = time.monotonic()
    runs = run_concurrently(plans, abort_check if factor else None)
    run = runs[0]
    baseline_run = runs[1] if baseline else None
    problems = run_problems(run, "green" if baseline else "")
    if baseline_run is not None:
        problems += run_problems(baseline_run, "blue")
        if baseline_run.window is None or baseline_run.window.requests < slo.min_requests:
            count = 0 if baseline_run.window is None else baseline_run.window.requests
            problems.append(
                f"blue: only {count} requests after the warm-up"
                f" (min_requests is {slo.min_requests})"
            )
    evaluation = evaluate(
        thresholds,
        run.window,
        min_requests=slo.min_requests,
        problems=problems,
        aborted=run.aborted,
    )
    comparisons: list[Comparison] = []
    if baseline_run is not None:
        comparisons = compare_windows(baseline_run.window, run.window, slo.compare)
        evaluation = combine(evaluation, comparisons)
    return GateResult(
        target=mask_url(host),
        verdict=evaluation.verdict,
        reasons=evaluation.reasons,
        rules=evaluation.rules,
        run=run,
        out_dir=out,
        baseline=mask_url(baseline) if baseline else None,
        baseline_run=baseline_run,
        comparisons=comparisons,
        duration_s=time.monotonic() - started,
        marker=marker,
    )


def run_gate(
    settings: Settings,
    target: str | None = None,
    *,
    compare_with: str | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    synthetic_id: int | str | None = None,
) -> GateResult:
    """The SLO gate of a loaded config (its ``[slo]`` section); see :func:`run_slo_gate`."""
    return run_slo_gate(
        settings.raw.slo,
        settings.root,
        target,
        compare_with=compare_with,
        out_dir=out_dir,
        progress=progress,
        synthetic_id=synthetic_id,
    )
