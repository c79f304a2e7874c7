"""The migration sections of the Markdown report: the plan (per store) and what was applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from releasegate.report.markdown_blocks import (
    Budget,
    bullet_list,
    code_block,
    code_span,
    details,
    escape_text,
    more_rows,
    status_cell,
    table_lines,
    table_rows,
)
from releasegate.report.values import (
    STORES,
    as_list,
    as_map,
    as_maps,
    as_text,
    format_seconds,
    is_number,
    pairs_text,
)

SQL_OMITTED = "SQL omitted to fit the size limit (see the JSON report)."


def _findings(revision: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [f for s in as_maps(revision.get("statements")) for f in as_maps(s.get("findings"))]


def _revision_row(rev: Mapping[str, Any]) -> list[str]:
    phase = escape_text(rev.get("phase")) or "-"
    if rev.get("phase_source") == "declared":
        phase += " (declared)"
    return [
        code_span(rev.get("revision")),
        phase,
        escape_text(rev.get("irreversible")),
        str(len(_findings(rev))),
        escape_text(rev.get("doc")),
    ]


def _finding_row(f: Mapping[str, Any]) -> list[str]:
    return [escape_text(f.get("severity")), code_span(f.get("rule")), escape_text(f.get("message"))]


def _revision_details(rev: Mapping[str, Any], budget: Budget) -> list[str]:
    statements = as_maps(rev.get("statements"))
    findings = _findings(rev)
    summary = (
        f"{escape_text(rev.get('revision'))}: {escape_text(rev.get('doc'))}"
        f" ({escape_text(rev.get('phase'))},"
        f" {len(statements)} statements, {len(findings)} findings)"
    )
    if budget.sql:
        sql = (
            line
            for s in statements
            for line in (as_text(s.get("sql")).rstrip().rstrip(";") + ";").splitlines()
        )
        body = code_block(sql, "sql", budget)
    else:
        body = [SQL_OMITTED]
    if findings:
        body += ["", *table_rows(["severity", "rule", "message"], findings, _finding_row, budget)]
    return details(summary, body)


def _postgres_plan(p: Mapping[str, Any], budget: Budget) -> list[str]:
    revisions = as_maps(p.get("revisions"))
    findings = [f for rev in revisions for f in _findings(rev)]
    errors = sum(1 for f in findings if f.get("severity") == "error")
    line = f"Current {code_span(p.get('current')) or '-'}"
    if p.get("target"):
        line += f", target {code_span(p.get('target'))}"
    line += f"; {len(revisions)} pending; lint: {errors} error(s), {len(findings) - errors}"
    line += f" warning(s) (fail on {escape_text(p.get('fail_on')) or '-'})"
    if p.get("lint_failed"):
        line += ": **lint failed**"
    lines = ["#### Postgres", "", line + "."]
    if not revisions:
        return lines
    headers = ["revision", "phase", "irreversible", "findings", "description"]
    lines += ["", *table_rows(headers, revisions, _revision_row, budget)]
    shown, hidden = budget.limit_items(revisions)
    for rev in shown:
        lines += ["", *_revision_details(rev, budget)]
    return lines + more_rows(hidden, "revisions")


def _data_store_plan(title: str, p: Mapping[str, Any], budget: Budget) -> list[str]:
    """The Redis or Qdrant part of a plan (``RedisStatus`` / ``QdrantStatus`` shapes)."""
    pending = as_maps(p.get("pending"))
    line = f"Current {code_span(p.get('current', p.get('version'))) or '-'}"
    if p.get("head"):
        line += f", head {code_span(p.get('head'))}"
    lines = [f"#### {title}", "", f"{line}; {len(pending)} pending."]
    if pending:
        with_collection = any(m.get("collection") for m in pending)

        def row(m: Mapping[str, Any]) -> list[str]:
            cells = [code_span(m.get("version"))]
            if with_collection:
                change = (
                    f"{escape_text(m.get('from'))} → {escape_text(m.get('to'))}"
                    if m.get("to")
                    else ""
                )
                cells += [escape_text(m.get("collection")), change]
            return [*cells, escape_text(m.get("doc") or m.get("name"))]

        middle = ["collection", "change"] if with_collection else []
        lines += ["", *table_rows(["version", *middle, "description"], pending, row, budget)]
    problems = as_list(p.get("problems"))
    if problems:
        lines += ["", *bullet_list(problems, "problems", budget)]
    return lines


def plan_section(r: Mapping[str, Any], budget: Budget) -> list[str]:
    """The migration plan: contract revisions, then each store's pending migrations."""
    plan = as_map(r.get("plan"))
    if not plan:
        return []
    lines = ["### Migration plan"]
    notes = []
    if plan.get("blocked"):
        notes.append("**Blocked:** the plan did not pass its checks.")
    contract = [code_span(c) for c in as_list(plan.get("contract"))]
    if contract:
        shown = ", ".join(contract)
        notes.append(f"Contract revisions (cannot be rolled back automatically): {shown}.")
    deferred = [code_span(c) for c in as_list(plan.get("deferred"))]
    if deferred:
        reason = as_text(plan.get("deferred_reason"))
        notes.append(f"Deferred to a later release ({reason}): {', '.join(deferred)}.")
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
    if not note and is_number(step.get("attempts")) and step["attempts"] > 1:
        note = f"{step['attempts']} attempts"
    if not note and as_map(step.get("keys")):
        note = pairs_text(step.get("keys"))
    if not note and step.get("alias_target"):
        note = f"alias → {as_text(step.get('alias_target'))}"
    ident = as_text(step.get("revision") or step.get("version"))
    if step.get("collection"):
        ident += f" {as_text(step.get('collection'))}"
    return [
        store,
        code_span(ident) or "-",
        escape_text(step.get("direction")) or "-",
        status_cell(step.get("status")),
        format_seconds(step.get("duration_s")),
        escape_text(note),
    ]


def migrations_section(r: Mapping[str, Any], budget: Budget) -> list[str]:
    """The migrations applied (or undone), store by store and step by step."""
    applied = as_map(r.get("migrations"))
    parts = [(s, as_map(applied.get(s))) for s in STORES if isinstance(applied.get(s), Mapping)]
    if not parts:
        return []
    summary = (
        [
            store,
            code_span(m.get("before")) or "-",
            code_span(m.get("after")) or "-",
            escape_text(m.get("direction")) or "-",
            str(len(as_list(m.get("steps")))),
        ]
        for store, m in parts
    )
    lines = [
        "### Migrations applied",
        "",
        *table_lines(["store", "before", "after", "direction", "steps"], summary),
    ]
    steps = [(store, step) for store, m in parts for step in as_maps(m.get("steps"))]
    if steps:
        headers = ["store", "step", "direction", "status", "duration", "note"]
        lines += ["", *table_rows(headers, steps, _applied_row, budget)]
    return lines
