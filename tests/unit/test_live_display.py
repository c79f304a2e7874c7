"""The live step list: plain lines off a terminal, in-place redraws on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytest

from releasegate import secrets
from releasegate.report.live import StepDisplay
from releasegate.secrets import register_secret


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    registry: set[str] = set()
    monkeypatch.setattr(secrets, "_registered", registry)
    yield registry


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- not a terminal: plain lines --------------------------------------------------------


def test_plain_lines_off_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    display = StepDisplay(out, clock=clock)
    assert not display.tty
    display.start("preflight")
    clock.now += 0.4
    display.finish("preflight", "ok", "3 stores reachable")
    display.start("migrate")
    clock.now += 12.3
    display.finish("migrate", "failed", "0003:\n  lock timeout")
    display.finish("smoke", "skipped", "")
    display.start("slo gate")
    display.finish("slo gate", "ok", "pass", duration_s=123.4)
    display.start("watch")
    clock.now += 2.0
    display.close()
    display.close()  # idempotent
    display.start("after close")  # ignored
    assert out.getvalue().splitlines() == [
        "... preflight",
        "[  0.4s] preflight ok — 3 stores reachable",
        "... migrate",
        "[ 12.3s] migrate failed — 0003: lock timeout",
        "[  0.0s] smoke skipped",
        "... slo gate",
        "[123.4s] slo gate ok — pass",
        "... watch",
        "[  2.0s] watch interrupted",
    ]
    assert "\x1b" not in out.getvalue()


def test_context_manager_closes_on_an_exception() -> None:
    out, clock = io.StringIO(), Clock()
    with pytest.raises(RuntimeError, match="boom"), StepDisplay(out, clock=clock) as display:
        display.start("deploy")
        clock.now += 1.5
        raise RuntimeError("boom")
    assert out.getvalue() == "... deploy\n[  1.5s] deploy interrupted\n"


def test_secrets_are_redacted_and_an_ascii_stream_gets_a_plain_dash() -> None:
    register_secret("pa55w0rd")
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    display = StepDisplay(out, clock=Clock())
    display.start("connect")
    display.finish("connect", "failed", "postgresql://app:pa55w0rd@db/x refused café")
    display.note("using pa55w0rd")
    display.close()
    out.flush()
    assert raw.getvalue().decode("ascii").splitlines() == [
        "... connect",
        "[  0.0s] connect failed - postgresql://app:***@db/x refused caf?",
        "using ***",
    ]


def test_many_threads_never_interleave_lines() -> None:
    out = io.StringIO()
    display = StepDisplay(out, tty=False)

    def work(n: int) -> None:
        for i in range(50):
            display.start(f"t{n}-{i}")
            display.finish(f"t{n}-{i}", "ok", "x" * 200)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    display.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 * 50 * 2
    finished = [line for line in lines if not line.startswith("... ")]
    assert all(re.fullmatch(r"\[ +\d+\.\ds\] t\d-\d+ ok — x{200}", line) for line in finished)


def test_a_broken_stream_does_not_raise() -> None:
    out = io.StringIO()
    display = StepDisplay(out, tty=False)
    out.close()
    display.start("a")
    display.finish("a", "ok", "")
    display.close()


# -- a real pseudo-terminal ------------------------------------------------------------------


@contextmanager
def pty_stream(columns: int = 100) -> Iterator[tuple[TextIO, list[bytes]]]:
    """A text stream on the slave side of a pty; yields it and what the master side read."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stream = open(slave, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        yield stream, chunks
    finally:
        stream.close()
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)


def screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: enough of VT100 for the display."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|.", output, re.S):
        if token.startswith("\x1b["):
            number = token[2:-1]
            if token.endswith("A"):
                row = max(0, row - int(number or 1))
            elif token.endswith("K") and number == "2":
                rows[row] = []
            elif token.endswith("J") and number in ("", "0"):
                rows[row] = rows[row][:col]
                del rows[row + 1 :]
            elif not token.endswith("m"):
                raise AssertionError(f"unexpected escape sequence {token!r}")
        elif token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            while len(rows) <= row:
                rows.append([])
        else:
            line = rows[row]
            line.extend(" " * (col - len(line) + 1))
            line[col] = token
            col += 1
    return ["".join(r).rstrip() for r in rows if "".join(r).strip()]


def spinner_frames(chunks: list[bytes]) -> set[str]:
    output = b"".join(chunks).decode("utf-8", errors="replace")
    return set(re.findall(r"\x1b\[2K ([|/\\-]) preflight", output))


def test_redraws_in_place_on_a_terminal() -> None:
    with pty_stream() as (stream, chunks):
        display = StepDisplay(stream, refresh_s=0.02)
        assert display.tty
        display.start("preflight")
        deadline = time.monotonic() + 5
        while len(spinner_frames(chunks)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        display.finish("preflight", "ok", "3 stores reachable")
        display.start("migrate")
        time.sleep(0.1)
        display.note("warning: lock held by another runner,\n  waiting")
        display.finish("migrate", "failed", "0003 timed out")
        display.start("rollback")
        time.sleep(0.1)
        display.close()
    output = b"".join(chunks).decode("utf-8")
    assert "\x1b[1A" in output and "\x1b[2K" in output
    # The background thread animated the spinner while preflight ran.
    assert len(spinner_frames(chunks)) >= 3, output
    final = screen(output)
    assert re.fullmatch(r" \+ preflight +\d\.\ds  ok — 3 stores reachable", final[0]), final
    # A note goes above the steps still being redrawn: after preflight, before migrate.
    assert final[1:3] == ["warning: lock held by another runner,", "  waiting"]
    assert re.fullmatch(r" x migrate +0\.\ds  failed — 0003 timed out", final[3]), final
    assert re.fullmatch(r" ! rollback +0\.\ds  interrupted", final[4]), final
    assert len(final) == 5


def test_long_lines_never_wrap_on_a_narrow_terminal() -> None:
    summary = "set 20261121T150001.250Z, 3 files, 138.0 KiB " * 3
    with pty_stream(columns=40) as (stream, chunks), StepDisplay(stream, color=False) as display:
        display.start("backup")
        display.finish("backup", "ok", summary)
        display.start("smoke")
        display.finish("smoke", "ok", "5/5")
    output = b"".join(chunks).decode("utf-8")
    assert "\x1b[1A" in output and "\x1b[0m" not in output
    final = screen(output)
    assert len(final) == 2 and all(len(line) < 40 for line in final), final
    assert final[0].startswith(" + backup") and final[0].endswith("…")
    assert re.fullmatch(r" \+ smoke +0\.\ds  ok — 5/5", final[1]), final


def test_colors_reset_after_every_marker() -> None:
    with pty_stream() as (stream, chunks), StepDisplay(stream, color=True) as display:
        display.start("a")
        display.finish("a", "failed", "")
    output = b"".join(chunks).decode("utf-8")
    assert "\x1b[31mx\x1b[0m a" in output


def test_finished_steps_stay_put_so_long_releases_fit_any_screen() -> None:
    with pty_stream() as (stream, chunks), StepDisplay(stream, refresh_s=0.01) as display:
        for i in range(60):
            display.start(f"step {i}")
            display.finish(f"step {i}", "ok" if i % 2 else "skipped", f"n={i}")
    output = b"".join(chunks).decode("utf-8")
    # Only the running step is ever redrawn: the cursor climbs one line at most.
    assert {int(n) for n in re.findall(r"\x1b\[(\d+)A", output)} == {1}
    final = screen(output)
    assert len(final) == 60
    for i, line in enumerate(final):
        status = "ok" if i % 2 else "skipped"
        assert re.fullmatch(rf" [+-] step {i} +0\.\ds  {status} — n={i}", line), line
