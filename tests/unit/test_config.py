"""releasegate.toml: durations, validation messages, overrides and the resolved settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from releasegate.config import format_duration, load_config, parse_duration
from releasegate.errors import ConfigError

PASSWORD = "Vq7-config-secret"
URL = f"postgresql://svc:{PASSWORD}@db.internal:5433/notes"

MINIMAL = """\
[service]
name = "notes"

[postgres]
url_env = "NOTES_DATABASE_URL"
"""


def write(tmp_path: Path, text: str, name: str = "releasegate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return str(info.value)


# -- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        (0, 0.0),
        ("5", 5.0),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("1.5s", 1.5),
        (" 5 s ", 5.0),
        ("2m", 120.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("0.5ms", 0.0005),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "soon", "5x", "5 sec", "-1s", "1e3", "s", True, None, [5], -1, float("nan"), float("inf")],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.5, "500ms"),
        (0.1, "100ms"),
        (0.0005, "0.5ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (90, "90s"),
        (60, "1m"),
        (120, "2m"),
        (3600, "1h"),
        (7200, "2h"),
        (100000.5, "100000.5s"),
        (1000001, "1000001s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


# -- the file ------------------------------------------------------------------------


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL), {})
    assert settings.service == "notes"
    assert settings.raw.lock.wait == 30.0
    assert settings.migrations_dir == tmp_path.resolve() / "migrations" / "postgres"


def test_durations_in_the_file_are_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[lock]\nwait = "2m"\npoll_interval = "250ms"\n')
    settings = load_config(path, {})
    assert settings.raw.lock.wait == 120.0
    assert settings.raw.lock.poll_interval == 0.25


def test_nan_duration_in_the_file_is_rejected(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL + "[lock]\nwait = nan\n"))
    assert "lock.wait" in message
    assert "finite" in message


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[lock]\nwiat = "1s"\n', "lock.wiat"),
        ("[locks]\nwait = 1\n", "locks"),
        ('[postgres.extra]\nx = "1"\n', "postgres.extra"),
    ],
)
def test_unknown_key_names_dotted_key_and_file(tmp_path: Path, extra: str, key: str) -> None:
    path = write(tmp_path, MINIMAL.replace("[postgres]", extra + "\n[postgres]"), "svc.toml")
    message = load_error(path)
    assert f"unknown key '{key}'" in message
    assert message.startswith("svc.toml: ")


def test_missing_service_name(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[service]\n\n[lock]\nwait = "1s"\n'))
    assert message == "releasegate.toml: missing required key 'service.name'"


def test_missing_service_section(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[lock]\nwait = "1s"\n'))
    assert "missing required key 'service'" in message


def test_invalid_service_name(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL.replace('"notes"', '"Notes Service"')))
    assert message.startswith("releasegate.toml: service.name: ")


def test_missing_config_file_given_explicitly(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.toml")
    assert "config file not found" in message
    assert "nope.toml" in message


def test_missing_config_file_from_environment(tmp_path: Path) -> None:
    message = load_error(None, {"RELEASEGATE_CONFIG": str(tmp_path / "elsewhere.toml")})
    assert "config file not found" in message
    assert "elsewhere.toml" in message


def test_default_config_file_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "releasegate.toml" in load_error(None)
    write(tmp_path, MINIMAL)
    assert load_config(None, {}).path == (tmp_path / "releasegate.toml").resolve()


def test_malformed_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[service\nname = "x"\n', "broken.toml"))
    assert message.startswith("broken.toml: invalid TOML: ")
    assert "line 1" in message
    assert "\n" not in message


def test_url_env_holding_a_url_is_rejected(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL.replace('"NOTES_DATABASE_URL"', f'"{URL}"')))
    assert "postgres.url_env" in message
    assert "not hold a URL" in message
    assert "never go in the file" in message
    assert PASSWORD not in message


def test_url_env_must_be_a_variable_name(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL.replace('"NOTES_DATABASE_URL"', '"1-BAD"')))
    assert "postgres.url_env" in message
    assert "not an environment variable name" in message


@pytest.mark.parametrize("reference", ["notes_app.models", "notes_app/models:metadata", ":x"])
def test_bad_metadata_reference(tmp_path: Path, reference: str) -> None:
    path = write(tmp_path, MINIMAL + f'[migrations]\nmetadata = "{reference}"\n')
    message = load_error(path)
    assert "migrations.metadata" in message
    assert "package.module:attribute" in message


def test_good_metadata_reference(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[migrations]\nmetadata = "notes_app.models:metadata"\n')
    assert load_config(path, {}).raw.migrations.metadata == "notes_app.models:metadata"


# -- overrides -----------------------------------------------------------------------


def test_override_applied(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[migrations]\nlock_timeout = "2s"\n')
    env = {"RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT": "10s"}
    assert load_config(path, env).raw.migrations.lock_timeout == 10.0
    assert load_config(path, {}).raw.migrations.lock_timeout == 2.0


def test_override_of_int_and_new_section(tmp_path: Path) -> None:
    env = {"RELEASEGATE_MIGRATIONS__LOCK_RETRIES": "7", "RELEASEGATE_LOCK__WAIT": "3s"}
    settings = load_config(write(tmp_path, MINIMAL), env)
    assert settings.raw.migrations.lock_retries == 7
    assert settings.raw.lock.wait == 3.0


def test_reserved_and_unrelated_variables_are_not_overrides(tmp_path: Path) -> None:
    env = {"RELEASEGATE_DEBUG": "1", "RELEASEGATE_PERFORMER": "ci", "RELEASEGATE_OTHER": "x"}
    assert load_config(write(tmp_path, MINIMAL), env).service == "notes"


@pytest.mark.parametrize(
    ("var", "key"),
    [
        ("RELEASEGATE_LOCK__WIAT", "lock.wiat"),
        ("RELEASEGATE_NEWSECTION__KEY", "newsection"),
    ],
)
def test_unknown_override_key_names_the_variable(tmp_path: Path, var: str, key: str) -> None:
    message = load_error(write(tmp_path, MINIMAL), {var: "1"})
    assert f"unknown key '{key}'" in message
    assert var in message


def test_invalid_override_value_names_the_variable(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL), {"RELEASEGATE_LOCK__WAIT": "soon"})
    assert "lock.wait: invalid duration 'soon'" in message
    assert "RELEASEGATE_LOCK__WAIT" in message


def test_override_below_a_value_is_rejected(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL), {"RELEASEGATE_SERVICE__NAME__X": "1"})
    assert "RELEASEGATE_SERVICE__NAME__X" in message
    assert "not a section" in message


def test_json_list_override(tmp_path: Path) -> None:
    env = {
        "RELEASEGATE_MIGRATIONS__PYTHON_PATH": '["src", "examples/app"]',
        "RELEASEGATE_LINT__EXCLUDE_RULES": ' ["ban-drop-column"]',
    }
    settings = load_config(write(tmp_path, MINIMAL), env)
    assert settings.raw.migrations.python_path == [Path("src"), Path("examples/app")]
    assert settings.python_path == [tmp_path.resolve() / "src", tmp_path.resolve() / "examples/app"]
    assert settings.raw.lint.exclude_rules == ["ban-drop-column"]


def test_invalid_json_list_override(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, MINIMAL), {"RELEASEGATE_LINT__EXCLUDE_RULES": "[oops"})
    assert message.startswith("RELEASEGATE_LINT__EXCLUDE_RULES: invalid JSON list")


def test_bad_list_item_from_override_names_the_variable(tmp_path: Path) -> None:
    env = {"RELEASEGATE_MIGRATIONS__PYTHON_PATH": '["ok", 1]'}
    message = load_error(write(tmp_path, MINIMAL), env)
    assert "migrations.python_path.1" in message
    assert "RELEASEGATE_MIGRATIONS__PYTHON_PATH" in message


# -- resolved settings ---------------------------------------------------------------


def test_describe_masks_the_password(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL), {"NOTES_DATABASE_URL": URL})
    described = settings.describe()
    assert described["postgres"]["url"] == "postgresql://svc:***@db.internal:5433/notes"
    assert described["config"] == str(tmp_path.resolve() / "releasegate.toml")
    assert PASSWORD not in json.dumps(described)


def test_describe_without_url(tmp_path: Path) -> None:
    described = load_config(write(tmp_path, MINIMAL), {}).describe()
    assert described["postgres"]["url"] == "<NOTES_DATABASE_URL is not set>"


def test_postgres_url_from_environment(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL), {"NOTES_DATABASE_URL": URL})
    assert settings.postgres_url() == URL


@pytest.mark.parametrize("env", [{}, {"NOTES_DATABASE_URL": ""}])
def test_postgres_url_unset_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    settings = load_config(write(tmp_path, MINIMAL), env)
    with pytest.raises(ConfigError, match="NOTES_DATABASE_URL") as info:
        settings.postgres_url()
    assert "not set" in str(info.value)


def test_json_table_override_replaces_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[slo.thresholds]\ntotal = ["p95 < 800ms"]\n')
    env = {"RELEASEGATE_SLO__THRESHOLDS": '{"total": ["p95 < 300ms"], "GET /x": ["p99 < 1s"]}'}
    settings = load_config(path, env)
    assert settings.raw.slo.thresholds == {"total": ["p95 < 300ms"], "GET /x": ["p99 < 1s"]}


def test_invalid_json_table_override(tmp_path: Path) -> None:
    env = {"RELEASEGATE_SLO__THRESHOLDS": '{"total": ["p95 < 300ms"]'}
    message = load_error(write(tmp_path, MINIMAL), env)
    assert message.startswith("RELEASEGATE_SLO__THRESHOLDS: invalid JSON table")
    assert "\n" not in message


def test_bad_rule_in_a_json_table_names_the_variable(tmp_path: Path) -> None:
    env = {"RELEASEGATE_SLO__THRESHOLDS": '{"total": ["p95 < fast"]}'}
    message = load_error(write(tmp_path, MINIMAL), env)
    assert "slo.thresholds" in message
    assert "p95 < fast" in message
    assert "RELEASEGATE_SLO__THRESHOLDS" in message
