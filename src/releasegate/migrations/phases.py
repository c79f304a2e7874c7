"""Expand/contract phases of migration revisions, derived from their SQL.

An *expand* revision only adds things that old code ignores, so it can run
before a deploy. A *contract* revision removes or renames things old code still
uses, so it must wait until no old code runs. A *data* revision only moves rows.
A revision whose SQL cannot be known without a database is *unknown*, and waits like
a contract one unless it declares its phase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from releasegate.errors import ConfigError
from releasegate.migrations.sqltext import strip_literals_and_comments

__all__ = [
    "Phase",
    "classify_statement",
    "derive_phase",
    "is_type_change",
    "most_restrictive",
    "resolve_phase",
    "type_change_phase",
]


class Phase(StrEnum):
    """The phase of a revision in an expand/contract release."""

    EXPAND = "expand"
    CONTRACT = "contract"
    DATA = "data"
    UNKNOWN = "unknown"

    @property
    def runs_before_promotion(self) -> bool:
        """Expand and data revisions run before the new version takes traffic."""
        return self in (Phase.EXPAND, Phase.DATA)


# What a revision may declare in ``releasegate_phase``.
DECLARABLE = (Phase.EXPAND, Phase.CONTRACT, Phase.DATA)


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


def _is_type_action(action: list[str]) -> bool:
    """``ALTER [COLUMN] name [SET DATA] TYPE ...``."""
    if action[:1] != ["ALTER"] or action[1:2] == ["CONSTRAINT"]:
        return False
    rest = action[2:] if action[1:2] == ["COLUMN"] else action[1:]
    after_name = rest[1:4]
    return after_name[:1] == ["TYPE"] or after_name == ["SET", "DATA", "TYPE"]


def _alter_action_is_contract(action: list[str]) -> bool:
    if not action:
        return False
    head = action[0]
    if head == "RENAME":
        # Renaming a constraint does not change what queries can name.
        return action[1:2] != ["CONSTRAINT"]
    if head == "DROP":
        return len(action) > 1 and action[1] not in _NOT_A_COLUMN_DROP
    return _is_type_action(action)


def _skip_table_name(tokens: list[str], i: int) -> int:
    """Index just past a possibly schema-qualified table name starting at ``i``."""
    i += 1
    while i + 1 < len(tokens) and tokens[i] == ".":
        i += 2
    if i < len(tokens) and tokens[i] == "*":
        i += 1
    return i


def _alter_table_actions(rest: list[str]) -> list[list[str]]:
    """``rest`` follows ``ALTER TABLE``: ``[IF EXISTS] [ONLY] name action, ...``."""
    i = 0
    if rest[i : i + 2] == ["IF", "EXISTS"]:
        i += 2
    if rest[i : i + 1] == ["ONLY"]:
        i += 1
    if rest[i : i + 2] == ["ALL", "IN"]:
        return []  # ALTER TABLE ALL IN TABLESPACE only moves storage
    i = _skip_table_name(rest, i)
    return _split_top_level(rest[i:], ",")


def _alter_table_is_contract(rest: list[str]) -> bool:
    return any(_alter_action_is_contract(a) for a in _alter_table_actions(rest))


def is_type_change(sql: str) -> bool:
    """An ``ALTER TABLE`` whose every action changes a column's type."""
    tokens = _tokens(sql)
    if tokens[:2] != ["ALTER", "TABLE"]:
        return False
    actions = _alter_table_actions(tokens[2:])
    return bool(actions) and all(_is_type_action(a) for a in actions)


# A compiled SQLAlchemy type: a name, then optional (length) or (precision, scale).
_TYPE_RE = re.compile(r"([A-Za-z][A-Za-z ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?")
_VARYING_TEXT = {"VARCHAR", "CHARACTER VARYING", "TEXT"}
_NUMERIC = {"NUMERIC", "DECIMAL"}


def _parse_type(text: str) -> tuple[str, int | None, int | None] | None:
    match = _TYPE_RE.fullmatch(text.strip())
    if match is None:
        return None
    name = " ".join(match.group(1).upper().split())
    first, second = match.group(2), match.group(3)
    return name, None if first is None else int(first), None if second is None else int(second)


def type_change_phase(old: str | None, new: str, *, has_using: bool = False) -> Phase:
    """The phase of changing a column's type from ``old`` to ``new`` (compiled type names).

    Postgres changes these without rewriting the table, and every old value still fits,
    so they are *expand*: the same type again, a longer ``varchar``, ``varchar`` to
    ``text``, a ``numeric`` with more precision and the same scale. Anything else, an
    unknown old type or a ``USING`` clause is *contract*.
    """
    if has_using or old is None:
        return Phase.CONTRACT
    if " ".join(old.upper().split()) == " ".join(new.upper().split()):
        return Phase.EXPAND
    before, after = _parse_type(old), _parse_type(new)
    if before is None or after is None:
        return Phase.CONTRACT
    (old_name, old_size, old_scale), (new_name, new_size, new_scale) = before, after
    if old_name in _VARYING_TEXT and new_name in _VARYING_TEXT:
        if new_size is None:  # text, or varchar without a limit, takes any string
            return Phase.EXPAND
        widens = old_name != "TEXT" and old_size is not None and new_size >= old_size
        return Phase.EXPAND if widens else Phase.CONTRACT
    if old_name in _NUMERIC and new_name in _NUMERIC:
        if new_size is None:
            return Phase.EXPAND
        widens = old_size is not None and (old_scale or 0) == (new_scale or 0)
        return Phase.EXPAND if widens and new_size >= (old_size or 0) else Phase.CONTRACT
    return Phase.CONTRACT


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


def most_restrictive(phases: Iterable[Phase | None]) -> Phase:
    """The phase of a revision whose statements have ``phases`` (``None`` does not count).

    A revision with no statement that counts (e.g. an empty one) is an expand.
    """
    found = {phase for phase in phases if phase is not None}
    for phase in (Phase.UNKNOWN, Phase.CONTRACT, Phase.EXPAND, Phase.DATA):
        if phase in found:
            return phase
    return Phase.EXPAND


def derive_phase(statements: Iterable[str]) -> Phase:
    """The phase of a revision: its most restrictive statement wins."""
    return most_restrictive(map(classify_statement, statements))


def resolve_phase(derived: Phase, override: object) -> Phase:
    """Apply a revision's ``releasegate_phase`` override; ``None`` keeps ``derived``."""
    if override is None:
        return derived
    if isinstance(override, Phase) and override in DECLARABLE:
        return override
    if isinstance(override, str):
        try:
            declared = Phase(override.strip().lower())
        except ValueError:
            declared = Phase.UNKNOWN
        if declared in DECLARABLE:
            return declared
    valid = ", ".join(phase.value for phase in DECLARABLE)
    raise ConfigError(f"invalid releasegate_phase {override!r}: expected one of {valid}")
