"""Alembic chains as third-party projects write them, planned, tested and migrated.

Each test builds a small throwaway chain in a temporary folder (its own env.py, its own
revisions) and runs the core functions against a fresh database of the real Postgres
server: revisions that query a live connection, branches, an env.py that opens its own
connection, tables made outside Alembic, failing steps, no-op downgrades and type changes.
"""

from __future__ import annotations

import os
import re
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest

from releasegate.config import Settings, load_config
from releasegate.errors import ConfigError, MigrationFailed, MigrationScriptError
from releasegate.migrations.commands import DbState, down, status, up
from releasegate.migrations.harness import run_test
from releasegate.migrations.phases import Phase
from releasegate.migrations.plan import SQL_UNAVAILABLE, PlannedRevision, plan
from releasegate.migrations.project import CONFIG_IRREVERSIBLE

SHARED_ENV = """\
from alembic import context

config = context.config
if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes["connection"]
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""

# The mistake the probe catches: a connection of env.py's own, from the shared one's engine.
OWN_CONNECTION_ENV = SHARED_ENV.replace(
    """    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
""",
    """    with connection.engine.connect() as own:
        context.configure(connection=own, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
""",
)

CONFIG = """\
[service]
name = "{service}"

[postgres]
url_env = "CHAIN_DATABASE_URL"

[migrations]
postgres = "alembic"
python_path = ["."]
lock_timeout = "2s"
{extra}
[lock]
wait = "1s"
poll_interval = "100ms"
"""


class Chain:
    """A throwaway Alembic project: env.py, revisions and a releasegate.toml."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.versions = root / "alembic" / "versions"
        self.versions.mkdir(parents=True)
        self.service = f"chain-{uuid.uuid4().hex[:8]}"
        self.env_py(SHARED_ENV)
        self.configure()

    def env_py(self, text: str) -> None:
        (self.root / "alembic" / "env.py").write_text(text)

    def configure(self, extra: str = "") -> None:
        (self.root / "releasegate.toml").write_text(
            CONFIG.format(service=self.service, extra=extra)
        )

    def revision(
        self,
        rev: str,
        down_revision: str | None,
        upgrade: str,
        downgrade: str = "pass",
        *,
        extra: str = "",
        filename: str | None = None,
    ) -> None:
        body = textwrap.dedent(
            f'''\
            """Revision {rev}."""

            import sqlalchemy as sa
            from alembic import op

            revision = "{rev}"
            down_revision = {down_revision!r}
            branch_labels = None
            depends_on = None
            {extra}

            def upgrade() -> None:
            {{upgrade}}


            def downgrade() -> None:
            {{downgrade}}
            '''
        ).format(
            upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
            downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
        )
        (self.versions / (filename or f"{rev}.py")).write_text(body)

    def settings(self, **overrides: str) -> Settings:
        env = {**os.environ, "CHAIN_DATABASE_URL": self.url, **overrides}
        return load_config(self.root / "releasegate.toml", env)

    def tables(self) -> set[str]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in rows.fetchall()}


@pytest.fixture
def chain(tmp_path: Path, pg_url: str) -> Chain:
    return Chain(tmp_path, pg_url)


def items_table(chain: Chain) -> None:
    """a1 creates items; a2 reads it back through a live connection; a3 adds a column."""
    chain.revision(
        "a1",
        None,
        'op.create_table("items", sa.Column("id", sa.BigInteger, primary_key=True),'
        ' sa.Column("name", sa.String(250)), sa.Column("done", sa.Boolean))',
        'op.drop_table("items")',
    )
    chain.revision(
        "a2",
        "a1",
        """
        rows = op.get_bind().execute(sa.text("SELECT id FROM items")).fetchall()
        for (item_id,) in rows:
            op.execute(sa.text(f"UPDATE items SET name = 'x' WHERE id = {item_id}"))
        """,
    )
    chain.revision(
        "a3",
        "a2",
        'op.add_column("items", sa.Column("note", sa.Text))',
        'op.drop_column("items", "note")',
    )


def by_id(revisions: list[PlannedRevision]) -> dict[str, PlannedRevision]:
    return {rev.id: rev for rev in revisions}


# -- 11: revisions that need a live connection -------------------------------------------


