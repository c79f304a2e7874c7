"""The release lock: a session-scoped Postgres advisory lock, taken by polling.

Polling ``pg_try_advisory_lock`` instead of waiting in ``pg_advisory_lock`` matters:
a session blocked in the lock wait holds a virtual transaction that
``CREATE INDEX CONCURRENTLY`` in another session waits for, which deadlocks. Being
session-scoped, the lock is freed by Postgres when a killed runner's connection
drops. The holder is named through its ``application_name``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from releasegate import db
from releasegate.config import Settings, format_duration
from releasegate.errors import LockNotObtained

# First half of the two-int advisory key: keeps releasegate's locks apart from the app's.
LOCK_NAMESPACE = 0x52470001


def lock_key(service: str) -> int:
    """The second half of the key: a stable signed 32-bit hash of the service name."""
    value = zlib.crc32(service.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client: str | None
    since: datetime | None

    def describe(self) -> str:
        who = self.application_name or "an unnamed session"
        where = f" from {self.client}" if self.client else ""
        since = f" since {self.since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if self.since else ""
        return f"{who} (pid {self.pid}{where}{since})"


def find_holder(conn: psycopg.Connection[Any], service: str) -> LockHolder | None:
    """Who holds the release lock for ``service``, if anyone."""
    row = conn.execute(
        "SELECT a.pid, coalesce(a.application_name, ''), host(a.client_addr), a.backend_start"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
        " AND l.classid = %s::oid AND l.objid = %s::oid AND l.database = ("
        "   SELECT oid FROM pg_database WHERE datname = current_database())",
        # pg_locks shows the int4 halves as unsigned oids.
        (LOCK_NAMESPACE & 0xFFFFFFFF, lock_key(service) & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return None
    return LockHolder(pid=row[0], application_name=row[1], client=row[2], since=row[3])


@dataclass
class HeldLock:
    """The release lock while it is held: how long it took, and a liveness check."""

    conn: psycopg.Connection[Any]
    service: str
    waited: float
    # The ledger row of the operation holding the lock (a release, a rollback): rows
    # opened by operations that share the lock (see :func:`shared`) are its children.
    ledger_row: int | None = None

    def ensure_held(self) -> None:
        """Raise :class:`LockNotObtained` if the lock session died or lost the lock.

        Called between steps: a release must not go on once another runner could take over.
        """
        try:
            row = self.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND objsubid = 2"
                " AND classid = %s::oid AND objid = %s::oid",
                (LOCK_NAMESPACE & 0xFFFFFFFF, lock_key(self.service) & 0xFFFFFFFF),
            ).fetchone()
        except psycopg.Error as exc:
            raise LockNotObtained(
                f"release lock for service '{self.service}' was lost: {db.first_line(exc)}"
            ) from None
        if not row or not row[0]:
            raise LockNotObtained(f"release lock for service '{self.service}' was lost")


@contextmanager
def release_lock(
    url: str,
    service: str,
    purpose: str,
    *,
    wait: float,
    poll_interval: float = 0.5,
    connect_timeout: float = 5.0,
) -> Iterator[HeldLock]:
    """Hold the release lock for ``service`` while the block runs.

    Raises :class:`LockNotObtained` (exit 3) naming the holder when ``wait`` runs out.
    Inside :func:`shared` for the same service and thread, the held lock is reused.
    """
    reused = getattr(_local, "shared", {}).get(service)
    if reused is not None:
        yield reused
        return
    with _acquire(url, service, purpose, wait, poll_interval, connect_timeout) as lock:
        yield lock


def service_lock(settings: Settings, purpose: str) -> AbstractContextManager[HeldLock]:
    """:func:`release_lock` for the configured service, with the configured wait."""
    return release_lock(
        settings.postgres_url(),
        settings.service,
        purpose,
        wait=settings.raw.lock.wait,
        poll_interval=settings.raw.lock.poll_interval,
        connect_timeout=settings.raw.postgres.connect_timeout,
    )


_local = threading.local()


def shared_lock(service: str) -> HeldLock | None:
    """The lock this thread shares for ``service`` (inside :func:`shared`), if any."""
    table: dict[str, HeldLock] = getattr(_local, "shared", {})
    return table.get(service)


@contextmanager
def shared(lock: HeldLock) -> Iterator[HeldLock]:
    """Let code in this thread reuse ``lock`` instead of taking the release lock again.

    A release holds the lock for its whole run and calls operations (``migrate up``,
    backups, restores) that take it themselves; they must not wait for it.
    """
    table: dict[str, HeldLock] = getattr(_local, "shared", {})
    _local.shared = table
    previous = table.get(lock.service)
    table[lock.service] = lock
    try:
        yield lock
    finally:
        if previous is None:
            table.pop(lock.service, None)
        else:
            table[lock.service] = previous


@contextmanager
def _acquire(
    url: str,
    service: str,
    purpose: str,
    wait: float,
    poll_interval: float,
    connect_timeout: float,
) -> Iterator[HeldLock]:
    conn = db.connect(url, f"lock {purpose}", connect_timeout=connect_timeout)
    key = (LOCK_NAMESPACE, lock_key(service))
    started = time.monotonic()
    try:
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
            if row and row[0]:
                break
            elapsed = time.monotonic() - started
            if elapsed >= wait:
                holder = find_holder(conn, service)
                who = holder.describe() if holder else "another session (gone by now)"
                raise LockNotObtained(
                    f"release lock for service '{service}' is held by {who};"
                    f" waited {format_duration(wait)}"
                )
            time.sleep(min(poll_interval, max(wait - elapsed, 0.01)))
        try:
            yield HeldLock(conn, service, time.monotonic() - started)
        finally:
            # A dead session has lost the lock already, and close() frees it anyway.
            with contextlib.suppress(psycopg.Error):
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
    finally:
        conn.close()
