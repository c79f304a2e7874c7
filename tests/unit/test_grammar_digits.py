"""Numbers in durations, ratios and threshold rules: ASCII digits only; rules that can pass.

Python's ``\\d`` and ``float()`` also accept full-width and Arabic-Indic digits, so
``p95 < 3<FULLWIDTH DIGIT ZERO>0ms`` used to read as 300 ms.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.config import load_config, parse_duration
from releasegate.errors import ConfigError
from releasegate.gates.thresholds import parse_ratio, parse_threshold

FULL_WIDTH_ZERO = "\uff10"
ARABIC_INDIC_THREE = "\u0663"
DEVANAGARI_FIVE = "\u096b"


@pytest.mark.parametrize(
    "rule",
    [
        f"p95 < 3{FULL_WIDTH_ZERO}0ms",
        f"p95 < {ARABIC_INDIC_THREE}00ms",
        f"error_rate < {DEVANAGARI_FIVE}%",
        f"requests >= 1{FULL_WIDTH_ZERO}",
        f"rps > 5{FULL_WIDTH_ZERO}/s",
        f"p99.9 < 1.{ARABIC_INDIC_THREE}s",
    ],
)
def test_thresholds_refuse_non_ascii_digits(rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threshold(rule)
    assert "only ASCII digits 0-9" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [f"3{FULL_WIDTH_ZERO}0ms", f"{ARABIC_INDIC_THREE}s", f"1.{DEVANAGARI_FIVE}m", FULL_WIDTH_ZERO],
)
def test_durations_refuse_non_ascii_digits(value: str) -> None:
    with pytest.raises(ValueError, match="only ASCII digits 0-9"):
        parse_duration(value)


@pytest.mark.parametrize("value", [f"1{FULL_WIDTH_ZERO}%", f"0.{ARABIC_INDIC_THREE}"])
def test_ratios_refuse_non_ascii_digits(value: str) -> None:
    with pytest.raises(ValueError, match="only ASCII digits 0-9"):
        parse_ratio(value)


@pytest.mark.parametrize(
    "rule",
    [
        "error_rate > 100%",
        "error_rate > 1",
        "error_rate > 1.0",
        "error_rate < 0%",
        "error_rate < 0",
        "error_rate > 100.5%",
        "p95 < 0s",
        "requests < 0",
    ],
)
def test_rules_that_can_never_pass_are_refused(rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threshold(rule)
    message = str(info.value)
    assert "never pass" in message or "cannot exceed 100%" in message


@pytest.mark.parametrize(
    ("rule", "observed", "passes"),
    [
        # The edges that can still pass stay valid.
        ("error_rate >= 100%", 1.0, True),
        ("error_rate >= 1", 1.0, True),
        ("error_rate > 99.9%", 1.0, True),
        ("error_rate <= 0%", 0.0, True),
    ],
)
def test_edge_rules_that_can_pass_still_parse(rule: str, observed: float, passes: bool) -> None:
    assert parse_threshold(rule).passes(observed) is passes


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "releasegate.toml"
    path.write_text(f'[service]\nname = "notes"\n\n{body}', encoding="utf-8")
    return path


def test_a_config_with_a_full_width_threshold_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, f'[slo.thresholds]\ntotal = ["p95 < 3{FULL_WIDTH_ZERO}0ms"]\n')
    with pytest.raises(ConfigError, match="only ASCII digits 0-9"):
        load_config(path, {})


def test_a_config_with_an_arabic_indic_duration_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, f'[lock]\nwait = "{ARABIC_INDIC_THREE}s"\n')
    with pytest.raises(ConfigError, match=r"lock.wait: invalid duration .*only ASCII digits"):
        load_config(path, {})


def test_an_override_with_a_full_width_duration_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, "")
    env = {"RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT": f"1{FULL_WIDTH_ZERO}s"}
    with pytest.raises(ConfigError, match="RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT"):
        load_config(path, env)
