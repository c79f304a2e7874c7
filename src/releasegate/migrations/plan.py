"""``releasegate migrate plan``: the exact SQL of ``<current>:head``, phased and linted.

Each pending revision is rendered offline (Alembic ``--sql`` mode) on its own, so every
statement is attributed to its revision. The SQL is what releasegate runs: it is
preceded by the session's ``lock_timeout`` and ``statement_timeout``, and Alembic's own
bookkeeping (``alembic_version``) is left out. Every statement is linted by squawk.
A revision's phase (expand, contract, data) is derived from its statements unless the
revision declares ``releasegate_phase``. A revision that queries a live connection
(``op.get_bind()``) cannot be rendered: it is listed without SQL, its phase ``unknown``
unless declared, and the lint covers the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from releasegate import db
from releasegate.config import Settings
from releasegate.errors import MigrationScriptError, StateError
from releasegate.migrations.commands import (
    format_revisions,
    multiple_heads_problem,
    unknown_revision_problem,
)
from releasegate.migrations.lint import FailOn, Finding, lint_sql, threshold_reached
from releasegate.migrations.phases import (
    Phase,
    classify_statement,
    is_type_change,
    most_restrictive,
    resolve_phase,
    type_change_phase,
)
from releasegate.migrations.project import (
    AlembicProject,
    OfflineSql,
    Revision,
    current_revisions,
    sqlalchemy_connection,
)
from releasegate.migrations.sqltext import split_statements, strip_literals_and_comments
from releasegate.output import markdown_table


@dataclass(frozen=True)
class PlannedStatement:
    sql: str
    phase: Phase | None
    findings: list[Finding]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "phase": str(self.phase) if self.phase else None,
            "findings": [_finding_dict(f) for f in self.findings],
        }


@dataclass(frozen=True)
class PlannedRevision:
    id: str
    doc: str
    phase: Phase
    phase_declared: bool
    irreversible_reason: str | None
    statements: list[PlannedStatement]
    # Why the SQL could not be rendered offline; None when it was.
    sql_unavailable: str | None = None
    noop_downgrade: bool = False

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.statements for f in s.findings]

    @property
    def runs_before_promotion(self) -> bool:
        """Expand and data revisions; contract and unknown ones wait for finalize."""
        return self.phase.runs_before_promotion

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.id,
            "doc": self.doc,
            "phase": str(self.phase),
            "phase_source": "declared" if self.phase_declared else "derived",
            "runs_before_promotion": self.runs_before_promotion,
            "irreversible": self.irreversible_reason,
            "noop_downgrade": self.noop_downgrade,
            "sql_unavailable": self.sql_unavailable,
            "statements": [s.to_dict() for s in self.statements],
        }


@dataclass
class MigrationPlan:
    target: str | None
    current: tuple[str, ...] | None
    revisions: list[PlannedRevision] = field(default_factory=list)
    fail_on: FailOn = FailOn.ERROR

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.revisions for f in r.findings]

    @property
    def lint_failed(self) -> bool:
        return threshold_reached(self.findings, self.fail_on)

    @property
    def contract_revisions(self) -> list[str]:
        return [r.id for r in self.revisions if r.phase is Phase.CONTRACT]

    @property
    def unknown_revisions(self) -> list[str]:
        """Revisions whose phase could not be derived (SQL unavailable offline)."""
        return [r.id for r in self.revisions if r.phase is Phase.UNKNOWN]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "current": format_revisions(self.current),
            "fail_on": str(self.fail_on),
            "lint_failed": self.lint_failed,
            "contract_revisions": self.contract_revisions,
            "unknown_revisions": self.unknown_revisions,
            "revisions": [r.to_dict() for r in self.revisions],
        }


def _finding_dict(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule,
        "severity": str(finding.severity),
        "message": finding.message,
        "help": finding.help,
    }


def session_preamble(settings: Settings) -> list[str]:
    """The session settings releasegate applies before every revision."""
    opts = settings.raw.migrations
    return [
        f"SET lock_timeout = '{round(opts.lock_timeout * 1000)}ms'",
        f"SET statement_timeout = '{round(opts.statement_timeout * 1000)}ms'",
    ]


SQL_UNAVAILABLE = "SQL unavailable offline (needs a live connection)"


@dataclass(frozen=True)
class _Rendered:
    """A revision's statements (preamble first) and phase overrides, or why there are none."""

    statements: list[str]
    type_phases: dict[str, Phase]
    unavailable: str | None = None


