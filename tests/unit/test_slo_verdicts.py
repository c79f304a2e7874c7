"""Verdict logic on parsed statistics, the parsers of Locust's outputs, and the reports."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from xml.etree import ElementTree

import pytest

from releasegate.config import SloCompareSection
from releasegate.gates.histogram import Histogram
from releasegate.gates.locust_runner import (
    EndpointStats,
    LocustPlan,
    LocustRun,
    WindowStats,
    log_has_cpu_warning,
    parse_failures_csv,
    parse_history_csv,
    parse_stats_csv,
    window_from_dict,
    window_from_history,
)
from releasegate.gates.slo_result import GateResult
from releasegate.gates.slo_verdicts import (
    Verdict,
    abort_reason,
    combine,
    compare_windows,
    evaluate,
    run_problems,
)
from releasegate.gates.thresholds import parse_thresholds


def entry(method: str, name: str, latencies: list[float], failures: int = 0) -> EndpointStats:
    histogram = Histogram()
    for ms in latencies:
        histogram.add(ms)
    return EndpointStats(method, name, len(latencies), failures, histogram)


def window(*entries: EndpointStats, duration: float = 10.0) -> WindowStats:
    return WindowStats(duration_s=duration, entries=list(entries))


def uniform(n: int, low: float, high: float) -> list[float]:
    """n evenly spaced latencies from low to high."""
    return [low + (high - low) * i / (n - 1) for i in range(n)]


RULES = parse_thresholds(
    {
        "total": ["p95 < 300ms", "error_rate < 1%", "rps >= 10"],
        "GET /documents": ["p99 <= 400ms"],
    }
)


# -- histogram ------------------------------------------------------------------------


def test_histogram_percentiles_are_nearest_rank_within_a_tenth_of_a_percent() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(3.5, 0.6) for _ in range(20_000)]
    histogram = Histogram()
    for value in samples:
        histogram.add(value)
    ordered = sorted(samples)
    for q in (50, 90, 95, 99, 99.9):
        exact = ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]
        got = histogram.percentile(q)
        assert got is not None
        assert got == pytest.approx(exact, rel=0.0011)
    assert histogram.min == min(samples) and histogram.max == max(samples)
    assert histogram.mean == pytest.approx(sum(samples) / len(samples))


def test_histogram_merge_and_round_trip() -> None:
    a, b = Histogram(), Histogram()
    for ms in uniform(100, 1, 100):
        a.add(ms)
    for ms in uniform(100, 101, 200):
        b.add(ms)
    a.merge(Histogram.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert a.count == 200
    assert a.percentile(50) == pytest.approx(100, rel=0.002)
    assert a.percentile(100) == 200
    assert Histogram().percentile(95) is None
    zero = Histogram()
    zero.add(0.0)
    assert zero.percentile(50) == 0.0


# -- verdicts -------------------------------------------------------------------------


def test_all_rules_pass() -> None:
    stats = window(
        entry("GET", "GET /documents", uniform(200, 10, 200)),
        entry("POST", "POST /sessions", uniform(100, 5, 50)),
    )
    result = evaluate(RULES, stats, min_requests=100)
    assert result.verdict is Verdict.PASS
    assert [r.verdict for r in result.rules] == [Verdict.PASS] * 4
    assert result.rules[2].observed == pytest.approx(30.0)  # 300 requests in 10 s
    assert result.reasons == []


def test_latency_breach_fails_and_names_the_rule() -> None:
    stats = window(entry("GET", "GET /documents", uniform(400, 100, 500)))
    result = evaluate(RULES, stats, min_requests=100)
    assert result.verdict is Verdict.FAIL
    by_rule = {r.rule: r for r in result.rules}
    assert by_rule["p95 < 300ms"].verdict is Verdict.FAIL
    assert by_rule["p95 < 300ms"].observed == pytest.approx(480, rel=0.01)
    assert by_rule["p99 <= 400ms"].verdict is Verdict.FAIL
    assert by_rule["error_rate < 1%"].verdict is Verdict.PASS
    assert any(reason.startswith("total: p95 < 300ms (observed 4") for reason in result.reasons)


def test_boundary_uses_the_operator() -> None:
    stats = window(entry("GET", "x", [300.0] * 200))
    strict = evaluate(parse_thresholds({"total": ["p95 < 300ms"]}), stats, min_requests=1)
    inclusive = evaluate(parse_thresholds({"total": ["p95 <= 300ms"]}), stats, min_requests=1)
    assert strict.verdict is Verdict.FAIL
    assert inclusive.verdict is Verdict.PASS


def test_error_rate_breach_fails() -> None:
    stats = window(entry("GET", "GET /documents", uniform(300, 1, 5), failures=300))
    result = evaluate(RULES, stats, min_requests=100)
    assert result.verdict is Verdict.FAIL
    rate = next(r for r in result.rules if r.metric == "error_rate")
    assert rate.observed == 1.0 and rate.verdict is Verdict.FAIL
    assert rate.observed_text == "100.00%"


def test_too_few_requests_is_inconclusive_never_pass() -> None:
    stats = window(entry("GET", "GET /documents", uniform(50, 1, 5)), duration=1.0)
    result = evaluate(RULES, stats, min_requests=200)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert not result.conclusive
    assert "only 50 requests after the warm-up (min_requests is 200)" in result.reasons
    assert all(r.verdict is Verdict.INCONCLUSIVE for r in result.rules)
    assert result.rules[0].note.startswith("would pass")
    assert result.rules[0].observed is not None  # the figure is still reported


def test_run_level_problems_make_even_failing_rules_inconclusive() -> None:
    stats = window(entry("GET", "GET /documents", uniform(400, 500, 900)))
    result = evaluate(RULES, stats, min_requests=10, problems=["the load generator was saturated"])
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.reasons == ["the load generator was saturated"]
    assert result.rules[0].note.startswith("would fail")


def test_no_window_is_inconclusive() -> None:
    result = evaluate(RULES, None, min_requests=1)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "no requests were measured after the warm-up" in result.reasons
    assert all(r.observed is None for r in result.rules)


def test_unknown_scope_is_inconclusive_but_a_failure_elsewhere_still_fails() -> None:
    rules = parse_thresholds({"total": ["p95 < 300ms"], "GET /nothing": ["p95 < 100ms"]})
    passing = window(entry("GET", "/a", uniform(300, 1, 10)))
    result = evaluate(rules, passing, min_requests=10)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "no requests named 'GET /nothing'" in result.rules[1].note
    failing = window(entry("GET", "/a", uniform(300, 400, 500)))
    assert evaluate(rules, failing, min_requests=10).verdict is Verdict.FAIL


def test_aborted_run_fails() -> None:
    stats = window(entry("GET", "x", uniform(300, 1, 10)))
    result = evaluate(RULES, stats, min_requests=10, aborted="total: p95 < 300ms observed 2s")
    assert result.verdict is Verdict.FAIL
    assert result.reasons[0] == "aborted early: total: p95 < 300ms observed 2s"


def test_scope_matches_name_or_method_and_name() -> None:
    stats = window(
        entry("GET", "/documents", uniform(100, 1, 10)),
        entry("POST", "/documents", uniform(100, 100, 110), failures=10),
    )
    assert stats.scope("/documents").requests == 200
    assert stats.scope("POST /documents").requests == 100
    assert stats.scope("POST /documents").metric("error_rate") == pytest.approx(0.1)
    assert stats.scope("GET /documents").metric("max") == pytest.approx(10)
    assert stats.scope("total").metric("p50") == pytest.approx(10, rel=0.002)
    assert stats.scope("nope").requests == 0
    assert stats.scope("nope").metric("requests") == 0.0
    assert stats.scope("nope").metric("p95") is None


def test_history_data_has_no_percentiles_so_their_rules_are_inconclusive() -> None:
    stats = WindowStats(
        duration_s=10.0,
        entries=[EndpointStats("GET", "x", 500, 0, avg_ms=12.0)],
        source="history",
    )
    rules = parse_thresholds({"total": ["p95 < 300ms", "avg < 20ms", "error_rate < 1%"]})
    result = evaluate(rules, stats, min_requests=100)
    assert [r.verdict for r in result.rules] == [
        Verdict.INCONCLUSIVE,
        Verdict.PASS,
        Verdict.PASS,
    ]
    assert "cannot be measured from history data" in result.rules[0].note
    assert result.verdict is Verdict.INCONCLUSIVE


# -- early abort ----------------------------------------------------------------------


def test_abort_on_a_bad_breach_only_with_enough_requests() -> None:
    slow = window(entry("GET", "GET /documents", uniform(300, 2000, 3000)))
    reason = abort_reason(RULES, slow, factor=3, min_requests=100)
    assert reason is not None and reason.startswith("total: p95 < 300ms observed")
    assert abort_reason(RULES, slow, factor=3, min_requests=1000) is None  # too early
    mild = window(entry("GET", "GET /documents", uniform(300, 300, 600)))
    assert abort_reason(RULES, mild, factor=3, min_requests=100) is None  # fails, not 3x


def test_abort_ignores_lower_bounds_and_counts() -> None:
    rules = parse_thresholds({"total": ["rps > 1000", "requests >= 100000", "p50 > 500ms"]})
    stats = window(entry("GET", "x", uniform(300, 1, 2)), duration=100.0)
    assert abort_reason(rules, stats, factor=2, min_requests=10) is None


def test_abort_on_errors() -> None:
    stats = window(entry("GET", "x", uniform(300, 1, 2), failures=300))
    reason = abort_reason(RULES, stats, factor=5, min_requests=100)
    assert reason is not None and "error_rate < 1%" in reason


# -- comparative gate -----------------------------------------------------------------


def test_comparison_margins() -> None:
    settings = SloCompareSection(latency_margin=0.2, latency_slack=0.005, error_rate_margin=0.01)
    blue = window(entry("GET", "x", [100.0] * 500))
    green_ok = window(entry("GET", "x", [124.0] * 500, failures=4))  # allowed 125 ms, 1%
    green_slow = window(entry("GET", "x", [126.0] * 500))
    green_errors = window(entry("GET", "x", [100.0] * 500, failures=10))  # 2%
    ok = compare_windows(blue, green_ok, settings)
    assert [(c.metric, c.verdict) for c in ok] == [
        ("p95", Verdict.PASS),
        ("error_rate", Verdict.PASS),
    ]
    assert ok[0].allowed == pytest.approx(125.0)
    slow = compare_windows(blue, green_slow, settings)
    assert slow[0].verdict is Verdict.FAIL and slow[1].verdict is Verdict.PASS
    errors = compare_windows(blue, green_errors, settings)
    assert errors[0].verdict is Verdict.PASS and errors[1].verdict is Verdict.FAIL
    missing = compare_windows(None, green_ok, settings)
    assert all(c.verdict is Verdict.INCONCLUSIVE for c in missing)


def test_combine_folds_comparisons_into_the_verdict() -> None:
    settings = SloCompareSection()
    blue = window(entry("GET", "x", [100.0] * 500))
    green = window(entry("GET", "x", [200.0] * 500))
    rules = parse_thresholds({"total": ["p95 < 300ms"]})
    own = evaluate(rules, green, min_requests=100)
    assert own.verdict is Verdict.PASS
    combined = combine(own, compare_windows(blue, green, settings))
    assert combined.verdict is Verdict.FAIL
    assert any("worse than blue's 100.0ms" in reason for reason in combined.reasons)
    # When the run is not conclusive, comparisons cannot rescue or fail it.
    thin = evaluate(rules, green, min_requests=10_000)
    comparisons = compare_windows(blue, green, settings)
    assert combine(thin, comparisons).verdict is Verdict.INCONCLUSIVE
    assert all(c.verdict is Verdict.INCONCLUSIVE for c in comparisons)


# -- Locust's outputs -----------------------------------------------------------------

STATS_CSV = """\
Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,\
80%,90%,95%,98%,99%,99.9%,99.99%,100%
GET,GET /documents,20,2,4,6.06,2.33,47.51,626.0,11.08,1.1,4,4,5,5,7,48,48,48,48,48,48
,Aggregated,20,2,4,6.06,2.33,47.51,626.0,11.08,1.1,4,4,5,5,7,48,48,48,48,48,48
"""

HISTORY_CSV = """\
Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,\
99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,\
Total Average Response Time,Total Min Response Time,Total Max Response Time,\
Total Average Content Size
1000,0,,Aggregated,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0.0,0,0,0
1001,2,GET,/a,0.0,0.0,0,0,0,0,0,0,0,0,0,0,0,10,0,3,10.0,2,47,626
1001,2,,Aggregated,0.0,0.0,0,0,0,0,0,0,0,0,0,0,0,10,0,3,10.0,2,47,626
1002,2,GET,/a,5.0,0.0,3,3,3,3,3,3,3,3,3,3,3,30,1,3,20.0,2,47,626
1002,2,,Aggregated,5.0,0.0,3,3,3,3,3,3,3,3,3,3,3,30,1,3,20.0,2,47,626
1004,2,GET,/a,5.0,0.0,3,3,3,3,3,3,3,3,3,3,3,70,5,3,25.0,2,47,626
1004,2,,Aggregated,5.0,0.0,3,3,3,3,3,3,3,3,3,3,3,70,5,3,25.0,2,47,626
"""

FAILURES_CSV = """\
Method,Name,Error,Occurrences,First Seen,Last Seen
GET,GET /documents,HTTPError('500 Server Error'),2,2026-01-01 00:00:00,2026-01-01 00:00:01
"""


def test_parse_locust_csvs(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text(STATS_CSV)
    (tmp_path / "h.csv").write_text(HISTORY_CSV)
    (tmp_path / "f.csv").write_text(FAILURES_CSV)
    stats = parse_stats_csv(tmp_path / "s.csv")
    assert [(r.method, r.name, r.requests, r.failures) for r in stats] == [
        ("GET", "GET /documents", 20, 2),
        ("", "Aggregated", 20, 2),
    ]
    assert stats[0].percentiles["95%"] == 48 and stats[0].avg_ms == pytest.approx(6.06)
    history = parse_history_csv(tmp_path / "h.csv")
    assert len(history) == 7 and history[-1].total_requests == 70
    assert history[0].total_avg_ms == 0.0
    failures = parse_failures_csv(tmp_path / "f.csv")
    assert failures[0].occurrences == 2 and "500" in failures[0].error
    assert parse_stats_csv(tmp_path / "missing.csv") == []


def test_window_from_history_differences_the_cumulative_totals(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text(HISTORY_CSV)
    stats = window_from_history(parse_history_csv(tmp_path / "h.csv"), warmup=2)
    assert stats is not None and stats.source == "history"
    total = stats.scope("total")
    # boundary row at t=1002 (30 requests, 1 failure, avg 20): 40 requests, 4 failures after it
    assert (total.requests, total.failures) == (40, 4)
    assert stats.duration_s == 2
    assert total.metric("avg") == pytest.approx((25.0 * 70 - 20.0 * 30) / 40)
    assert total.metric("rps") == pytest.approx(20.0)
    assert total.metric("p95") is None
    assert window_from_history([], warmup=1) is None


def test_window_document_from_the_plugin() -> None:
    histogram = Histogram()
    for ms in uniform(100, 10, 20):
        histogram.add(ms)
    document = {
        "version": 1,
        "final": True,
        "warmup": 5,
        "started_at": 1000.0,
        "window_start": 1005.0,
        "window_end": 1015.0,
        "cpu_warnings": [1003.0, 1007.5],
        "entries": [
            {
                "method": "GET",
                "name": "/a",
                "requests": 100,
                "failures": 3,
                "histogram": histogram.to_dict(),
            }
        ],
    }
    stats = window_from_dict(json.loads(json.dumps(document)))
    assert stats.duration_s == 10.0 and stats.final and stats.requests == 100
    assert stats.cpu_warnings == 1  # the warning during the warm-up does not count
    assert stats.scope("total").metric("error_rate") == pytest.approx(0.03)
    assert stats.scope("/a").metric("max") == 20.0


def test_cpu_warning_detection_in_locust_logs() -> None:
    warning = (
        "[2026-01-01 10:00:05,001] vm/WARNING/root: CPU usage above 90%! This may constrain"
        " your throughput and may even give inconsistent response time measurements!"
    )
    assert log_has_cpu_warning(warning)
    assert log_has_cpu_warning("WARNING/locust.runners: CPU usage was too high at some point")
    assert log_has_cpu_warning("Worker vm_abc (index 0) exceeded cpu threshold (will only log")
    assert not log_has_cpu_warning("INFO/locust.main: Starting Locust 2.47.0\nCPU: fine")


def _run(tmp_path: Path, stats: WindowStats | None, **kw: object) -> LocustRun:
    plan = LocustPlan(
        locustfile=tmp_path / "locustfile.py",
        host="http://user:s3cr3t-pw@127.0.0.1:9",
        out_dir=tmp_path,
        users=4,
        spawn_rate=2,
        warmup=1,
        duration=3,
    )
    return LocustRun(plan=plan, exit_code=0, wall_s=4.5, window=stats, **kw)  # type: ignore[arg-type]


def test_saturation_from_plugin_measurements_or_log(tmp_path: Path) -> None:
    healthy = window(entry("GET", "x", [1.0]))
    healthy.cpu_utilisation, healthy.loop_lag_p90_ms = 0.85, 12.0
    assert healthy.saturation() == []
    assert not _run(tmp_path, healthy, cpu_warning_in_log=True).saturated  # warm-up only
    warned = window(entry("GET", "x", [1.0]))
    warned.cpu_warnings = 1
    assert warned.saturation() == ["Locust warned that its CPU usage was above 90%"]
    busy = window(entry("GET", "x", [1.0]))
    busy.cpu_utilisation = 0.93
    assert busy.saturation() == ["a Locust process used 93% of a CPU core"]
    lagging = window(entry("GET", "x", [1.0]))
    lagging.loop_lag_p90_ms = 80.0
    assert lagging.saturation() == ["Locust's event loop lagged 80ms (p90)"]
    assert _run(tmp_path, None, cpu_warning_in_log=True).saturated
    assert not _run(tmp_path, None).saturated
    problems = run_problems(_run(tmp_path, busy, timed_out=True), "green")
    assert problems[0].startswith("green: the load generator was saturated (a Locust process")
    assert problems[1].startswith("green: Locust hit its wall-clock timeout")


def test_load_generator_health_from_the_window_document() -> None:
    calm, busy, few = Histogram(), Histogram(), Histogram()
    few.add(400.0)
    few.add(500.0)
    for ms in uniform(50, 0.1, 3):
        calm.add(ms)
    for ms in uniform(50, 20, 120):
        busy.add(ms)
    nodes = {
        "local": {"cpu_s": 0.2, "wall_s": 10.0, "lag": calm.to_dict()},
        "worker-1": {"cpu_s": 7.0, "wall_s": 10.0, "lag": busy.to_dict()},
        "worker-2": {"cpu_s": 0.5, "wall_s": 0.5, "lag": Histogram().to_dict()},  # too short
        "worker-3": {"cpu_s": 0.1, "wall_s": 9.0, "lag": few.to_dict()},  # too few samples
    }
    stats = window_from_dict(
        {"window_start": 0.0, "window_end": 10.0, "final": True, "nodes": nodes, "entries": []}
    )
    assert stats.cpu_utilisation == pytest.approx(0.7)
    assert stats.loop_lag_p90_ms == pytest.approx(110, rel=0.03)  # p90 of 20..120 ms
    assert stats.saturation() == ["Locust's event loop lagged 110ms (p90)"]


def test_reports_text_markdown_json_junit(tmp_path: Path) -> None:
    stats = window(entry("GET", "GET /documents", uniform(400, 100, 500)))
    evaluation = evaluate(RULES, stats, min_requests=100)
    run = _run(tmp_path, stats)
    result = GateResult(
        target=run.target,
        verdict=evaluation.verdict,
        reasons=evaluation.reasons,
        rules=evaluation.rules,
        run=run,
        out_dir=tmp_path,
    )
    text = result.render_text()
    assert text.startswith("SLO gate: FAIL  target http://user:***@127.0.0.1:9")
    assert "p95 < 300ms" in text and str(tmp_path / "locust_report.html") in text
    markdown = result.render_markdown()
    assert "| total | p95 < 300ms |" in markdown and "**FAIL**" in markdown
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdict"] == "fail"
    assert data["run"]["paths"]["html_report"].endswith("locust_report.html")
    assert data["run"]["paths"]["stats_history_csv"].endswith("locust_stats_history.csv")
    assert "s3cr3t-pw" not in json.dumps(data) + text + markdown

    xml = result.render_junit()
    assert "s3cr3t-pw" not in xml
    suite = ElementTree.fromstring(xml).find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(RULES) == int(suite.get("tests", "0"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["p95 < 300ms", "p99 <= 400ms"]
    assert suite.get("failures") == "2" and suite.get("errors") == "0"
    assert cases[0].get("classname") == "slo.total"


def test_junit_marks_inconclusive_rules_as_errors(tmp_path: Path) -> None:
    stats = window(entry("GET", "x", uniform(20, 1, 2)))
    evaluation = evaluate(RULES, stats, min_requests=1000)
    run = _run(tmp_path, stats)
    result = GateResult(
        run.target, evaluation.verdict, evaluation.reasons, evaluation.rules, run, tmp_path
    )
    suite = ElementTree.fromstring(result.render_junit()).find("testsuite")
    assert suite is not None
    assert suite.get("errors") == str(len(RULES)) and suite.get("failures") == "0"
    errors = [c.find("error") for c in suite.findall("testcase")]
    assert all(e is not None and e.get("type") == "inconclusive" for e in errors)
