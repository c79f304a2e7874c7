"""Postgres restore points on the real server: pg_dump, pg_restore, counts, schema, ledger.

Each test gets the example project migrated to head in a fresh database and seeded by
``scripts/seed.py``; dumps go to a folder under ``tmp_path`` and are restored into other
fresh databases of the same server.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import REPO_ROOT, Project, create_database, drop_database, url_for_database

from releasegate.backup import postgres, postgres_contents, postgres_tools
from releasegate.backup.base import StoreBackup
from releasegate.errors import ConfigError, StateError
from releasegate.ledger import Ledger, Outcome
from releasegate.migrations.commands import up

USERS = 120


def load_seed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rg_seed", REPO_ROOT / "scripts" / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        return {
            f"public.{n}": int(conn.execute(f'SELECT count(*) FROM public."{n}"').fetchone()[0])  # type: ignore[index]
            for n in names
        }


def fingerprint(url: str) -> list[tuple[object, ...]]:
    """Every user with its documents' titles and bodies hashed: equal data, equal result."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT u.id, u.email, u.display_name, md5(string_agg(d.title || d.body, '|'"
            " ORDER BY d.id)) FROM users u JOIN documents d ON d.owner_id = u.id"
            " GROUP BY u.id ORDER BY u.id"
        ).fetchall()


