"""Linting with the real squawk binary and mapping findings back to statements."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from releasegate.errors import ConfigError, InfraError
from releasegate.migrations.lint import (
    FailOn,
    Finding,
    Severity,
    find_squawk,
    lint_sql,
    parse_fail_on,
    threshold_reached,
)
from releasegate.migrations.sqltext import split_statements

TIMEOUTS = "SET lock_timeout = '2s';\nSET statement_timeout = '60s';\n"
DROP_COLUMN = "ALTER TABLE users DROP COLUMN email;\n"


def rules(findings: list[Finding]) -> set[str]:
    return {finding.rule for finding in findings}


def finding(severity: Severity) -> Finding:
    return Finding("some-rule", severity, "message", None, 1, 0)


def test_find_squawk_returns_an_executable() -> None:
    path = find_squawk()
    assert Path(path).name.startswith("squawk")
    assert os.access(path, os.X_OK)


def test_find_squawk_falls_back_to_the_interpreter_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An inactive virtualenv: squawk is not on PATH but sits next to python.
    monkeypatch.setenv("PATH", "")
    assert Path(find_squawk()).parent == Path(sys.executable).parent


def test_find_squawk_raises_infra_error_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(InfraError, match="squawk-cli"):
        find_squawk()


def test_findings_map_to_keys_lines_and_statements_across_texts() -> None:
    first = "CREATE TABLE IF NOT EXISTS t (id bigint);\n\n" + DROP_COLUMN
    second = (
        "-- Running upgrade a -> b\n"
        "SELECT 1; ALTER TABLE t\n"
        "  ALTER COLUMN id TYPE text;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (id);\n"
    )
    result = lint_sql({"rev_a": first, "rev_b": second, "empty": ""})

    assert set(result) == {"rev_a", "rev_b", "empty"}
    assert result["empty"] == []

    drop = [f for f in result["rev_a"] if f.rule == "ban-drop-column"]
    assert len(drop) == 1
    assert drop[0].line == 3  # squawk reports line 2 counted from 0
    assert drop[0].statement_index == 1
    assert drop[0].severity is Severity.WARNING
    assert drop[0].message

    change = [f for f in result["rev_b"] if f.rule == "changing-column-type"]
    assert len(change) == 1
    # The statement starts on line 2, after another one on the same line.
    assert change[0].line == 3
    assert change[0].statement_index == 1
    assert split_statements(second)[1].text.startswith("ALTER TABLE t")
    # Only the ALTER statement draws findings in rev_b.
    assert {f.statement_index for f in result["rev_b"]} == {1}


def test_timeouts_prepended_to_the_sql_satisfy_squawk() -> None:
    result = lint_sql({"bare": DROP_COLUMN, "guarded": TIMEOUTS + DROP_COLUMN})
    timeout_rules = {"require-lock-timeout", "require-statement-timeout"}
    assert timeout_rules <= rules(result["bare"])
    assert not timeout_rules & rules(result["guarded"])
    guarded_drop = [f for f in result["guarded"] if f.rule == "ban-drop-column"]
    assert [(f.line, f.statement_index) for f in guarded_drop] == [(3, 2)]


def test_exclude_rules() -> None:
    sql = TIMEOUTS + DROP_COLUMN
    assert "ban-drop-column" in rules(lint_sql({"r": sql})["r"])
    result = lint_sql({"r": sql}, exclude_rules=["ban-drop-column", "prefer-robust-stmts"])
    assert result == {"r": []}


def test_exclude_rules_accepts_a_single_string() -> None:
    result = lint_sql({"r": TIMEOUTS + DROP_COLUMN}, exclude_rules="ban-drop-column")
    assert rules(result["r"]) == {"prefer-robust-stmts"}


def test_unknown_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no-such-rule"):
        lint_sql({"r": "SELECT 1;"}, exclude_rules=["no-such-rule"])


def test_bad_pg_version_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pg-version"):
        lint_sql({"r": "SELECT 1;"}, pg_version="banana")


def test_pg_version_changes_the_advice() -> None:
    sql = TIMEOUTS + "ALTER TABLE t ADD COLUMN IF NOT EXISTS c bigint DEFAULT 1;\n"
    old = lint_sql({"r": sql}, pg_version="10")["r"]
    new = lint_sql({"r": sql}, pg_version="16")["r"]
    assert "adding-field-with-default" in rules(old)
    assert "adding-field-with-default" not in rules(new)


def test_assume_in_transaction_is_passed_on() -> None:
    sql = TIMEOUTS + "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (c);\n"
    assert "ban-concurrent-index-creation-in-transaction" not in rules(lint_sql({"r": sql})["r"])
    in_tx = lint_sql({"r": sql}, assume_in_transaction=True)["r"]
    assert "ban-concurrent-index-creation-in-transaction" in rules(in_tx)


def test_syntax_errors_are_errors() -> None:
    result = lint_sql({"bad": "SELECT 1;\nSELECT FROM WHERE;\n"})
    assert result["bad"]
    assert all(f.rule == "syntax-error" for f in result["bad"])
    assert all(f.severity is Severity.ERROR for f in result["bad"])
    assert {(f.line, f.statement_index) for f in result["bad"]} == {(2, 1)}


def test_a_repository_squawk_config_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".squawk.toml").write_text('excluded_rules = ["ban-drop-column"]\n')
    monkeypatch.chdir(tmp_path)
    assert "ban-drop-column" in rules(lint_sql({"r": DROP_COLUMN})["r"])


def test_keys_may_be_any_string() -> None:
    result = lint_sql({"../odd key;*?.sql": DROP_COLUMN})
    assert "ban-drop-column" in rules(result["../odd key;*?.sql"])


def test_no_texts_means_no_run() -> None:
    assert lint_sql({}, squawk="/nonexistent/squawk") == {}


def test_missing_binary_is_an_infra_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="squawk") as excinfo:
        lint_sql({"r": "SELECT 1;"}, squawk=str(tmp_path / "no-squawk"))
    assert "\n" not in str(excinfo.value)


def test_binary_that_does_not_print_json_is_an_infra_error(tmp_path: Path) -> None:
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(InfraError, match="exit status 0"):
        lint_sql({"r": "SELECT 1;"}, squawk=true)


@pytest.mark.parametrize(
    ("severities", "fail_on", "expected"),
    [
        ([], "warning", False),
        ([Severity.WARNING], "warning", True),
        ([Severity.ERROR], "warning", True),
        ([Severity.WARNING], "error", False),
        ([Severity.WARNING, Severity.ERROR], "error", True),
        ([Severity.ERROR], "never", False),
        ([Severity.ERROR], FailOn.NEVER, False),
        ([Severity.WARNING], FailOn.WARNING, True),
    ],
)
def test_threshold_reached(
    severities: list[Severity], fail_on: FailOn | str, expected: bool
) -> None:
    assert threshold_reached([finding(s) for s in severities], fail_on) is expected


def test_threshold_reached_accepts_a_generator() -> None:
    assert threshold_reached((finding(Severity.WARNING) for _ in range(1)), "warning")


def test_threshold_on_real_findings() -> None:
    warnings = lint_sql({"r": DROP_COLUMN})["r"]
    assert threshold_reached(warnings, "warning")
    assert not threshold_reached(warnings, "error")
    errors = lint_sql({"r": "SELECT FROM WHERE;"})["r"]
    assert threshold_reached(errors, "error")


@pytest.mark.parametrize("value", ["sometimes", "", None, 1])
def test_bad_fail_on_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="warning, error, never"):
        parse_fail_on(value)


def test_parse_fail_on_is_case_insensitive() -> None:
    assert parse_fail_on("Error") is FailOn.ERROR
