"""``releasegate ledger setup``, ``history`` and ``status`` as a user runs them.

A ledger owned by a separate role (the releasing role may only append to it), and one
release shown as one row with its image, versions, outcome and duration.
"""

from __future__ import annotations

import json
import secrets as random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from test_cli_errors import assert_clean, assert_error, run

from releasegate.ledger import Ledger, Outcome
from releasegate.ledger.access import setup_owned_ledger
from releasegate.ledger.schema import LATEST_VERSION, LEDGER_SCHEMA
from releasegate.lock import release_lock, shared

if TYPE_CHECKING:
    from conftest import Project  # the `project` fixture's type


@dataclass(frozen=True)
class Role:
    name: str
    password: str

    def url(self, base: str) -> str:
        """``base`` (a server URL with a database) logged in as this role."""
        parts = urlsplit(base)
        netloc = f"{self.name}:{self.password}@{parts.hostname}:{parts.port or 5432}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Roles:
    owner: Role
    releaser: Role


@pytest.fixture
def roles(pg_server_url: str) -> Iterator[Roles]:
    """An owner and a releasing login role, dropped after the test.

    Ask for it before ``project``: pytest tears fixtures down in reverse, so the test's
    database (holding the roles' objects) is dropped before the roles are.
    """
    suffix = uuid.uuid4().hex[:10]
    made = Roles(
        Role(f"rg_owner_{suffix}", random.token_hex(12)),
        Role(f"rg_releaser_{suffix}", random.token_hex(12)),
    )
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        for role in (made.owner, made.releaser):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role.name), sql.Literal(role.password)
                )
            )
    try:
        yield made
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for role in (made.owner, made.releaser):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))


def _let_roles_in(project: Project, roles: Roles) -> None:
    """What a DBA grants: the owner may create the ledger schema, the releaser the app's."""
    dbname = urlsplit(project.url).path.lstrip("/")
    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(roles.owner.name)
            )
        )
        conn.execute(
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(
                sql.Identifier(roles.releaser.name)
            )
        )


def test_an_owned_ledger_only_grows_under_the_releasing_role(
    roles: Roles, project: Project
) -> None:
    _let_roles_in(project, roles)
    owner_url = roles.owner.url(project.url)
    releaser_url = roles.releaser.url(project.url)
    as_releaser = {project.url_env: releaser_url, "LEDGER_OWNER_URL": owner_url}

    setup = run(project, "ledger", "setup", "--owner-url-env", "LEDGER_OWNER_URL", env=as_releaser)
    assert setup.code == 0, setup.output
    assert f"ledger owned by {roles.owner.name}; {LATEST_VERSION} version(s) applied" in (
        setup.stdout
    )
    assert roles.owner.password not in setup.output and roles.releaser.password not in setup.output
    again = run(
        project, "ledger", "setup", "--owner-url-env", "LEDGER_OWNER_URL", "--json", env=as_releaser
    )
    assert again.code == 0, again.output
    assert json.loads(again.stdout)["versions_applied"] == 0

    # A real migrate as the releasing role: it reads, appends and closes its row.
    up = run(project, "migrate", "up", env=as_releaser)
    assert up.code == 0, up.output
    assert_clean(up)
    history = run(project, "history", "--json", env=as_releaser)
    [release] = json.loads(history.stdout)
    assert (release["kind"], release["outcome"]) == ("migrate", "succeeded")
    assert release["alembic_after"] == "0006" and len(release["events"]) == 7

    forbidden = [
        f"TRUNCATE {LEDGER_SCHEMA}.events, {LEDGER_SCHEMA}.releases",
        f"ALTER TABLE {LEDGER_SCHEMA}.events DISABLE TRIGGER events_append_only",
        f"DROP TRIGGER events_append_only ON {LEDGER_SCHEMA}.events",
        f"UPDATE {LEDGER_SCHEMA}.events SET status = 'ok'",
        f"DELETE FROM {LEDGER_SCHEMA}.events",
        f"DELETE FROM {LEDGER_SCHEMA}.releases",
        f"UPDATE {LEDGER_SCHEMA}.releases SET service = 'other', performer = 'someone'",
        f"CREATE OR REPLACE FUNCTION {LEDGER_SCHEMA}.events_append_only() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        f"CREATE TABLE {LEDGER_SCHEMA}.shadow (id int)",
        f"DROP SCHEMA {LEDGER_SCHEMA} CASCADE",
    ]
    with psycopg.connect(releaser_url, autocommit=True) as conn:
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        counts = conn.execute(
            f"SELECT (SELECT count(*) FROM {LEDGER_SCHEMA}.releases),"
            f" (SELECT count(*) FROM {LEDGER_SCHEMA}.events)"
        ).fetchone()
    assert counts == (1, 7)


