"""The watch's thresholds (its own, or the gate's with rate rules scaled to its load) and
observed values shown without rounding a failing figure into a passing-looking one."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.config import ReleaseSection, SloSection, load_config
from releasegate.errors import ConfigError
from releasegate.gates.slo_verdicts import RuleResult, Verdict
from releasegate.gates.thresholds import format_observed, parse_threshold
from releasegate.pipeline.watch import scale_rate_rules, watch_slo

GATE = {
    "total": ["p95 < 300ms", "error_rate < 1%", "rps >= 10", "requests >= 1000"],
    "GET /documents": ["rps < 100/s", "requests < 5001"],
}


def test_rate_rules_scale_and_the_others_stay() -> None:
    scaled = scale_rate_rules(GATE, 0.25, 0.25 / 3)
    assert scaled == {
        "total": ["p95 < 300ms", "error_rate < 1%", "rps >= 2.5/s", "requests >= 83"],
        "GET /documents": ["rps < 25/s", "requests < 417"],
    }
    for scope, rules in scaled.items():
        for rule in rules:
            parse_threshold(rule, scope)  # every scaled rule is in the grammar


def test_large_limits_keep_a_fixed_point_number() -> None:
    assert scale_rate_rules({"total": ["rps >= 1000000"]}, 3, 1) == {"total": ["rps >= 3000000/s"]}


def test_watch_scales_the_gate_rules_to_its_users_and_window() -> None:
    slo = SloSection(users=20, duration=30.0, min_requests=200, thresholds=GATE)
    short = watch_slo(slo, ReleaseSection(watch_users=5), window=10.0)
    assert short.users == 5
    assert short.duration == 10.0
    assert short.thresholds["total"][2] == "rps >= 2.5/s"
    assert short.thresholds["total"][3] == "requests >= 83"
    assert short.min_requests == 20
    assert not short.compare.enabled
    # 5 users sending about 2/s each (9.96/s) pass; the gate's unscaled rule failed them.
    assert parse_threshold(short.thresholds["total"][2]).passes(9.96)
    assert not parse_threshold(GATE["total"][2]).passes(9.96)


def test_watch_thresholds_replace_the_gate_rules() -> None:
    slo = SloSection(users=20, duration=30.0, thresholds=GATE)
    own = {"total": ["p95 < 500ms", "rps >= 8"]}
    release = ReleaseSection(watch_users=5, watch_thresholds=own)
    assert watch_slo(slo, release, window=10.0).thresholds == own


def test_watch_thresholds_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(
        '[service]\nname = "notes"\n[release.watch_thresholds]\ntotal = ["rps >= fast"]\n'
    )
    with pytest.raises(ConfigError, match=r"release\.watch_thresholds: .*rps >= fast"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("metric", "op", "limit", "observed", "shown"),
    [
        ("rps", ">=", 10, 9.96, "9.96/s"),
        ("rps", ">=", 10, 9.9999, "9.9999/s"),
        ("rps", ">=", 10, 10.04, "10.0/s"),
        ("p95", "<", 300, 299.96, "299.96ms"),
        ("p95", "<", 300, 312.3, "312.3ms"),
        ("error_rate", "<", 0.01, 0.00999, "0.999%"),
        ("error_rate", "<", 0.01, 0.010001, "1.00%"),
        ("requests", ">=", 200, 199, "199"),
    ],
)
def test_a_shown_value_gets_the_rule_s_own_verdict(
    metric: str, op: str, limit: float, observed: float, shown: str
) -> None:
    assert format_observed(metric, op, limit, observed) == shown


def test_a_failing_rule_result_does_not_look_passing() -> None:
    result = RuleResult("total", "rps >= 10/s", "rps", ">=", 10.0, 9.96, Verdict.FAIL)
    assert result.observed_text == "9.96/s"
    assert result.to_dict()["observed_text"] == "9.96/s"
