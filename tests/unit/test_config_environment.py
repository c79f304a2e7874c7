"""releasegate.<environment>.toml laid over releasegate.toml (RELEASEGATE_ENVIRONMENT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.config import load_config
from releasegate.errors import ConfigError

BASE = """\
[service]
name = "notes"

[postgres]
url_env = "NOTES_DATABASE_URL"

[router]
bind = "127.0.0.1:18080"
runtime_dir = ".releasegate/router"

[release]
live_updates = ["redis:sess:*", "postgres:public.users"]
"""

PRODUCTION = """\
[router]
bind = "0.0.0.0:80"
mode = "container"

[deploy]
remote_docker_socket = "/run/docker.sock"

[release]
live_updates = ["qdrant:documents"]
"""


def project(tmp_path: Path, production: str = PRODUCTION) -> Path:
    (tmp_path / "releasegate.toml").write_text(BASE)
    (tmp_path / "releasegate.production.toml").write_text(production)
    return tmp_path / "releasegate.toml"


def test_the_environment_file_merges_tables_and_replaces_values(tmp_path: Path) -> None:
    settings = load_config(project(tmp_path), {"RELEASEGATE_ENVIRONMENT": "production"})
    raw = settings.raw
    assert raw.router.bind == "0.0.0.0:80" and raw.router.mode == "container"
    assert raw.router.runtime_dir == Path(".releasegate/router")  # kept from the base
    assert raw.deploy.remote_docker_socket == "/run/docker.sock"
    assert raw.release.live_updates == ["qdrant:documents"]  # a list is replaced
    assert settings.environment_path == tmp_path / "releasegate.production.toml"
    assert settings.describe()["environment_config"].endswith("releasegate.production.toml")


def test_without_an_environment_or_its_file_only_the_base_counts(tmp_path: Path) -> None:
    config = project(tmp_path)
    for env in ({}, {"RELEASEGATE_ENVIRONMENT": "staging"}, {"RELEASEGATE_ENVIRONMENT": " "}):
        settings = load_config(config, env)
        assert settings.raw.router.bind == "127.0.0.1:18080"
        assert settings.environment_path is None
        assert "environment_config" not in settings.describe()


def test_variables_still_override_the_environment_file(tmp_path: Path) -> None:
    env = {"RELEASEGATE_ENVIRONMENT": "production", "RELEASEGATE_ROUTER__BIND": "10.0.0.5:80"}
    assert load_config(project(tmp_path), env).raw.router.bind == "10.0.0.5:80"


def test_a_bad_key_in_the_environment_file_names_that_file(tmp_path: Path) -> None:
    config = project(tmp_path, '[router]\nbnid = "0.0.0.0:80"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config, {"RELEASEGATE_ENVIRONMENT": "production"})
    assert str(info.value) == (
        "releasegate.toml: unknown key 'router.bnid' (from releasegate.production.toml)"
    )


def test_invalid_toml_in_the_environment_file_names_that_file(tmp_path: Path) -> None:
    config = project(tmp_path, "[router\n")
    with pytest.raises(ConfigError, match=r"^releasegate\.production\.toml: invalid TOML"):
        load_config(config, {"RELEASEGATE_ENVIRONMENT": "production"})


@pytest.mark.parametrize("name", ["../prod", ".hidden", "prod/x", "a b"])
def test_an_environment_name_that_is_not_a_file_name_part_is_refused(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(ConfigError, match="is not an environment name"):
        load_config(project(tmp_path), {"RELEASEGATE_ENVIRONMENT": name})
