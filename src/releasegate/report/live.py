"""A live list of release steps on the terminal.

On a TTY the list is redrawn in place (cursor up, clear line) by a background thread
about five times a second: a spinner and the elapsed seconds for running steps, a
marker, the duration, the status and a summary for finished ones. Anywhere else (CI
logs, pipes) it prints plain lines only::

    ... preflight
    [  0.4s] preflight ok — 3 stores reachable

A long step may report running figures (a canary step's weight and request counts):
on a TTY they follow its elapsed time, elsewhere a plain line at most every
:data:`PLAIN_UPDATE_S` seconds.

The display only moves the cursor and clears lines; it never hides the cursor or
switches screens, so even a process killed mid-release leaves a usable terminal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from releasegate.secrets import redact

SPINNER = "|/-\\"
MARKERS = {
    "ok": "+",
    "failed": "x",
    "skipped": "-",
    "rolled_back": "<",
    "interrupted": "!",
    "paused": "=",
}
_COLORS = {
    "ok": "32",
    "failed": "31",
    "rolled_back": "33",
    "interrupted": "31",
    "skipped": "2",
    "paused": "33",
}
_UP = "\x1b[{n}A"
_CLEAR_LINE = "\x1b[2K"
_CLEAR_BELOW = "\x1b[J"
_RESET = "\x1b[0m"
PLAIN_UPDATE_S = 10.0  # off a TTY, a running step's figures at most this often
NAME_WIDTH = 16  # step names are padded to this (or the longest running name)
MAX_NAME = 32


@dataclass
class _Step:
    name: str
    started: float
    status: str | None = None  # None while running
    summary: str = ""
    duration_s: float | None = None
    running: str = ""  # running figures while the step runs
    shown_at: float | None = None  # when they were last printed as a plain line


def _one_line(text: str) -> str:
    # A line break inside a name or summary would throw off the redraw's line count.
    return " ".join(redact(text).split())


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _can_encode(stream: TextIO, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class StepDisplay:
    """Shows steps as they start and finish; thread-safe; use it as a context manager.

    ``tty`` forces the redrawing (True) or the plain-line (False) mode; by default it
    follows ``stream.isatty()``. ``clock`` is the time source of every figure shown.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        refresh_s: float = 0.2,
        color: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = _is_tty(self.stream) if tty is None else tty
        if color is None:
            color = self.tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self.color = color
        self.refresh_s = refresh_s
        self.clock = clock
        self.dash = "—" if _can_encode(self.stream, "—") else "-"
        self._steps: list[_Step] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fixed = 0  # leading steps that are finished and drawn for good
        self._drawn = 0  # lines of the list below them, redrawn in place
        self._frame = 0
        self._closed = False
        self._broken = False  # the stream failed once: stop writing to it

    # -- the public operations ---------------------------------------------------------

    def start(self, name: str) -> None:
        """A step begins."""
        with self._lock:
            if self._closed:
                return
            step = _Step(_one_line(name), self.clock())
            self._steps.append(step)
            if self.tty:
                self._ensure_thread()
                self._draw()
            else:
                self._write(f"... {step.name}\n")

    def finish(
        self, name: str, status: str, summary: str = "", *, duration_s: float | None = None
    ) -> None:
        """A step ends with ``status`` (ok, failed, skipped, rolled_back, ...).

        ``duration_s`` overrides the time measured since :meth:`start`; a step that was
        never started is shown as finished.
        """
        with self._lock:
            if self._closed:
                return
            now = self.clock()
            step = self._find(_one_line(name))
            if step is None:
                step = _Step(_one_line(name), now)
                self._steps.append(step)
            step.status = status
            step.summary = _one_line(summary)
            step.duration_s = now - step.started if duration_s is None else duration_s
            if self.tty:
                self._draw()
            else:
                self._write(self._plain_line(step) + "\n")

    def update(self, name: str, text: str) -> None:
        """Running figures of a step that has started and not finished."""
        with self._lock:
            if self._closed:
                return
            step = self._find(_one_line(name))
            if step is None:
                return
            step.running = _one_line(text)
            now = self.clock()
            if self.tty:
                self._draw()
            elif step.shown_at is None or now - step.shown_at >= PLAIN_UPDATE_S:
                step.shown_at = now
                self._write(f"... {step.name} {self.dash} {step.running}\n")

    def note(self, text: str) -> None:
        """Print a line of text above the list (on a TTY the list moves down)."""
        with self._lock:
            if self._closed:
                self._write(redact(text) + "\n")
                return
            if self.tty:
                self._draw(above=redact(text))
            else:
                self._write(redact(text) + "\n")

    def close(self) -> None:
        """Stop redrawing and leave the final list; running steps show as interrupted."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._lock:
            now = self.clock()
            for step in self._steps:
                if step.status is None:
                    step.status = "interrupted"
                    step.duration_s = now - step.started
                    if not self.tty:
                        self._write(self._plain_line(step) + "\n")
            if self.tty:
                self._draw()

    def __enter__(self) -> StepDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _find(self, name: str) -> _Step | None:
        running = [s for s in self._steps if s.name == name and s.status is None]
        if running:
            return running[-1]
        return None

    def _plain_line(self, step: _Step) -> str:
        line = f"[{step.duration_s or 0.0:5.1f}s] {step.name} {step.status}"
        return f"{line} {self.dash} {step.summary}" if step.summary else line

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="releasegate-step-display", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._lock:
                if self._closed or self._broken:
                    return
                if any(s.status is None for s in self._steps):
                    self._frame += 1
                    self._draw()

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        # A pty nobody sized reports 0 columns; 80 is the conventional default.
        return columns if columns >= 20 else 80

    def _tty_line(self, step: _Step, now: float, name_width: int, width: int) -> str:
        if step.status is None:
            marker = SPINNER[self._frame % len(SPINNER)]
            plain = f" {marker} {step.name:<{name_width}} {now - step.started:6.1f}s"
            if step.running:
                plain += f"  {step.running}"
        else:
            marker = MARKERS.get(step.status, "*")
            plain = f" {marker} {step.name:<{name_width}} {step.duration_s or 0.0:6.1f}s"
            plain += f"  {step.status}"
            if step.summary:
                plain += f" {self.dash} {step.summary}"
        # Never let a line wrap: the cursor-up count assumes one screen row per step.
        if len(plain) > width - 1:
            plain = plain[: width - 2] + "…" if self.dash == "—" else plain[: width - 1]
        code = _COLORS.get(step.status or "")
        if self.color and code:
            return f" \x1b[{code}m{marker}{_RESET}{plain[2:]}"
        return plain

    def _draw(self, above: str | None = None) -> None:
        """Redraw the steps that can still change; finished ones above them stay put.

        Only the region from the first running step down is redrawn, so the cursor never
        has to climb past the top of the screen however many steps a release has.
        """
        now = self.clock()
        width = self._width()
        region = self._steps[self._fixed :]
        longest = max((len(s.name) for s in region), default=0)
        name_width = min(MAX_NAME, max(NAME_WIDTH, longest))
        parts = []
        if self._drawn:
            parts.append("\r" + _UP.format(n=self._drawn))
        if above is not None:
            # A note may span (or wrap onto) several rows: clear everything below first.
            parts.append(f"{_CLEAR_BELOW}{above}\n")
        for step in region:
            parts.append(f"{_CLEAR_LINE}{self._tty_line(step, now, name_width, width)}\n")
        settled = 0
        while settled < len(region) and region[settled].status is not None:
            settled += 1
        self._fixed += settled
        self._drawn = len(region) - settled
        self._write("".join(parts))

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "ascii"
                self.stream.write(text.encode(encoding, "replace").decode(encoding))
            self.stream.flush()
        except (OSError, ValueError):
            # A closed pipe or terminal must not take the release down with it.
            self._broken = True
