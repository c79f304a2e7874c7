"""The release lock on a real server: conflicts, the holder's name, waiting, dead holders."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import psycopg
import pytest

from releasegate.errors import InfraError, LockNotObtained
from releasegate.lock import find_holder, lock_key, release_lock

PERFORMER = "lock-test-runner"


@pytest.fixture(autouse=True)
def named_performer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions are named ``releasegate/lock <purpose> <performer>``; fix the performer."""
    monkeypatch.setenv("RELEASEGATE_PERFORMER", PERFORMER)


def holder_pid(url: str, service: str) -> int | None:
    with psycopg.connect(url, autocommit=True) as conn:
        holder = find_holder(conn, service)
    return None if holder is None else holder.pid


def test_lock_key_is_stable_and_signed_32_bit() -> None:
    assert lock_key("notes") == lock_key("notes")
    assert lock_key("notes") != lock_key("billing")
    for service in ("notes", "billing", "a", "x" * 63):
        assert -(2**31) <= lock_key(service) < 2**31


def test_second_runner_fails_naming_the_holder_after_the_wait(pg_url: str) -> None:
    wait = 0.6
    with release_lock(pg_url, "notes", "migrate up", wait=0) as held:
        assert held.waited < 0.5
        started = time.monotonic()
        with (
            pytest.raises(LockNotObtained) as info,
            release_lock(pg_url, "notes", "migrate down", wait=wait, poll_interval=0.1),
        ):
            pytest.fail("the lock was obtained twice")
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed >= wait
    assert f"releasegate/lock migrate up {PERFORMER}" in message
    assert "service 'notes'" in message
    assert "waited 600ms" in message
    assert info.value.exit_code == 3


def test_wait_zero_fails_at_once(pg_url: str) -> None:
    with release_lock(pg_url, "notes", "holder", wait=0):
        started = time.monotonic()
        with pytest.raises(LockNotObtained, match="releasegate/lock holder"):
            release_lock(pg_url, "notes", "second", wait=0).__enter__()
        assert time.monotonic() - started < 2


def test_different_service_does_not_conflict(pg_url: str) -> None:
    with (
        release_lock(pg_url, "notes", "a", wait=0),
        release_lock(pg_url, "billing", "b", wait=0) as held,
    ):
        assert held.waited < 0.5
        assert holder_pid(pg_url, "notes") is not None
        assert holder_pid(pg_url, "billing") is not None
        assert holder_pid(pg_url, "notes") != holder_pid(pg_url, "billing")


def test_find_holder_describes_the_session(pg_url: str) -> None:
    assert holder_pid(pg_url, "notes") is None
    with release_lock(pg_url, "notes", "migrate up", wait=0), psycopg.connect(pg_url) as conn:
        holder = find_holder(conn, "notes")
        assert holder is not None
        assert holder.application_name == f"releasegate/lock migrate up {PERFORMER}"
        assert holder.client == "127.0.0.1"
        assert holder.since is not None
        assert f"(pid {holder.pid} from 127.0.0.1 since " in holder.describe()
        assert find_holder(conn, "billing") is None


def test_lock_released_at_block_exit(pg_url: str) -> None:
    with release_lock(pg_url, "notes", "first", wait=0):
        assert holder_pid(pg_url, "notes") is not None
    assert holder_pid(pg_url, "notes") is None
    with release_lock(pg_url, "notes", "second", wait=0) as held:
        assert held.waited < 0.5


def test_lock_released_when_the_block_raises(pg_url: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), release_lock(pg_url, "notes", "a", wait=0):
        raise RuntimeError("boom")
    assert holder_pid(pg_url, "notes") is None
    with release_lock(pg_url, "notes", "b", wait=0):
        assert holder_pid(pg_url, "notes") is not None


def test_killed_holder_frees_the_lock(pg_url: str) -> None:
    with ExitStack() as holder:
        holder.enter_context(release_lock(pg_url, "notes", "doomed", wait=0))
        pid = holder_pid(pg_url, "notes")
        assert pid is not None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            row = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert row == (True,)
        with release_lock(pg_url, "notes", "next", wait=3, poll_interval=0.05):
            assert holder_pid(pg_url, "notes") not in (None, pid)
        # Leaving the dead holder's block must not raise: its session is gone.
    assert holder_pid(pg_url, "notes") is None


def test_ensure_held_notices_a_lost_lock(pg_url: str) -> None:
    with release_lock(pg_url, "notes", "doomed", wait=0) as held:
        held.ensure_held()  # still ours: no error
        pid = holder_pid(pg_url, "notes")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(LockNotObtained, match="was lost"):
            held.ensure_held()


def test_waiter_gets_the_lock_when_the_holder_releases(pg_url: str) -> None:
    holder = ExitStack()
    holder.enter_context(release_lock(pg_url, "notes", "holder", wait=0))
    timer = threading.Timer(0.3, holder.close)
    timer.start()
    try:
        with release_lock(pg_url, "notes", "waiter", wait=3, poll_interval=0.05) as held:
            assert held.waited >= 0.2
            assert held.waited < 3
            with psycopg.connect(pg_url) as conn:
                current = find_holder(conn, "notes")
            assert current is not None
            assert current.application_name.startswith("releasegate/lock waiter")
    finally:
        timer.join()
        holder.close()


def test_unreachable_server_is_an_infra_error() -> None:
    url = "postgresql://app:Unreach4ble@127.0.0.1:1/notes"
    with pytest.raises(InfraError) as info:
        release_lock(url, "notes", "x", wait=0, connect_timeout=2).__enter__()
    assert not isinstance(info.value, LockNotObtained)
    assert str(info.value).startswith("cannot reach Postgres at 127.0.0.1:1/notes: ")
    assert "Unreach4ble" not in str(info.value)
