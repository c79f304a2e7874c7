"""Markdown building blocks of the evidence report: escaping, tables, fences, the size meter.

Table rows and SQL lines are metered by a :class:`Budget` as they are produced; a
rendering that passes its limit raises :class:`TooLarge`, and the next attempt has less
detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from releasegate.report.values import MAX_CELL, one_line

MORE_NOTE = "... {count} more {what} (see the JSON report)"

_T = TypeVar("_T")
_BACKTICKS_RE = re.compile(r"`+")
_TAG_RE = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY_RE = re.compile(r"&(?=#?\w+;)")
_PIPE_RE = re.compile(r"(\\*)\|")
_BOLD_STATUSES = frozenset({"failed", "fail", "rolled_back", "rollback_failed", "inconclusive"})


def escape_text(value: Any, limit: int = MAX_CELL) -> str:
    """Plain text on one line, safe from being read as HTML.

    Only what could start a tag or an entity is escaped, so ``p95 < 300ms`` stays
    readable in the raw file.
    """
    return _TAG_RE.sub("&lt;", _ENTITY_RE.sub("&amp;", one_line(value, limit)))


def code_span(value: Any, limit: int = MAX_CELL) -> str:
    """An inline code span that survives backticks in its text; empty for no text."""
    text = one_line(value, limit)
    if not text:
        return ""
    longest = max((len(m) for m in _BACKTICKS_RE.findall(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def status_cell(value: Any) -> str:
    """A status as a table cell, bold when it failed."""
    text = escape_text(value) or "-"
    return f"**{text}**" if text in _BOLD_STATUSES else text


class TooLarge(Exception):
    """A rendering passed its byte limit; the next level has less detail."""


class Budget:
    """How much detail one rendering may spend, and the bytes it has spent on bulk.

    Table rows and SQL lines are metered as they are produced: they are where a
    rendering grows without bound, and they only ever add to its final size.
    """

    def __init__(
        self, limit: int, *, sql: bool = True, max_rows: int | None = None, optional: bool = True
    ) -> None:
        self.limit = limit
        self.sql = sql  # SQL bodies of planned revisions
        self.max_rows = max_rows  # rows of each optional table; None: all
        self.optional = optional  # the sections that are not always kept
        self.spent = 0

    def spend(self, line: str) -> str:
        self.spent += len(line.encode()) + 1
        if self.spent > self.limit:
            raise TooLarge
        return line

    def limit_items(self, items: Sequence[_T]) -> tuple[Sequence[_T], int]:
        if self.max_rows is None or len(items) <= self.max_rows:
            return items, 0
        return items[: self.max_rows], len(items) - self.max_rows


def table_lines(
    headers: Sequence[str], rows: Iterable[Sequence[str]], budget: Budget | None = None
) -> list[str]:
    """A GFM table of already formatted cells (pipes are escaped here, once)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        line = "| " + " | ".join(_PIPE_RE.sub(_escape_pipe, c) for c in row) + " |"
        lines.append(budget.spend(line) if budget is not None else line)
    return lines


def _escape_pipe(match: re.Match[str]) -> str:
    # GitHub splits cells at a pipe unless a backslash escapes it, and a backslash can
    # itself be escaped: double the ones in front so the pipe's own escape still counts.
    return match.group(1) * 2 + "\\|"


def more_rows(count: int, what: str = "rows") -> list[str]:
    """The note of the rows left out, after a blank line (none when none were)."""
    # The blank line matters: a line right after a table would become one of its rows.
    return ["", MORE_NOTE.format(count=count, what=what)] if count > 0 else []


def table_rows(
    headers: Sequence[str],
    items: Sequence[_T],
    row: Callable[[_T], Sequence[str]],
    budget: Budget,
) -> list[str]:
    """A table of the items the budget allows, formatted by ``row``, and a note of the rest."""
    shown, hidden = budget.limit_items(items)
    return [*table_lines(headers, (row(item) for item in shown), budget), *more_rows(hidden)]


def bullet_list(
    items: Sequence[Any], what: str, budget: Budget, limit: int = MAX_CELL
) -> list[str]:
    """A bullet per item the budget allows, and a note of the rest."""
    shown, hidden = budget.limit_items(items)
    return [*(budget.spend(f"- {escape_text(x, limit)}") for x in shown), *more_rows(hidden, what)]


def code_block(
    body_lines: Iterable[str], lang: str = "", budget: Budget | None = None
) -> list[str]:
    """A fenced code block longer than any backtick run inside it."""
    body = [budget.spend(line) if budget is not None else line for line in body_lines]
    longest = max((len(m) for line in body for m in _BACKTICKS_RE.findall(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, *body, fence]


def details(summary: str, body: list[str]) -> list[str]:
    """A collapsed ``<details>`` block with ``summary`` and ``body``."""
    return [f"<details><summary>{summary}</summary>", "", *body, "", "</details>"]
