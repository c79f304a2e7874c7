"""Real traffic per color, read from the router's own per-request log.

HAProxy writes one line per request into an in-memory ``ring`` buffer
(:data:`~releasegate.router.config.TRAFFIC_RING`, format
:data:`~releasegate.router.config.TRAFFIC_LOG_FORMAT`)::

    <pid> <request id> <server> <status> <active time ms> <termination state>

and :class:`TrafficReader` reads it back with ``show events <ring>`` over the runtime
API, the router's only interface: no log file, no reload. ``show events`` prints the
whole ring, oldest line first, so the reader remembers the last line it saw and keeps
only what follows it, scanning from the end so that old lines are not parsed again.
Lines are in the order requests *ended*; request ids are unique but not in that order,
which is why the cursor is a line, not an id.

When more was logged between two reads than the ring holds, the oldest lines are gone:
the reader notes an overrun (:attr:`TrafficReader.overruns`) and counts what is left.
The lost lines are the oldest of the window, whichever color served them, so the rates
and percentiles of what remains still describe the window; only the counts fall short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

from releasegate.errors import InfraError
from releasegate.router.config import COLORS, TRAFFIC_LINE_MAX, TRAFFIC_RING
from releasegate.router.runtime import RuntimeClient

if TYPE_CHECKING:
    from releasegate.config import Settings

# Termination causes (first letter of %ts) that are the server's or the proxy's failure:
# S server aborted or refused, P proxy, R resource, I internal, D server down, K killed.
# C (the client went away) and L (answered locally) are not the color's fault.
_FAILURE_CAUSES = frozenset("SPRIDK")


@dataclass(frozen=True)
class ColorTraffic:
    """The requests one color served in a window, as the router saw them.

    ``errors`` counts responses with a 5xx status, requests that got no response at all
    (status -1: connection refused, reset, timeout) and requests the server or the proxy
    aborted (termination state S, P, R, I, D or K), once each. ``latencies_ms`` is the
    active time of every request (HAProxy's ``%Ta``: first byte of the request to last
    byte of the response), sorted; HAProxy measures it in whole milliseconds.
    ``duration_s`` is the length of the window, for rates.
    """

    color: str
    requests: int = 0
    errors: int = 0
    latencies_ms: tuple[float, ...] = ()
    duration_s: float = 0.0

    def error_rate(self) -> float:
        """Errors over requests; 0.0 when there was no request."""
        return self.errors / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float | None:
        """The nearest-rank ``q``-th percentile latency in ms (0 < q <= 100); None when empty.

        The smallest latency that at least ``q`` percent of the requests did not exceed,
        the definition the SLO gate's histogram uses.
        """
        return nearest_rank(self.latencies_ms, q)

    def rps(self) -> float | None:
        """Requests per second over the window; None when the window has no length."""
        return self.requests / self.duration_s if self.duration_s > 0 else None

    def merged(self, other: ColorTraffic) -> ColorTraffic:
        """This window followed by ``other`` (same color): counts, latencies and lengths add."""
        return ColorTraffic.combine(self.color, [self, other])

    @classmethod
    def combine(cls, color: str, windows: Sequence[ColorTraffic]) -> ColorTraffic:
        """Consecutive windows of ``color`` as one (none: an empty window).

        One sort for all of them: Timsort merges sorted runs in C, in about linear time.
        To judge a long step often, keep the drained windows and combine them when judging,
        rather than merging every drain into a growing window.
        """
        if any(window.color != color for window in windows):
            raise ValueError(f"cannot combine other colors' traffic into {color}'s")
        return cls(
            color=color,
            requests=sum(window.requests for window in windows),
            errors=sum(window.errors for window in windows),
            latencies_ms=tuple(sorted(chain.from_iterable(w.latencies_ms for w in windows))),
            duration_s=sum(window.duration_s for window in windows),
        )

    def summary(self) -> dict[str, Any]:
        """Counts, error rate and p50/p95/p99 (ms), JSON-ready, for reports."""
        return {
            "color": self.color,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate(), 6),
            "rps": None if (rps := self.rps()) is None else round(rps, 3),
            "duration_s": round(self.duration_s, 3),
            **{f"p{q:g}": self.percentile(q) for q in (50.0, 95.0, 99.0)},
        }


def nearest_rank(values: tuple[float, ...], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of sorted ``values``; None when empty."""
    if not 0 < q <= 100:
        raise ValueError(f"a percentile is above 0 and at most 100, not {q}")
    if not values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(values) - 1e-9))
    return values[min(rank, len(values)) - 1]


@dataclass(frozen=True)
class TrafficLine:
    """One request as the router logged it."""

    pid: int
    request_id: int
    server: str  # a color, or <NOSRV> when no server took the request
    status: int  # -1 when no response was received
    active_ms: int
    termination: str

    @property
    def failed(self) -> bool:
        """A 5xx, no response at all, or an abort by the server or the proxy."""
        return self.status >= 500 or self.status < 0 or self.termination[:1] in _FAILURE_CAUSES


def parse_traffic_line(line: str) -> TrafficLine | None:
    """A line of the traffic ring; None when it is not one (so it is counted, not fatal)."""
    fields = line.split()
    if len(fields) != 6:
        return None
    pid, request_id, server, status, active, termination = fields
    try:
        return TrafficLine(
            pid=int(pid),
            request_id=int(request_id),
            server=server,
            status=int(status),
            active_ms=int(active),
            termination=termination,
        )
    except ValueError:
        return None


