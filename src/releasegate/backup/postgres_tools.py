"""The PostgreSQL client programs a backup runs: finding them, their versions, running them.

``pg_dump`` must be at least as new as the server: the binary is looked up as
``/usr/lib/postgresql/<server major>/bin/pg_dump`` first (Debian/Ubuntu's layout), then a
newer installed version there, then ``PATH``. The password reaches the programs through
the ``PGPASSWORD`` environment of the child process, never its command line.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

from releasegate import db
from releasegate.errors import CheckFailed, ConfigError, InfraError
from releasegate.secrets import redact

PG_LIB = Path("/usr/lib/postgresql")

log = logging.getLogger("releasegate.backup.postgres")

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_TAIL_LINES = 40


@dataclass(frozen=True)
class PgTool:
    """One PostgreSQL client program and its version."""

    name: str
    path: str
    version: str
    major: int


def server_major(version_num: int) -> int:
    """The major version from ``server_version_num`` (150018 -> 15, 90624 -> 9)."""
    return version_num // 10000


def parse_tool_version(text: str) -> tuple[str, int]:
    """``("15.18", 15)`` from ``pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)``."""
    match = _VERSION_RE.search(text)
    if not match:
        raise ConfigError(f"cannot read the version of a PostgreSQL client from {text.strip()!r}")
    major = int(match.group(1))
    version = f"{major}.{match.group(2)}" if match.group(2) else str(major)
    return version, major


def check_compatible(tool: str, tool_major: int, server: int) -> None:
    """Raise :class:`ConfigError` when ``tool`` (``pg_dump``, ``pg_restore``) is older than
    the server's major version: it would refuse, or produce an incomplete dump."""
    if tool_major < server:
        raise ConfigError(
            f"{tool} {tool_major} cannot {'dump' if tool == 'pg_dump' else 'restore into'}"
            f" a PostgreSQL {server} server: install postgresql-client-{server}"
        )


def _candidates(name: str, server: int) -> list[str]:
    preferred = PG_LIB / str(server) / "bin" / name
    found = [str(preferred)] if preferred.is_file() else []
    if PG_LIB.is_dir():
        newer = sorted(
            (
                int(d.name)
                for d in PG_LIB.iterdir()
                if d.name.isdigit() and int(d.name) > server and (d / "bin" / name).is_file()
            ),
            reverse=True,
        )
        found += [str(PG_LIB / str(major) / "bin" / name) for major in newer]
    if on_path := shutil.which(name):
        found.append(on_path)
    return found


@functools.lru_cache(maxsize=16)
def find_tool(name: str, server: int) -> PgTool:
    """The ``pg_dump``/``pg_restore`` to use against a server of major version ``server``.

    ``/usr/lib/postgresql/<server>/bin/<name>`` when present, else the newest newer one
    there, else the one on ``PATH``; raises :class:`ConfigError` when none exists or the
    chosen one is older than the server.
    """
    candidates = _candidates(name, server)
    if not candidates:
        raise ConfigError(f"{name} not found: install postgresql-client-{server}")
    path = candidates[0]
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {path} --version: {exc}") from None
    version, major = parse_tool_version(out.stdout or out.stderr)
    check_compatible(name, major, server)
    return PgTool(name, path, version, major)


def read_server_version(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """The server's major version and its version string (``15``, ``"15.18"``)."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    ).fetchone()
    assert row is not None
    return server_major(int(row[0])), str(row[1]).split()[0]


def libpq_target(url: str, purpose: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment carrying it (``PGPASSWORD``).

    The password, from the user info or a ``?password=`` query value, is percent-decoded
    (libpq decodes the URL, not the environment). The child's ``application_name``
    names releasegate and the performer, as for every releasegate connection.
    """
    libpq_url, password = db.split_password(url)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    env["PGAPPNAME"] = db.application_name(purpose)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return libpq_url, env


class ToolRun:
    """A running client program whose stderr is streamed (logged at debug, tail kept)."""

    def __init__(
        self,
        tool: PgTool,
        args: Sequence[str],
        env: dict[str, str],
        *,
        pipe_in: bool = False,
        pipe_out: bool = False,
    ) -> None:
        self.tool = tool
        self.started = time.monotonic()
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        try:
            # Binary pipes (``pipe_in``/``pipe_out``) carry SQL between two programs.
            self.proc = subprocess.Popen(
                [tool.path, *args],
                env=env,
                stdin=subprocess.PIPE if pipe_in else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_out else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise InfraError(f"cannot run {tool.name}: {exc}") from None
        assert self.proc.stderr is not None
        stderr = io.TextIOWrapper(self.proc.stderr, errors="replace")
        self._reader = threading.Thread(target=self._read, args=(stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for raw in stream:
            line = redact(raw.rstrip())
            if line:
                self.tail.append(line)
                log.debug("%s: %s", self.tool.name, line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.proc.wait()
        self._reader.join(timeout=5)

    def finish(self) -> int:
        """Wait for the program and its last message; its exit code."""
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code

    def wait(self, target: str) -> float:
        """Wait for the program; raise a one-line error if it failed. Returns seconds."""
        code = self.finish()
        took = time.monotonic() - self.started
        if code != 0:
            raise tool_error(self.tool.name, code, list(self.tail), target)
        return took


def _reason(lines: list[str]) -> str:
    errors = [ln for ln in lines if "error:" in ln.lower() or "fatal:" in ln.lower()]
    chosen = errors[0] if errors else (lines[-1] if lines else "no message")
    for prefix in ("pg_dump: error: ", "pg_restore: error: ", "pg_dump: ", "pg_restore: "):
        chosen = chosen.removeprefix(prefix)
    return " ".join(chosen.split())[:300]


def tool_error(name: str, code: int, lines: list[str], target: str) -> InfraError | CheckFailed:
    """The one-line error for a failed ``pg_dump``/``pg_restore`` run."""
    reason = _reason(lines)
    text = " ".join(lines).lower()
    message = f"{name} failed on {target} (exit {code}): {reason}"
    if "no space left on device" in text:
        return InfraError(f"{name} failed on {target}: no space left on device")
    if "connection to server" in text or "could not connect" in text:
        return InfraError(message)
    return CheckFailed(message)