def _type_phases(rendered: OfflineSql) -> dict[str, Phase]:
    """Phases of the type changes ``alter_column`` rendered, keyed by statement text."""
    phases: dict[str, Phase] = {}
    for change in rendered.type_changes:
        phase = type_change_phase(change.old_type, change.new_type, has_using=change.has_using)
        for statement in split_statements(change.sql):
            if is_type_change(statement.text):
                # The same text twice must not pass for a widening if either is not one.
                seen = phases.get(statement.text, phase)
                phases[statement.text] = most_restrictive([seen, phase])
    return phases


def _render(project: AlembicProject, rev: Revision, preamble: list[str]) -> _Rendered:
    try:
        rendered = project.offline_sql(rev)
    except Exception as exc:  # the revision's own code, run against a mock connection
        return _Rendered([], {}, f"{SQL_UNAVAILABLE}: {type(exc).__name__}: {db.first_line(exc)}")
    statements = [s.text for s in split_statements(rendered.text)]
    # Alembic's version bookkeeping is not the revision's work: leave it out of phases and lint.
    kept = [s for s in statements if not _is_bookkeeping(s)]
    return _Rendered(preamble + kept, _type_phases(rendered))


# Alembic's own statements on its version table, as rendered offline.
_BOOKKEEPING_RE = re.compile(
    r"\s*(?:CREATE\s+TABLE|INSERT\s+INTO|UPDATE|DELETE\s+FROM|DROP\s+TABLE)\s+"
    r'(?:(?:"[^"]+"|\w+)\s*\.\s*)?(?:"alembic_version"|alembic_version\b)[^;]*',
    re.IGNORECASE,
)


def _is_bookkeeping(statement: str) -> bool:
    """A statement on ``alembic_version`` alone.

    A revision's own SQL that the splitter ran on into Alembic's UPDATE (an unclosed
    parenthesis, a ";" inside a comment) is more than bookkeeping: it is kept and linted.
    """
    return _BOOKKEEPING_RE.fullmatch(strip_literals_and_comments(statement)) is not None


def build_plan(
    settings: Settings, project: AlembicProject, current: tuple[str, ...] | None, target: str | None
) -> MigrationPlan:
    """Plan the revisions from ``current`` to head (no database needed)."""
    heads = project.heads()
    if len(heads) > 1:
        raise MigrationScriptError(multiple_heads_problem(heads))
    unknown = [r for r in current or () if not project.knows(r)]
    if unknown:
        raise StateError(unknown_revision_problem(unknown))
    lint_opts = settings.raw.lint
    path = project.upgrade_path(current or (), "heads") or []
    preamble = session_preamble(settings)
    rendered = {rev.id: _render(project, rev, preamble) for rev in path}
    findings = lint_sql(
        {
            rev_id: ";\n".join(r.statements) + ";\n"
            for rev_id, r in rendered.items()
            if r.unavailable is None
        },
        exclude_rules=lint_opts.exclude_rules,
        pg_version=lint_opts.pg_version,
    )
    plan = MigrationPlan(target, current, fail_on=FailOn(lint_opts.fail_on))
    for rev in path:
        plan.revisions.append(_planned(rev, rendered[rev.id], findings.get(rev.id, [])))
    return plan


def _planned(rev: Revision, rendered: _Rendered, findings: list[Finding]) -> PlannedRevision:
    by_statement: dict[int, list[Finding]] = {}
    for finding in findings:
        index = finding.statement_index if finding.statement_index is not None else 0
        by_statement.setdefault(index, []).append(finding)
    statements = [
        PlannedStatement(
            sql, rendered.type_phases.get(sql) or classify_statement(sql), by_statement.get(i, [])
        )
        for i, sql in enumerate(rendered.statements)
    ]
    derived = (
        Phase.UNKNOWN
        if rendered.unavailable
        else most_restrictive(stmt.phase for stmt in statements)
    )
    return PlannedRevision(
        id=rev.id,
        doc=rev.doc,
        phase=resolve_phase(derived, rev.phase_override),
        phase_declared=rev.phase_override is not None,
        irreversible_reason=rev.irreversible_reason,
        statements=statements,
        sql_unavailable=rendered.unavailable,
        noop_downgrade=rev.noop_downgrade and not rev.irreversible,
    )