def test_plan_lists_a_revision_that_needs_a_live_connection_as_unknown(chain: Chain) -> None:
    items_table(chain)

    result = plan(chain.settings(), "base")

    revisions = by_id(result.revisions)
    assert list(revisions) == ["a1", "a2", "a3"]
    live = revisions["a2"]
    assert live.sql_unavailable is not None
    assert live.sql_unavailable.startswith(SQL_UNAVAILABLE)
    assert live.statements == []
    assert live.phase is Phase.UNKNOWN
    assert not live.runs_before_promotion
    assert result.unknown_revisions == ["a2"]
    # The revisions around it are rendered and linted as usual.
    assert revisions["a1"].phase is Phase.EXPAND and revisions["a1"].runs_before_promotion
    assert any("CREATE TABLE items" in s.sql for s in revisions["a1"].statements)
    assert any("ADD COLUMN note" in s.sql for s in revisions["a3"].statements)
    assert result.findings
    assert result.lint_failed is False
    data = result.to_dict()
    assert data["unknown_revisions"] == ["a2"]
    assert data["revisions"][1]["sql_unavailable"] == live.sql_unavailable


def test_a_declared_phase_holds_for_a_revision_that_cannot_be_rendered(chain: Chain) -> None:
    chain.revision(
        "b1",
        None,
        'op.get_bind().execute(sa.text("SELECT 1")).scalar()',
        extra='releasegate_phase = "data"',
    )

    (rev,) = plan(chain.settings(), "base").revisions

    assert rev.sql_unavailable is not None
    assert rev.phase is Phase.DATA
    assert rev.phase_declared
    assert rev.runs_before_promotion


# -- 12: multiple heads ------------------------------------------------------------------


def two_heads(chain: Chain) -> None:
    chain.revision("h1", None, 'op.create_table("t", sa.Column("id", sa.Integer))')
    chain.revision("h2a", "h1", 'op.add_column("t", sa.Column("a", sa.Integer))')
    chain.revision("h2b", "h1", 'op.add_column("t", sa.Column("b", sa.Integer))')


def test_plan_and_status_refuse_multiple_heads(chain: Chain) -> None:
    two_heads(chain)
    settings = chain.settings()

    for start in ("base", "h1", "h2a"):
        with pytest.raises(MigrationScriptError, match="2 heads") as planned:
            plan(settings, start)
        assert planned.value.exit_code == 2
    with pytest.raises(MigrationScriptError, match="2 heads"):
        plan(settings)

    up(settings, to="h2a")
    result = status(settings)
    # The database is at one head, the other is unapplied: never "up to date".
    assert result.state is DbState.MULTIPLE_HEADS
    assert not result.ok
    assert [r.id for r in result.pending] == ["h2b"]


# -- 13: an env.py with a connection of its own ------------------------------------------


def test_env_py_with_its_own_connection_is_refused_before_anything_runs(chain: Chain) -> None:
    chain.revision("c1", None, 'op.create_table("t", sa.Column("id", sa.Integer))')
    chain.env_py(OWN_CONNECTION_ENV)
    settings = chain.settings()

    with pytest.raises(MigrationScriptError) as refused:
        up(settings)
    message = str(refused.value)
    assert "connection of its own" in message
    assert "lock_timeout" in message
    assert "config.attributes['connection']" in message
    assert "\n" not in message
    assert refused.value.exit_code == 2
    assert chain.tables() == set()

    with pytest.raises(MigrationScriptError, match="connection of its own"):
        run_test(settings)

    chain.env_py(SHARED_ENV)
    up(settings)
    assert chain.tables() == {"alembic_version", "t"}


# -- 14: the stairway on real-world chains -----------------------------------------------


def outside_table_chain(chain: Chain) -> None:
    """The first revision alters a table that Alembic never created."""
    chain.revision(
        "d1",
        None,
        'op.add_column("legacy", sa.Column("flag", sa.Boolean))',
        'op.drop_column("legacy", "flag")',
    )


def test_stairway_stops_at_a_first_revision_that_needs_a_baseline(chain: Chain) -> None:
    outside_table_chain(chain)

    report = run_test(chain.settings())

    assert not report.ok
    assert report.stopped_at == "d1"
    assert report.revisions[0].up == "failed"


def test_baseline_sql_file_prepares_the_scratch_database(chain: Chain) -> None:
    outside_table_chain(chain)
    (chain.root / "baseline.sql").write_text(
        "CREATE TABLE legacy (id bigint PRIMARY KEY);\nCREATE INDEX legacy_id ON legacy (id);\n"
    )
    chain.configure('baseline = "baseline.sql"\n')

    report = run_test(chain.settings())

    assert report.ok, report.problems
    assert [(r.up, r.down, r.reup) for r in report.revisions] == [("ok", "ok", "ok")]
    # Down to base, the baseline's own tables are all that is left, and that is fine.
    assert report.lowest_reached == "base"
    assert report.final_differences == []


