"""The canary's steps in the evidence report and the terminal summary, built from real
verdicts of the step analysis."""

from __future__ import annotations

from typing import Any

from releasegate.canary.analysis import judge_step
from releasegate.canary.traffic import ColorTraffic
from releasegate.config import SloCompareSection
from releasegate.report.render import render_markdown
from releasegate.report.text import render_text


def _traffic(color: str, latencies: list[float], errors: int) -> ColorTraffic:
    return ColorTraffic(color, len(latencies), errors, tuple(sorted(latencies)), 10.0)


def _step(weight: int, new: ColorTraffic, old: ColorTraffic, extensions: int) -> dict[str, Any]:
    verdict = judge_step(
        new,
        old,
        rules={"total": ["p95 < 500ms", "error_rate < 5%"]},
        compare=SloCompareSection(enabled=True),
        min_requests=20,
    )
    return {"weight": weight, "duration_s": 10.2, "extensions": extensions, **verdict.to_dict()}


def _result() -> dict[str, Any]:
    blue = _traffic("blue", [10.0 + i % 7 for i in range(380)], 0)
    passing = _step(5, _traffic("green", [11.0 + i % 5 for i in range(40)], 0), blue, 1)
    slow = [260.0 + i % 9 for i in range(60)]
    failing = _step(25, _traffic("green", slow, 3), blue, 0)
    return {
        "release_id": 7,
        "service": "notes",
        "outcome": "rolled_back",
        "exit_code": 1,
        "steps": [
            {"name": "canary 5%", "status": "ok", "duration_s": 20.4, "summary": "pass"},
            {"name": "canary 25%", "status": "failed", "duration_s": 10.2, "summary": "fail"},
        ],
        "canary": {"steps": [passing, failing]},
        "error": "canary 25%: fail",
    }


def test_markdown_shows_each_step_per_color() -> None:
    md = render_markdown(_result())
    section = md.split("### Canary", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| weight | duration | color | requests | error rate | p50 | p95")
    assert len(rows) == 1 + 4  # two colors per step
    assert rows[1].startswith("| 5% | 10.2s (1 extension) | green | 40 | 0.00% | 13 ms | 15 ms")
    assert "| pass |" in rows[1]
    assert rows[2].startswith("|  |  | blue | 380 | 0.00% | 13 ms | 16 ms | 16 ms |")
    assert rows[3].startswith("| 25% | 10.2s | green | 60 | 5.00% | 264 ms | 268 ms | 268 ms")
    assert "| **fail** |" in rows[3] and "p95" in rows[3]


def test_text_summary_has_a_line_per_step() -> None:
    text = render_text(_result())
    lines = [line for line in text.splitlines() if line.startswith("canary ") and " req " in line]
    assert lines[0].startswith("canary 5% 10.2s (1 extension): pass (green 40 req 0.00% err")
    assert lines[1].startswith("canary 25% 10.2s: fail (green 60 req 5.00% err p95 268 ms;")


def test_no_canary_no_section() -> None:
    result = _result()
    del result["canary"]
    assert "### Canary" not in render_markdown(result)
