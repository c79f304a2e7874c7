"""Lint migration SQL with squawk and map its findings back to statements.

squawk's JSON reporter prints one array of violations for all files, with
0-based lines and 0-based UTF-8 byte columns; its exit status is 1 whenever it
reports anything, so only the output tells a crash from a finding.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from releasegate.errors import ConfigError, InfraError
from releasegate.migrations.sqltext import StatementLocator

__all__ = [
    "FailOn",
    "Finding",
    "Severity",
    "find_squawk",
    "lint_sql",
    "parse_fail_on",
    "threshold_reached",
]

# Parse errors; older squawk releases used the second name.
SYNTAX_ERROR_RULES = frozenset({"syntax-error", "sql_syntax_error"})
SQUAWK_TIMEOUT_S = 120.0
_INSTALL_HINT = "install it with `pip install squawk-cli`"


class Severity(StrEnum):
    """How serious squawk considers a finding."""

    WARNING = "warning"
    ERROR = "error"


class FailOn(StrEnum):
    """The lowest severity that fails a lint (config value ``fail_on``)."""

    WARNING = "warning"
    ERROR = "error"
    NEVER = "never"


@dataclass(frozen=True)
class Finding:
    """One squawk violation, located in the text that was linted."""

    rule: str
    severity: Severity
    message: str
    help: str | None
    line: int  # 1-based line in the linted text
    statement_index: int | None  # index into split_statements() of that text


def parse_fail_on(value: object) -> FailOn:
    """Validate a ``fail_on`` setting."""
    if isinstance(value, str):
        try:
            return FailOn(value.strip().lower())
        except ValueError:
            pass
    valid = ", ".join(item.value for item in FailOn)
    raise ConfigError(f"invalid fail_on {value!r}: expected one of {valid}")


def threshold_reached(findings: Iterable[Finding], fail_on: FailOn | str) -> bool:
    """True if any finding is at or above the ``fail_on`` severity."""
    threshold = parse_fail_on(fail_on)
    if threshold is FailOn.NEVER:
        return False
    if threshold is FailOn.WARNING:
        return any(True for _ in findings)
    return any(finding.severity is Severity.ERROR for finding in findings)


def find_squawk() -> str:
    """Path of the squawk binary: on PATH, else next to the running interpreter."""
    found = shutil.which("squawk")
    if found is None:
        # A virtualenv that is used without being activated is not on PATH.
        found = shutil.which("squawk", path=str(Path(sys.executable).parent))
    if found is None:
        raise InfraError(f"squawk not found on PATH or next to {sys.executable}: {_INSTALL_HINT}")
    return found


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def _run_squawk(args: list[str], cwd: str) -> list[Any]:
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=SQUAWK_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise InfraError(f"squawk not found at {args[0]}: {_INSTALL_HINT}") from None
    except OSError as exc:
        raise InfraError(f"cannot run squawk at {args[0]}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"squawk did not finish within {SQUAWK_TIMEOUT_S:.0f}s") from None
    stderr = _first_line(proc.stderr)
    if proc.returncode == 2 and "invalid value" in stderr:
        # clap rejects an unknown rule name or a bad --pg-version with status 2.
        raise ConfigError(f"squawk rejected an option: {stderr.removeprefix('error: ')}")
    if proc.returncode in (0, 1):
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = None
        if isinstance(report, list):
            return report
    raise InfraError(f"squawk failed (exit status {proc.returncode}): {stderr}")


def _finding(item: dict[str, Any], locator: StatementLocator) -> tuple[int, int, Finding]:
    """A finding plus its 0-based position, for sorting."""
    try:
        rule = str(item["rule_name"])
        level = str(item["level"]).lower()
        line = int(item["line"])
        column = int(item["column"])
        message = str(item["message"])
        help_text = item.get("help")
    except (KeyError, TypeError, ValueError) as exc:
        raise InfraError(f"squawk printed a violation without a valid {exc}") from None
    # Parse errors are errors whatever the level says; unknown levels count as warnings.
    is_error = rule in SYNTAX_ERROR_RULES or level == Severity.ERROR.value
    finding = Finding(
        rule=rule,
        severity=Severity.ERROR if is_error else Severity.WARNING,
        message=message,
        help=None if help_text is None else str(help_text),
        line=line + 1,
        statement_index=locator.index_at(line + 1, column),
    )
    return line, column, finding


def lint_sql(
    texts: Mapping[str, str],
    *,
    exclude_rules: Sequence[str] = (),
    pg_version: str | None = None,
    assume_in_transaction: bool = False,
    squawk: str | None = None,
) -> dict[str, list[Finding]]:
    """Lint several SQL texts with one squawk run; findings are keyed like ``texts``.

    squawk runs in an empty directory with an empty config file, so a
    ``.squawk.toml`` lying around cannot change the result: the arguments here
    are the whole configuration.
    """
    if not texts:
        return {}
    binary = squawk if squawk is not None else find_squawk()
    keys = list(texts)
    with tempfile.TemporaryDirectory(prefix="releasegate-squawk-") as tmp:
        config = Path(tmp, "squawk.toml")
        config.write_text("", encoding="utf-8")
        # Neutral file names keep arbitrary keys out of paths and patterns.
        names = {f"{index:05d}.sql": key for index, key in enumerate(keys)}
        for name, key in names.items():
            Path(tmp, name).write_text(texts[key], encoding="utf-8", newline="")
        args = [binary, "--reporter", "json", "--config", str(config)]
        # ``--opt=value`` so a value starting with "-" cannot pass for an option.
        # A lone string is a Sequence[str] too; it means one rule, not its letters.
        rules = [exclude_rules] if isinstance(exclude_rules, str) else list(exclude_rules)
        args += [f"--exclude={rule}" for rule in rules]
        if pg_version is not None:
            args.append(f"--pg-version={pg_version}")
        args.append(
            "--assume-in-transaction" if assume_in_transaction else "--no-assume-in-transaction"
        )
        args += list(names)
        report = _run_squawk(args, cwd=tmp)

    locators = {key: StatementLocator(texts[key]) for key in keys}
    located: dict[str, list[tuple[int, int, Finding]]] = {key: [] for key in keys}
    for item in report:
        if not isinstance(item, dict):
            raise InfraError("squawk printed a violation that is not a JSON object")
        file = item.get("file")
        owner = names.get(Path(str(file)).name)
        if owner is None:
            raise InfraError(f"squawk reported a file it was not given: {file!r}")
        located[owner].append(_finding(item, locators[owner]))
    # sorted() is stable, so findings at one position keep squawk's order.
    return {
        key: [finding for *_, finding in sorted(items, key=lambda t: (t[0], t[1]))]
        for key, items in located.items()
    }
