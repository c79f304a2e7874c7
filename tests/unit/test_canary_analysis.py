"""A canary step's verdict on per-color traffic: rules on green, green against blue."""

from __future__ import annotations

import json

import pytest

from releasegate.canary.analysis import judge_step, step_thresholds, wilson_lower
from releasegate.canary.traffic import ColorTraffic
from releasegate.config import SloCompareSection
from releasegate.errors import ConfigError

COMPARE = SloCompareSection(
    enabled=True, latency_margin=0.2, latency_slack=0.005, error_rate_margin=0.01
)


def traffic(
    color: str, latencies: list[float], errors: int = 0, seconds: float = 10.0
) -> ColorTraffic:
    return ColorTraffic(
        color=color,
        requests=len(latencies),
        errors=errors,
        latencies_ms=tuple(sorted(latencies)),
        duration_s=seconds,
    )


def spread(count: int, low: float, high: float) -> list[float]:
    """``count`` latencies evenly from ``low`` to ``high`` ms."""
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def test_a_healthy_green_passes_its_rules_and_the_comparison() -> None:
    green = traffic("green", spread(100, 10, 50))
    blue = traffic("blue", spread(1900, 10, 50))
    verdict = judge_step(
        green,
        blue,
        rules={"total": ["p95 < 60ms", "error_rate < 1%"]},
        compare=COMPARE,
        min_requests=50,
    )
    assert verdict.verdict == "pass", verdict.reason
    assert verdict.reason == (
        "green served 100 requests: 2 rule(s) met,"
        " no worse than blue (1900 requests) within the margins"
    )
    assert verdict.green["requests"] == 100 and verdict.blue["requests"] == 1900
    assert [rule["verdict"] for rule in verdict.rules] == ["pass", "pass"]
    assert {c["metric"] for c in verdict.comparisons} == {"p95", "error_rate"}
    json.dumps(verdict.to_dict())


def test_too_few_requests_on_green_is_inconclusive_and_says_how_many() -> None:
    verdict = judge_step(
        traffic("green", spread(12, 10, 20)),
        traffic("blue", spread(500, 10, 20)),
        rules={"total": ["p95 < 60ms"]},
        compare=COMPARE,
        min_requests=50,
    )
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == "green served 12 of the 50 requests needed"
    assert verdict.green["requests"] == 12


def test_no_green_traffic_at_all_never_passes() -> None:
    verdict = judge_step(
        ColorTraffic("green"),
        traffic("blue", spread(500, 10, 20)),
        rules={},
        compare=None,
        min_requests=1,
    )
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == "green served 0 of the 1 requests needed"


def test_too_few_blue_requests_for_the_comparison_is_inconclusive() -> None:
    verdict = judge_step(
        traffic("green", spread(100, 10, 20)),
        traffic("blue", spread(30, 10, 20)),
        rules={},
        compare=COMPARE,
        min_requests=50,
    )
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == "blue served 30 of the 50 requests needed"


def test_without_comparison_blue_needs_no_requests() -> None:
    verdict = judge_step(
        traffic("green", spread(100, 10, 20)),
        ColorTraffic("blue"),
        rules={"total": ["p99 <= 20ms"]},
        compare=SloCompareSection(enabled=False),
        min_requests=50,
    )
    assert verdict.verdict == "pass", verdict.reason
    assert verdict.comparisons == ()


def test_green_breaking_an_absolute_rule_fails_with_the_observed_value() -> None:
    green = traffic("green", spread(100, 10, 20), errors=5)
    verdict = judge_step(
        green,
        traffic("blue", spread(500, 10, 20), errors=5),
        rules={"total": ["error_rate < 2%"]},
        compare=None,
        min_requests=50,
    )
    assert verdict.verdict == "fail"
    assert verdict.reason == "total: error_rate < 2% (observed 5.00%)"
    assert verdict.green["error_rate"] == 0.05


def test_green_slower_than_blue_beyond_the_margin_fails() -> None:
    # Green's p95 (95ms) is above blue's (47.5ms) * 1.2 + 5ms = 62ms, under its own cap.
    verdict = judge_step(
        traffic("green", spread(101, 0, 100)),
        traffic("blue", spread(101, 0, 50)),
        rules={"total": ["p95 < 500ms"]},
        compare=COMPARE,
        min_requests=50,
    )
    assert verdict.verdict == "fail"
    assert "green p95 95.0ms is worse than blue's 47.5ms" in verdict.reason
    assert "allowed 62.0ms" in verdict.reason


def test_green_errors_beyond_blue_plus_the_margin_fail() -> None:
    verdict = judge_step(
        traffic("green", spread(100, 10, 20), errors=3),
        traffic("blue", spread(1000, 10, 20), errors=10),
        rules={},
        compare=COMPARE,
        min_requests=50,
    )
    # 3% > 1% + 1% margin
    assert verdict.verdict == "fail"
    assert "green error_rate 3.00% is worse than blue's 1.00%" in verdict.reason


def test_rps_rules_use_the_window_length() -> None:
    green = traffic("green", spread(100, 10, 20), seconds=20.0)  # 5/s
    verdict = judge_step(
        green, ColorTraffic("blue"), rules={"total": ["rps >= 10"]}, compare=None, min_requests=1
    )
    assert verdict.verdict == "fail"
    assert verdict.reason == "total: rps >= 10/s (observed 5.0/s)"