def test_baseline_function_prepares_the_scratch_database(chain: Chain) -> None:
    outside_table_chain(chain)
    (chain.root / "chain_baseline.py").write_text(
        "def prepare(connection):\n"
        '    connection.exec_driver_sql("CREATE TABLE legacy (id bigint PRIMARY KEY)")\n'
    )
    chain.configure('baseline = "chain_baseline:prepare"\n')

    report = run_test(chain.settings())

    assert report.ok, report.problems
    assert report.lowest_reached == "base"


def test_a_failing_baseline_is_one_error_line(chain: Chain) -> None:
    outside_table_chain(chain)
    (chain.root / "baseline.sql").write_text("CREATE TABLE legacy (id nosuchtype);\n")
    chain.configure('baseline = "baseline.sql"\n')

    with pytest.raises(MigrationScriptError, match=r"migrations\.baseline 'baseline\.sql' failed"):
        run_test(chain.settings())

    chain.configure('baseline = "missing.sql"\n')
    with pytest.raises(ConfigError, match="cannot be read"):
        run_test(chain.settings())


def failing_middle_chain(chain: Chain) -> None:
    chain.revision(
        "e1",
        None,
        'op.create_table("t", sa.Column("id", sa.Integer))',
        'op.drop_table("t")',
    )
    chain.revision("e2", "e1", 'op.execute("ALTER TABLE nosuchtable ADD COLUMN x int")')
    chain.revision(
        "e3",
        "e2",
        'op.create_table("u", sa.Column("id", sa.Integer))',
        'op.drop_table("u")',
    )


def test_keep_going_reports_every_revision(chain: Chain) -> None:
    failing_middle_chain(chain)

    stopped = run_test(chain.settings())
    assert stopped.stopped_at == "e2"
    assert [r.revision for r in stopped.revisions] == ["e1", "e2"]

    report = run_test(chain.settings(), keep_going=True)

    assert not report.ok
    assert report.stopped_at is None
    assert report.stamped == ["e2"]
    rows = {r.revision: (r.up, r.down, r.reup) for r in report.revisions}
    assert rows == {
        "e1": ("ok", "ok", "ok"),
        "e2": ("failed", "not run", "not run"),
        "e3": ("ok", "ok", "ok"),
    }
    assert any(p.startswith("e2: upgrade failed") for p in report.problems)
    assert report.to_dict()["stamped"] == ["e2"]


def noop_downgrade_chain(chain: Chain, extra: str = "") -> None:
    chain.revision(
        "f1",
        None,
        'op.create_table("t", sa.Column("id", sa.Integer))',
        'op.drop_table("t")',
    )
    chain.revision("f2", "f1", 'op.add_column("t", sa.Column("x", sa.Integer))', "pass")
    chain.revision(
        "f3",
        "f2",
        'op.add_column("t", sa.Column("y", sa.Integer))',
        'op.drop_column("t", "y")',
    )
    # A merge-style revision that does nothing either way is no no-op downgrade.
    chain.revision("f4", "f3", "pass", "pass")
    chain.configure(extra)


def test_a_pass_downgrade_is_a_noop_downgrade_in_plan_and_test(chain: Chain) -> None:
    noop_downgrade_chain(chain)

    planned = by_id(plan(chain.settings(), "base").revisions)
    assert [r for r in planned if planned[r].noop_downgrade] == ["f2"]
    assert planned["f2"].to_dict()["noop_downgrade"] is True

    report = run_test(chain.settings())

    rows = {r.revision: (r.up, r.down, r.reup) for r in report.revisions}
    assert rows == {
        "f1": ("ok", "ok", "ok"),
        "f2": ("ok", "no-op (leaves trace)", "not run"),
        "f3": ("ok", "ok", "ok"),
        "f4": ("ok", "ok", "ok"),
    }
    assert not report.ok
    assert [p.split(":")[0] for p in report.problems] == ["f2"]
    assert "migrations.irreversible" in report.problems[0]
    assert report.lowest_reached == "f2"
    assert report.final_differences == []


def test_config_declares_a_revision_irreversible(chain: Chain) -> None:
    noop_downgrade_chain(chain, 'irreversible = ["f2"]\n')
    settings = chain.settings()

    planned = by_id(plan(settings, "base").revisions)
    assert planned["f2"].irreversible_reason == CONFIG_IRREVERSIBLE
    assert not planned["f2"].noop_downgrade

    report = run_test(settings)
    assert report.ok, report.problems
    assert report.irreversible == ["f2"]
    assert report.lowest_reached == "f2"

    up(settings)
    with pytest.raises(MigrationFailed, match="irreversible"):
        down(settings, "base")
    assert status(settings).current == ("f2",)


def test_config_irreversible_must_name_a_revision(chain: Chain) -> None:
    noop_downgrade_chain(chain, 'irreversible = ["zz9"]\n')
    with pytest.raises(ConfigError, match=r"migrations\.irreversible: 'zz9' matches no revision"):
        plan(chain.settings(), "base")


