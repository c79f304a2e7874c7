"""The threshold grammar of the SLO gate: k6-style rules such as ``p95 < 300ms``.

A rule is ``<metric> <op> <value><unit>``:

========================  =================================  =======================
metric                    meaning                            value and unit
========================  =================================  =======================
``p50`` ``p90`` ``p95``   response-time percentile           ``300ms`` or ``0.3s``
``p99`` ``p99.9``                                            (a unit is required)
``avg`` ``min`` ``max``   response time                      as above
``error_rate``            failed / all requests              ``1%`` or ``0.01``
``rps``                   requests per second                ``50`` or ``50/s``
``requests``              number of requests                 ``1000``
========================  =================================  =======================

Operators are ``<``, ``<=``, ``>`` and ``>=`` and they are distinct: ``p95 < 300ms``
fails when p95 is exactly 300 ms, ``p95 <= 300ms`` passes. Rules are grouped by scope:
``total`` (every request) or the name of a request as the locustfile reports it.

Parsing is strict: anything else (``p95 < fast``, ``p95 < 300``, ``error_rate < 1ms``,
``p95 << 3ms``, an unknown metric, a rule that can never pass) is a
:class:`~releasegate.errors.ConfigError` that names the rule and says why.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from releasegate.errors import ConfigError

TOTAL_SCOPE = "total"

PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
LATENCY_METRICS = (*PERCENTILES, "avg", "min", "max")
METRICS = (*LATENCY_METRICS, "error_rate", "rps", "requests")

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_METRIC_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.()]*)")
_OP_RE = re.compile(r"\s*([<>=!]+)")
# ASCII digits only: Python's \d and float() also take full-width and Arabic-Indic digits.
_NUMBER_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)(?![0-9.])")
_UNIT_RE = re.compile(r"\s*(ms|s|%|/s)\s*$")


@dataclass(frozen=True)
class Threshold:
    """One parsed rule. ``limit`` is canonical: ms, a fraction, per second, or a count."""

    scope: str
    metric: str
    op: str
    limit: float
    text: str

    @property
    def is_upper_bound(self) -> bool:
        """True for ``<`` and ``<=``: the rule caps the metric."""
        return self.op in ("<", "<=")

    def passes(self, observed: float) -> bool:
        """Whether an observed value (in the canonical unit) satisfies the rule."""
        return OPERATORS[self.op](observed, self.limit)

    def describe(self) -> str:
        """The rule in canonical form, e.g. ``p95 < 300ms``."""
        return f"{self.metric} {self.op} {format_value(self.metric, self.limit, exact=True)}"


def format_value(metric: str, value: float, *, exact: bool = False) -> str:
    """A value of ``metric`` (canonical unit) for display."""
    if metric in LATENCY_METRICS:
        return f"{value:g}ms" if exact else f"{value:.1f}ms"
    if metric == "error_rate":
        return f"{value * 100:g}%" if exact else f"{value * 100:.2f}%"
    if metric == "rps":
        return f"{value:g}/s" if exact else f"{value:.1f}/s"
    return f"{value:g}" if exact else f"{int(value)}"


def format_observed(metric: str, op: str, limit: float, value: float) -> str:
    """An observed ``value`` for display, with as many digits as it takes for the shown
    figure to get the rule's own verdict: 9.96 against ``rps >= 10`` shows ``9.96/s``,
    never a passing-looking ``10.0/s``."""
    judge = OPERATORS[op]
    passes = judge(value, limit)
    percent = metric == "error_rate"
    scale = 100.0 if percent else 1.0
    first = 2 if percent else 0 if metric == "requests" else 1
    for digits in range(first, first + 10):
        shown = round(value * scale, digits)
        if judge(shown / scale, limit) == passes:
            break
    else:
        digits, shown = 17, value * scale
    unit = (
        "%" if percent else "ms" if metric in LATENCY_METRICS else "/s" if metric == "rps" else ""
    )
    return f"{shown:.{digits}f}{unit}"


def non_ascii_digit(text: str) -> str | None:
    """The first digit in ``text`` that is not one of ``0``-``9`` (e.g. a full-width one)."""
    return next((ch for ch in text if ch.isdigit() and not ch.isascii()), None)


def digits_hint(value: object) -> str:
    """``"; ..."`` naming a non-ASCII digit in ``value``, for a parse error; else empty."""
    digit = non_ascii_digit(value) if isinstance(value, str) else None
    return "" if digit is None else f" (only ASCII digits 0-9 count, not {digit!r})"


def _fail(rule: str, why: str) -> ConfigError:
    return ConfigError(f"invalid threshold {rule!r}: {why}")


def parse_threshold(rule: str, scope: str = TOTAL_SCOPE) -> Threshold:
    """Parse one rule; raise :class:`ConfigError` naming the rule and the reason."""
    if not isinstance(rule, str):
        raise ConfigError(f"invalid threshold {rule!r}: a rule must be a string")
    text = rule.strip()
    if not text:
        raise _fail(rule, "empty rule")
    if (digit := non_ascii_digit(text)) is not None:
        raise _fail(rule, f"only ASCII digits 0-9 are allowed, not {digit!r}")

    metric_match = _METRIC_RE.match(text)
    if metric_match is None:
        raise _fail(rule, f"expected a metric ({', '.join(METRICS)})")
    metric = metric_match.group(1)
    if metric not in METRICS:
        raise _fail(rule, f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    pos = metric_match.end()

    op_match = _OP_RE.match(text, pos)
    if op_match is None:
        raise _fail(rule, f"expected an operator (<, <=, >, >=) after {metric!r}")
    op = op_match.group(1)
    if op not in OPERATORS:
        raise _fail(rule, f"unknown operator {op!r} (use <, <=, > or >=)")
    pos = op_match.end()

    number_match = _NUMBER_RE.match(text, pos)
    if number_match is None:
        got = text[pos:].strip() or "nothing"
        raise _fail(rule, f"expected a non-negative number after {op!r}, got {got!r}")
    value = float(number_match.group(1))
    rest = text[number_match.end() :]

    unit: str | None = None
    if rest.strip():
        unit_match = _UNIT_RE.match(rest)
        if unit_match is None:
            raise _fail(rule, f"unknown unit or trailing text {rest.strip()!r}")
        unit = unit_match.group(1)

    limit = _canonical(rule, metric, value, unit)
    if op == "<" and limit == 0:
        raise _fail(rule, f"'{metric} < 0' can never pass")
    if metric == "error_rate" and op == ">" and limit >= 1:
        raise _fail(rule, "can never pass: an error rate cannot exceed 100%")
    return Threshold(scope=scope, metric=metric, op=op, limit=limit, text=text)


def _canonical(rule: str, metric: str, value: float, unit: str | None) -> float:
    if metric in LATENCY_METRICS:
        if unit is None:
            raise _fail(rule, f"{metric} needs a unit: ms or s (e.g. 300ms)")
        if unit not in ("ms", "s"):
            raise _fail(rule, f"unit {unit!r} does not apply to {metric} (use ms or s)")
        return value * 1000.0 if unit == "s" else value
    if metric == "error_rate":
        if unit == "%":
            if value > 100:
                raise _fail(rule, "an error rate cannot exceed 100%")
            return value / 100.0
        if unit is not None:
            raise _fail(rule, f"unit {unit!r} does not apply to error_rate (use % or a fraction)")
        if value > 1:
            raise _fail(rule, "a fraction must be between 0 and 1 (write 5% for five percent)")
        return value
    if metric == "rps":
        if unit not in (None, "/s"):
            raise _fail(rule, f"unit {unit!r} does not apply to rps (use a number or /s)")
        return value
    # requests
    if unit is not None:
        raise _fail(rule, f"requests is a count and takes no unit, got {unit!r}")
    if not value.is_integer():
        raise _fail(rule, "requests is a count: use a whole number")
    return value


def parse_thresholds(thresholds: Mapping[str, Sequence[str]]) -> list[Threshold]:
    """Parse ``{scope: [rule, ...]}``; scopes are ``total`` or request names."""
    parsed: list[Threshold] = []
    for scope, rules in thresholds.items():
        if not isinstance(scope, str) or not scope.strip():
            raise ConfigError("a threshold scope must be a non-empty request name or 'total'")
        if isinstance(rules, str) or not isinstance(rules, Sequence):
            raise ConfigError(f"thresholds for scope {scope!r} must be a list of rules")
        for rule in rules:
            try:
                parsed.append(parse_threshold(rule, scope.strip()))
            except ConfigError as exc:
                raise ConfigError(f"scope {scope!r}: {exc}") from None
    return parsed


def parse_ratio(value: object) -> float:
    """A non-negative ratio from ``"10%"``, ``0.1`` or ``"0.1"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a ratio such as 10% or 0.1")
    if isinstance(value, int | float):
        ratio = float(value)
    elif isinstance(value, str) and (
        match := re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%?)\s*", value)
    ):
        ratio = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    else:
        raise ValueError(f"invalid ratio {value!r}: use e.g. 10% or 0.1{digits_hint(value)}")
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError("a ratio must be a finite non-negative number")
    return ratio
