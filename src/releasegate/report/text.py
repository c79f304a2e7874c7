"""A compact plain-text summary of a release result for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from releasegate.output import table
from releasegate.report.canary import canary_lines
from releasegate.report.values import (
    FIRST_RELEASE,
    MAX_ERROR,
    STORES,
    as_list,
    as_map,
    as_maps,
    as_text,
    files_size,
    format_number,
    format_seconds,
    format_size,
    one_line,
    status_word,
)
from releasegate.secrets import redact


def _text_plan(plan: Mapping[str, Any]) -> str | None:
    if not plan:
        return None
    parts = []
    for store in STORES:
        part = plan.get(store)
        if isinstance(part, Mapping):
            pending = len(as_list(part.get("revisions" if store == "postgres" else "pending")))
            parts.append(f"{store} {pending} pending")
    text = "plan: " + (", ".join(parts) or "nothing pending")
    contract = [as_text(c) for c in as_list(plan.get("contract"))]
    if contract:
        text += f" (contract: {', '.join(contract)})"
    deferred = [as_text(c) for c in as_list(plan.get("deferred"))]
    if deferred:
        text += f" (deferred: {', '.join(deferred)}: {as_text(plan.get('deferred_reason'))})"
    return text + ("; BLOCKED" if plan.get("blocked") else "")


def _text_backup(manifest: Mapping[str, Any], verify: Mapping[str, Any]) -> str | None:
    if not manifest and not verify:
        return None
    text = "backup:"
    if manifest:
        files = [f for s in as_maps(manifest.get("stores")) for f in as_maps(s.get("files"))]
        text += f" set {as_text(manifest.get('set_id'))}, {len(files)} files,"
        text += f" {format_size(files_size(files))}"
    if verify:
        differences = len(as_list(verify.get("differences")))
        text += "; verified" if verify.get("ok") else f"; verify FAILED ({differences} differences)"
    return text


def _text_gates(label: str, smoke: Mapping[str, Any], slo: Mapping[str, Any]) -> list[str]:
    lines = []
    if smoke:
        verdict = "passed" if smoke.get("ok") else "FAILED"
        checks = len(as_list(smoke.get("checks")))
        lines.append(f"{label}smoke: {verdict} ({as_text(smoke.get('passed'))}/{checks})")
    if slo:
        rules = as_maps(slo.get("rules"))
        text = f"{label}slo: {as_text(slo.get('verdict'))} ({len(rules)} rules"
        failed = [
            f"{as_text(x.get('scope'))} {as_text(x.get('rule'))}"
            for x in rules
            if x.get("verdict") != "pass"
        ]
        lines.append(text + (f", not passed: {', '.join(failed)})" if failed else ")"))
    return lines


def _text_rollback(rb: Mapping[str, Any]) -> list[str]:
    lines = [f"rollback: {one_line(rb.get('reason'), 200) or 'no reason recorded'}"]
    for s in as_maps(rb.get("steps")):
        name, status = one_line(s.get("name"), 60), one_line(s.get("status"), 20)
        lines.append(f"  {name}: {status} ({format_seconds(s.get('duration_s'))})")
    lines += [f"  kept: {one_line(k, 200)}" for k in as_list(rb.get("kept"))]
    verification = as_map(rb.get("verification"))
    if verification:
        checks = as_maps(verification.get("checks"))
        ok = sum(1 for c in checks if c.get("ok"))
        verdict = "passed" if verification.get("ok") else "FAILED"
        lines.append(f"  verification: {verdict} ({ok}/{len(checks)} checks match)")
        lines += [
            f"    {one_line(c.get('item'), 80)}: expected {one_line(c.get('expected'), 80)},"
            f" found {one_line(c.get('actual'), 80)}"
            for c in checks
            if not c.get("ok")
        ]
    manual = [as_text(m).strip() for m in as_list(rb.get("manual_steps"))]
    if manual:
        lines += ["", "manual steps (a human must run these, in order):"]
        lines += [f"  {line}" for m in manual for line in m.splitlines()]
    return lines


def render_text(result: Mapping[str, Any]) -> str:
    """A compact plain-text summary of a release for the terminal."""
    r = result
    service, kind = one_line(r.get("service"), 80), one_line(r.get("kind"), 40)
    head = f"{service or 'service'} {kind or 'release'}"
    if r.get("release_id") is not None:
        head += f" {one_line(r.get('release_id'), 40)}"
    head += f": {status_word(as_text(r.get('outcome')) or None)}"
    if r.get("exit_code") is not None:
        head += f" (exit code {one_line(r.get('exit_code'), 10)})"
    lines = [f"{head} in {format_seconds(r.get('duration_s'))}"]
    image = as_map(r.get("image"))
    if image:
        text = f"image {one_line(image.get('ref')) or '-'}"
        text += f" {one_line(image.get('digest'))}" if image.get("digest") else ""
        text += f"; previous {one_line(image.get('previous'))}" if image.get("previous") else ""
        lines.append(text)
    who = []
    if r.get("performer"):
        who.append(f"by {one_line(r.get('performer'), 80)}")
    if r.get("git_sha"):
        who.append(f"git {one_line(r.get('git_sha'))[:12]}")
    colors = as_map(r.get("colors"))
    if colors:
        before, target, after = (
            one_line(colors.get(k), 20) or "-" for k in ("live_before", "target", "live_after")
        )
        who.append(f"colors {before} -> {target}, live {after}")
    if who:
        lines.append("; ".join(who))
    if r.get("first_release"):
        lines.append(f"first release: {FIRST_RELEASE}")
    steps = as_maps(r.get("steps"))
    if steps:
        rows = [
            [
                one_line(s.get("name"), 40),
                one_line(s.get("status"), 20),
                format_seconds(s.get("duration_s")),
                one_line(s.get("summary"), 100),
            ]
            for s in steps
        ]
        lines += ["", table(["step", "status", "time", "summary"], rows)]
    watch = as_map(r.get("watch"))
    facts = [
        _text_plan(as_map(r.get("plan"))),
        _text_backup(as_map(r.get("backup")), as_map(r.get("backup_verify"))),
        *_text_gates("", as_map(r.get("smoke")), as_map(r.get("slo"))),
        *_text_gates("watch ", as_map(watch.get("smoke")), as_map(watch.get("slo"))),
    ]
    facts += canary_lines(r)
    for x in as_maps(r.get("router")):
        facts.append(
            f"router: {as_text(x.get('action'))} {as_text(x.get('live_before')) or '-'} ->"
            f" {as_text(x.get('live_after')) or '-'}"
            f" (switch {format_number(x.get('switch_ms'))} ms)"
        )
    shown = [one_line(f, 200) for f in facts if f]
    if shown:
        lines += ["", *shown]
    rb = as_map(r.get("rollback"))
    if rb:
        lines += ["", *_text_rollback(rb)]
    if as_text(r.get("error")).strip():
        lines += ["", f"error: {one_line(r.get('error'), MAX_ERROR)}"]
    return redact("\n".join(lines))