# -- 15: type changes that need no rewrite -----------------------------------------------


def test_widening_and_noop_type_changes_are_expand(chain: Chain) -> None:
    items_table(chain)
    widen = 'op.alter_column("items", "name", existing_type=sa.String(250), type_=sa.String(5000))'
    chain.revision("t1", "a3", widen)
    chain.revision(
        "t2",
        "t1",
        'op.alter_column("items", "done", existing_type=sa.Boolean(), type_=sa.Boolean())',
    )
    chain.revision(
        "t3", "t2", 'op.alter_column("items", "note", existing_type=sa.Text(), type_=sa.String(10))'
    )
    chain.revision("t4", "t3", 'op.alter_column("items", "done", type_=sa.Boolean())')
    chain.revision(
        "t5",
        "t4",
        'op.alter_column("items", "name", existing_type=sa.String(5000), type_=sa.Text(),'
        ' new_column_name="title")',
    )

    revisions = by_id(plan(chain.settings(), "a3").revisions)

    assert revisions["t1"].phase is Phase.EXPAND
    assert revisions["t2"].phase is Phase.EXPAND
    assert revisions["t3"].phase is Phase.CONTRACT  # narrowing
    assert revisions["t4"].phase is Phase.CONTRACT  # old type unknown
    assert revisions["t5"].phase is Phase.CONTRACT  # the rename still counts
    widened = [s for s in revisions["t1"].statements if "TYPE VARCHAR(5000)" in s.sql]
    assert [s.phase for s in widened] == [Phase.EXPAND]


# -- 16: readable drift ------------------------------------------------------------------


def test_drift_is_readable_and_stable(chain: Chain) -> None:
    chain.revision(
        "g1",
        None,
        'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True),'
        ' sa.Column("name", sa.String(50), nullable=False), sa.Column("gone", sa.Integer))\n'
        'op.create_index("ix_t_name", "t", ["name"])',
        'op.drop_table("t")',
    )
    (chain.root / "chain_models.py").write_text(
        "import sqlalchemy as sa\n\n"
        "metadata = sa.MetaData()\n"
        'sa.Table("t", metadata, sa.Column("id", sa.Integer, primary_key=True),\n'
        '    sa.Column("name", sa.String(100), nullable=True), sa.Column("extra", sa.Text))\n'
        'sa.Table("other", metadata, sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    chain.configure('metadata = "chain_models:metadata"\n')

    first = run_test(chain.settings())
    second = run_test(chain.settings())

    assert first.drift == second.drift
    assert first.drift is not None
    assert first.drift == sorted(first.drift)
    for line in first.drift:
        assert not re.search(r"0x[0-9a-f]+|object at", line), line
    assert set(first.drift) == {
        "column t.extra (TEXT): in the metadata, not in the database",
        "column t.gone (INTEGER): in the database, not in the metadata",
        "column t.name nullability: database NOT NULL, metadata NULL",
        "column t.name type: database VARCHAR(50), metadata VARCHAR(100)",
        "index ix_t_name on t (name): in the database, not in the metadata",
        "table other: in the metadata, not in the database",
    }


# -- 17: relative downgrade targets ------------------------------------------------------


def test_down_accepts_relative_targets(chain: Chain) -> None:
    items_table(chain)
    chain.revision(
        "a4",
        "a3",
        'op.add_column("items", sa.Column("n", sa.Integer))',
        'op.drop_column("items", "n")',
    )
    settings = chain.settings()
    up(settings)

    result = down(settings, "-1")
    assert [s.revision for s in result.steps] == ["a4"]
    assert status(settings).current == ("a3",)

    result = down(settings, "-2")
    assert [s.revision for s in result.steps] == ["a3", "a2"]
    assert status(settings).current == ("a1",)

    for bad, message in (("-5", "only 1 applied"), ("-x", "looks like -1")):
        with pytest.raises(ConfigError, match=message):
            down(settings, bad)
    assert status(settings).current == ("a1",)


# -- duplicate revision ids --------------------------------------------------------------


def test_two_files_with_one_revision_id_are_one_error(
    chain: Chain, recwarn: pytest.WarningsRecorder
) -> None:
    chain.revision("k1", None, "pass")
    chain.revision("k2", "k1", "pass")
    chain.revision("k2", "k1", "pass", filename="k2_copy.py")

    with pytest.raises(MigrationScriptError) as refused:
        plan(chain.settings(), "base")

    assert str(refused.value) == (
        "revision id k2 is used by 2 files (k2.py, k2_copy.py): give each revision its own id"
    )
    assert not [w for w in recwarn if "present more than once" in str(w.message)]
