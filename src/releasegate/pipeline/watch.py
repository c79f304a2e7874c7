"""The post-promotion watch's SLO settings, derived from the gate's.

The watch sends less load than the gate (``release.watch_users`` users for the watch
window, instead of ``slo.users`` for ``slo.duration``), so the gate's fixed-rate rules
would fail a healthy release: ``rps >= 10`` measured with a quarter of the users. The
watch uses ``[release.watch_thresholds]`` when the config has it; otherwise the gate's
rules, with ``rps`` scaled by the ratio of users and ``requests`` by the ratio of users
times the ratio of windows (Locust users send at a fixed rate each, as with
``constant_throughput``). Latency and error-rate rules do not depend on the load's size
and stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from releasegate.config import ReleaseSection, SloSection
from releasegate.gates.thresholds import parse_threshold

# The floor of the watch's min_requests, whatever the scaling gives.
MIN_WATCH_REQUESTS = 20


def _number(value: float) -> str:
    # Fixed-point: the rule grammar reads no exponent (1e+06).
    return f"{value:.6f}".rstrip("0").rstrip(".")


def scale_rate_rules(
    thresholds: Mapping[str, Sequence[str]], rate_factor: float, count_factor: float
) -> dict[str, list[str]]:
    """``thresholds`` with ``rps`` limits times ``rate_factor`` and ``requests`` limits
    times ``count_factor`` (a whole number, rounded toward the lenient side); every
    other rule unchanged."""
    scaled: dict[str, list[str]] = {}
    for scope, rules in thresholds.items():
        out = []
        for rule in rules:
            parsed = parse_threshold(rule, scope)
            if parsed.metric == "rps":
                out.append(f"rps {parsed.op} {_number(parsed.limit * rate_factor)}/s")
            elif parsed.metric == "requests":
                count = parsed.limit * count_factor
                count = math.ceil(count) if parsed.is_upper_bound else math.floor(count)
                out.append(f"requests {parsed.op} {count}")
            else:
                out.append(rule)
        scaled[scope] = out
    return scaled


def watch_slo(slo: SloSection, release: ReleaseSection, window: float) -> SloSection:
    """The SLO section the watch runs with: ``window`` seconds of ``release.watch_users``
    users, its own thresholds or the gate's scaled, no comparison with the old color."""
    users = release.watch_users
    user_ratio = users / slo.users
    window_ratio = window / slo.duration
    thresholds = release.watch_thresholds
    if thresholds is None:
        thresholds = scale_rate_rules(slo.thresholds, user_ratio, user_ratio * window_ratio)
    return slo.model_copy(
        update={
            "duration": window,
            "warmup": min(slo.warmup, 2.0),
            "users": users,
            "min_requests": max(
                MIN_WATCH_REQUESTS, int(slo.min_requests * window_ratio * user_ratio)
            ),
            "thresholds": thresholds,
            "compare": slo.compare.model_copy(update={"enabled": False}),
        }
    )
