"""What the config refers to is checked before anything changes: ``config check`` and
``release --dry-run`` refuse a bad smoke file, locustfile, hook or env.py with one
``error:`` line and exit 2, and a release writes no ledger row."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import docker
import psycopg
import pytest
from conftest import REPO_ROOT
from test_cli_errors import assert_error, fake_url, run

if TYPE_CHECKING:
    from conftest import Project

SECTIONS = """
[smoke]
file = "smoke.toml"

[slo]
locustfile = "loadtests/locustfile.py"

[slo.thresholds]
total = ["p95 < 800ms"]
"GET /documents" = ["p95 < 240ms"]
"""


@pytest.fixture
def service(project: Project) -> Project:
    """The project with the example's smoke file, locustfile, and sections naming them."""
    shutil.copy(REPO_ROOT / "smoke.toml", project.root / "smoke.toml")
    (project.root / "loadtests").mkdir()
    shutil.copy(REPO_ROOT / "loadtests" / "locustfile.py", project.root / "loadtests")
    project.write_config(project.config_path.read_text() + SECTIONS)
    return project


def _check(project: Project) -> tuple[int, str]:
    result = run(project, "config", "check", env={project.url_env: fake_url(project)})
    return result.code, result.output


def test_a_complete_config_checks(service: Project) -> None:
    code, output = _check(service)
    assert code == 0, output


def test_a_typo_in_the_smoke_file(service: Project) -> None:
    smoke = service.root / "smoke.toml"
    smoke.write_text(smoke.read_text().replace('path = "/healthz"', 'pth = "/healthz"', 1))
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "smoke.file", "smoke.toml")


def test_a_missing_smoke_file(service: Project) -> None:
    (service.root / "smoke.toml").unlink()
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "smoke check file not found")


def test_a_missing_locustfile(service: Project) -> None:
    (service.root / "loadtests" / "locustfile.py").unlink()
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "slo.locustfile", "locustfile not found")


def test_a_locustfile_that_does_not_import(service: Project) -> None:
    (service.root / "loadtests" / "locustfile.py").write_text("import no_such_module_here\n")
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "does not import", "no_such_module_here")


def test_a_locustfile_without_a_user_class(service: Project) -> None:
    (service.root / "loadtests" / "locustfile.py").write_text("from locust import HttpUser\n")
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "defines no User class")


def test_a_threshold_scope_no_request_is_named_after(service: Project) -> None:
    text = service.config_path.read_text()
    service.write_config(text.replace('"GET /documents" =', '"GET /document" ='))
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "scope 'GET /document' names no request of locustfile.py")


def test_a_hook_program_that_is_not_there(service: Project) -> None:
    service.write_config(
        service.config_path.read_text() + '\n[hooks]\nafter_gate = "scripts/cleanup.sh"\n'
    )
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "hooks.after_gate", "scripts/cleanup.sh is not an executable file")


def test_a_build_context_without_its_dockerfile(service: Project) -> None:
    service.write_config(service.config_path.read_text() + '\n[build]\ncontext = "."\n')
    result = run(service, "config", "check", env={service.url_env: fake_url(service)})
    assert_error(result, 2, "build.dockerfile: Dockerfile not found")


# -- release --dry-run -------------------------------------------------------------------


def _local_image() -> str:
    images = docker.from_env().images.list()
    if not images:
        pytest.skip("no image on this Docker host to name in a dry run")
    return str(images[0].id)


def _ledger_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('releasegate.releases') IS NOT NULL").fetchone()
        return bool(row and row[0])


def test_dry_run_refuses_a_bad_smoke_file_before_the_ledger(service: Project) -> None:
    (service.root / "smoke.toml").write_text("[[checks]]\nname = 'x'\n")
    result = run(service, "release", "--image", _local_image(), "--dry-run")
    assert_error(result, 2, "smoke.file", "path")
    assert not _ledger_exists(service.url)


def test_dry_run_refuses_an_env_py_with_a_connection_of_its_own(service: Project) -> None:
    env_py = service.root / "migrations" / "postgres" / "env.py"
    text = env_py.read_text()
    shared = "        _run_on(shared_connection)\n"
    assert shared in text
    env_py.write_text(
        text.replace(
            shared,
            "        with shared_connection.engine.connect() as own:\n            _run_on(own)\n",
        )
    )
    assert _check(service)[0] == 0  # config check does not connect
    result = run(service, "release", "--image", _local_image(), "--dry-run")
    assert_error(result, 2, "connection of its own", "lock_timeout")
    assert not _ledger_exists(service.url)


# -- a table overridden from the environment ---------------------------------------------


def test_thresholds_overridden_as_a_json_table(service: Project) -> None:
    var = "RELEASEGATE_SLO__THRESHOLDS"
    good = run(
        service,
        "config",
        "check",
        "--json",
        env={service.url_env: fake_url(service), var: '{"GET /healthz": ["p95 < 100ms"]}'},
    )
    assert good.code == 0, good.output
    assert '"GET /healthz"' in good.stdout
    assert '"GET /documents"' not in good.stdout  # the table is replaced, not merged

    bad = run(service, "config", "check", env={service.url_env: fake_url(service), var: "{oops"})
    assert_error(bad, 2, f"{var}: invalid JSON table")
    unknown = run(
        service,
        "config",
        "check",
        env={service.url_env: fake_url(service), var: '{"GET /nope": ["p95 < 1s"]}'},
    )
    assert_error(unknown, 2, "scope 'GET /nope' names no request")