def test_rules_are_checked_with_the_threshold_grammar() -> None:
    with pytest.raises(ConfigError, match="p95 needs a unit"):
        judge_step(
            traffic("green", spread(100, 10, 20)),
            ColorTraffic("blue"),
            rules={"total": ["p95 < 300"]},
            compare=None,
            min_requests=1,
        )
    with pytest.raises(ConfigError, match="use the scope 'total', not 'GET /notes'"):
        step_thresholds({"GET /notes": ["p95 < 300ms"]})
    with pytest.raises(ValueError, match="min_requests"):
        judge_step(
            ColorTraffic("green"), ColorTraffic("blue"), rules={}, compare=None, min_requests=0
        )


def test_wilson_lower_bound() -> None:
    assert wilson_lower(0, 10) == 0.0
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(10, 10) == pytest.approx(0.5116, abs=1e-4)
    assert wilson_lower(1, 10) < 0.01 < wilson_lower(3, 10)


def early(green: ColorTraffic, rules: list[str], blue: ColorTraffic | None = None) -> str:
    verdict = judge_step(
        green,
        blue or ColorTraffic("blue"),
        rules={"total": rules},
        compare=COMPARE if blue is not None else None,
        min_requests=100,
    )
    return f"{verdict.verdict}: {verdict.reason}"


def test_a_failing_green_fails_before_min_requests() -> None:
    broken = traffic("green", [5.0] * 10, errors=10)
    assert early(broken, ["error_rate < 1%"]) == (
        "fail: error_rate < 1%: 10 of 10 requests failed, beyond the limit with 99.9%"
        " confidence (before the 100 requests of a full verdict)"
    )
    # Nine requests are not enough to fail early, one error in ten is not certain.
    assert early(traffic("green", [5.0] * 9, errors=9), ["error_rate < 1%"]).startswith(
        "inconclusive: green served 9 of the 100"
    )
    assert early(traffic("green", [5.0] * 10, errors=1), ["error_rate < 5%"]).startswith(
        "inconclusive"
    )


def test_slow_requests_fail_a_percentile_or_max_rule_early() -> None:
    half_slow = traffic("green", [50.0] * 10 + [150.0] * 10)
    assert early(half_slow, ["p95 < 100ms"]) == (
        "fail: p95 < 100ms: 10 of 20 requests took at least 100.0ms, beyond the limit"
        " with 99.9% confidence (before the 100 requests of a full verdict)"
    )
    # At the limit: "<=" lets it pass, "<" does not.
    at_limit = traffic("green", [100.0] * 20)
    assert early(at_limit, ["p95 <= 100ms"]).startswith("inconclusive")
    assert early(at_limit, ["p95 < 100ms"]).startswith("fail")
    one_slow = traffic("green", [50.0] * 19 + [600.0])
    assert early(one_slow, ["max < 500ms"]) == (
        "fail: max < 500ms: 1 of 20 requests took at least 500.0ms"
        " (before the 100 requests of a full verdict)"
    )
    assert early(one_slow, ["p95 < 500ms"]).startswith("inconclusive")


def test_green_worse_than_blue_fails_early() -> None:
    blue = traffic("blue", spread(1000, 10, 50), errors=0)
    assert early(traffic("green", spread(20, 10, 50), errors=5), [], blue) == (
        "fail: error_rate <= blue +1%: 5 of 20 requests failed, beyond the limit with 99.9%"
        " confidence (before the 100 requests of a full verdict)"
    )
    slower = traffic("green", spread(20, 100, 200))
    assert early(slower, [], blue).startswith(
        "fail: p95 <= blue's 48.0ms + margins: 20 of 20 requests took over 62.6ms"
    )
    # A healthy green is never passed early.
    assert early(traffic("green", spread(20, 10, 50)), [], blue).startswith("inconclusive")


def test_a_canary_of_blue_names_its_colors() -> None:
    # Green is live; the new version runs as blue.
    new, live = traffic("blue", spread(101, 0, 100), errors=5), traffic("green", spread(101, 0, 50))
    verdict = judge_step(new, live, rules={}, compare=COMPARE, min_requests=50)
    assert verdict.verdict == "fail"
    assert verdict.reason == (
        "total: blue p95 95.0ms is worse than green's 47.5ms beyond the margin (allowed 62.0ms);"
        " total: blue error_rate 4.95% is worse than green's 0.00% beyond the margin"
        " (allowed 1.00%)"
    )
    assert {c["rule"] for c in verdict.comparisons} == {
        "p95 <= green +20% +5ms",
        "error_rate <= green +1%",
    }
    assert verdict.green["color"] == "blue" and verdict.blue["color"] == "green"
    early = judge_step(
        traffic("blue", spread(20, 10, 50), errors=5),
        traffic("green", spread(1000, 10, 50)),
        rules={},
        compare=COMPARE,
        min_requests=100,
    )
    assert early.reason.startswith("error_rate <= green +1%: 5 of 20 requests failed")
    passing = judge_step(
        traffic("blue", spread(100, 10, 50)),
        traffic("green", spread(1000, 10, 50)),
        rules={},
        compare=COMPARE,
        min_requests=50,
    )
    assert passing.reason == (
        "blue served 100 requests: no worse than green (1000 requests) within the margins"
    )
