"""When a release is a service's first, when it is refused, and what its report says."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from test_report_render import sample_result

from releasegate.pipeline.first_release import FIRST_COLOR, Standing, Verdict, judge
from releasegate.report.render import render_markdown
from releasegate.report.text import render_text
from releasegate.report.values import FIRST_RELEASE

PORTS = {"blue": 18181, "green": 18182}


def _standing(
    live: str | None, healthy: bool = False, containers: Mapping[str, str] | None = None
) -> Standing:
    return Standing("notes", live, healthy, containers or {}, PORTS)


@pytest.mark.parametrize(
    ("live", "healthy"),
    [
        (None, False),  # weights withdrawn (after a first release rolled back), or no router
        ("blue", False),  # a fresh router: blue in front, nothing behind it
        ("green", False),
    ],
)
def test_nothing_runs_and_nothing_healthy_is_live_is_a_first_release(
    live: str | None, healthy: bool
) -> None:
    assert judge(_standing(live, healthy)) == Verdict(True)
    assert FIRST_COLOR == "blue"


@pytest.mark.parametrize("live", ["blue", "green"])
def test_a_live_color_with_its_container_is_an_ordinary_release(live: str) -> None:
    assert judge(_standing(live, True, {live: "running"})) == Verdict(False)
    # Unhealthy: still no first release; preflight refuses it as "nothing to fall back to".
    assert judge(_standing(live, False, {live: "running", "green": "exited"})) == Verdict(False)


def test_containers_without_a_live_color_are_refused_with_the_way_out() -> None:
    verdict = judge(_standing(None, containers={"green": "running", "blue": "exited"}))
    assert verdict.first_release is False
    assert verdict.refusal is not None
    assert "no live color" in verdict.refusal
    assert "blue (exited), green (running)" in verdict.refusal
    assert "releasegate router promote COLOR" in verdict.refusal
    assert "releasegate stop --color blue; releasegate stop --color green" in verdict.refusal
    assert "\n" not in verdict.refusal


def test_a_healthy_live_color_without_a_container_is_something_unknown() -> None:
    verdict = judge(_standing("blue", True))
    assert verdict.first_release is False
    assert verdict.refusal is not None
    assert "port 18181" in verdict.refusal and "deploy.blue_port" in verdict.refusal


def test_the_reports_say_it_was_a_first_release(tmp_path: Path) -> None:
    result = {
        **sample_result(tmp_path),
        "first_release": True,
        "colors": {"live_before": None, "target": "blue", "live_after": None},
    }
    text = render_text(result)
    assert f"first release: {FIRST_RELEASE}" in text.splitlines()
    assert "colors - -> blue, live -" in text
    markdown = render_markdown(result)
    assert f"- **First release:** {FIRST_RELEASE}" in markdown
    ordinary = {**result, "first_release": False}
    assert "first release" not in render_text(ordinary).lower()
    assert "First release" not in render_markdown(ordinary)