def test_the_releasing_role_never_upgrades_an_owned_ledger(roles: Roles, project: Project) -> None:
    _let_roles_in(project, roles)
    owner_url = roles.owner.url(project.url)
    setup_owned_ledger(owner_url, roles.releaser.name)
    # As if this releasegate were newer than the ledger its owner set up.
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {LEDGER_SCHEMA}.schema_version WHERE version = %s", (2,))
    env = {project.url_env: roles.releaser.url(project.url)}
    result = run(project, "history", env=env)
    assert_error(
        result,
        2,
        f"belongs to role {roles.owner.name} and is at version 1",
        "run 'releasegate ledger setup' with the owner's URL",
    )


def test_setup_refuses_roles_that_would_own_the_ledger_anyway(
    roles: Roles, project: Project
) -> None:
    _let_roles_in(project, roles)
    env = {"LEDGER_OWNER_URL": roles.owner.url(project.url)}
    same = run(
        project,
        "ledger",
        "setup",
        "--owner-url-env",
        "LEDGER_OWNER_URL",
        "--releaser",
        roles.owner.name,
        env=env,
    )
    assert_error(same, 2, f"'{roles.owner.name}' is or acts as the owner")
    no_owner = run(project, "ledger", "setup", "--owner-url-env", "LEDGER_OWNER_URL")
    assert_error(no_owner, 2, "$LEDGER_OWNER_URL is not set")
    # A ledger the releasing role created (the single-role setup) is not taken over.
    with Ledger.open(project.url):
        pass
    taken = run(project, "ledger", "setup", "--owner-url-env", "LEDGER_OWNER_URL", env=env)
    creator = urlsplit(project.url).username
    assert_error(taken, 2, f"belongs to role {creator}", f"not to {roles.owner.name}")


# -- one release, one row ---------------------------------------------------------------


def test_history_and_status_show_a_release_as_one_row(project: Project) -> None:
    from releasegate.migrations.commands import up

    settings = project.settings()
    with (
        release_lock(project.url, project.service, "release", wait=5) as held,
        shared(held),
        Ledger.open(project.url) as ledger,
    ):
        release_id = ledger.start_release(
            project.service, "release", "ci", image_ref="notes:v2", git_sha="abc"
        )
        migrated = up(settings)
        # The rollback's restore, as the release's last own step.
        restore = ledger.start_release(project.service, "restore", "ci", alembic_after="0002")
        ledger.finish_release(restore, Outcome.SUCCEEDED)
        ledger.finish_release(release_id, Outcome.ROLLED_BACK)

    history = run(project, "history")
    assert history.code == 0, history.output
    header, _rule, *rows = history.stdout.splitlines()
    assert header.split() == [
        "id",
        "service",
        "kind",
        "started",
        "took",
        "outcome",
        "image",
        "versions",
        "performer",
    ]
    [row] = rows
    assert row.startswith(f"{release_id} ")
    assert "rolled_back" in row and "notes:v2" in row
    assert "alembic never migrated -> 0002" in row

    everything = run(project, "history", "--all")
    ids = [line.split()[0] for line in everything.stdout.splitlines()[2:]]
    assert ids == [str(restore), str(migrated.release_id), str(release_id)]

    one = run(project, "history", "--id", str(release_id), "--json")
    [shown] = json.loads(one.stdout)
    assert [c["kind"] for c in shown["children"]] == ["migrate", "restore"]
    assert shown["duration_s"] is not None

    status = run(project, "status", "--json")
    last = json.loads(status.stdout)["last_release"]
    assert (last["id"], last["kind"], last["outcome"]) == (release_id, "release", "rolled_back")
    text = run(project, "status")
    assert f"last release: #{release_id} release rolled_back: notes:v2," in text.stdout
