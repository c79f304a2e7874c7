"""The canary's steps in the reports: for each step its weight, how long it ran, and per
color the requests, error rate and p50/p95/p99 the router logged, then the verdict.

The input is ``result["canary"]["steps"]``: the records of
:mod:`releasegate.pipeline.canary` (a step's weight, ``duration_s``, ``extensions`` and
the :class:`~releasegate.canary.analysis.StepVerdict` fields, with the new color's
figures under ``green`` and the old color's under ``blue``, each naming its color).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from releasegate.report.markdown_blocks import Budget, escape_text, status_cell, table_rows
from releasegate.report.values import as_map, as_maps, format_number, format_seconds, is_number

HEADERS = ["weight", "duration", "color", "requests", "error rate", "p50", "p95", "p99"]
HEADERS += ["verdict", "reason"]


def canary_steps(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return as_maps(as_map(result.get("canary")).get("steps"))


def _ms(value: Any) -> str:
    return f"{format_number(value)} ms" if is_number(value) else "-"


def _rate(value: Any) -> str:
    return f"{value * 100:.2f}%" if is_number(value) else "-"


def _duration(step: Mapping[str, Any]) -> str:
    text = format_seconds(step.get("duration_s"))
    extensions = step.get("extensions")
    if is_number(extensions) and extensions:
        text += f" ({extensions} extension{'s' if extensions > 1 else ''})"
    return text


def color_figures(figures: Mapping[str, Any]) -> list[str]:
    """Requests, error rate, p50, p95, p99 of one color in one step."""
    return [
        format_number(figures.get("requests")),
        _rate(figures.get("error_rate")),
        *(_ms(figures.get(q)) for q in ("p50", "p95", "p99")),
    ]


def _rows(step: Mapping[str, Any]) -> list[list[str]]:
    """Two rows per step: the new color with the verdict, then the old color."""
    new, old = as_map(step.get("green")), as_map(step.get("blue"))
    weight = f"{format_number(step.get('weight'))}%"
    first = [weight, _duration(step), escape_text(new.get("color")) or "new"]
    first += [
        *color_figures(new),
        status_cell(step.get("verdict")),
        escape_text(step.get("reason")),
    ]
    second = ["", "", escape_text(old.get("color")) or "old", *color_figures(old), "", ""]
    return [first, second]


def canary_section(result: Mapping[str, Any], budget: Budget) -> list[str]:
    """The Markdown table of the canary's steps; nothing without a canary."""
    steps = canary_steps(result)
    if not steps:
        return []
    rows = [row for step in steps for row in _rows(step)]
    lines = ["### Canary", "", "Real traffic per color, as the router logged it.", ""]
    return [*lines, *table_rows(HEADERS, rows, lambda row: row, budget)]


def canary_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per step for the terminal summary."""
    lines = []
    for step in canary_steps(result):
        colors = []
        for figures in (as_map(step.get("green")), as_map(step.get("blue"))):
            requests, rate, _p50, p95, _p99 = color_figures(figures)
            colors.append(f"{figures.get('color') or '-'} {requests} req {rate} err p95 {p95}")
        lines.append(
            f"canary {format_number(step.get('weight'))}% {_duration(step)}:"
            f" {step.get('verdict') or '-'} ({'; '.join(colors)}): {step.get('reason') or ''}"
        )
    return lines
