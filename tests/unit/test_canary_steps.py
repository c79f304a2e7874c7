"""The canary's place in the pipeline: its steps, their rules, the request projection
that fails a step which cannot reach its minimum, and the running counts on screen."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from releasegate.config import Settings, load_config
from releasegate.pipeline.canary import canary_compare, canary_rules, unreachable_reason
from releasegate.pipeline.run import release_steps
from releasegate.pipeline.steps import STEPS
from releasegate.report.live import PLAIN_UPDATE_S, StepDisplay

CONFIG = """\
[service]
name = "notes"

[slo.thresholds]
total = ["p95 < 800ms", "error_rate < 2%", "rps >= 5/s", "requests >= 100"]

[slo.compare]
latency_margin = "30%"
"""


def _settings(tmp_path: Path, canary: str = "") -> Settings:
    path = tmp_path / "releasegate.toml"
    path.write_text(CONFIG + canary)
    return load_config(path, {})


def test_without_a_canary_the_pipeline_is_unchanged(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert release_steps(settings) == STEPS
    assert canary_compare(settings) is None


def test_canary_steps_sit_between_the_gate_and_the_promotion(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, '\n[release.canary]\nsteps = ["5%", "25%", "pause", "50%", "100%"]\n'
    )
    names = [name for name, _ in release_steps(settings)]
    gate = names.index("slo gate")
    assert names[gate + 1 : names.index("promote")] == [
        "canary 5%",
        "canary 25%",
        "pause after 25%",
        "canary 50%",
    ]
    assert names[-3:] == ["promote", "watch", "finalize"]


def test_default_rules_are_the_gates_without_rate_rules(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '\n[release.canary]\nsteps = ["10%"]\n')
    assert canary_rules(settings) == {"total": ["p95 < 800ms", "error_rate < 2%"]}
    compare = canary_compare(settings)
    # The gate's margins, compared whether or not the gate itself compares.
    assert compare is not None and compare.enabled and compare.latency_margin == 0.3


def test_own_rules_and_no_comparison(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        '\n[release.canary]\nsteps = ["10%"]\nthresholds = ["p99 < 1s"]\ncompare = false\n',
    )
    assert canary_rules(settings) == {"total": ["p99 < 1s"]}
    assert canary_compare(settings) is None


def test_a_minimum_out_of_reach_says_why() -> None:
    # 3 requests in 10 s at 5%: 0.3/s, about 9 by the end of two more 10 s extensions.
    why = unreachable_reason(3, 10.0, 20.0, 50, 5)
    assert why is not None
    assert "0.30 requests/s on 5% of the traffic" in why
    assert "about 9 requests in 30s" in why and "min_requests = 50" in why
    # No request at all: out of reach whatever the time left.
    assert unreachable_reason(0, 10.0, 1000.0, 1, 5) is not None


@pytest.mark.parametrize(("done", "left"), [(20, 20.0), (50, 0.0), (17, 20.0)])
def test_a_minimum_within_reach_extends(done: int, left: float) -> None:
    assert unreachable_reason(done, 10.0, left, 50, 5) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_running_counts_on_plain_lines_are_throttled() -> None:
    out, clock = io.StringIO(), Clock()
    display = StepDisplay(out, tty=False, clock=clock)
    display.start("canary 5%")
    display.update("canary 5%", "weight 5%: green 3 req 0 err")
    clock.now += 1
    display.update("canary 5%", "weight 5%: green 4 req 0 err")  # too soon: not printed
    clock.now += PLAIN_UPDATE_S
    display.update("canary 5%", "weight 5%: green 40 req 0 err")
    display.update("not started", "ignored")
    display.finish("canary 5%", "ok", "pass")
    lines = out.getvalue().splitlines()
    assert lines[1:3] == [
        "... canary 5% — weight 5%: green 3 req 0 err",
        "... canary 5% — weight 5%: green 40 req 0 err",
    ]
    assert lines[3].endswith("canary 5% ok — pass")


def test_running_counts_follow_the_elapsed_time_on_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    display = StepDisplay(out, tty=True, color=False, refresh_s=60, clock=clock)
    display.start("canary 25%")
    clock.now += 3
    display.update("canary 25%", "weight 25%: green 30 req 1 err; blue 90 req 0 err")
    display.close()
    assert "canary 25%" in out.getvalue()
    assert "3.0s  weight 25%: green 30 req 1 err; blue 90 req 0 err" in out.getvalue()
