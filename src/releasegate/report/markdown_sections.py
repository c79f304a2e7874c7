"""The sections of the Markdown report other than the migrations.

Always kept: the headline, the error, the step table and the rollback (verification and
manual steps). Optional, left out when the report must shrink: the restore point, the
deploy, the smoke and SLO gates, the traffic switches and the watch after the switch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from releasegate.gates.thresholds import format_value
from releasegate.report.markdown_blocks import (
    Budget,
    bullet_list,
    code_block,
    code_span,
    details,
    escape_text,
    status_cell,
    table_lines,
    table_rows,
)
from releasegate.report.values import (
    FIRST_RELEASE,
    MAX_COMMAND,
    MAX_ERROR,
    as_list,
    as_map,
    as_maps,
    as_text,
    clip,
    compact_json,
    files_size,
    format_number,
    format_seconds,
    format_size,
    is_number,
    pairs_text,
    status_word,
    weights_text,
)

# -- always kept: headline, error, steps, rollback ---------------------------------------


def headline_section(r: Mapping[str, Any]) -> list[str]:
    """The title with the outcome, and the image, performer, commit, colors and times."""
    word = status_word(as_text(r.get("outcome")) or None)
    title = (
        f"## {escape_text(r.get('service')) or 'service'} {escape_text(r.get('kind')) or 'release'}"
    )
    if r.get("release_id") is not None:
        title += f" {escape_text(r.get('release_id'))}"
    outcome = f"**{word}**"
    if r.get("exit_code") is not None:
        outcome += f" (exit code {escape_text(r.get('exit_code'))})"
    bullets = [f"- **Outcome:** {outcome}"]
    image = as_map(r.get("image"))
    if image:
        text = code_span(image.get("ref")) or "-"
        if image.get("digest"):
            text += f", digest {code_span(image.get('digest'))}"
        if image.get("previous"):
            text += f"; previously {code_span(image.get('previous'))}"
        bullets.append(f"- **Image:** {text}")
    if r.get("performer"):
        bullets.append(f"- **Performer:** {escape_text(r.get('performer'))}")
    if r.get("git_sha"):
        bullets.append(f"- **Git SHA:** {code_span(r.get('git_sha'))}")
    colors = as_map(r.get("colors"))
    if colors:
        labels = (
            ("live_before", "live before"),
            ("target", "target"),
            ("live_after", "live after"),
        )
        shown = ", ".join(f"{label} {escape_text(colors.get(key)) or '-'}" for key, label in labels)
        bullets.append(f"- **Colors:** {shown}")
    if r.get("first_release"):
        bullets.append(f"- **First release:** {FIRST_RELEASE}")
    timing = f"- **Duration:** {format_seconds(r.get('duration_s'))}"
    if r.get("started_at"):
        timing += f" (started {escape_text(r.get('started_at'))}"
        timing += (
            f", finished {escape_text(r.get('finished_at'))})" if r.get("finished_at") else ")"
        )
    bullets.append(timing)
    return [f"{title}: {word}", "", *bullets]


def error_section(r: Mapping[str, Any]) -> list[str]:
    """The error in a code block; nothing when there is none."""
    error = clip(as_text(r.get("error")).strip(), MAX_ERROR)
    return ["### Error", "", *code_block(error.splitlines())] if error else []


def _step_row(item: tuple[int, Mapping[str, Any]]) -> list[str]:
    i, s = item
    return [
        str(i),
        escape_text(s.get("name")),
        status_cell(s.get("status")),
        format_seconds(s.get("duration_s")),
        escape_text(s.get("summary")),
    ]


def steps_section(r: Mapping[str, Any]) -> list[str]:
    """The table of the release's steps and their total time."""
    steps = as_maps(r.get("steps"))
    if not steps:
        return []
    total = sum(s["duration_s"] for s in steps if is_number(s.get("duration_s")))
    rows = (_step_row(item) for item in enumerate(steps, 1))
    return [
        "### Steps",
        "",
        *table_lines(["#", "step", "status", "duration", "summary"], rows),
        "",
        f"{len(steps)} steps, {format_seconds(total)} in steps.",
    ]


def _check_row(c: Mapping[str, Any]) -> list[str]:
    return [
        escape_text(c.get("item")),
        code_span(c.get("expected")) or "-",
        code_span(c.get("actual")) or "-",
        "ok" if c.get("ok") else "**MISMATCH**",
    ]


def _without_logs(detail: Any) -> Any:
    # A stopped color's log tail is shown below the table, not in its cell.
    if isinstance(detail, Mapping) and "log_tail" in detail:
        return {k: v for k, v in detail.items() if k != "log_tail"}
    return detail


