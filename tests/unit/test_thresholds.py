"""The threshold grammar: every metric, unit and operator, the boundary, every malformed form."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.config import load_config
from releasegate.errors import ConfigError
from releasegate.gates.thresholds import (
    METRICS,
    parse_ratio,
    parse_threshold,
    parse_thresholds,
)


@pytest.mark.parametrize(
    ("rule", "metric", "op", "limit"),
    [
        ("p95 < 300ms", "p95", "<", 300.0),
        ("p50<=20ms", "p50", "<=", 20.0),
        ("p90 > 1ms", "p90", ">", 1.0),
        ("p99 >= 0.5s", "p99", ">=", 500.0),
        ("p99.9 < 2s", "p99.9", "<", 2000.0),
        ("avg < 12.5ms", "avg", "<", 12.5),
        ("min >= 0ms", "min", ">=", 0.0),
        ("max < 1 s", "max", "<", 1000.0),
        ("  p95   <   300ms  ", "p95", "<", 300.0),
        ("error_rate < 1%", "error_rate", "<", 0.01),
        ("error_rate <= 0.05", "error_rate", "<=", 0.05),
        ("error_rate <= 0%", "error_rate", "<=", 0.0),
        ("error_rate < 100%", "error_rate", "<", 1.0),
        ("rps > 50", "rps", ">", 50.0),
        ("rps >= 12.5/s", "rps", ">=", 12.5),
        ("requests >= 1000", "requests", ">=", 1000.0),
    ],
)
def test_valid_rules_parse_to_canonical_units(
    rule: str, metric: str, op: str, limit: float
) -> None:
    parsed = parse_threshold(rule, "GET /documents")
    assert (parsed.metric, parsed.op, parsed.scope) == (metric, op, "GET /documents")
    assert parsed.limit == pytest.approx(limit)
    assert parsed.text == rule.strip()


def test_every_documented_metric_is_accepted() -> None:
    units = {"error_rate": "%", "rps": "/s", "requests": ""}
    for metric in METRICS:
        assert parse_threshold(f"{metric} >= 1{units.get(metric, 'ms')}").metric == metric


@pytest.mark.parametrize(
    ("rule", "observed", "expected"),
    [
        ("p95 < 300ms", 300.0, False),  # strict: exactly at the limit fails
        ("p95 <= 300ms", 300.0, True),
        ("p95 < 300ms", 299.999, True),
        ("p95 <= 300ms", 300.001, False),
        ("rps > 50", 50.0, False),
        ("rps >= 50", 50.0, True),
        ("error_rate < 1%", 0.01, False),
        ("error_rate <= 1%", 0.01, True),
        ("requests >= 100", 99.0, False),
        ("requests >= 100", 100.0, True),
        ("p95 < 0.3s", 300.0, False),
        ("p95 <= 0.3s", 300.0, True),
    ],
)
def test_operators_are_distinct_at_the_boundary(rule: str, observed: float, expected: bool) -> None:
    assert parse_threshold(rule).passes(observed) is expected


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("p95 < fast", "expected a non-negative number after '<', got 'fast'"),
        ("p95 < 300", "p95 needs a unit: ms or s"),
        ("avg >= 5", "avg needs a unit"),
        ("error_rate < 1ms", "unit 'ms' does not apply to error_rate"),
        ("error_rate < 5", "a fraction must be between 0 and 1"),
        ("error_rate < 101%", "cannot exceed 100%"),
        ("rps > 5ms", "unit 'ms' does not apply to rps"),
        ("rps > 5%", "unit '%' does not apply to rps"),
        ("requests > 10/s", "requests is a count and takes no unit"),
        ("requests > 10.5", "use a whole number"),
        ("p95 < 3%", "unit '%' does not apply to p95"),
        ("p95 << 3ms", "unknown operator '<<'"),
        ("p95 == 3ms", "unknown operator '=='"),
        ("p95 = 3ms", "unknown operator '='"),
        ("p95 =< 3ms", "unknown operator '=<'"),
        ("p95 != 3ms", "unknown operator '!='"),
        ("p95 3ms", "expected an operator"),
        ("p95 <", "expected a non-negative number after '<', got 'nothing'"),
        ("p95 < -3ms", "expected a non-negative number"),
        ("p95 < 3.ms", "expected a non-negative number"),
        ("p95 < 1e3ms", "unknown unit or trailing text 'e3ms'"),
        ("p95 < 300ms and more", "unknown unit or trailing text"),
        ("p95 < 300 MS", "unknown unit or trailing text 'MS'"),
        ("p97 < 300ms", "unknown metric 'p97'"),
        ("p(95) < 300ms", "unknown metric 'p(95)'"),
        ("P95 < 300ms", "unknown metric 'P95'"),
        ("latency < 300ms", "unknown metric 'latency'"),
        ("< 300ms", "expected a metric"),
        ("", "empty rule"),
        ("   ", "empty rule"),
        ("p95 < 0ms", "can never pass"),
        ("error_rate < 0%", "can never pass"),
    ],
)
def test_malformed_rules_are_config_errors_naming_rule_and_reason(rule: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threshold(rule)
    message = str(info.value)
    assert f"invalid threshold {rule!r}" in message
    assert why in message


def test_a_rule_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        parse_threshold(300)  # type: ignore[arg-type]


def test_scopes_group_rules_and_errors_name_the_scope() -> None:
    rules = parse_thresholds({"total": ["p95 < 300ms", "error_rate < 1%"], "GET /x": ["p99 < 1s"]})
    assert [(r.scope, r.describe()) for r in rules] == [
        ("total", "p95 < 300ms"),
        ("total", "error_rate < 1%"),
        ("GET /x", "p99 < 1000ms"),
    ]
    with pytest.raises(ConfigError, match=r"scope 'GET /x': invalid threshold 'p99 < 1'"):
        parse_thresholds({"total": ["p95 < 300ms"], "GET /x": ["p99 < 1"]})
    with pytest.raises(ConfigError, match="must be a list"):
        parse_thresholds({"total": "p95 < 300ms"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="non-empty"):
        parse_thresholds({" ": ["p95 < 300ms"]})


def test_malformed_rule_is_rejected_when_the_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(
        '[service]\nname = "notes"\n\n[slo.thresholds]\ntotal = ["p95 < 300ms", "p95 << 3ms"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert message.startswith("releasegate.toml: slo.thresholds: ")
    assert "'p95 << 3ms'" in message and "unknown operator" in message


def test_valid_rules_load_with_the_config(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(
        '[service]\nname = "notes"\n\n[slo]\nabort_factor = 3\n\n[slo.thresholds]\n'
        'total = ["p95 < 300ms"]\n\n[slo.compare]\nlatency_margin = "15%"\n'
    )
    slo = load_config(path, {}).raw.slo
    assert slo.thresholds == {"total": ["p95 < 300ms"]}
    assert slo.compare.latency_margin == pytest.approx(0.15)
    assert slo.abort_factor == 3


@pytest.mark.parametrize(("value", "ratio"), [("10%", 0.1), (0.25, 0.25), ("0.5", 0.5), (1, 1.0)])
def test_parse_ratio(value: object, ratio: float) -> None:
    assert parse_ratio(value) == pytest.approx(ratio)


@pytest.mark.parametrize("value", ["ten", "-5%", True, "5 %%", float("nan")])
def test_parse_ratio_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        parse_ratio(value)
