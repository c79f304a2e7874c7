"""Bad ``[release.canary]`` input from the command line: ``config check`` and ``release``
refuse it with one ``error:`` line and exit 2, before the ledger exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest
from test_cli_errors import assert_error, fake_url, run

if TYPE_CHECKING:
    from conftest import Project


def _with_canary(project: Project, steps: str) -> None:
    project.write_config(
        project.config_path.read_text() + f'\n[release.canary]\nsteps = {steps}\nduration = "5s"\n'
    )


def _ledger_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('releasegate.releases') IS NOT NULL").fetchone()
        return bool(row and row[0])


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        ('["25%", "5%"]', "steps must increase"),
        ('["5%", "120%"]', "120% is above 100%"),
        ("[]", "no weight step"),
        ('["pause", "50%"]', "'pause' cannot be the first step"),
    ],
)
def test_config_check_refuses_bad_steps(project: Project, steps: str, fragment: str) -> None:
    _with_canary(project, steps)
    result = run(project, "config", "check", env={project.url_env: fake_url(project)})
    assert_error(result, 2, "release.canary.steps", fragment)


def test_release_refuses_bad_steps_before_any_store(project: Project) -> None:
    _with_canary(project, '["pause", "50%"]')
    result = run(project, "release", "--image", "notes:v2")
    assert_error(result, 2, "'pause' cannot be the first step")
    assert not _ledger_exists(project.url)


def test_good_steps_check(project: Project) -> None:
    _with_canary(project, '["5%", "25%", "pause", "100%"]')
    result = run(project, "config", "check", env={project.url_env: fake_url(project)})
    assert result.code == 0, result.output
