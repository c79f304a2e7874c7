"""The SLO gate: load a target with Locust, judge each threshold rule, report.

:func:`run_gate` is the entry point (the CLI's ``releasegate gate``). It parses the
rules, runs Locust (:mod:`releasegate.gates.locust_runner`) against one URL (a color's
port or the router) and evaluates every rule on the post-warm-up window:

- a rule **passes** or **fails** on its observed value; it is **inconclusive** when its
  scope saw no request or the value cannot be measured (percentiles without window data);
- the whole run is **inconclusive**, never a pass, when the measurement cannot be trusted:
  fewer than ``min_requests`` requests after the warm-up, a CPU-saturated load
  generator, a run that hit its wall-clock timeout, or no window data at all;
- an early abort (a rule exceeded ``abort_factor`` times its limit while running) fails.

With a baseline (``--compare-with``, normally the live color) both colors get the same
load at the same time (two concurrent Locust processes, half the users each) and green
fails when its latency or error rate is worse than blue's by more than the configured
margins. Results render as a text table, JSON, Markdown and JUnit XML. The verdict
logic is in :mod:`releasegate.gates.slo_verdicts`, the result in
:mod:`releasegate.gates.slo_result`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from releasegate.errors import ConfigError
from releasegate.gates import synthetic
from releasegate.gates.locust_runner import (
    LocustPlan,
    check_locustfile,
    check_target,
    describe_plan,
    run_concurrently,
)
from releasegate.gates.locust_stats import WindowStats
from releasegate.gates.slo_result import GateResult
from releasegate.gates.slo_verdicts import (
    Comparison,
    abort_reason,
    combine,
    compare_windows,
    evaluate,
    run_problems,
)
from releasegate.gates.thresholds import parse_thresholds
from releasegate.secrets import mask_url

if TYPE_CHECKING:
    from releasegate.config import Settings, SloSection

# -- running the gate -------------------------------------------------------------------


def default_out_dir(root: Path) -> Path:
    """``<config dir>/.releasegate/gates/<UTC timestamp>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return root / ".releasegate" / "gates" / stamp


def run_slo_gate(
    slo: SloSection,
    root: Path,
    target: str | None,
    *,
    compare_with: str | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    synthetic_id: int | str | None = None,
) -> GateResult:
    """Run the gate described by an ``[slo]`` section against ``target``.

    ``root`` resolves a relative locustfile. Every input is validated before Locust starts:
    the rules, the URLs, the locustfile (compiled), the distributed settings. Every request
    carries ``X-Releasegate-Synthetic: <synthetic_id>`` (``manual`` when None); only the
    locustfile's tasks that ``slo.tags`` / ``slo.exclude_tags`` let through run, and a
    filter that leaves none is a :class:`ConfigError` before any load is sent.
    """
    marker = synthetic.marker_for(synthetic_id)
    thresholds = parse_thresholds(slo.thresholds)
    if not thresholds:
        raise ConfigError("slo.thresholds is empty: the gate has no rule to check")
    chosen = target or slo.host
    if not chosen:
        raise ConfigError("no target: pass --target URL or set slo.host")
    host = check_target(chosen)
    baseline = check_target(compare_with) if compare_with else None
    locustfile = slo.locustfile if slo.locustfile.is_absolute() else root / slo.locustfile
    check_locustfile(locustfile)
    if slo.processes > 1 and slo.workers > 0:
        raise ConfigError("slo.processes and slo.workers exclude each other")
    if baseline and slo.workers > 0:
        raise ConfigError("the comparative gate runs locally: set slo.workers = 0")
    out = (out_dir or default_out_dir(root)).resolve()

    def plan(url: str, where: Path, users: int, rate: float) -> LocustPlan:
        return LocustPlan(
            locustfile=locustfile.resolve(),
            host=url,
            out_dir=where,
            users=users,
            spawn_rate=rate,
            warmup=slo.warmup,
            duration=slo.duration,
            processes=slo.processes,
            workers=slo.workers,
            master_bind_host=slo.master_bind_host,
            master_bind_port=slo.master_bind_port,
            synthetic=marker,
            tags=None if slo.tags is None else tuple(slo.tags),
            exclude_tags=tuple(slo.exclude_tags or ()) or None,
        )

    if baseline:
        users = max(1, slo.users // 2)
        rate = slo.spawn_rate / 2
        plans = [plan(host, out / "green", users, rate), plan(baseline, out / "blue", users, rate)]
    else:
        plans = [plan(host, out, slo.users, slo.spawn_rate)]
    if progress:
        for label, item in zip(("green", "blue"), plans, strict=False):
            progress(f"{label + ' ' if baseline else ''}{describe_plan(item)}")

    factor = slo.abort_factor

    def abort_check(index: int, window: WindowStats) -> str | None:
        if factor is None or index != 0:
            return None
        return abort_reason(thresholds, window, factor=factor, min_requests=slo.min_requests)

    started = time.monotonic()
    runs = run_concurrently(plans, abort_check if factor else None)
    run = runs[0]
    baseline_run = runs[1] if baseline else None
    problems = run_problems(run, "green" if baseline else "")
    if baseline_run is not None:
        problems += run_problems(baseline_run, "blue")
        if baseline_run.window is None or baseline_run.window.requests < slo.min_requests:
            count = 0 if baseline_run.window is None else baseline_run.window.requests
            problems.append(
                f"blue: only {count} requests after the warm-up"
                f" (min_requests is {slo.min_requests})"
            )
    evaluation = evaluate(
        thresholds,
        run.window,
        min_requests=slo.min_requests,
        problems=problems,
        aborted=run.aborted,
    )
    comparisons: list[Comparison] = []
    if baseline_run is not None:
        comparisons = compare_windows(baseline_run.window, run.window, slo.compare)
        evaluation = combine(evaluation, comparisons)
    return GateResult(
        target=mask_url(host),
        verdict=evaluation.verdict,
        reasons=evaluation.reasons,
        rules=evaluation.rules,
        run=run,
        out_dir=out,
        baseline=mask_url(baseline) if baseline else None,
        baseline_run=baseline_run,
        comparisons=comparisons,
        duration_s=time.monotonic() - started,
        marker=marker,
    )


def run_gate(
    settings: Settings,
    target: str | None = None,
    *,
    compare_with: str | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    synthetic_id: int | str | None = None,
) -> GateResult:
    """The SLO gate of a loaded config (its ``[slo]`` section); see :func:`run_slo_gate`."""
    return run_slo_gate(
        settings.raw.slo,
        settings.root,
        target,
        compare_with=compare_with,
        out_dir=out_dir,
        progress=progress,
        synthetic_id=synthetic_id,
    )