@dataclass
class _Tally:
    """What :meth:`TrafficReader.drain` adds up for one color."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, line: TrafficLine) -> None:
        self.requests += 1
        self.errors += line.failed
        if line.active_ms >= 0:
            self.latencies.append(float(line.active_ms))


class TrafficReader:
    """Reads the router's traffic ring: each :meth:`drain` returns what came since the last.

    Built on the router's :class:`~releasegate.router.runtime.RuntimeClient`, so it reads
    a local HAProxy and a remote one (admin socket forwarded over ssh) alike; see
    :meth:`for_settings`. The first :meth:`drain` returns everything still in the ring;
    call :meth:`skip_backlog` first to start a window now.

    Besides the per-color figures the reader keeps, since it was created:
    ``overruns`` (reads that found the ring had dropped lines not read yet),
    ``restarts`` (reads that found another HAProxy process), ``unrouted`` (requests no
    color took, e.g. both at weight 0) and ``malformed`` (lines not in the traffic format,
    which a config of releasegate's never writes).
    """

    def __init__(
        self, client: RuntimeClient, ring: str = TRAFFIC_RING, ring_size: int | None = None
    ) -> None:
        self.client = client
        self.ring = ring
        # With the ring's size, an overrun is noticed even when the ring was empty at the
        # previous read (no cursor line to look for): the ring is full now.
        self.ring_size = ring_size
        self._has_read = False
        self.overruns = 0
        self.restarts = 0
        self.unrouted = 0
        self.malformed = 0
        # The cursor: the newest line seen (its text, and its pid to tell a restart).
        self._last_line: str | None = None
        self._last_pid: int | None = None
        self._last_read = time.monotonic()

    @classmethod
    def for_settings(cls, settings: Settings) -> TrafficReader:
        """A reader of the router of ``settings``, wherever it runs: the ring is not read
        yet (a remote router's admin socket is forwarded over ssh already)."""
        from releasegate.router.config import router_config
        from releasegate.router.process import runtime_client

        config = router_config(settings)
        return cls(runtime_client(settings, config), ring_size=config.traffic_ring_size)

    def read_ring(self) -> str:
        """The ring's text, a line a request, oldest first; :class:`InfraError` when the
        router has no such ring."""
        answer = self.client.command(f"show events {self.ring}")
        if answer.startswith("No such event sink"):
            raise InfraError(
                f"the router has no traffic ring {self.ring!r}: it runs a config from an"
                " older releasegate; restart it (router down, router up) to read real traffic"
            )
        return answer

    def new_lines(self, text: str) -> list[str]:
        """The lines of ``text`` (the ring) after the cursor, oldest first; the cursor
        moves to the newest.

        The cursor is looked for from the end of the text (``str.rfind``) and only what
        follows it is split, so a read costs what is new, not what the ring holds.
        Without the cursor in the text, either the ring overran or HAProxy restarted
        (another pid): every line is new, and the event is counted. After a read of an
        empty ring there is no cursor: a ring that is full now overran.
        """
        read_before, self._has_read = self._has_read, True
        body = text.strip("\n")
        if not body:
            return []
        newest = body[body.rfind("\n") + 1 :]
        # Both ends padded, so that the cursor matches whole lines only.
        padded = f"\n{body}\n"
        tail = padded
        if self._last_line is None:
            if read_before and self._ring_full(body):
                self.overruns += 1
        else:
            cursor = f"\n{self._last_line}\n"
            at = padded.rfind(cursor)
            if at >= 0:
                tail = padded[at + len(cursor) - 1 :]
            elif _pid_of(newest) not in (None, self._last_pid):
                self.restarts += 1
            else:
                self.overruns += 1
        self._last_line = newest
        self._last_pid = _pid_of(newest)
        return [line for line in tail.split("\n") if line]

    def _ring_full(self, body: str) -> bool:
        """Whether the lines of ``body`` fill the ring, so older ones were dropped for them.

        HAProxy stores a line with two bytes of its own and drops the oldest lines when
        the next one (at most ``TRAFFIC_LINE_MAX`` bytes) would not fit.
        """
        if self.ring_size is None:
            return False
        stored = len(body) + body.count("\n") + 2  # each line's length, plus 2 each
        return stored >= self.ring_size - TRAFFIC_LINE_MAX - 2

    def drain(self) -> dict[str, ColorTraffic]:
        """Requests logged since the previous drain, per color (``blue`` and ``green``).

        Both colors are always in the answer, with zero requests when they served none.
        One runtime API round trip; :class:`InfraError` when the router does not answer.
        """
        lines = self.new_lines(self.read_ring())
        now = time.monotonic()
        window = now - self._last_read
        self._last_read = now
        tallies = {color: _Tally() for color in COLORS}
        for text in lines:
            line = parse_traffic_line(text)
            if line is None:
                self.malformed += 1
            elif line.server in tallies:
                tallies[line.server].add(line)
            else:
                self.unrouted += 1
        return {
            color: ColorTraffic(
                color=color,
                requests=tally.requests,
                errors=tally.errors,
                latencies_ms=tuple(sorted(tally.latencies)),
                duration_s=window,
            )
            for color, tally in tallies.items()
        }

    def skip_backlog(self) -> None:
        """Start a window now: what the ring holds already will not be returned."""
        self.drain()


def _pid_of(line: str) -> int | None:
    head = line.split(" ", 1)[0]
    return int(head) if head.isdigit() else None