def rollback_section(r: Mapping[str, Any]) -> list[str]:
    """Why the release rolled back, its steps, their verification and manual steps."""
    rb = as_map(r.get("rollback"))
    if not rb:
        return []
    lines = ["### Rollback"]
    if rb.get("reason"):
        lines += ["", f"**Reason:** {escape_text(rb.get('reason'), MAX_ERROR)}"]
    steps = as_maps(rb.get("steps"))
    if steps:
        rows = (
            [
                escape_text(s.get("name")),
                status_cell(s.get("status")),
                format_seconds(s.get("duration_s")),
                escape_text(s.get("summary") or compact_json(_without_logs(s.get("detail")))),
            ]
            for s in steps
        )
        lines += ["", *table_lines(["step", "status", "duration", "detail"], rows)]
        for s in steps:
            logs = [as_text(line) for line in as_list(as_map(s.get("detail")).get("log_tail"))]
            if logs:
                title = f"{escape_text(s.get('name'))}: its last {len(logs)} log lines"
                lines += ["", *details(title, code_block(logs))]
    kept = [escape_text(k, MAX_ERROR) for k in as_list(rb.get("kept"))]
    if kept:
        lines += ["", "**Kept on purpose** (not undone, and why):", ""]
        lines += [f"- {k}" for k in kept]
    verification = as_map(rb.get("verification"))
    if verification:
        checks = as_maps(verification.get("checks"))
        passed = sum(1 for c in checks if c.get("ok"))
        verdict = "passed" if verification.get("ok") else "FAILED"
        lines += ["", f"**Verification: {verdict}** ({passed} of {len(checks)} checks match)"]
        if checks:
            headers = ["check", "expected", "actual", "result"]
            lines += ["", *table_lines(headers, (_check_row(c) for c in checks))]
    manual = [clip(as_text(m).strip(), MAX_COMMAND) for m in as_list(rb.get("manual_steps"))]
    if manual:
        lines += ["", "**Manual steps** (a human must run these, in order):", ""]
        lines += code_block((line for m in manual for line in m.splitlines()), "sh")
    return lines


# -- the backup -----------------------------------------------------------------------


def _counts(store: str, counts: Mapping[str, Any]) -> str:
    if not counts:
        return "-"
    if store == "postgres" and "rows" in counts:
        tables = len(as_map(counts.get("tables")))
        return f"{format_number(counts.get('rows'))} rows in {tables} tables"
    if store == "redis" and "keys" in counts:
        with_ttl = format_number(counts.get("with_ttl"))
        return f"{format_number(counts.get('keys'))} keys ({with_ttl} with TTL)"
    collections = counts.get("collections")
    if store == "qdrant" and isinstance(collections, Mapping):
        points = sum(
            c.get("points", 0) if isinstance(c, Mapping) else c
            for c in collections.values()
            if isinstance(c, Mapping) or is_number(c)
        )
        return f"{format_number(points)} points in {len(collections)} collections"
    return compact_json(counts, 120)


def _store_row(s: Mapping[str, Any]) -> list[str]:
    files = as_maps(s.get("files"))
    return [
        escape_text(s.get("store")),
        escape_text(s.get("method")),
        str(len(files)),
        format_size(files_size(files)),
        escape_text(_counts(as_text(s.get("store")), as_map(s.get("counts")))),
        escape_text(pairs_text(s.get("versions"))),
        escape_text(pairs_text(s.get("tools"))),
    ]


def _file_row(item: tuple[str, Mapping[str, Any]]) -> list[str]:
    store, f = item
    return [
        escape_text(store),
        code_span(f.get("name")),
        format_size(f.get("size")),
        code_span(f.get("sha256")),
    ]


def _difference_row(d: Any) -> list[str]:
    if isinstance(d, Mapping):
        return [
            escape_text(d.get("store")),
            escape_text(d.get("item")),
            code_span(d.get("expected")) or "-",
            code_span(d.get("actual")) or "-",
        ]
    return ["", escape_text(d), "", ""]


