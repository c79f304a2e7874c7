"""Rendering a release result as a Markdown evidence report (the terminal summary is in
:mod:`~releasegate.report.text`).

The input is the plain dict of ``ReleaseResult.to_dict()``; any part may be missing or
null when its step did not run, so every section reads defensively and skips what is
absent. The sub-objects are the ``to_dict()`` forms of :class:`MigrationPlan`,
:class:`Manifest`, :class:`SmokeReport`, :class:`GateResult` and :class:`SwitchResult`.

The Markdown must fit GitHub's step-summary limit (1 MiB). When it does not, it is
rendered again with less detail: first without SQL bodies, then with long tables cut
to fewer rows, then without the optional sections. The headline, the step table, the
error and the rollback section (verification and manual steps) are always kept. Only
the rows that are shown are formatted, and a rendering stops as soon as it is known to
be too large, so a result with 100,000 rows costs about as much as one with 1,000.

Secrets: every value is redacted as it is turned into text (before it is clipped or
escaped, which could hide a secret from a later pass), and the finished text once more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from releasegate.report.canary import canary_section
from releasegate.report.markdown_blocks import Budget, TooLarge
from releasegate.report.markdown_plan import migrations_section, plan_section
from releasegate.report.markdown_sections import (
    backup_section,
    deploy_section,
    error_section,
    headline_section,
    rollback_section,
    router_section,
    slo_section,
    smoke_section,
    steps_section,
    watch_section,
)
from releasegate.report.values import as_map
from releasegate.secrets import redact

SUMMARY_LIMIT_BYTES = 1024 * 1024  # GitHub's limit for one step summary
SECTIONS_OMITTED = (
    "The plan, backup, migration, gate, canary and traffic sections were left out to fit the size"
    " limit (see the JSON report)."
)
CUT_NOTE = "\n\n... the report was cut to fit the size limit (see the JSON report)\n"

_LEVELS: tuple[dict[str, Any], ...] = (
    {},
    {"sql": False},
    {"sql": False, "max_rows": 5000},
    {"sql": False, "max_rows": 1000},
    {"sql": False, "max_rows": 200},
    {"sql": False, "max_rows": 50},
    {"sql": False, "max_rows": 10},
    {"sql": False, "max_rows": 10, "optional": False},
)


def _render(r: Mapping[str, Any], budget: Budget) -> str:
    blocks = [headline_section(r), error_section(r), steps_section(r), rollback_section(r)]
    if budget.optional:
        blocks += [
            plan_section(r, budget),
            backup_section(r, budget),
            migrations_section(r, budget),
            deploy_section(r),
            smoke_section(as_map(r.get("smoke")), budget),
            slo_section(as_map(r.get("slo")), budget),
            canary_section(r, budget),
            router_section(r, budget),
            watch_section(r, budget),
        ]
    else:
        blocks.append([SECTIONS_OMITTED])
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"


def _cut_to_bytes(text: str, limit: int) -> str:
    """The last resort: cut at a line boundary and say so."""
    room = max(0, limit - len(CUT_NOTE.encode()))
    head = text.encode()[:room].decode("utf-8", errors="ignore")
    result = head[: head.rfind("\n")] + CUT_NOTE if "\n" in head else CUT_NOTE.lstrip("\n")
    return result.encode()[:limit].decode("utf-8", errors="ignore")


def render_markdown(result: Mapping[str, Any], *, limit_bytes: int = SUMMARY_LIMIT_BYTES) -> str:
    """The GitHub-flavoured Markdown evidence report of a release, at most ``limit_bytes``.

    Too large a report is rendered again with less detail (see the module docstring).
    """
    text = ""
    for level in _LEVELS:
        try:
            text = redact(_render(result, Budget(limit_bytes, **level)))
        except TooLarge:
            continue
        if len(text.encode()) <= limit_bytes:
            return text
    if not text:  # even the smallest level was stopped by the meter
        text = redact(_render(result, Budget(1 << 62, **_LEVELS[-1])))
    return _cut_to_bytes(text, limit_bytes)