def plan(settings: Settings, from_revision: str | None = None) -> MigrationPlan:
    """The plan for the configured database, or from ``from_revision`` without one."""
    project = AlembicProject(settings)
    if from_revision is not None:
        start = project.resolve(from_revision)
        current: tuple[str, ...] | None
        if start == "base":
            current = ()
        elif start in ("head", "heads"):
            current = project.heads()
        else:
            current = (start,)
        return build_plan(settings, project, current, None)
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    with sqlalchemy_connection(
        url, "migrate plan", connect_timeout=settings.raw.postgres.connect_timeout
    ) as conn:
        current = current_revisions(conn)
    return build_plan(settings, project, current, db.describe_target(url))


# -- rendering ----------------------------------------------------------------------------


NOOP_DOWNGRADE = "no-op downgrade (leaves trace)"


def _revision_heading(rev: PlannedRevision) -> str:
    source = "declared" if rev.phase_declared else "derived"
    irreversible = "  IRREVERSIBLE" if rev.irreversible_reason else ""
    noop = "  NO-OP DOWNGRADE" if rev.noop_downgrade else ""
    return f"{rev.id}  [{rev.phase} ({source})]{irreversible}{noop}  {rev.doc}"


def render_text(plan: MigrationPlan) -> str:
    lines = [f"current: {format_revisions(plan.current)}", f"pending: {len(plan.revisions)}"]
    for rev in plan.revisions:
        lines += ["", _revision_heading(rev)]
        if rev.irreversible_reason:
            lines.append(f"  irreversible: {rev.irreversible_reason}")
        if rev.noop_downgrade:
            lines.append(f"  {NOOP_DOWNGRADE}: downgrade() does nothing")
        if rev.sql_unavailable:
            lines.append(f"  {rev.sql_unavailable}")
        for stmt in rev.statements:
            lines.append("  " + stmt.sql.replace("\n", "\n  ") + ";")
            lines += [f"    ^ {f.severity} {f.rule}: {f.message}" for f in stmt.findings]
    counts = _counts(plan)
    lines += ["", f"lint: {counts} (fail_on = {plan.fail_on})"]
    if plan.contract_revisions:
        lines.append(
            "contract revisions (cannot be rolled back automatically): "
            + ", ".join(plan.contract_revisions)
        )
    if plan.unknown_revisions:
        lines.append(
            "revisions of unknown phase (wait like contract ones; declare releasegate_phase): "
            + ", ".join(plan.unknown_revisions)
        )
    return "\n".join(lines)


def _counts(plan: MigrationPlan) -> str:
    errors = sum(1 for f in plan.findings if f.severity == "error")
    warnings = len(plan.findings) - errors
    return f"{errors} error(s), {warnings} warning(s)"


def render_markdown(plan: MigrationPlan) -> str:
    lines = [
        "### Migration plan",
        "",
        f"Current revision: `{format_revisions(plan.current)}`; pending: {len(plan.revisions)};"
        f" lint: {_counts(plan)} (fail on {plan.fail_on}).",
        "",
        markdown_table(
            ["revision", "phase", "irreversible", "findings", "description"],
            [
                (
                    f"`{r.id}`",
                    f"{r.phase}{' (declared)' if r.phase_declared else ''}",
                    "yes" if r.irreversible_reason else NOOP_DOWNGRADE if r.noop_downgrade else "",
                    len(r.findings),
                    r.doc,
                )
                for r in plan.revisions
            ],
        ),
    ]
    for rev in plan.revisions:
        lines += ["", f"<details><summary>{rev.id}: {rev.doc}</summary>", ""]
        if rev.sql_unavailable:
            lines += [rev.sql_unavailable, ""]
        else:
            lines += ["```sql", *[stmt.sql + ";" for stmt in rev.statements], "```", ""]
        if rev.findings:
            lines.append(
                markdown_table(
                    ["severity", "rule", "message"],
                    [(str(f.severity), f.rule, f.message) for f in rev.findings],
                )
            )
        lines.append("</details>")
    return "\n".join(lines)
