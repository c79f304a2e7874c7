"""``[release.canary]``: steps, durations, request minimums and rules, checked when the
config loads (a one-line :class:`ConfigError`, exit 2, before any store is touched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.config import load_config
from releasegate.config_release import CanaryStep, check_steps, parse_step
from releasegate.errors import ConfigError, ExitCode

MINIMAL = """\
[service]
name = "notes"

[slo.thresholds]
total = ["p95 < 300ms", "error_rate < 1%", "rps >= 5/s"]
"GET /documents" = ["p95 < 200ms"]
"""


def _load(tmp_path: Path, canary: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "releasegate.toml"
    path.write_text(MINIMAL + "\n[release.canary]\n" + canary)
    return load_config(path, env or {})


def _error(tmp_path: Path, canary: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, canary)
    assert info.value.exit_code == ExitCode.USAGE
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_section_means_no_canary(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(MINIMAL)
    release = load_config(path, {}).raw.release
    assert release.canary is None
    assert release.slo_gate is True


def test_steps_and_defaults(tmp_path: Path) -> None:
    settings = _load(tmp_path, 'steps = ["5%", "25 %", "50%", "PAUSE", "100%"]\nduration = "2s"\n')
    canary = settings.raw.release.canary  # type: ignore[attr-defined]
    assert canary.steps == ["5%", "25%", "50%", "pause", "100%"]
    assert canary.duration == 2.0
    assert (canary.min_requests, canary.max_extensions, canary.compare) == (50, 2, True)
    # 100% is the promotion step itself, not a canary step.
    assert [s.label for s in canary.plan] == ["5%", "25%", "50%", "pause"]


def test_steps_from_an_environment_override(tmp_path: Path) -> None:
    settings = _load(
        tmp_path, 'steps = ["50%"]\n', env={"RELEASEGATE_RELEASE__CANARY__STEPS": '["10%", "20%"]'}
    )
    assert settings.raw.release.canary.steps == ["10%", "20%"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        ("[]", "no weight step"),
        ('["pause"]', "no weight step"),
        ('["pause", "5%"]', "'pause' cannot be the first step"),
        ('["5%", "150%"]', "150% is above 100%"),
        ('["50%", "25%"]', "steps must increase: 25% comes after 50%"),
        ('["5%", "pause", "5%"]', "5% is listed twice"),
        ('["0%", "5%"]', "0% sends the new version nothing"),
        ('["5%", "100%", "pause"]', "nothing can follow 100%"),
        ('["5%", "pause", "pause", "50%"]', "two pauses in a row"),
        ('["2.5%"]', "whole percentages"),
        ('["half"]', "is not a step"),
        ("[5, 25]", "is not a step"),
    ],
)
def test_bad_steps_are_one_line(tmp_path: Path, steps: str, fragment: str) -> None:
    message = _error(tmp_path, f"steps = {steps}\n")
    assert "release.canary.steps" in message
    assert fragment in message


def test_missing_steps(tmp_path: Path) -> None:
    assert "missing required key 'release.canary.steps'" in _error(tmp_path, 'duration = "5s"\n')


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('duration = "0s"', "release.canary.duration"),
        ('duration = "soon"', "invalid duration"),
        ("min_requests = 0", "release.canary.min_requests"),
        ("max_extensions = -1", "release.canary.max_extensions"),
        ('thresholds = ["p95 <"]', "release.canary.thresholds"),
        ('thresholds = ["rps >= 10/s"]', "the amount of real traffic is the users'"),
        ("surprise = 1", "unknown key 'release.canary.surprise'"),
    ],
)
def test_bad_values_are_one_line(tmp_path: Path, line: str, fragment: str) -> None:
    assert fragment in _error(tmp_path, f'steps = ["5%"]\n{line}\n')


def test_parse_and_check_steps_directly() -> None:
    assert parse_step(" 7 % ") == CanaryStep(7)
    assert parse_step("pause").is_pause
    steps = [CanaryStep(1), CanaryStep(None), CanaryStep(99), CanaryStep(100)]
    assert check_steps(steps) == steps
    with pytest.raises(ValueError, match="must increase"):
        check_steps([CanaryStep(10), CanaryStep(None), CanaryStep(9)])


def test_a_canary_for_one_environment_only(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(MINIMAL)
    (tmp_path / "releasegate.production.toml").write_text(
        '[release]\nslo_gate = false\n\n[release.canary]\nsteps = ["10%", "pause"]\n'
    )
    production = load_config(path, {"RELEASEGATE_ENVIRONMENT": "production"}).raw.release
    assert production.slo_gate is False
    assert production.canary is not None and production.canary.steps == ["10%", "pause"]
    staging = load_config(path, {"RELEASEGATE_ENVIRONMENT": "staging"}).raw.release
    assert staging.slo_gate is True and staging.canary is None


def test_bad_steps_in_an_environment_file_name_it(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(MINIMAL)
    (tmp_path / "releasegate.production.toml").write_text('[release.canary]\nsteps = ["pause"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {"RELEASEGATE_ENVIRONMENT": "production"})
    assert "release.canary.steps" in str(info.value) and "no weight step" in str(info.value)
    assert "releasegate.production.toml" in str(info.value)
