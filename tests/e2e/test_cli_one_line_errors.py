"""Failures that used to print several lines, the wrong stream or the wrong exit code.

Each must be one ``error:`` line on stderr with the documented exit status; a command
group without a command prints its help (stdout) and exits 2.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from test_cli_errors import assert_clean, assert_error, run

if TYPE_CHECKING:
    from conftest import Project

BOM = b"\xef\xbb\xbf"


def _prepend_bom(path: Path) -> None:
    path.write_bytes(BOM + path.read_bytes())


def _ledger_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('releasegate.releases') IS NOT NULL").fetchone()
        return bool(row and row[0])


# -- no command ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "usage"),
    [((), "Usage: releasegate [OPTIONS] COMMAND"), (("migrate",), "Usage: releasegate migrate")],
)
def test_no_command_prints_the_help_and_exits_2(
    project: Project, args: tuple[str, ...], usage: str
) -> None:
    result = run(project, *args)
    assert result.code == 2, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(usage)
    assert "Commands:" in result.stdout
    assert "error:" not in result.output


# -- release with an image that does not exist ----------------------------------------


def test_dry_run_of_a_missing_image_is_a_config_error_and_pulls_nothing(
    project: Project,
) -> None:
    missing = f"releasegate-e2e-missing-{uuid.uuid4().hex[:8]}:v1"
    result = run(project, "release", "--image", missing, "--dry-run")
    line = assert_error(result, 2, f"image {missing} does not exist on this Docker host")
    assert "a dry run pulls nothing" in line
    assert "pulled" not in line  # no pull was tried
    assert result.stdout == ""
    assert not _ledger_exists(project.url)


def test_release_of_an_image_whose_registry_is_down_is_an_infra_error(project: Project) -> None:
    # A registry on a closed local port: the pull fails at once, without any network.
    missing = f"127.0.0.1:1/releasegate-e2e-missing-{uuid.uuid4().hex[:8]}:v1"
    result = run(project, "release", "--image", missing)
    line = assert_error(result, 3, f"image {missing}: its registry did not serve it")
    assert "connection refused" in line
    assert result.stdout == ""
    assert not _ledger_exists(project.url)


# -- migrate verify when the scratch rebuild fails ------------------------------------


def test_verify_names_the_revision_and_scratch_database_that_failed(project: Project) -> None:
    assert run(project, "migrate", "up").code == 0
    # The live database is at 0006; the file of 0002 now fails on a fresh database.
    revision = next(project.versions.glob("0002_*.py"))
    revision.write_text(
        revision.read_text().replace(
            "def upgrade() -> None:\n",
            "def upgrade() -> None:\n    op.execute('SELECT releasegate_e2e_no_such_function()')\n",
            1,
        )
    )
    result = run(project, "migrate", "verify")
    line = assert_error(result, 1, "migrate verify cannot rebuild the schema", "revision 0002")
    assert f"scratch database rg_verify_{project.service.replace('-', '_')}" in line
    assert "UndefinedFunction" in line
    assert "the live database was not changed" in line
    assert "[SQL:" not in result.output and "sqlalche.me" not in result.output


# -- files with a UTF-8 byte-order mark -------------------------------------------------


def test_a_config_file_with_a_bom_says_so(project: Project) -> None:
    _prepend_bom(project.config_path)
    result = run(project, "migrate", "status")
    assert_error(result, 2, "releasegate.toml starts with a UTF-8 byte-order mark (BOM)")
    assert "Invalid statement" not in result.output


def test_an_alembic_ini_with_a_bom_says_so(project: Project) -> None:
    _prepend_bom(project.root / "migrations" / "postgres" / "alembic.ini")
    result = run(project, "migrate", "status")
    assert_error(result, 2, "alembic.ini starts with a UTF-8 byte-order mark (BOM)")


def test_a_smoke_file_with_a_bom_says_so(project: Project) -> None:
    checks = project.root / "smoke.toml"
    checks.write_bytes(BOM + b'[[check]]\nname = "health"\npath = "/healthz"\n')
    result = run(project, "smoke", "--file", str(checks), "--target", "http://127.0.0.1:1")
    assert_error(result, 2, "smoke.toml starts with a UTF-8 byte-order mark (BOM)")


def test_a_revision_file_with_a_bom_keeps_its_irreversible_declaration(
    project: Project,
) -> None:
    _prepend_bom(next(project.versions.glob("0005_*.py")))
    result = run(project, "migrate", "plan", "--from", "base")
    assert result.code == 0, result.output
    assert_clean(result)
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("0005 ")]
    assert "IRREVERSIBLE" in line
