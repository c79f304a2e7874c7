"""Rendering a release result as a Markdown evidence report or a compact terminal summary.

The input is the plain dict of ``ReleaseResult.to_dict()``; any part may be missing or
null when its step did not run, so every section reads defensively and skips what is
absent. The sub-objects are the ``to_dict()`` forms of :class:`MigrationPlan`,
:class:`Manifest`, :class:`SmokeReport`, :class:`GateResult` and :class:`SwitchResult`.

The Markdown must fit GitHub's step-summary limit (1 MiB). When it does not, it is
rendered again with less detail: first without SQL bodies, then with long tables cut
to fewer rows, then without the optional sections. The headline, the step table, the
error and the rollback section (verification and manual steps) are always kept. Only
the rows that are shown are formatted, and a rendering stops as soon as it is known to
be too large, so a result with 100,000 rows costs about as much as one with 1,000.

Secrets: every value is redacted as it is turned into text (before it is clipped or
escaped, which could hide a secret from a later pass), and the finished text once more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from releasegate.gates.thresholds import format_value
from releasegate.output import table
from releasegate.secrets import redact

SUMMARY_LIMIT_BYTES = 1024 * 1024  # GitHub's limit for one step summary
MAX_CELL = 300  # characters of one table cell; longer is unreadable anyway
MAX_ERROR = 4000
MAX_COMMAND = 2000

STATUS_WORDS = {
    "succeeded": "SUCCEEDED",
    "rolled_back": "ROLLED BACK",
    "rollback_failed": "ROLLBACK FAILED",
    "failed": "FAILED",
    "dry_run": "DRY RUN",
    "blocked": "BLOCKED",
}
STORES = ("postgres", "redis", "qdrant")
MORE_NOTE = "... {count} more {what} (see the JSON report)"
SQL_OMITTED = "SQL omitted to fit the size limit (see the JSON report)."
SECTIONS_OMITTED = (
    "The plan, backup, migration, gate and traffic sections were left out to fit the size"
    " limit (see the JSON report)."
)
CUT_NOTE = "\n\n... the report was cut to fit the size limit (see the JSON report)\n"

_T = TypeVar("_T")
_BACKTICKS_RE = re.compile(r"`+")
_TAG_RE = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY_RE = re.compile(r"&(?=#?\w+;)")
_PIPE_RE = re.compile(r"(\\*)\|")
_BOLD_STATUSES = frozenset({"failed", "fail", "rolled_back", "rollback_failed"})


def status_word(outcome: object) -> str:
    """The upper-case word of an outcome (``rolled_back`` -> ``ROLLED BACK``)."""
    text = "" if outcome is None else str(outcome)
    return STATUS_WORDS.get(text, (text or "unknown").upper().replace("_", " "))


def redact_data(value: Any) -> Any:
    """A copy of a JSON-able value with every string (and key) passed through ``redact``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {(redact(k) if isinstance(k, str) else k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


# -- turning values into text ----------------------------------------------------------


def _str(value: Any) -> str:
    """The one way a value becomes text here: redacted first."""
    return "" if value is None else redact(str(value))


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [_map(item) for item in _list(value)]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(value: Any, limit: int = MAX_CELL) -> str:
    # Redacted whole, then cut: a cut first could leave part of a secret unrecognised.
    return _clip(" ".join(_str(value)[: limit * 4].split()), limit)


def _esc(value: Any, limit: int = MAX_CELL) -> str:
    """Plain text on one line, safe from being read as HTML.

    Only what could start a tag or an entity is escaped, so ``p95 < 300ms`` stays
    readable in the raw file.
    """
    return _TAG_RE.sub("&lt;", _ENTITY_RE.sub("&amp;", _one_line(value, limit)))


def _code(value: Any, limit: int = MAX_CELL) -> str:
    """An inline code span that survives backticks in its text; empty for no text."""
    text = _one_line(value, limit)
    if not text:
        return ""
    longest = max((len(m) for m in _BACKTICKS_RE.findall(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _secs(value: Any) -> str:
    if not _is_number(value):
        return "-"
    if value < 0.1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def _size(value: Any) -> str:
    if not _is_number(value):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _num(value: Any) -> str:
    if not _is_number(value):
        return _str(value) or "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _compact(value: Any, limit: int = 160) -> str:
    """Small structured detail as compact JSON (redacted before JSON escapes it)."""
    if not value:
        return ""
    try:
        text = json.dumps(redact_data(value), default=str, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        text = _str(value)
    return _clip(text, limit)


def _pairs(value: Any) -> str:
    """``{"alembic": "0006"}`` -> ``alembic 0006``."""
    return ", ".join(f"{_str(k)} {_str(v) or '-'}" for k, v in _map(value).items())


def _weights(value: Any) -> str:
    return ", ".join(f"{_str(k)} {_num(v)}" for k, v in sorted(_map(value).items()))


def _status(value: Any) -> str:
    text = _esc(value) or "-"
    return f"**{text}**" if text in _BOLD_STATUSES else text


# -- Markdown building blocks ----------------------------------------------------------


class _TooLarge(Exception):
    """A rendering passed its byte limit; the next level has less detail."""


class _Budget:
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
            raise _TooLarge
        return line

    def limit_items(self, items: Sequence[_T]) -> tuple[Sequence[_T], int]:
        if self.max_rows is None or len(items) <= self.max_rows:
            return items, 0
        return items[: self.max_rows], len(items) - self.max_rows


_LEVELS: tuple[dict[str, Any], ...] = (
    {},
    {"sql": False},
    {"sql": False, "max_rows": 5000},
    {"sql": False, "max_rows": 1000},
    {"sql": False, "max_rows": 200},
    {"sql": False, "max_rows": 50},
    {"sql": False, "max_rows": 10},
    {"sql": False, "max_rows": 10, "optional": False},
)


def _table_lines(
    headers: Sequence[str], rows: Iterable[Sequence[str]], budget: _Budget | None = None
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


def _more(count: int, what: str = "rows") -> list[str]:
    # The blank line matters: a line right after a table would become one of its rows.
    return ["", MORE_NOTE.format(count=count, what=what)] if count > 0 else []


def _table(
    headers: Sequence[str],
    items: Sequence[_T],
    row: Callable[[_T], Sequence[str]],
    budget: _Budget,
) -> list[str]:
    """A table of the items the budget allows, formatted by ``row``, and a note of the rest."""
    shown, hidden = budget.limit_items(items)
    return [*_table_lines(headers, (row(item) for item in shown), budget), *_more(hidden)]


def _bullets(items: Sequence[Any], what: str, budget: _Budget, limit: int = MAX_CELL) -> list[str]:
    shown, hidden = budget.limit_items(items)
    return [*(budget.spend(f"- {_esc(x, limit)}") for x in shown), *_more(hidden, what)]


def _fence(body_lines: Iterable[str], lang: str = "", budget: _Budget | None = None) -> list[str]:
    """A fenced code block longer than any backtick run inside it."""
    body = [budget.spend(line) if budget is not None else line for line in body_lines]
    longest = max((len(m) for line in body for m in _BACKTICKS_RE.findall(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, *body, fence]


def _details(summary: str, body: list[str]) -> list[str]:
    return [f"<details><summary>{summary}</summary>", "", *body, "", "</details>"]


# -- always kept: headline, error, steps, rollback ---------------------------------------


def _headline(r: Mapping[str, Any]) -> list[str]:
    word = status_word(_str(r.get("outcome")) or None)
    title = f"## {_esc(r.get('service')) or 'service'} {_esc(r.get('kind')) or 'release'}"
    if r.get("release_id") is not None:
        title += f" {_esc(r.get('release_id'))}"
    outcome = f"**{word}**"
    if r.get("exit_code") is not None:
        outcome += f" (exit code {_esc(r.get('exit_code'))})"
    bullets = [f"- **Outcome:** {outcome}"]
    image = _map(r.get("image"))
    if image:
        text = _code(image.get("ref")) or "-"
        if image.get("digest"):
            text += f", digest {_code(image.get('digest'))}"
        if image.get("previous"):
            text += f"; previously {_code(image.get('previous'))}"
        bullets.append(f"- **Image:** {text}")
    if r.get("performer"):
        bullets.append(f"- **Performer:** {_esc(r.get('performer'))}")
    if r.get("git_sha"):
        bullets.append(f"- **Git SHA:** {_code(r.get('git_sha'))}")
    colors = _map(r.get("colors"))
    if colors:
        labels = (
            ("live_before", "live before"),
            ("target", "target"),
            ("live_after", "live after"),
        )
        shown = ", ".join(f"{label} {_esc(colors.get(key)) or '-'}" for key, label in labels)
        bullets.append(f"- **Colors:** {shown}")
    timing = f"- **Duration:** {_secs(r.get('duration_s'))}"
    if r.get("started_at"):
        timing += f" (started {_esc(r.get('started_at'))}"
        timing += f", finished {_esc(r.get('finished_at'))})" if r.get("finished_at") else ")"
    bullets.append(timing)
    return [f"{title}: {word}", "", *bullets]


def _error(r: Mapping[str, Any]) -> list[str]:
    error = _clip(_str(r.get("error")).strip(), MAX_ERROR)
    return ["### Error", "", *_fence(error.splitlines())] if error else []


def _step_row(item: tuple[int, Mapping[str, Any]]) -> list[str]:
    i, s = item
    return [
        str(i),
        _esc(s.get("name")),
        _status(s.get("status")),
        _secs(s.get("duration_s")),
        _esc(s.get("summary")),
    ]


def _steps(r: Mapping[str, Any]) -> list[str]:
    steps = _maps(r.get("steps"))
    if not steps:
        return []
    total = sum(s["duration_s"] for s in steps if _is_number(s.get("duration_s")))
    rows = (_step_row(item) for item in enumerate(steps, 1))
    return [
        "### Steps",
        "",
        *_table_lines(["#", "step", "status", "duration", "summary"], rows),
        "",
        f"{len(steps)} steps, {_secs(total)} in steps.",
    ]


def _check_row(c: Mapping[str, Any]) -> list[str]:
    return [
        _esc(c.get("item")),
        _code(c.get("expected")) or "-",
        _code(c.get("actual")) or "-",
        "ok" if c.get("ok") else "**MISMATCH**",
    ]


def _rollback(r: Mapping[str, Any]) -> list[str]:
    rb = _map(r.get("rollback"))
    if not rb:
        return []
    lines = ["### Rollback"]
    if rb.get("reason"):
        lines += ["", f"**Reason:** {_esc(rb.get('reason'), MAX_ERROR)}"]
    steps = _maps(rb.get("steps"))
    if steps:
        rows = (
            [
                _esc(s.get("name")),
                _status(s.get("status")),
                _secs(s.get("duration_s")),
                _esc(s.get("summary") or _compact(s.get("detail"))),
            ]
            for s in steps
        )
        lines += ["", *_table_lines(["step", "status", "duration", "detail"], rows)]
    kept = [_esc(k, MAX_ERROR) for k in _list(rb.get("kept"))]
    if kept:
        lines += ["", "**Kept on purpose** (not undone, and why):", ""]
        lines += [f"- {k}" for k in kept]
    verification = _map(rb.get("verification"))
    if verification:
        checks = _maps(verification.get("checks"))
        passed = sum(1 for c in checks if c.get("ok"))
        verdict = "passed" if verification.get("ok") else "FAILED"
        lines += ["", f"**Verification: {verdict}** ({passed} of {len(checks)} checks match)"]
        if checks:
            headers = ["check", "expected", "actual", "result"]
            lines += ["", *_table_lines(headers, (_check_row(c) for c in checks))]
    manual = [_clip(_str(m).strip(), MAX_COMMAND) for m in _list(rb.get("manual_steps"))]
    if manual:
        lines += ["", "**Manual steps** (a human must run these, in order):", ""]
        lines += _fence((line for m in manual for line in m.splitlines()), "sh")
    return lines


# -- the migration plan ------------------------------------------------------------------


def _findings(revision: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [f for s in _maps(revision.get("statements")) for f in _maps(s.get("findings"))]


def _revision_row(rev: Mapping[str, Any]) -> list[str]:
    phase = _esc(rev.get("phase")) or "-"
    if rev.get("phase_source") == "declared":
        phase += " (declared)"
    return [
        _code(rev.get("revision")),
        phase,
        _esc(rev.get("irreversible")),
        str(len(_findings(rev))),
        _esc(rev.get("doc")),
    ]


def _finding_row(f: Mapping[str, Any]) -> list[str]:
    return [_esc(f.get("severity")), _code(f.get("rule")), _esc(f.get("message"))]


def _revision_details(rev: Mapping[str, Any], budget: _Budget) -> list[str]:
    statements = _maps(rev.get("statements"))
    findings = _findings(rev)
    summary = (
        f"{_esc(rev.get('revision'))}: {_esc(rev.get('doc'))} ({_esc(rev.get('phase'))},"
        f" {len(statements)} statements, {len(findings)} findings)"
    )
    if budget.sql:
        sql = (
            line
            for s in statements
            for line in (_str(s.get("sql")).rstrip().rstrip(";") + ";").splitlines()
        )
        body = _fence(sql, "sql", budget)
    else:
        body = [SQL_OMITTED]
    if findings:
        body += ["", *_table(["severity", "rule", "message"], findings, _finding_row, budget)]
    return _details(summary, body)


def _postgres_plan(p: Mapping[str, Any], budget: _Budget) -> list[str]:
    revisions = _maps(p.get("revisions"))
    findings = [f for rev in revisions for f in _findings(rev)]
    errors = sum(1 for f in findings if f.get("severity") == "error")
    line = f"Current {_code(p.get('current')) or '-'}"
    if p.get("target"):
        line += f", target {_code(p.get('target'))}"
    line += f"; {len(revisions)} pending; lint: {errors} error(s), {len(findings) - errors}"
    line += f" warning(s) (fail on {_esc(p.get('fail_on')) or '-'})"
    if p.get("lint_failed"):
        line += ": **lint failed**"
    lines = ["#### Postgres", "", line + "."]
    if not revisions:
        return lines
    headers = ["revision", "phase", "irreversible", "findings", "description"]
    lines += ["", *_table(headers, revisions, _revision_row, budget)]
    shown, hidden = budget.limit_items(revisions)
    for rev in shown:
        lines += ["", *_revision_details(rev, budget)]
    return lines + _more(hidden, "revisions")


def _data_store_plan(title: str, p: Mapping[str, Any], budget: _Budget) -> list[str]:
    """The Redis or Qdrant part of a plan (``RedisStatus`` / ``QdrantStatus`` shapes)."""
    pending = _maps(p.get("pending"))
    line = f"Current {_code(p.get('current', p.get('version'))) or '-'}"
    if p.get("head"):
        line += f", head {_code(p.get('head'))}"
    lines = [f"#### {title}", "", f"{line}; {len(pending)} pending."]
    if pending:
        with_collection = any(m.get("collection") for m in pending)

        def row(m: Mapping[str, Any]) -> list[str]:
            cells = [_code(m.get("version"))]
            if with_collection:
                change = f"{_esc(m.get('from'))} → {_esc(m.get('to'))}" if m.get("to") else ""
                cells += [_esc(m.get("collection")), change]
            return [*cells, _esc(m.get("doc") or m.get("name"))]

        middle = ["collection", "change"] if with_collection else []
        lines += ["", *_table(["version", *middle, "description"], pending, row, budget)]
    problems = _list(p.get("problems"))
    if problems:
        lines += ["", *_bullets(problems, "problems", budget)]
    return lines


def _plan(r: Mapping[str, Any], budget: _Budget) -> list[str]:
    plan = _map(r.get("plan"))
    if not plan:
        return []
    lines = ["### Migration plan"]
    notes = []
    if plan.get("blocked"):
        notes.append("**Blocked:** the plan did not pass its checks.")
    contract = [_code(c) for c in _list(plan.get("contract"))]
    if contract:
        shown = ", ".join(contract)
        notes.append(f"Contract revisions (cannot be rolled back automatically): {shown}.")
    if notes:
        lines += ["", " ".join(notes)]
    for store in STORES:
        part = plan.get(store)
        if isinstance(part, Mapping):
            if store == "postgres":
                lines += ["", *_postgres_plan(part, budget)]
            else:
                lines += ["", *_data_store_plan(store.capitalize(), part, budget)]
    return lines


def _applied_row(item: tuple[str, Mapping[str, Any]]) -> list[str]:
    store, step = item
    note: Any = step.get("error")
    if not note and _is_number(step.get("attempts")) and step["attempts"] > 1:
        note = f"{step['attempts']} attempts"
    if not note and _map(step.get("keys")):
        note = _pairs(step.get("keys"))
    if not note and step.get("alias_target"):
        note = f"alias → {_str(step.get('alias_target'))}"
    ident = _str(step.get("revision") or step.get("version"))
    if step.get("collection"):
        ident += f" {_str(step.get('collection'))}"
    return [
        store,
        _code(ident) or "-",
        _esc(step.get("direction")) or "-",
        _status(step.get("status")),
        _secs(step.get("duration_s")),
        _esc(note),
    ]


def _migrations(r: Mapping[str, Any], budget: _Budget) -> list[str]:
    applied = _map(r.get("migrations"))
    parts = [(s, _map(applied.get(s))) for s in STORES if isinstance(applied.get(s), Mapping)]
    if not parts:
        return []
    summary = (
        [
            store,
            _code(m.get("before")) or "-",
            _code(m.get("after")) or "-",
            _esc(m.get("direction")) or "-",
            str(len(_list(m.get("steps")))),
        ]
        for store, m in parts
    )
    lines = [
        "### Migrations applied",
        "",
        *_table_lines(["store", "before", "after", "direction", "steps"], summary),
    ]
    steps = [(store, step) for store, m in parts for step in _maps(m.get("steps"))]
    if steps:
        headers = ["store", "step", "direction", "status", "duration", "note"]
        lines += ["", *_table(headers, steps, _applied_row, budget)]
    return lines


# -- the backup -----------------------------------------------------------------------


def _counts(store: str, counts: Mapping[str, Any]) -> str:
    if not counts:
        return "-"
    if store == "postgres" and "rows" in counts:
        return f"{_num(counts.get('rows'))} rows in {len(_map(counts.get('tables')))} tables"
    if store == "redis" and "keys" in counts:
        return f"{_num(counts.get('keys'))} keys ({_num(counts.get('with_ttl'))} with TTL)"
    collections = counts.get("collections")
    if store == "qdrant" and isinstance(collections, Mapping):
        points = sum(
            c.get("points", 0) if isinstance(c, Mapping) else c
            for c in collections.values()
            if isinstance(c, Mapping) or _is_number(c)
        )
        return f"{_num(points)} points in {len(collections)} collections"
    return _compact(counts, 120)


def _files_size(files: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(f["size"]) for f in files if _is_number(f.get("size")))


def _store_row(s: Mapping[str, Any]) -> list[str]:
    files = _maps(s.get("files"))
    return [
        _esc(s.get("store")),
        _esc(s.get("method")),
        str(len(files)),
        _size(_files_size(files)),
        _esc(_counts(_str(s.get("store")), _map(s.get("counts")))),
        _esc(_pairs(s.get("versions"))),
        _esc(_pairs(s.get("tools"))),
    ]


def _file_row(item: tuple[str, Mapping[str, Any]]) -> list[str]:
    store, f = item
    return [_esc(store), _code(f.get("name")), _size(f.get("size")), _code(f.get("sha256"))]


def _difference_row(d: Any) -> list[str]:
    if isinstance(d, Mapping):
        return [
            _esc(d.get("store")),
            _esc(d.get("item")),
            _code(d.get("expected")) or "-",
            _code(d.get("actual")) or "-",
        ]
    return ["", _esc(d), "", ""]


def _manifest_lines(manifest: Mapping[str, Any], budget: _Budget) -> list[str]:
    stores = _maps(manifest.get("stores"))
    files = [(_str(s.get("store")), f) for s in stores for f in _maps(s.get("files"))]
    line = f"Backup set {_code(manifest.get('set_id')) or '-'}"
    if manifest.get("created_at"):
        line += f", created {_esc(manifest.get('created_at'))}"
    line += f": {len(files)} files, {_size(_files_size([f for _, f in files]))}"
    took = _map(manifest.get("timings")).get("total")
    if took is not None:
        line += f", in {_secs(took)}"
    if _map(manifest.get("versions")):
        line += f"; versions: {_esc(_pairs(manifest.get('versions')))}"
    lines = [line + "."]
    if stores:
        headers = ["store", "method", "files", "size", "counts", "versions", "tools"]
        lines += ["", *_table(headers, stores, _store_row, budget)]
    if files:
        body = _table(["store", "file", "size", "sha256"], files, _file_row, budget)
        lines += ["", *_details(f"Checksums ({len(files)} files)", body)]
    for s in stores:
        tables = _map(_map(s.get("counts")).get("tables"))
        if s.get("store") == "postgres" and tables:
            items = list(tables.items())
            body = _table(["table", "rows"], items, lambda t: [_code(t[0]), _num(t[1])], budget)
            lines += ["", *_details(f"Postgres rows per table ({len(tables)} tables)", body)]
    return lines


def _backup(r: Mapping[str, Any], budget: _Budget) -> list[str]:
    manifest = _map(r.get("backup"))
    verify = _map(r.get("backup_verify"))
    if not manifest and not verify:
        return []
    lines = ["### Restore point"]
    if manifest:
        lines += ["", *_manifest_lines(manifest, budget)]
    if verify:
        differences = _list(verify.get("differences"))
        if verify.get("ok"):
            lines += ["", "**Verified:** restored into scratch places, counts match."]
        else:
            lines += ["", f"**Verification FAILED:** {len(differences)} difference(s)."]
        if differences:
            headers = ["store", "item", "expected", "actual"]
            lines += ["", *_table(headers, differences, _difference_row, budget)]
    return lines


# -- deploy, gates, router ---------------------------------------------------------------


def _deploy(r: Mapping[str, Any]) -> list[str]:
    deploy = _map(r.get("deploy"))
    if not deploy:
        return []
    text = f"Color **{_esc(deploy.get('color')) or '-'}**"
    if deploy.get("container"):
        text += f": container {_code(deploy.get('container'))}"
    if deploy.get("image"):
        text += f", image {_code(deploy.get('image'))}"
    if deploy.get("ready_s") is not None:
        text += f", ready in {_secs(deploy.get('ready_s'))}"
    return ["### Deploy", "", text + "."]


def _smoke_row(c: Mapping[str, Any]) -> list[str]:
    latency = c.get("latency_ms")
    return [
        _esc(c.get("name")),
        _code(f"{_str(c.get('method'))} {_str(c.get('path'))}"),
        _esc(c.get("status")) or "-",
        f"{latency:.1f}" if _is_number(latency) else "-",
        _esc(c.get("attempts")),
        "ok" if c.get("ok") else "**FAIL**",
        _esc("; ".join(_str(f) for f in _list(c.get("failures")))),
    ]


def _smoke(smoke: Mapping[str, Any], budget: _Budget, level: str = "###") -> list[str]:
    if not smoke:
        return []
    checks = _maps(smoke.get("checks"))
    passed = smoke.get("passed", sum(1 for c in checks if c.get("ok")))
    lines = [
        f"{level} Smoke checks: {'PASSED' if smoke.get('ok') else 'FAILED'}",
        "",
        f"{_esc(passed)} of {len(checks)} checks passed against"
        f" {_code(smoke.get('target')) or '-'} in {_secs(smoke.get('duration_s'))}.",
    ]
    if checks:
        headers = ["check", "request", "status", "ms", "attempts", "result", "failures"]
        lines += ["", *_table(headers, checks, _smoke_row, budget)]
    return lines


def _metric(metric: Any, value: Any) -> str:
    return format_value(_str(metric), float(value)) if _is_number(value) else "-"


def _rule_row(x: Mapping[str, Any]) -> list[str]:
    observed = x.get("observed_text") or _metric(x.get("metric"), x.get("observed"))
    return [
        _esc(x.get("scope")),
        _code(x.get("rule")),
        _esc(observed),
        _status(x.get("verdict")),
        _esc(x.get("note")),
    ]


def _comparison_row(x: Mapping[str, Any]) -> list[str]:
    return [
        _esc(x.get("scope")),
        _code(x.get("rule")),
        _metric(x.get("metric"), x.get("baseline")),
        _metric(x.get("metric"), x.get("candidate")),
        _metric(x.get("metric"), x.get("allowed")),
        _status(x.get("verdict")),
    ]


def _slo_paths(slo: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """Where Locust's own HTML report and CSV files are."""
    paths, run_paths = _map(slo.get("paths")), _map(run.get("paths"))
    prefix = _str(paths.get("csv_prefix"))
    found = [
        ("Locust HTML report", paths.get("html") or run_paths.get("html_report")),
        ("Locust CSV", f"{prefix}_stats.csv" if prefix else run_paths.get("stats_csv")),
        (
            "Locust CSV history",
            f"{prefix}_stats_history.csv" if prefix else run_paths.get("stats_history_csv"),
        ),
    ]
    return [f"- {label}: {_code(path, 1000)}" for label, path in found if path]


def _slo(slo: Mapping[str, Any], budget: _Budget, level: str = "###") -> list[str]:
    if not slo:
        return []
    lines = [f"{level} SLO gate: {_esc(slo.get('verdict')).upper() or '-'}", ""]
    target = f"Target {_code(slo.get('target')) or '-'}"
    if slo.get("baseline"):
        target += f", baseline {_code(slo.get('baseline'))}"
    run = _map(slo.get("run"))
    window = _map(run.get("window"))
    if window:
        target += (
            f"; {_num(window.get('requests'))} requests in {_secs(window.get('duration_s'))}"
            f" after a {_secs(run.get('warmup_s'))} warm-up ({_esc(run.get('users'))} users)"
        )
    elif run:
        target += "; no measurements after the warm-up"
    if slo.get("duration_s"):
        target += f"; the gate took {_secs(slo.get('duration_s'))}"
    lines.append(target + ".")
    rules = _maps(slo.get("rules"))
    if rules:
        headers = ["scope", "rule", "observed", "verdict", "note"]
        lines += ["", *_table(headers, rules, _rule_row, budget)]
    comparisons = _maps(slo.get("comparisons"))
    if comparisons:
        headers = ["scope", "comparison", "baseline", "candidate", "allowed", "verdict"]
        lines += ["", *_table(headers, comparisons, _comparison_row, budget)]
    reasons = _list(slo.get("reasons"))
    if reasons:
        lines += ["", *_bullets(reasons, "reasons", budget, MAX_ERROR)]
    paths = _slo_paths(slo, run)
    if paths:
        lines += ["", *paths]
    return lines


def _switch_weights(switch: Mapping[str, Any], when: str) -> Mapping[str, Any]:
    weights = switch.get(f"weights_{when}")
    if isinstance(weights, Mapping):
        return weights
    colors = _map(_map(switch.get(when)).get("colors"))
    return {
        name: c.get("weight", 0) if c.get("serving", True) else 0
        for name, c in ((n, _map(v)) for n, v in colors.items())
    }


def _switch_row(x: Mapping[str, Any]) -> list[str]:
    return [
        _esc(x.get("action")),
        _esc(x.get("live_before", _map(x.get("before")).get("live"))) or "-",
        _esc(x.get("live_after", _map(x.get("after")).get("live"))) or "-",
        _esc(_weights(_switch_weights(x, "before"))) or "-",
        _esc(_weights(_switch_weights(x, "after"))) or "-",
        _num(x.get("switch_ms")),
        _num(x.get("duration_ms")),
    ]


def _router(r: Mapping[str, Any], budget: _Budget) -> list[str]:
    switches = _maps(r.get("router"))
    if not switches:
        return []
    headers = ["action", "live before", "live after", "weights before", "weights after"]
    headers += ["switch ms", "total ms"]
    return ["### Traffic", "", *_table(headers, switches, _switch_row, budget)]


def _watch(r: Mapping[str, Any], budget: _Budget) -> list[str]:
    watch = _map(r.get("watch"))
    smoke = _smoke(_map(watch.get("smoke")), budget, "####")
    slo = _slo(_map(watch.get("slo")), budget, "####")
    if not smoke and not slo:
        return []
    return ["### Watch after the switch", "", *smoke, *([""] if smoke and slo else []), *slo]


# -- Markdown ----------------------------------------------------------------------------


def _render(r: Mapping[str, Any], budget: _Budget) -> str:
    blocks = [_headline(r), _error(r), _steps(r), _rollback(r)]
    if budget.optional:
        blocks += [
            _plan(r, budget),
            _backup(r, budget),
            _migrations(r, budget),
            _deploy(r),
            _smoke(_map(r.get("smoke")), budget),
            _slo(_map(r.get("slo")), budget),
            _router(r, budget),
            _watch(r, budget),
        ]
    else:
        blocks.append([SECTIONS_OMITTED])
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"


def _cut_to_bytes(text: str, limit: int) -> str:
    """The last resort: cut at a line boundary and say so."""
    room = max(0, limit - len(CUT_NOTE.encode()))
    head = text.encode()[:room].decode("utf-8", errors="ignore")
    result = head[: head.rfind("\n")] + CUT_NOTE if "\n" in head else CUT_NOTE.lstrip("\n")
    return result.encode()[:limit].decode("utf-8", errors="ignore")


def render_markdown(result: Mapping[str, Any], *, limit_bytes: int = SUMMARY_LIMIT_BYTES) -> str:
    """The GitHub-flavoured Markdown evidence report of a release, at most ``limit_bytes``.

    Too large a report is rendered again with less detail (see the module docstring).
    """
    text = ""
    for level in _LEVELS:
        try:
            text = redact(_render(result, _Budget(limit_bytes, **level)))
        except _TooLarge:
            continue
        if len(text.encode()) <= limit_bytes:
            return text
    if not text:  # even the smallest level was stopped by the meter
        text = redact(_render(result, _Budget(1 << 62, **_LEVELS[-1])))
    return _cut_to_bytes(text, limit_bytes)


# -- plain text ----------------------------------------------------------------------------


def _text_plan(plan: Mapping[str, Any]) -> str | None:
    if not plan:
        return None
    parts = []
    for store in STORES:
        part = plan.get(store)
        if isinstance(part, Mapping):
            pending = len(_list(part.get("revisions" if store == "postgres" else "pending")))
            parts.append(f"{store} {pending} pending")
    text = "plan: " + (", ".join(parts) or "nothing pending")
    contract = [_str(c) for c in _list(plan.get("contract"))]
    if contract:
        text += f" (contract: {', '.join(contract)})"
    return text + ("; BLOCKED" if plan.get("blocked") else "")


def _text_backup(manifest: Mapping[str, Any], verify: Mapping[str, Any]) -> str | None:
    if not manifest and not verify:
        return None
    text = "backup:"
    if manifest:
        files = [f for s in _maps(manifest.get("stores")) for f in _maps(s.get("files"))]
        text += f" set {_str(manifest.get('set_id'))}, {len(files)} files,"
        text += f" {_size(_files_size(files))}"
    if verify:
        differences = len(_list(verify.get("differences")))
        text += "; verified" if verify.get("ok") else f"; verify FAILED ({differences} differences)"
    return text


def _text_gates(label: str, smoke: Mapping[str, Any], slo: Mapping[str, Any]) -> list[str]:
    lines = []
    if smoke:
        verdict = "passed" if smoke.get("ok") else "FAILED"
        checks = len(_list(smoke.get("checks")))
        lines.append(f"{label}smoke: {verdict} ({_str(smoke.get('passed'))}/{checks})")
    if slo:
        rules = _maps(slo.get("rules"))
        text = f"{label}slo: {_str(slo.get('verdict'))} ({len(rules)} rules"
        failed = [
            f"{_str(x.get('scope'))} {_str(x.get('rule'))}"
            for x in rules
            if x.get("verdict") != "pass"
        ]
        lines.append(text + (f", not passed: {', '.join(failed)})" if failed else ")"))
    return lines


def _text_rollback(rb: Mapping[str, Any]) -> list[str]:
    lines = [f"rollback: {_one_line(rb.get('reason'), 200) or 'no reason recorded'}"]
    for s in _maps(rb.get("steps")):
        name, status = _one_line(s.get("name"), 60), _one_line(s.get("status"), 20)
        lines.append(f"  {name}: {status} ({_secs(s.get('duration_s'))})")
    lines += [f"  kept: {_one_line(k, 200)}" for k in _list(rb.get("kept"))]
    verification = _map(rb.get("verification"))
    if verification:
        checks = _maps(verification.get("checks"))
        ok = sum(1 for c in checks if c.get("ok"))
        verdict = "passed" if verification.get("ok") else "FAILED"
        lines.append(f"  verification: {verdict} ({ok}/{len(checks)} checks match)")
        lines += [
            f"    {_one_line(c.get('item'), 80)}: expected {_one_line(c.get('expected'), 80)},"
            f" found {_one_line(c.get('actual'), 80)}"
            for c in checks
            if not c.get("ok")
        ]
    manual = [_str(m).strip() for m in _list(rb.get("manual_steps"))]
    if manual:
        lines += ["", "manual steps (a human must run these, in order):"]
        lines += [f"  {line}" for m in manual for line in m.splitlines()]
    return lines


def render_text(result: Mapping[str, Any]) -> str:
    """A compact plain-text summary of a release for the terminal."""
    r = result
    service, kind = _one_line(r.get("service"), 80), _one_line(r.get("kind"), 40)
    head = f"{service or 'service'} {kind or 'release'}"
    if r.get("release_id") is not None:
        head += f" {_one_line(r.get('release_id'), 40)}"
    head += f": {status_word(_str(r.get('outcome')) or None)}"
    if r.get("exit_code") is not None:
        head += f" (exit code {_one_line(r.get('exit_code'), 10)})"
    lines = [f"{head} in {_secs(r.get('duration_s'))}"]
    image = _map(r.get("image"))
    if image:
        text = f"image {_one_line(image.get('ref')) or '-'}"
        text += f" {_one_line(image.get('digest'))}" if image.get("digest") else ""
        text += f"; previous {_one_line(image.get('previous'))}" if image.get("previous") else ""
        lines.append(text)
    who = []
    if r.get("performer"):
        who.append(f"by {_one_line(r.get('performer'), 80)}")
    if r.get("git_sha"):
        who.append(f"git {_one_line(r.get('git_sha'))[:12]}")
    colors = _map(r.get("colors"))
    if colors:
        before, target, after = (
            _one_line(colors.get(k), 20) or "-" for k in ("live_before", "target", "live_after")
        )
        who.append(f"colors {before} -> {target}, live {after}")
    if who:
        lines.append("; ".join(who))
    steps = _maps(r.get("steps"))
    if steps:
        rows = [
            [
                _one_line(s.get("name"), 40),
                _one_line(s.get("status"), 20),
                _secs(s.get("duration_s")),
                _one_line(s.get("summary"), 100),
            ]
            for s in steps
        ]
        lines += ["", table(["step", "status", "time", "summary"], rows)]
    watch = _map(r.get("watch"))
    facts = [
        _text_plan(_map(r.get("plan"))),
        _text_backup(_map(r.get("backup")), _map(r.get("backup_verify"))),
        *_text_gates("", _map(r.get("smoke")), _map(r.get("slo"))),
        *_text_gates("watch ", _map(watch.get("smoke")), _map(watch.get("slo"))),
    ]
    for x in _maps(r.get("router")):
        facts.append(
            f"router: {_str(x.get('action'))} {_str(x.get('live_before')) or '-'} ->"
            f" {_str(x.get('live_after')) or '-'} (switch {_num(x.get('switch_ms'))} ms)"
        )
    shown = [_one_line(f, 200) for f in facts if f]
    if shown:
        lines += ["", *shown]
    rb = _map(r.get("rollback"))
    if rb:
        lines += ["", *_text_rollback(rb)]
    if _str(r.get("error")).strip():
        lines += ["", f"error: {_one_line(r.get('error'), MAX_ERROR)}"]
    return redact("\n".join(lines))