def alembic_version(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


def with_backup(project: Project, **backup: str) -> None:
    lines = "".join(f"{key} = {value}\n" for key, value in backup.items())
    project.write_config(project.config_path.read_text() + f"\n[backup]\n{lines}")


@pytest.fixture
def seeded(project: Project) -> Project:
    """The example project at head with USERS users, their documents, chunks and audit log."""
    up(project.settings())
    load_seed().seed_postgres(project.url, users=USERS, docs_per_user=2, chunks_per_doc=2)
    return project


@pytest.fixture
def other_db(pg_server_url: str) -> Iterator[str]:
    name = create_database(pg_server_url, "rgrestore")
    try:
        yield url_for_database(pg_server_url, name)
    finally:
        drop_database(pg_server_url, name)


def test_custom_format_round_trip(seeded: Project, tmp_path: Path, other_db: str) -> None:
    settings = seeded.settings()
    set_dir = tmp_path / "set"
    entry = postgres.backup(settings, set_dir)

    assert entry.store == "postgres"
    assert entry.method == "pg_dump custom"
    assert [f.name for f in entry.files] == ["postgres.dump", "postgres.rows.gz"]
    assert entry.files[0].size == (set_dir / "postgres.dump").stat().st_size > 0
    live = table_counts(seeded.url)
    assert entry.counts["tables"] == live
    assert entry.counts["tables"]["public.users"] == USERS
    assert entry.counts["tables"]["public.documents"] == 2 * USERS
    assert entry.counts["rows"] == sum(live.values())
    assert entry.versions == {"alembic": "0006"}
    assert entry.tools["pg_dump"].startswith("15")
    assert entry.extra["excluded_schemas"] == ["releasegate"]
    objects = entry.extra["schema"]["objects"]
    assert "column public.users.display_name" in objects
    assert "table public.alembic_version" in objects
    assert not [k for k in objects if "releasegate." in k]
    with psycopg.connect(seeded.url) as conn:
        assert (
            entry.extra["schema_fingerprint"] == postgres_contents.take_snapshot(conn).fingerprint()
        )

    # The password reaches pg_dump through PGPASSWORD: the URL on its command line keeps
    # the user only (the test server may spell the password like the user: compare it
    # whole), and the manifest names the database without credentials.
    parts = urlsplit(seeded.url)
    url, env = postgres_tools.libpq_target(seeded.url, "backup")
    assert url == f"postgresql://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"
    assert env["PGPASSWORD"] == parts.password
    assert env["PGAPPNAME"].startswith("releasegate/backup")
    assert f":{parts.password}@" not in json.dumps(entry.to_dict())
    assert entry.extra["database"] == f"{parts.hostname}:{parts.port}{parts.path}"

    assert postgres.verify(settings, set_dir, entry) == []

    target = seeded.settings(NOTES_DATABASE_URL=other_db)
    result = postgres.restore(target, set_dir, entry)
    assert result["alembic_before"] is None
    assert result["alembic_after"] == "0006"
    assert result["tables"] == live
    assert table_counts(other_db) == live
    assert alembic_version(other_db) == ["0006"]
    assert fingerprint(other_db) == fingerprint(seeded.url)
    with psycopg.connect(other_db) as conn:
        assert postgres_contents.take_snapshot(conn).to_json() == entry.extra["schema"]


def test_directory_format_with_parallel_jobs(
    seeded: Project, tmp_path: Path, other_db: str
) -> None:
    with_backup(seeded, postgres_format='"directory"', jobs="2")
    settings = seeded.settings()
    set_dir = tmp_path / "set"
    entry = postgres.backup(settings, set_dir)

    assert entry.method == "pg_dump directory"
    assert entry.extra["jobs"] == 2
    names = {f.name for f in entry.files}
    assert "postgres/toc.dat" in names
    assert len(names) > 4  # a data file per table besides the table of contents
    assert all((set_dir / n).is_file() for n in names)
    assert postgres.verify(settings, set_dir, entry) == []

    result = postgres.restore(seeded.settings(NOTES_DATABASE_URL=other_db), set_dir, entry)
    assert result["alembic_after"] == "0006"
    assert table_counts(other_db) == entry.counts["tables"]
    assert fingerprint(other_db) == fingerprint(seeded.url)


def test_restore_refuses_a_non_empty_target_and_force_replaces_it(
    seeded: Project, tmp_path: Path
) -> None:
    settings = seeded.settings()
    set_dir = tmp_path / "set"
    entry = postgres.backup(settings, set_dir)
    before = fingerprint(seeded.url)
    with psycopg.connect(seeded.url, autocommit=True) as conn:
        conn.execute("DELETE FROM document_chunks")
        conn.execute("UPDATE users SET display_name = 'changed'")
        conn.execute("CREATE TABLE public.not_in_backup (id int)")
        conn.execute("CREATE SCHEMA extra")
        conn.execute("CREATE TABLE extra.t (id int)")

    live = postgres.counts(settings)
    # Every schema but the ledger's, exactly.
    assert live["tables"] == {**table_counts(seeded.url), "extra.t": 0}
    assert live["tables"]["public.document_chunks"] == 0
    assert live["rows"] == sum(live["tables"].values())

    with pytest.raises(StateError) as refused:
        postgres.restore(settings, set_dir, entry)
    message = str(refused.value)
    assert "refusing to restore into non-empty Postgres" in message
    assert "force" in message and "\n" not in message
    with psycopg.connect(seeded.url) as conn:  # nothing was touched
        row = conn.execute("SELECT count(*) FROM users WHERE display_name = 'changed'").fetchone()
        assert row == (USERS,)

    result = postgres.restore(settings, set_dir, entry, force=True)
    assert result["dropped_objects"] > 0
    assert fingerprint(seeded.url) == before
    assert table_counts(seeded.url) == entry.counts["tables"]
    with psycopg.connect(seeded.url) as conn:
        leftovers = conn.execute(
            "SELECT to_regclass('public.not_in_backup'), to_regnamespace('extra')"
        ).fetchone()
    assert leftovers == (None, None)


def test_ledger_is_neither_dumped_nor_rolled_back(seeded: Project, tmp_path: Path) -> None:
    settings = seeded.settings()
    with Ledger.open(seeded.url) as ledger:
        first = ledger.start_release(seeded.service, "test", "tester")
        ledger.finish_release(first, Outcome.SUCCEEDED)
    set_dir = tmp_path / "set"
    entry = postgres.backup(settings, set_dir)

    listing = subprocess.run(
        ["pg_restore", "--list", str(set_dir / "postgres.dump")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = [line.split() for line in listing.splitlines() if not line.startswith(";")]
    # A TOC line: id; class oid TYPE [DATA] schema name owner ("-" for no schema).
    assert any(e[3:6] == ["TABLE", "public", "users"] for e in entries)
    assert not [e for e in entries if "releasegate" in e[4:-1] or "releasegate" in e[3:5]]
    assert "releasegate" not in json.dumps(entry.counts)

    with Ledger.open(seeded.url) as ledger:
        second = ledger.start_release(seeded.service, "test", "tester")
    postgres.restore(settings, set_dir, entry, force=True)
    with Ledger.open(seeded.url) as ledger:
        ids = {r.id for r in ledger.releases(seeded.service)}
    assert {first, second} <= ids  # the release recorded after the backup survived


def test_verify_reports_what_differs_from_the_manifest(seeded: Project, tmp_path: Path) -> None:
    settings = seeded.settings()
    set_dir = tmp_path / "set"
    entry = postgres.backup(settings, set_dir)
    data = entry.to_dict()
    data["counts"]["tables"]["public.users"] = USERS + 1
    del data["extra"]["schema"]["objects"]["index public.ix_documents_owner_id"]
    data["versions"]["alembic"] = "0005"
    tampered = StoreBackup.from_dict(data)

    found = {d.item: d for d in postgres.verify(settings, set_dir, tampered)}
    assert set(found) == {
        "rows public.users",
        "schema index public.ix_documents_owner_id",
        "alembic revision",
    }
    assert (found["rows public.users"].expected, found["rows public.users"].actual) == (
        USERS + 1,
        USERS,
    )
    assert found["schema index public.ix_documents_owner_id"].expected == "absent"
    assert found["alembic revision"].actual == "0006"


def test_never_migrated_database_backs_up_empty(project: Project, tmp_path: Path) -> None:
    entry = postgres.backup(project.settings(), tmp_path / "set")
    assert entry.counts == {"tables": {}, "rows": 0}
    assert entry.versions == {"alembic": None}
    assert postgres.verify(project.settings(), tmp_path / "set", entry) == []


def test_client_version_check() -> None:
    with pytest.raises(ConfigError) as too_old:
        postgres_tools.check_compatible("pg_dump", 14, 15)
    assert str(too_old.value) == (
        "pg_dump 14 cannot dump a PostgreSQL 15 server: install postgresql-client-15"
    )
    postgres_tools.check_compatible("pg_dump", 16, 15)  # newer clients may dump older servers
    version_text = "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    assert postgres_tools.parse_tool_version(version_text) == ("15.18", 15)
    assert postgres_tools.server_major(150018) == 15

    tool = postgres_tools.find_tool("pg_dump", 15)
    assert tool.major >= 15
    if Path("/usr/lib/postgresql/15/bin/pg_dump").is_file():
        assert tool.path == "/usr/lib/postgresql/15/bin/pg_dump"
    with pytest.raises(ConfigError, match=r"cannot dump a PostgreSQL 99 server"):
        postgres_tools.find_tool("pg_dump", 99)