def _manifest_lines(manifest: Mapping[str, Any], budget: Budget) -> list[str]:
    stores = as_maps(manifest.get("stores"))
    files = [(as_text(s.get("store")), f) for s in stores for f in as_maps(s.get("files"))]
    line = f"Backup set {code_span(manifest.get('set_id')) or '-'}"
    if manifest.get("created_at"):
        line += f", created {escape_text(manifest.get('created_at'))}"
    line += f": {len(files)} files, {format_size(files_size([f for _, f in files]))}"
    took = as_map(manifest.get("timings")).get("total")
    if took is not None:
        line += f", in {format_seconds(took)}"
    if as_map(manifest.get("versions")):
        line += f"; versions: {escape_text(pairs_text(manifest.get('versions')))}"
    lines = [line + "."]
    if stores:
        headers = ["store", "method", "files", "size", "counts", "versions", "tools"]
        lines += ["", *table_rows(headers, stores, _store_row, budget)]
    if files:
        body = table_rows(["store", "file", "size", "sha256"], files, _file_row, budget)
        lines += ["", *details(f"Checksums ({len(files)} files)", body)]
    for s in stores:
        tables = as_map(as_map(s.get("counts")).get("tables"))
        if s.get("store") == "postgres" and tables:
            items = list(tables.items())
            body = table_rows(
                ["table", "rows"], items, lambda t: [code_span(t[0]), format_number(t[1])], budget
            )
            lines += ["", *details(f"Postgres rows per table ({len(tables)} tables)", body)]
    return lines


def backup_section(r: Mapping[str, Any], budget: Budget) -> list[str]:
    """The restore point: the set, its stores and files, and its verification."""
    manifest = as_map(r.get("backup"))
    verify = as_map(r.get("backup_verify"))
    if not manifest and not verify:
        return []
    lines = ["### Restore point"]
    if manifest:
        lines += ["", *_manifest_lines(manifest, budget)]
    if verify:
        differences = as_list(verify.get("differences"))
        if verify.get("ok"):
            lines += ["", "**Verified:** restored into scratch places, counts match."]
        else:
            lines += ["", f"**Verification FAILED:** {len(differences)} difference(s)."]
        if differences:
            headers = ["store", "item", "expected", "actual"]
            lines += ["", *table_rows(headers, differences, _difference_row, budget)]
    return lines


# -- deploy, gates, router ---------------------------------------------------------------


def deploy_section(r: Mapping[str, Any]) -> list[str]:
    """The color deployed, its container and image, and when it was ready."""
    deploy = as_map(r.get("deploy"))
    if not deploy:
        return []
    text = f"Color **{escape_text(deploy.get('color')) or '-'}**"
    if deploy.get("container"):
        text += f": container {code_span(deploy.get('container'))}"
    if deploy.get("image"):
        text += f", image {code_span(deploy.get('image'))}"
    if deploy.get("ready_s") is not None:
        text += f", ready in {format_seconds(deploy.get('ready_s'))}"
    return ["### Deploy", "", text + "."]


def _smoke_row(c: Mapping[str, Any]) -> list[str]:
    latency = c.get("latency_ms")
    return [
        escape_text(c.get("name")),
        code_span(f"{as_text(c.get('method'))} {as_text(c.get('path'))}"),
        escape_text(c.get("status")) or "-",
        f"{latency:.1f}" if is_number(latency) else "-",
        escape_text(c.get("attempts")),
        "ok" if c.get("ok") else "**FAIL**",
        escape_text("; ".join(as_text(f) for f in as_list(c.get("failures")))),
    ]


def smoke_section(smoke: Mapping[str, Any], budget: Budget, level: str = "###") -> list[str]:
    """The smoke checks and how each went."""
    if not smoke:
        return []
    checks = as_maps(smoke.get("checks"))
    passed = smoke.get("passed", sum(1 for c in checks if c.get("ok")))
    lines = [
        f"{level} Smoke checks: {'PASSED' if smoke.get('ok') else 'FAILED'}",
        "",
        f"{escape_text(passed)} of {len(checks)} checks passed against"
        f" {code_span(smoke.get('target')) or '-'} in {format_seconds(smoke.get('duration_s'))}.",
    ]
    if checks:
        headers = ["check", "request", "status", "ms", "attempts", "result", "failures"]
        lines += ["", *table_rows(headers, checks, _smoke_row, budget)]
    return lines


def _metric(metric: Any, value: Any) -> str:
    return format_value(as_text(metric), float(value)) if is_number(value) else "-"


def _rule_row(x: Mapping[str, Any]) -> list[str]:
    observed = x.get("observed_text") or _metric(x.get("metric"), x.get("observed"))
    return [
        escape_text(x.get("scope")),
        code_span(x.get("rule")),
        escape_text(observed),
        status_cell(x.get("verdict")),
        escape_text(x.get("note")),
    ]


