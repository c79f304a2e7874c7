"""``releasegate init``: the rendered files, and what it decides from a repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from releasegate import GITHUB_REPOSITORY, __version__
from releasegate.config import load_config
from releasegate.errors import ConfigError
from releasegate.gates.locustfile import request_names, unknown_scopes
from releasegate.init import InitOptions, init_project, parse_stores, service_name, update_gitignore
from releasegate.init.render import (
    GATE_USERS,
    WATCH_USERS,
    ServicePlan,
    pin_note,
    render,
    render_files,
    thresholds,
)
from releasegate.pipeline.watch import scale_rate_rules

DOCKERFILE = "FROM python:3.12-slim\nEXPOSE 8080\n"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _plan(**changes: Any) -> ServicePlan:
    values: dict[str, Any] = {
        "service": "shop",
        "stores": ("postgres", "redis", "qdrant"),
        "build_context": "app",
        "dockerfile": "Dockerfile",
        "requirements": "requirements.txt",
        "migrations": "db/migrations",
        "alembic_ini": "alembic.ini",
        "container_port": 8080,
        "port_env": "PORT",
        "readiness_path": "/ready",
        "health_path": "/live",
        "releasegate_repository": "acme/releasegate",
        "releasegate_ref": "v9.9.9",
    }
    return ServicePlan(**{**values, **changes})


def _workflow(text: str) -> dict[Any, Any]:
    data = yaml.safe_load(text)
    data["on"] = data.pop(True)  # PyYAML reads the key `on` as True
    return dict(data)


def test_a_placeholder_without_a_value_is_a_bug_not_blank_text() -> None:
    assert render("a <<x>> b <<x>>", {"x": "1"}) == "a 1 b 1"
    with pytest.raises(KeyError, match="<<y>>"):
        render("<<y>>", {})


def test_the_watch_rules_are_the_gates_scaled_to_the_watchs_users() -> None:
    gate, watch = thresholds(GATE_USERS), thresholds(WATCH_USERS)
    # releasegate's own scaling of gate rules for a watch gives the same rules.
    assert scale_rate_rules(gate, WATCH_USERS / GATE_USERS, 1.0) == {
        scope: [rule.replace("rps >= 7.5", "rps >= 7.5/s") for rule in rules]
        for scope, rules in watch.items()
    }
    assert "rps >= 15" in gate["total"] and "rps >= 7.5" in watch["total"]


def test_the_config_loads_with_what_was_detected(tmp_path: Path) -> None:
    files = render_files(_plan())
    (tmp_path / "releasegate.toml").write_text(files["releasegate.toml"])
    raw = load_config(tmp_path / "releasegate.toml", {}).raw
    assert raw.service.name == "shop"
    assert raw.postgres.url_env == "DATABASE_URL"
    assert str(raw.migrations.postgres) == "db/migrations"
    assert str(raw.migrations.alembic_ini) == "alembic.ini"
    assert raw.redis is not None and raw.redis.url_env == "REDIS_URL"
    assert raw.qdrant is not None and raw.qdrant.url_env == "QDRANT_URL"
    assert str(raw.build.context) == "app" and raw.build.repository == "shop"
    assert raw.deploy.container_port == 8080
    assert raw.deploy.network == "host" and raw.deploy.port_env == "PORT"
    assert raw.deploy.env_passthrough == [
        "DATABASE_URL",
        "REDIS_URL",
        "QDRANT_URL",
        "QDRANT_API_KEY",
    ]
    assert raw.deploy.readiness_path == "/ready" and raw.router.health_path == "/live"
    assert raw.slo.users == GATE_USERS and raw.release.watch_users == WATCH_USERS
    assert raw.slo.thresholds == thresholds(GATE_USERS)
    assert raw.release.watch_thresholds == thresholds(WATCH_USERS)


def test_without_a_port_variable_the_bridge_network_stays(tmp_path: Path) -> None:
    plan = _plan(port_env=None, stores=("postgres",), alembic_ini=None, requirements=None)
    (tmp_path / "releasegate.toml").write_text(render_files(plan)["releasegate.toml"])
    raw = load_config(tmp_path / "releasegate.toml", {}).raw
    assert raw.deploy.network is None and raw.deploy.port_env is None
    assert raw.redis is None and raw.qdrant is None
    assert raw.migrations.alembic_ini is None
    assert raw.deploy.env_passthrough == ["DATABASE_URL"]


def test_threshold_scopes_are_request_names_of_the_locustfile() -> None:
    files = render_files(_plan())
    names = request_names(files["loadtests/locustfile.py"])
    scopes = [*thresholds(GATE_USERS), *thresholds(WATCH_USERS)]
    assert unknown_scopes(scopes, names) == []
    assert "GET /ready" in files["loadtests/locustfile.py"]  # the readiness path detected


def test_workflows_follow_the_interface() -> None:
    files = render_files(_plan())
    staging = _workflow(files[".github/workflows/releasegate-staging.yml"])
    production = _workflow(files[".github/workflows/releasegate-production.yml"])
    rollback = _workflow(files[".github/workflows/releasegate-rollback.yml"])
    for data in (staging, production, rollback):
        assert data["permissions"] == {}
        assert data["concurrency"]["cancel-in-progress"] is False
        [job] = data["jobs"].values()
        assert job["with"]["releasegate-source"] == "${{ vars.RELEASEGATE_SOURCE || '' }}"
        assert job["with"]["config"] == "releasegate.toml"
        assert "inherit" not in str(job.get("secrets"))
    release = "acme/releasegate/.github/workflows/release.yml@v9.9.9"
    assert staging["on"] == {"push": {"branches": ["main"]}}
    assert staging["concurrency"]["group"] == "releasegate-staging"
    job = staging["jobs"]["release"]
    assert job["uses"] == release
    assert job["permissions"] == {"contents": "read", "packages": "write", "deployments": "write"}
    assert job["with"]["image"] == (
        "${{ vars.RELEASEGATE_IMAGE || format('ghcr.io/{0}/shop', github.repository_owner) }}"
    )
    assert {k: job["with"][k] for k in ("environment", "target", "baseline", "seed")} == {
        "environment": "staging",
        "target": "ephemeral",
        "baseline": "previous",
        "seed": "none",
    }
    assert job["secrets"] == {"REGISTRY_TOKEN": "${{ secrets.REGISTRY_TOKEN }}"}

    assert set(production["on"]["workflow_dispatch"]["inputs"]) == {"version", "dry-run"}
    job = production["jobs"]["release"]
    assert job["uses"] == release
    assert job["with"]["promoted-in"] == "staging"
    assert job["with"]["target"] == "${{ vars.RELEASEGATE_PRODUCTION_TARGET || 'remote' }}"
    assert job["with"]["allow-contract"] is False
    assert job["secrets"]["DOCKER_HOST"] == "${{ secrets.PRODUCTION_DOCKER_HOST }}"
    assert set(job["secrets"]) == {
        "REGISTRY_TOKEN",
        "DOCKER_HOST",
        "DOCKER_SSH_KEY",
        "DOCKER_KNOWN_HOSTS",
        "DATABASE_URL",
        "REDIS_URL",
        "QDRANT_URL",
        "QDRANT_API_KEY",
        "BACKUP_AWS_ACCESS_KEY_ID",
        "BACKUP_AWS_SECRET_ACCESS_KEY",
        "BACKUP_AWS_ENDPOINT_URL",
        "BACKUP_AWS_REGION",
    }

    inputs = rollback["on"]["workflow_dispatch"]["inputs"]
    assert inputs["release-id"]["required"] is True
    assert inputs["environment"]["default"] == "production"
    assert rollback["concurrency"]["group"] == "releasegate-${{ inputs.environment }}"
    job = rollback["jobs"]["rollback"]
    assert job["uses"] == "acme/releasegate/.github/workflows/rollback.yml@v9.9.9"
    assert job["with"]["release"] == "${{ inputs.release-id }}"
    # rollback.yml declares no registry token: passing one would be refused.
    assert set(job["secrets"]) == set(production["jobs"]["release"]["secrets"]) - {"REGISTRY_TOKEN"}


def test_only_a_tag_needs_the_unpinned_note() -> None:
    assert pin_note(COMMIT) == ""
    assert "zizmor: ignore[unpinned-uses]" in pin_note("v1.2.3")
    text = render_files(_plan(releasegate_ref=COMMIT))[".github/workflows/releasegate-staging.yml"]
    assert f"release.yml@{COMMIT}\n" in text


@pytest.mark.parametrize(
    ("given", "folder", "name"),
    [
        (None, "My Service", "my-service"),
        (None, "__notes.app", "notes.app"),
        ("shop-api", "whatever", "shop-api"),
    ],
)
def test_service_names(given: str | None, folder: str, name: str) -> None:
    assert service_name(given, Path("/x") / folder) == name


@pytest.mark.parametrize("bad", ["Shop", "-shop", "a b", "x" * 64, ""])
def test_an_invalid_service_name_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid service name"):
        service_name(bad, Path("/x/ok"))
    with pytest.raises(ConfigError, match="--service"):
        service_name(None, Path("/x/...."))


def test_stores() -> None:
    assert parse_stores(["qdrant", " postgres", "REDIS", ""]) == ("postgres", "redis", "qdrant")
    with pytest.raises(ConfigError, match="postgres"):
        parse_stores(["redis"])
    with pytest.raises(ConfigError, match="'mysql'"):
        parse_stores(["postgres", "mysql"])


def test_gitignore_entries_are_appended_once(tmp_path: Path) -> None:
    path = tmp_path / ".gitignore"
    path.write_text("node_modules\n/wheels")  # no final newline; an equivalent entry
    assert update_gitignore(path, [".releasegate/", "/wheels/"]) == [".releasegate/"]
    assert update_gitignore(path, [".releasegate/", "/wheels/"]) == []
    assert path.read_text().splitlines() == [
        "node_modules",
        "/wheels",
        "# releasegate's working files and the offline build's wheels",
        ".releasegate/",
    ]


def _repository(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_repository_with_alembic_elsewhere(tmp_path: Path) -> None:
    root = _repository(
        tmp_path / "shop",
        {
            "services/api/Dockerfile": DOCKERFILE,
            "services/api/requirements.txt": "fastapi\n",
            "alembic.ini": "[alembic]\nscript_location = %(here)s/db/alembic\n",
            "db/alembic/env.py": "config.attributes.get('connection')\n",
            "db/alembic/versions/0001_a.py": "",
            "node_modules/x/Dockerfile": DOCKERFILE,  # never looked at
        },
    )
    result = init_project(InitOptions(directory=root, stores=["postgres"]))
    raw = load_config(root / "releasegate.toml", {}).raw
    assert str(raw.migrations.postgres) == "db/alembic"
    assert str(raw.migrations.alembic_ini) == "alembic.ini"
    assert str(raw.build.context) == "services/api"
    assert raw.deploy.container_port == 8080
    assert "migrations/postgres/env.py" not in result.written  # no starter: one exists
    assert not any(f.topic == "migrations" for f in result.findings)  # shares the connection
    assert result.detected["Dockerfile"] == "services/api/Dockerfile"
    assert result.gitignore_added == [".releasegate/", "/services/api/wheels/"]
    text = (root / ".github/workflows/releasegate-staging.yml").read_text()
    assert f"{GITHUB_REPOSITORY}/.github/workflows/release.yml@v{__version__}" in text


def test_an_env_py_of_its_own_connection_is_reported(tmp_path: Path) -> None:
    root = _repository(
        tmp_path / "svc",
        {"Dockerfile": DOCKERFILE, "migrations/env.py": "", "migrations/script.py.mako": ""},
    )
    result = init_project(InitOptions(directory=root, stores=["postgres"]))
    [finding] = [f for f in result.findings if f.topic == "migrations"]
    assert not finding.ok and "config.attributes['connection']" in finding.message


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    root = _repository(tmp_path / "svc", {"Dockerfile": DOCKERFILE, "smoke.toml": "mine\n"})
    first = init_project(InitOptions(directory=root))
    assert first.kept == ["smoke.toml"] and (root / "smoke.toml").read_text() == "mine\n"
    assert "migrations/postgres/env.py" in first.written
    assert "migrations/redis/README.md" in first.written
    again = init_project(InitOptions(directory=root))
    assert again.written == [] and again.gitignore_added == []
    # The starter migrations are found now, like any Alembic folder, and left alone.
    assert again.detected["migrations"] == "migrations/postgres"
    assert set(again.kept) == {p for p in first.written if not p.startswith("migrations/")} | {
        "smoke.toml"
    }
    forced = init_project(InitOptions(directory=root, force=True))
    assert "smoke.toml" in forced.written and (root / "smoke.toml").read_text() != "mine\n"


@pytest.mark.parametrize(
    ("files", "options", "message"),
    [
        ({}, {}, "no Dockerfile"),
        ({"a/Dockerfile": DOCKERFILE, "b/Dockerfile": DOCKERFILE}, {}, "several Dockerfiles"),
        ({"Dockerfile": DOCKERFILE}, {"dockerfile": Path("nope/Dockerfile")}, "not found"),
        ({"Dockerfile": DOCKERFILE}, {"service": "Bad Name"}, "invalid service name"),
        ({"Dockerfile": DOCKERFILE}, {"releasegate_ref": "v1\nrun: x"}, "--releasegate-ref"),
        ({"Dockerfile": DOCKERFILE}, {"releasegate_repository": "a/b/c"}, "OWNER/NAME"),
    ],
)
def test_bad_input_writes_nothing(
    tmp_path: Path, files: dict[str, str], options: dict[str, Any], message: str
) -> None:
    root = _repository(tmp_path / "svc", files) if files else tmp_path
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ConfigError, match=message):
        init_project(InitOptions(directory=root, **options))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
