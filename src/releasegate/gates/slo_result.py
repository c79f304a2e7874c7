"""The SLO gate's result: what it decided, rendered as text, JSON, Markdown and JUnit XML."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from releasegate.gates import synthetic
from releasegate.gates.locust_runner import LocustRun
from releasegate.gates.slo_verdicts import Comparison, RuleResult, Verdict
from releasegate.output import markdown_table, table
from releasegate.secrets import redact

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