def _comparison_row(x: Mapping[str, Any]) -> list[str]:
    return [
        escape_text(x.get("scope")),
        code_span(x.get("rule")),
        _metric(x.get("metric"), x.get("baseline")),
        _metric(x.get("metric"), x.get("candidate")),
        _metric(x.get("metric"), x.get("allowed")),
        status_cell(x.get("verdict")),
    ]


def _slo_paths(slo: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """Where Locust's own HTML report and CSV files are."""
    paths, run_paths = as_map(slo.get("paths")), as_map(run.get("paths"))
    prefix = as_text(paths.get("csv_prefix"))
    found = [
        ("Locust HTML report", paths.get("html") or run_paths.get("html_report")),
        ("Locust CSV", f"{prefix}_stats.csv" if prefix else run_paths.get("stats_csv")),
        (
            "Locust CSV history",
            f"{prefix}_stats_history.csv" if prefix else run_paths.get("stats_history_csv"),
        ),
    ]
    return [f"- {label}: {code_span(path, 1000)}" for label, path in found if path]


def slo_section(slo: Mapping[str, Any], budget: Budget, level: str = "###") -> list[str]:
    """The SLO gate: target, window, rules, comparisons, reasons and Locust's files."""
    if not slo:
        return []
    lines = [f"{level} SLO gate: {escape_text(slo.get('verdict')).upper() or '-'}", ""]
    target = f"Target {code_span(slo.get('target')) or '-'}"
    if slo.get("baseline"):
        target += f", baseline {code_span(slo.get('baseline'))}"
    run = as_map(slo.get("run"))
    window = as_map(run.get("window"))
    if window:
        target += (
            f"; {format_number(window.get('requests'))} requests"
            f" in {format_seconds(window.get('duration_s'))}"
            f" after a {format_seconds(run.get('warmup_s'))} warm-up"
            f" ({escape_text(run.get('users'))} users)"
        )
    elif run:
        target += "; no measurements after the warm-up"
    if slo.get("duration_s"):
        target += f"; the gate took {format_seconds(slo.get('duration_s'))}"
    lines.append(target + ".")
    rules = as_maps(slo.get("rules"))
    if rules:
        headers = ["scope", "rule", "observed", "verdict", "note"]
        lines += ["", *table_rows(headers, rules, _rule_row, budget)]
    comparisons = as_maps(slo.get("comparisons"))
    if comparisons:
        headers = ["scope", "comparison", "baseline", "candidate", "allowed", "verdict"]
        lines += ["", *table_rows(headers, comparisons, _comparison_row, budget)]
    reasons = as_list(slo.get("reasons"))
    if reasons:
        lines += ["", *bullet_list(reasons, "reasons", budget, MAX_ERROR)]
    paths = _slo_paths(slo, run)
    if paths:
        lines += ["", *paths]
    return lines


def _switch_weights(switch: Mapping[str, Any], when: str) -> Mapping[str, Any]:
    weights = switch.get(f"weights_{when}")
    if isinstance(weights, Mapping):
        return weights
    colors = as_map(as_map(switch.get(when)).get("colors"))
    return {
        name: c.get("weight", 0) if c.get("serving", True) else 0
        for name, c in ((n, as_map(v)) for n, v in colors.items())
    }


def _switch_row(x: Mapping[str, Any]) -> list[str]:
    return [
        escape_text(x.get("action")),
        escape_text(x.get("live_before", as_map(x.get("before")).get("live"))) or "-",
        escape_text(x.get("live_after", as_map(x.get("after")).get("live"))) or "-",
        escape_text(weights_text(_switch_weights(x, "before"))) or "-",
        escape_text(weights_text(_switch_weights(x, "after"))) or "-",
        format_number(x.get("switch_ms")),
        format_number(x.get("duration_ms")),
    ]


def router_section(r: Mapping[str, Any], budget: Budget) -> list[str]:
    """The traffic switches: live color and weights before and after."""
    switches = as_maps(r.get("router"))
    if not switches:
        return []
    headers = ["action", "live before", "live after", "weights before", "weights after"]
    headers += ["switch ms", "total ms"]
    return ["### Traffic", "", *table_rows(headers, switches, _switch_row, budget)]


def watch_section(r: Mapping[str, Any], budget: Budget) -> list[str]:
    """The smoke and SLO checks through the router after the switch."""
    watch = as_map(r.get("watch"))
    smoke = smoke_section(as_map(watch.get("smoke")), budget, "####")
    slo = slo_section(as_map(watch.get("slo")), budget, "####")
    if not smoke and not slo:
        return []
    return ["### Watch after the switch", "", *smoke, *([""] if smoke and slo else []), *slo]
