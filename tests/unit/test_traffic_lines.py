"""Lines of the router's traffic ring, the reader's cursor over them, per-color figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.canary.traffic import (
    ColorTraffic,
    TrafficReader,
    nearest_rank,
    parse_traffic_line,
)
from releasegate.router.runtime import RuntimeClient


def ring(lines: list[str]) -> str:
    """The lines as ``show events`` prints them: one a line, then an empty line."""
    return "".join(f"{line}\n" for line in lines) + "\n"


def reader(ring_size: int | None = None) -> TrafficReader:
    # new_lines is pure: the client is never called here.
    return TrafficReader(RuntimeClient(Path("/nonexistent/admin.sock")), ring_size=ring_size)


def test_parse_a_served_request() -> None:
    line = parse_traffic_line("4242 17 green 200 35 --")
    assert line is not None
    assert (line.pid, line.request_id, line.server) == (4242, 17, "green")
    assert (line.status, line.active_ms, line.termination) == (200, 35, "--")
    assert not line.failed


@pytest.mark.parametrize(
    ("text", "failed"),
    [
        ("1 2 blue 500 3 --", True),  # the application's 5xx
        ("1 2 blue 503 0 SC", True),  # refused connection, HAProxy answered 503
        ("1 2 blue -1 3 SH", True),  # the server closed before its headers
        ("1 2 blue 200 3 SD", True),  # the server aborted the body
        ("1 2 blue 404 3 --", False),  # a 4xx is an answer, not an error of the color
        ("1 2 blue 200 3 CD", False),  # the client went away during the body
        ("1 2 blue 302 1 --", False),
    ],
)
def test_what_counts_as_an_error(text: str, failed: bool) -> None:
    line = parse_traffic_line(text)
    assert line is not None
    assert line.failed is failed


@pytest.mark.parametrize(
    "text",
    ["", "1 2 blue 200 3", "1 2 blue 200 3 -- extra", "x 2 blue 200 3 --", "1 2 blue OK 3 --"],
)
def test_lines_of_another_format_are_rejected(text: str) -> None:
    assert parse_traffic_line(text) is None


def test_the_cursor_returns_only_what_follows_the_last_line_seen() -> None:
    reading = reader()
    first = ["9 1 blue 200 1 --", "9 3 green 200 2 --"]
    assert reading.new_lines(ring(first)) == first
    # Request 2 ended after request 3: ids are not in the order of the lines.
    later = [*first, "9 2 blue 200 40 --", "9 5 blue 200 1 --"]
    assert reading.new_lines(ring(later)) == ["9 2 blue 200 40 --", "9 5 blue 200 1 --"]
    assert reading.new_lines(ring(later)) == []
    assert (reading.overruns, reading.restarts) == (0, 0)


def test_the_cursor_matches_whole_lines_only() -> None:
    reading = reader()
    reading.new_lines(ring(["9 1 blue 200 1 --"]))
    # The cursor's text is the end of a later line: that line is still new.
    assert reading.new_lines(ring(["9 1 blue 200 1 --", "19 1 blue 200 1 --"])) == [
        "19 1 blue 200 1 --"
    ]


def test_an_overrun_ring_is_noted_and_what_is_left_is_read() -> None:
    reading = reader()
    reading.new_lines(ring(["9 1 blue 200 1 --", "9 2 blue 200 1 --"]))
    # The ring dropped line 2 (and maybe more) before it was read again.
    rest = ["9 7 blue 200 1 --", "9 8 green 200 1 --"]
    assert reading.new_lines(ring(rest)) == rest
    assert (reading.overruns, reading.restarts) == (1, 0)


def test_a_ring_found_empty_then_full_has_overrun() -> None:
    line = "9 100 blue 200 1 --"  # 19 bytes, 21 stored
    # A ring of 1,000 bytes is full once less than a longest line (256 bytes) is left.
    full = [line] * 36  # 756 bytes stored, 742 or more is full
    partly = [line] * 35  # 735
    reading = reader(ring_size=1000)
    assert reading.new_lines("\n") == []
    assert reading.new_lines(ring(partly)) == partly
    assert reading.overruns == 0
    again = reader(ring_size=1000)
    again.new_lines("\n")
    assert again.new_lines(ring(full)) == full
    assert again.overruns == 1
    # The first read returns what the ring holds, without a verdict on what came before.
    first = reader(ring_size=1000)
    assert first.new_lines(ring(full)) == full
    assert first.overruns == 0


def test_a_restarted_haproxy_is_told_from_an_overrun_by_its_pid() -> None:
    reading = reader()
    reading.new_lines(ring(["9 1 blue 200 1 --", "9 2 blue 200 1 --"]))
    fresh = ["12 0 blue 200 1 --"]
    assert reading.new_lines(ring(fresh)) == fresh
    assert (reading.overruns, reading.restarts) == (0, 1)


def test_percentiles_are_nearest_rank() -> None:
    values = tuple(float(v) for v in range(1, 101))  # 1..100
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank(values, 95) == 95.0
    assert nearest_rank(values, 99.9) == 100.0
    assert nearest_rank((), 95) is None
    with pytest.raises(ValueError):
        nearest_rank(values, 0)


def test_color_traffic_figures_and_merge() -> None:
    first = ColorTraffic("green", requests=3, errors=1, latencies_ms=(5.0, 7.0, 9.0), duration_s=2)
    second = ColorTraffic("green", requests=2, errors=0, latencies_ms=(1.0, 8.0), duration_s=3)
    both = first.merged(second)
    assert both == ColorTraffic(
        "green", requests=5, errors=1, latencies_ms=(1.0, 5.0, 7.0, 8.0, 9.0), duration_s=5
    )
    assert both.error_rate() == 0.2
    assert both.percentile(50) == 7.0
    assert both.rps() == 1.0
    assert both.summary() == {
        "color": "green",
        "requests": 5,
        "errors": 1,
        "error_rate": 0.2,
        "rps": 1.0,
        "duration_s": 5.0,
        "p50": 7.0,
        "p95": 9.0,
        "p99": 9.0,
    }
    assert ColorTraffic("blue").error_rate() == 0.0
    assert ColorTraffic("blue").percentile(95) is None
    with pytest.raises(ValueError):
        first.merged(ColorTraffic("blue"))
    assert ColorTraffic.combine("green", [first, second, ColorTraffic("green")]) == both
    assert ColorTraffic.combine("green", []) == ColorTraffic("green")
