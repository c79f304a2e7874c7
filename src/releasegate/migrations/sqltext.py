"""Lexical handling of PostgreSQL scripts: statement splitting and literal stripping.

This is a lexer, not a parser. It knows enough of PostgreSQL's lexical rules
(strings, quoted identifiers, dollar quoting, nested comments) to find the
semicolons that end statements, following the same heuristics as psql.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, auto

__all__ = [
    "Statement",
    "StatementLocator",
    "split_statements",
    "strip_literals_and_comments",
]

_IDENT_START = r"A-Za-z_\u0080-\U0010ffff"
_WORD_RE = re.compile(rf"[{_IDENT_START}][{_IDENT_START}0-9$]*")
_NUMBER_RE = re.compile(r"[0-9][0-9A-Za-z_.]*")
_SPACE_RE = re.compile(r"\s+")
_DOLLAR_TAG_RE = re.compile(rf"\$(?:[{_IDENT_START}][{_IDENT_START}0-9]*)?\$")


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a script, without its trailing semicolon."""

    text: str
    line_start: int  # 1-based line of the first character of ``text``
    line_end: int  # 1-based line of the last character of ``text``


class _Kind(Enum):
    WORD = auto()
    NUMBER = auto()
    SPACE = auto()
    STRING = auto()  # '...', E'...' and $tag$...$tag$
    QUOTED_IDENT = auto()
    COMMENT = auto()
    OTHER = auto()  # one punctuation character


@dataclass(frozen=True)
class _Piece:
    kind: _Kind
    start: int
    end: int


def _line_comment_end(sql: str, i: int) -> int:
    n = len(sql)
    while i < n and sql[i] not in "\r\n":
        i += 1
    return i


