"""``migrate plan``, ``migrate test`` and ``migrate verify`` on the example project.

The core functions are called directly, against the real Postgres server and the real
squawk binary. Each test works on its own copy of the example project (revisions 0001 to
0006: 0005 declares itself a data revision and cannot be undone, 0006 drops a column).
"""

from __future__ import annotations

import textwrap
from typing import LiteralString

import psycopg
import pytest
from conftest import Project

from releasegate.errors import ConfigError
from releasegate.migrations.commands import up
from releasegate.migrations.harness import HarnessReport, RevisionCheck, run_test
from releasegate.migrations.lint import Severity
from releasegate.migrations.phases import Phase
from releasegate.migrations.plan import MigrationPlan, PlannedRevision, plan
from releasegate.migrations.verify import verify

EXAMPLE_REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006"]
# The example config sets lock_timeout = "2s" and statement_timeout = "1m".
EXAMPLE_PREAMBLE = ["SET lock_timeout = '2000ms'", "SET statement_timeout = '60000ms'"]

REVISION_TEMPLATE = '''\
"""{doc}

Revision ID: {revision}
Revises: {down_revision}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None
{extra}

def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def add_revision(
    project: Project,
    *,
    doc: str,
    upgrade: str,
    downgrade: str,
    extra: str = "",
    revision: str = "0007",
    down_revision: str = "0006",
) -> None:
    """Write a revision file into the project's versions folder."""
    text = REVISION_TEMPLATE.format(
        doc=doc,
        revision=revision,
        down_revision=down_revision,
        extra=extra,
        upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
        downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
    )
    (project.versions / f"{revision}_{doc.split()[0].lower()}.py").write_text(text)


def by_id(result: MigrationPlan) -> dict[str, PlannedRevision]:
    return {rev.id: rev for rev in result.revisions}


def database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as conn:
        cur = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        row = cur.fetchone()
    assert row is not None
    return bool(row[0])


def execute(url: str, statement: LiteralString) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


# -- migrate plan -----------------------------------------------------------------------


def test_plan_from_base_phases_every_revision(project: Project) -> None:
    result = plan(project.settings(), "base")
    revisions = by_id(result)

    assert list(revisions) == EXAMPLE_REVISIONS
    assert result.current == ()
    for rev_id in ("0001", "0002", "0003", "0004"):
        assert revisions[rev_id].phase is Phase.EXPAND, rev_id
        assert not revisions[rev_id].phase_declared, rev_id
    assert revisions["0005"].phase is Phase.DATA
    assert revisions["0005"].phase_declared
    assert revisions["0006"].phase is Phase.CONTRACT
    assert not revisions["0006"].phase_declared
    assert result.contract_revisions == ["0006"]

    reason = revisions["0005"].irreversible_reason
    assert reason is not None
    assert "cannot be restored" in reason
    assert [r for r in revisions if revisions[r].irreversible_reason] == ["0005"]

    data = result.to_dict()
    assert [r["phase_source"] for r in data["revisions"]] == ["derived"] * 4 + [
        "declared",
        "derived",
    ]


def test_plan_leaves_out_alembic_bookkeeping_and_starts_with_the_session_settings(
    project: Project,
) -> None:
    result = plan(project.settings(), "base")

    assert len(result.revisions) == 6
    for rev in result.revisions:
        sqls = [stmt.sql for stmt in rev.statements]
        assert sqls[:2] == EXAMPLE_PREAMBLE, rev.id
        assert all("alembic_version" not in sql.lower() for sql in sqls), rev.id
        # The preamble carries no phase and the revision still has work of its own.
        assert [stmt.phase for stmt in rev.statements[:2]] == [None, None]
        assert any(stmt.phase is not None for stmt in rev.statements), rev.id


def test_plan_preamble_follows_the_configured_timeouts(project: Project) -> None:
    settings = project.settings(
        RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT="750ms",
        RELEASEGATE_MIGRATIONS__STATEMENT_TIMEOUT="2m",
    )
    result = plan(settings, "base")

    for rev in result.revisions:
        assert [stmt.sql for stmt in rev.statements[:2]] == [
            "SET lock_timeout = '750ms'",
            "SET statement_timeout = '120000ms'",
        ], rev.id


def test_plan_attaches_the_drop_column_finding_to_its_statement(project: Project) -> None:
    result = plan(project.settings(), "base")
    contract = by_id(result)["0006"]

    flagged = [
        stmt
        for stmt in contract.statements
        if any(f.rule == "ban-drop-column" for f in stmt.findings)
    ]
    assert len(flagged) == 1
    assert "DROP COLUMN full_name" in flagged[0].sql
    assert flagged[0].phase is Phase.CONTRACT
    # Only warnings in the example: the default fail_on ("error") lets the plan pass.
    assert result.findings
    assert all(f.severity is Severity.WARNING for f in result.findings)
    assert result.fail_on == "error"
    assert result.lint_failed is False


def test_plan_lint_threshold_and_excluded_rules_follow_the_config(project: Project) -> None:
    strict = plan(project.settings(RELEASEGATE_LINT__FAIL_ON="warning"), "base")
    assert strict.lint_failed is True
    warning_rules = sorted({f.rule for f in strict.findings})
    assert "ban-drop-column" in warning_rules

    rules_json = "[" + ", ".join(f'"{rule}"' for rule in warning_rules) + "]"
    relaxed = plan(
        project.settings(
            RELEASEGATE_LINT__FAIL_ON="warning", RELEASEGATE_LINT__EXCLUDE_RULES=rules_json
        ),
        "base",
    )
    assert relaxed.findings == []
    assert relaxed.lint_failed is False
    # Excluding rules changes the lint only, not the plan itself.
    assert [r.id for r in relaxed.revisions] == EXAMPLE_REVISIONS
    assert relaxed.contract_revisions == ["0006"]


def test_plan_against_the_database_lists_only_pending_revisions(project: Project) -> None:
    settings = project.settings()
    never_migrated = plan(settings)
    assert never_migrated.current is None
    assert [r.id for r in never_migrated.revisions] == EXAMPLE_REVISIONS

    up(settings, to="0004")
    result = plan(settings)

    assert result.current == ("0004",)
    assert [r.id for r in result.revisions] == ["0005", "0006"]
    assert result.target is not None
    assert result.target.endswith(project.url.rsplit("/", 1)[1])
    assert result.contract_revisions == ["0006"]


def test_plan_from_head_has_nothing_pending(project: Project) -> None:
    result = plan(project.settings(), "head")

    assert result.current == ("0006",)
    assert result.revisions == []
    assert result.lint_failed is False


def test_plan_reports_a_syntax_error_as_an_error_finding(project: Project) -> None:
    add_revision(
        project,
        doc="Broken table.",
        upgrade='op.execute("CREATE TABLE (")',
        downgrade="pass",
    )
    result = plan(project.settings(), "0006")

    assert [r.id for r in result.revisions] == ["0007"]
    errors = [f for f in result.findings if f.severity is Severity.ERROR]
    assert errors, result.findings
    assert all(f.rule for f in errors)
    broken = [s for s in result.revisions[0].statements if s.findings]
    assert broken
    assert any("CREATE TABLE (" in s.sql for s in broken)
    assert result.lint_failed is True


def test_plan_rejects_an_unknown_declared_phase(project: Project) -> None:
    add_revision(
        project,
        doc="Bogus phase.",
        upgrade='op.execute("SELECT 1")',
        downgrade="pass",
        extra='\nreleasegate_phase = "bogus"\n',
    )
    with pytest.raises(ConfigError, match="bogus"):
        plan(project.settings(), "base")


# -- migrate test -----------------------------------------------------------------------


def revision_check(report: HarnessReport, rev_id: str) -> RevisionCheck:
    matches = [r for r in report.revisions if r.revision == rev_id]
    assert len(matches) == 1, [r.revision for r in report.revisions]
    return matches[0]


def test_harness_passes_the_example_chain_and_drops_its_scratch_database(
    project: Project, pg_server_url: str
) -> None:
    progress: list[str] = []
    report = run_test(project.settings(), progress=progress.append)

    assert report.problems == []
    assert report.ok
    assert [r.revision for r in report.revisions] == EXAMPLE_REVISIONS
    assert all(r.up == "ok" for r in report.revisions)
    assert report.irreversible == ["0005"]
    for check in report.revisions:
        if check.revision == "0005":
            assert check.down == "irreversible"
            assert check.irreversible_reason is not None
            assert "cannot be restored" in check.irreversible_reason
        else:
            assert (check.down, check.reup) == ("ok", "ok"), check
    assert report.drift == []
    assert report.lowest_reached == "0005"
    assert report.final_differences == []
    assert len(progress) == len(EXAMPLE_REVISIONS)
    assert report.to_dict()["ok"] is True

    assert report.scratch_database.startswith("rg_test_")
    assert not database_exists(pg_server_url, report.scratch_database)


def test_harness_fails_a_downgrade_that_leaves_a_trace(project: Project) -> None:
    add_revision(
        project,
        doc="Sticky table.",
        upgrade='op.create_table("sticky", sa.Column("id", sa.BigInteger, primary_key=True))',
        downgrade='op.execute("SELECT 1")',
    )
    report = run_test(project.settings())

    assert not report.ok
    check = revision_check(report, "0007")
    assert check.up == "ok"
    assert check.down == "leaves trace"
    assert any("table public.sticky" in detail for detail in check.details)
    assert any(problem.startswith("0007:") for problem in report.problems)
    # The table left behind makes the second upgrade fail; the stairway stops there,
    # and every problem stays a one-line message.
    assert check.reup == "failed"
    assert any("already exists" in problem for problem in report.problems)
    assert all("\n" not in problem for problem in report.problems)
    assert all(problem.startswith("0007:") for problem in report.problems)


def test_harness_reports_drift_from_the_metadata(project: Project) -> None:
    add_revision(
        project,
        doc="Document summary.",
        upgrade='op.add_column("documents", sa.Column("summary", sa.Text, nullable=True))',
        downgrade='op.drop_column("documents", "summary")',
    )
    report = run_test(project.settings())

    check = revision_check(report, "0007")
    assert (check.up, check.down, check.reup) == ("ok", "ok", "ok")
    assert report.drift
    assert any("summary" in item for item in report.drift)
    assert not report.ok
    assert any("differs from notes_app.models:metadata" in p for p in report.problems)


def test_harness_without_metadata_skips_the_drift_check(project: Project) -> None:
    config = project.config_path.read_text()
    without = config.replace('metadata = "notes_app.models:metadata"\n', "")
    assert without != config
    project.write_config(without)

    report = run_test(project.settings())

    assert report.drift is None
    assert report.ok, report.problems


def test_harness_downgrades_to_base_when_nothing_is_irreversible(project: Project) -> None:
    (irreversible,) = project.versions.glob("0005_*.py")
    irreversible.unlink()
    (contract,) = project.versions.glob("0006_*.py")
    text = contract.read_text()
    repointed = text.replace(
        'down_revision: str | Sequence[str] | None = "0005"',
        'down_revision: str | Sequence[str] | None = "0004"',
    )
    assert repointed != text
    contract.write_text(repointed)

    report = run_test(project.settings())

    assert report.ok, report.problems
    assert [r.revision for r in report.revisions] == ["0001", "0002", "0003", "0004", "0006"]
    assert report.irreversible == []
    assert report.lowest_reached == "base"
    assert report.final_differences == []


# -- migrate verify ---------------------------------------------------------------------


def test_verify_matches_after_up_then_catches_a_hotfix_index(project: Project) -> None:
    settings = project.settings()
    up(settings)

    clean = verify(settings)
    assert clean.ok
    assert clean.differences == []
    assert clean.revision == ("0006",)

    execute(project.url, "CREATE INDEX hotfix ON documents (title)")
    report = verify(settings)

    assert not report.ok
    assert len(report.differences) == 1
    (difference,) = report.differences
    assert difference.kind == "unexpected"
    assert difference.key == "index public.hotfix"
    assert difference.expected is None
    assert difference.actual is not None and "(title)" in difference.actual


def test_verify_catches_a_changed_column(project: Project) -> None:
    settings = project.settings()
    up(settings)
    execute(project.url, "ALTER TABLE users ALTER COLUMN display_name SET NOT NULL")

    report = verify(settings)

    assert not report.ok
    assert [(d.kind, d.key) for d in report.differences] == [
        ("changed", "column public.users.display_name")
    ]
    (difference,) = report.differences
    assert difference.actual is not None and "NOT NULL" in difference.actual
    assert difference.expected is not None and "NOT NULL" not in difference.expected


def test_verify_compares_with_the_database_revision(project: Project) -> None:
    settings = project.settings()
    up(settings, to="0003")

    report = verify(settings)

    assert report.revision == ("0003",)
    assert report.ok, [d.describe() for d in report.differences]
    assert report.to_dict()["revision"] == "0003"
