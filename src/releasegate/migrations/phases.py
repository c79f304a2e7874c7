"""Expand/contract phases of migration revisions, derived from their SQL.

An *expand* revision only adds things that old code ignores, so it can run
before a deploy. A *contract* revision removes or renames things old code still
uses, so it must wait until no old code runs. A *data* revision only moves rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from releasegate.errors import ConfigError
from releasegate.migrations.sqltext import strip_literals_and_comments

__all__ = ["Phase", "classify_statement", "derive_phase", "resolve_phase"]


class Phase(StrEnum):
    """The phase of a revision in an expand/contract release."""

    EXPAND = "expand"
    CONTRACT = "contract"
    DATA = "data"


# Quoted identifiers keep their quotes so that a name like "drop" never reads as
# a keyword; unquoted words are upper-cased. The input has no literals left.
_TOKEN_RE = re.compile(
    r'"(?:[^"]|"")*"?'
    r"|[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*"
    r"|[0-9][0-9A-Za-z_.]*"
    r"|''"
    r"|\S"
)

_BOOKKEEPING_TABLE = {"ALEMBIC_VERSION", '"alembic_version"'}
_NO_PHASE_VERBS = {
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "RESET",
    "SELECT",
    "SHOW",
}
_DATA_VERBS = {"INSERT", "UPDATE", "DELETE", "COPY", "MERGE", "TRUNCATE"}
_CTE_BODY_VERBS = {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"}
_CONTRACT_DROPS = {"TABLE", "VIEW", "TYPE", "SCHEMA"}
# Reserved words that cannot name a column, so ``DROP <word>`` is not a column drop.
_NOT_A_COLUMN_DROP = {"CONSTRAINT", "DEFAULT", "NOT"}


def _tokens(sql: str) -> list[str]:
    tokens = _TOKEN_RE.findall(strip_literals_and_comments(sql))
    return [tok if tok.startswith('"') else tok.upper() for tok in tokens]


def _split_top_level(tokens: list[str], separator: str) -> list[list[str]]:
    """Split on ``separator`` outside parentheses."""
    parts: list[list[str]] = [[]]
    depth = 0
    for tok in tokens:
        if tok == "(":
            depth += 1
        elif tok == ")" and depth:
            depth -= 1
        elif tok == separator and not depth:
            parts.append([])
            continue
        parts[-1].append(tok)
    return parts


def _cte_body_verb(tokens: list[str]) -> str:
    """The verb of the statement that follows a ``WITH`` list, or ``WITH``."""
    depth = 0
    for tok in tokens[1:]:
        if tok == "(":
            depth += 1
        elif tok == ")" and depth:
            depth -= 1
        elif not depth and tok in _CTE_BODY_VERBS:
            return tok
    return "WITH"


def _drop_is_contract(rest: list[str]) -> bool:
    if rest[:1] and rest[0] in _CONTRACT_DROPS:
        return True
    return rest[:2] in (["MATERIALIZED", "VIEW"], ["FOREIGN", "TABLE"])


def _alter_action_is_contract(action: list[str]) -> bool:
    if not action:
        return False
    head = action[0]
    if head == "RENAME":
        # Renaming a constraint does not change what queries can name.
        return action[1:2] != ["CONSTRAINT"]
    if head == "DROP":
        return len(action) > 1 and action[1] not in _NOT_A_COLUMN_DROP
    if head == "ALTER" and action[1:2] != ["CONSTRAINT"]:
        rest = action[2:] if action[1:2] == ["COLUMN"] else action[1:]
        after_name = rest[1:4]
        return after_name[:1] == ["TYPE"] or after_name == ["SET", "DATA", "TYPE"]
    return False


def _skip_table_name(tokens: list[str], i: int) -> int:
    """Index just past a possibly schema-qualified table name starting at ``i``."""
    i += 1
    while i + 1 < len(tokens) and tokens[i] == ".":
        i += 2
    if i < len(tokens) and tokens[i] == "*":
        i += 1
    return i


def _alter_table_is_contract(rest: list[str]) -> bool:
    """``rest`` follows ``ALTER TABLE``: ``[IF EXISTS] [ONLY] name action, ...``."""
    i = 0
    if rest[i : i + 2] == ["IF", "EXISTS"]:
        i += 2
    if rest[i : i + 1] == ["ONLY"]:
        i += 1
    if rest[i : i + 2] == ["ALL", "IN"]:
        return False  # ALTER TABLE ALL IN TABLESPACE only moves storage
    i = _skip_table_name(rest, i)
    return any(_alter_action_is_contract(a) for a in _split_top_level(rest[i:], ","))


def classify_statement(sql: str) -> Phase | None:
    """The phase one statement needs, or ``None`` if it does not count.

    Transaction control, session settings, plain queries and Alembic's own
    bookkeeping on ``alembic_version`` carry no phase.
    """
    tokens = _tokens(sql)
    if not tokens or _BOOKKEEPING_TABLE.intersection(tokens):
        return None
    verb = _cte_body_verb(tokens) if tokens[0] == "WITH" else tokens[0]
    if verb in _NO_PHASE_VERBS:
        return None
    if verb in _DATA_VERBS:
        return Phase.DATA
    if verb == "DROP" and _drop_is_contract(tokens[1:]):
        return Phase.CONTRACT
    if verb == "ALTER":
        if tokens[1:2] == ["TABLE"]:
            rest = tokens[2:]
        elif tokens[1:3] == ["FOREIGN", "TABLE"]:
            rest = tokens[3:]
        else:
            return Phase.EXPAND
        if _alter_table_is_contract(rest):
            return Phase.CONTRACT
    return Phase.EXPAND


def derive_phase(statements: Iterable[str]) -> Phase:
    """The phase of a revision: its most restrictive statement wins.

    A revision with no statement that counts (e.g. an empty one) is an expand.
    """
    found = {phase for phase in map(classify_statement, statements) if phase is not None}
    for phase in (Phase.CONTRACT, Phase.EXPAND, Phase.DATA):
        if phase in found:
            return phase
    return Phase.EXPAND


def resolve_phase(derived: Phase, override: object) -> Phase:
    """Apply a revision's ``releasegate_phase`` override; ``None`` keeps ``derived``."""
    if override is None:
        return derived
    if isinstance(override, Phase):
        return override
    if isinstance(override, str):
        try:
            return Phase(override.strip().lower())
        except ValueError:
            pass
    valid = ", ".join(phase.value for phase in Phase)
    raise ConfigError(f"invalid releasegate_phase {override!r}: expected one of {valid}")