def _block_comment_end(sql: str, i: int) -> int:
    # PostgreSQL block comments nest, unlike the SQL standard's.
    depth = 0
    n = len(sql)
    while i < n:
        pair = sql[i : i + 2]
        if pair == "/*":
            depth += 1
            i += 2
        elif pair == "*/":
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _quoted_end(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """End of a quoted run opened at ``i``; a doubled quote is an escaped quote."""
    n = len(sql)
    i += 1
    while i < n:
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if sql[i + 1 : i + 2] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _lex(sql: str) -> Iterator[_Piece]:
    """Cut ``sql`` into pieces; unterminated quotes and comments run to the end."""
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        nxt = sql[i + 1 : i + 2]
        if ch == "-" and nxt == "-":
            kind, end = _Kind.COMMENT, _line_comment_end(sql, i)
        elif ch == "/" and nxt == "*":
            kind, end = _Kind.COMMENT, _block_comment_end(sql, i)
        elif ch == "'":
            kind, end = _Kind.STRING, _quoted_end(sql, i, "'", backslash=False)
        elif ch in "eE" and nxt == "'":
            # Only E'' strings treat a backslash as an escape character.
            kind, end = _Kind.STRING, _quoted_end(sql, i + 1, "'", backslash=True)
        elif ch == '"':
            kind, end = _Kind.QUOTED_IDENT, _quoted_end(sql, i, '"', backslash=False)
        elif ch == "$" and (tag := _DOLLAR_TAG_RE.match(sql, i)):
            close = sql.find(tag.group(), tag.end())
            kind = _Kind.STRING
            end = n if close < 0 else close + len(tag.group())
        elif word := _WORD_RE.match(sql, i):
            # Words swallow a trailing ``$`` so ``a$b$`` is never a dollar quote.
            kind, end = _Kind.WORD, word.end()
        elif number := _NUMBER_RE.match(sql, i):
            kind, end = _Kind.NUMBER, number.end()
        elif space := _SPACE_RE.match(sql, i):
            kind, end = _Kind.SPACE, space.end()
        else:
            kind, end = _Kind.OTHER, i + 1
        yield _Piece(kind, i, end)
        i = end


def _line_starts(sql: str) -> list[int]:
    """Offsets where lines begin; squawk breaks lines on LF, CRLF and a lone CR."""
    starts = [0]
    for match in re.finditer(r"\r\n|\r|\n", sql):
        starts.append(match.end())
    return starts


@dataclass(frozen=True)
class _Span:
    statement: Statement
    start: int  # offset of the statement's first character
    stop: int  # offset just past its terminating semicolon (or the end of the script)


class _Splitter:
    """psql's rules for where a statement ends, fed one piece at a time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.first: int | None = None
        self.last_end = 0
        self.words: list[str] = []
        self.paren_depth = 0
        self.begin_depth = 0

    def _in_routine_definition(self) -> bool:
        head = self.words[:4]
        routine = ("FUNCTION", "PROCEDURE")
        return head[:1] == ["CREATE"] and (
            head[1:2] in (["FUNCTION"], ["PROCEDURE"])
            or (head[1:3] == ["OR", "REPLACE"] and len(head) > 3 and head[3] in routine)
        )

    def feed(self, sql: str, piece: _Piece) -> bool:
        """Take one piece; True when it is a semicolon that ends the statement."""
        if piece.kind in (_Kind.SPACE, _Kind.COMMENT):
            return False
        text = sql[piece.start : piece.end]
        # Inside parentheses or a BEGIN ATOMIC body a semicolon does not end it.
        if text == ";" and piece.kind is _Kind.OTHER and not self.paren_depth + self.begin_depth:
            return True
        if self.first is None:
            self.first = piece.start
        self.last_end = piece.end
        if piece.kind is _Kind.OTHER:
            if text == "(":
                self.paren_depth += 1
            elif text == ")" and self.paren_depth > 0:
                self.paren_depth -= 1
        elif piece.kind is _Kind.WORD:
            self._track_word(text.upper())
        return False

    def _track_word(self, word: str) -> None:
        if len(self.words) < 4:
            self.words.append(word)
        # SQL-standard routine bodies (BEGIN ATOMIC ... END) contain semicolons.
        if self.paren_depth or not self._in_routine_definition():
            return
        # CASE also closes with END, but only matters inside a body.
        if word == "BEGIN" or (word == "CASE" and self.begin_depth):
            self.begin_depth += 1
        elif word == "END" and self.begin_depth:
            self.begin_depth -= 1


def _spans(sql: str) -> list[_Span]:
    line_starts = _line_starts(sql)

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    spans: list[_Span] = []
    state = _Splitter()

    def flush(stop: int) -> None:
        # A chunk of only comments and whitespace is not a statement.
        if state.first is not None:
            text = sql[state.first : state.last_end]
            statement = Statement(text, line_of(state.first), line_of(state.last_end - 1))
            spans.append(_Span(statement, state.first, stop))
        state.reset()

    for piece in _lex(sql):
        if state.feed(sql, piece):
            flush(piece.end)
    flush(len(sql))
    return spans


def split_statements(sql: str) -> list[Statement]:
    """Split a script on the semicolons that end statements.

    Leading and trailing comments of a statement are not part of its text, so a
    statement can be followed by ``;`` again without being commented out.
    """
    return [span.statement for span in _spans(sql)]


def strip_literals_and_comments(sql: str) -> str:
    """Replace every string literal by ``''`` and every comment by a space.

    Quoted identifiers are kept: they are names, and callers must not read them
    as keywords.
    """
    out: list[str] = []
    for piece in _lex(sql):
        if piece.kind is _Kind.STRING:
            out.append("''")
        elif piece.kind is _Kind.COMMENT:
            out.append(" ")
        else:
            out.append(sql[piece.start : piece.end])
    return "".join(out)


class StatementLocator:
    """Finds which statement of a script a reported position falls in."""

    def __init__(self, sql: str) -> None:
        self._sql = sql
        self._spans = _spans(sql)
        self._line_starts = _line_starts(sql)
        self.statements = [span.statement for span in self._spans]

    def _offset(self, line: int, byte_column: int) -> int | None:
        if not 1 <= line <= len(self._line_starts):
            return None
        start = self._line_starts[line - 1]
        end = self._line_starts[line] if line < len(self._line_starts) else len(self._sql)
        prefix = self._sql[start:end].encode()[: max(byte_column, 0)]
        return start + len(prefix.decode(errors="ignore"))

    def index_at(self, line: int, byte_column: int = 0) -> int | None:
        """Index of the statement at a 1-based line and 0-based UTF-8 byte column.

        A statement owns its semicolon (parsers report errors there) and the
        whitespace and comments before it. Past the last statement, the answer
        is the statement whose lines contain ``line``, if any.
        """
        offset = self._offset(line, byte_column)
        if offset is not None:
            low = 0
            for index, span in enumerate(self._spans):
                at_end = span.stop == len(self._sql) and offset == span.stop
                if low <= offset < span.stop or at_end:
                    return index
                low = span.stop
        for index, statement in enumerate(self.statements):
            if statement.line_start <= line <= statement.line_end:
                return index
        return None
