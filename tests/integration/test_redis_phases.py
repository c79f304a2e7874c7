"""Redis migrations in expand/contract form, on a real Redis with the ledger in Postgres.

The old version of the example service is played by writes to ``sess:*`` (camelCase) and
the new one by writes to ``session:*`` (snake_case). "In step" means: every old key has a
twin holding its v2 value with the same absolute expiry, and no twin lacks its old key.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import free_port

from releasegate.errors import MigrationFailed, StateError
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.migrations import redis as rmig
from releasegate.migrations.redis import phases, watch
from releasegate.migrations.redis.moves import read_expansion

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "examples" / "app") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "examples" / "app"))
from notes_app.seed_redis import encode, iter_sessions, seed_sessions  # noqa: E402

Project = Any  # tests/conftest.py's Project
VERSION_KEY = "releasegate:redis:version"

REDIS_SECTION = """
[redis]
url_env = "NOTES_REDIS_URL"
patterns = ["sess:*", "session:*", "cache:*"]
migrations = "migrations/redis"
batch_size = {batch_size}
"""


def v2(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": value["userId"],
        "created_at": value["createdAt"],
        "last_seen": value["lastSeen"],
        "user_agent": value["userAgent"],
        "theme": "light",
    }


def v1(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "userId": value["user_id"],
        "createdAt": value["created_at"],
        "lastSeen": value["last_seen"],
        "userAgent": value["user_agent"],
    }


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def make_project(project: Project, redis_url: str, batch_size: int = 200) -> Project:
    shutil.copytree(
        REPO_ROOT / "migrations" / "redis",
        project.root / "migrations" / "redis",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    section = REDIS_SECTION.format(batch_size=batch_size)
    project.write_config(project.config_path.read_text() + section)
    project.redis_url = redis_url
    return project


@pytest.fixture
def rproject(project: Project, redis_url: str) -> Project:
    return make_project(project, redis_url)


def settings_of(project: Project) -> Any:
    return project.settings(NOTES_REDIS_URL=project.redis_url)


def snapshot(client: redis.Redis, pattern: str) -> dict[bytes, tuple[bytes, int]]:
    """Every key of ``pattern`` with its value and absolute expiry (ms, -1: none)."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pexpiretime(key)
    replies = pipe.execute()
    return {k: (replies[2 * i], replies[2 * i + 1]) for i, k in enumerate(keys)}


def assert_in_step(client: redis.Redis) -> int:
    """Every sess:* has its session:* twin (v2 value, same expiry) and nothing more."""
    old = snapshot(client, "sess:*")
    new = snapshot(client, "session:*")
    assert len(new) == len(old)
    for key, (raw, expiry) in old.items():
        twin = new.get(b"session:" + key[len(b"sess:") :])
        assert twin is not None, key
        assert json.loads(twin[0]) == v2(json.loads(raw)), key
        assert twin[1] == expiry, key
    return len(old)


def release_steps(project: Project) -> list[tuple[str, str, str | None, Outcome, list[str]]]:
    with Ledger.open(project.url) as ledger:
        releases = ledger.releases(project.service, with_events=True)
    return [
        (r.summary.get("phase", ""), r.kind, r.redis_after, r.outcome, [e.step for e in r.events])
        for r in reversed(releases)
    ]


LATER_MIGRATION = '''"""Carts get a new prefix."""
from releasegate.migrations.redis import KeyMove

MOVES = [KeyMove("cart:*", "cart:", "basket:", up=dict, down=dict)]
'''


# -- expand --------------------------------------------------------------------------------


def test_expand_writes_twins_and_never_touches_the_old_layout(
    rproject: Project, client: redis.Redis
) -> None:
    n = 1500
    seed_sessions(client, n, cache_docs=40)
    client.set("sess:forever", encode({"userId": 1, "createdAt": "a", "lastSeen": "b",
                                       "userAgent": "c"}))  # fmt: skip
    old_before = snapshot(client, "sess:*")
    cache_before = snapshot(client, "cache:*")
    settings = settings_of(rproject)
    assert phases.expand_problems(settings) == []
    assert phases.expanded_state(settings) is None

    seen: list[int] = []
    result = phases.expand(settings, on_progress=lambda s: seen.append(s.batches))
    assert result.before is None and result.after == "0001" and result.versions == ["0001"]
    assert result.copied == n + 1 and result.changed == 0 and result.conflicts == 0
    assert seen and result.to_dict()["copied"] == n + 1
    assert snapshot(client, "sess:*") == old_before  # values and expiry, byte for byte
    assert snapshot(client, "cache:*") == cache_before
    assert assert_in_step(client) == n + 1
    assert client.pexpiretime("session:forever") == -1
    assert client.get(VERSION_KEY) == b"0001"

    status = rmig.status(settings)
    assert status.state is rmig.RedisState.CONTRACT_PENDING and status.current == "0001"
    assert "contract pending" in status.to_dict()["expansion"]["note"]
    state = phases.expanded_state(settings)
    assert state is not None
    assert state["state"] == "expanded" and state["before"] == "base"
    assert state["tracked"] == {"0001:0": n + 1}
    assert phases.expand_problems(settings) == []  # nothing new pending

    again = phases.expand(settings)
    assert again.did_nothing and again.copied == 0 and again.after == "0001"
    (rproject.root / "migrations" / "redis" / "0002_more.py").write_text(LATER_MIGRATION)
    assert "still expanded" in phases.expand_problems(settings)[0]
    with pytest.raises(StateError, match="0002: redis 0001 is still expanded"):
        phases.expand(settings)
    assert release_steps(rproject)[0] == (
        "expand", "migrate", "0001", Outcome.SUCCEEDED, ["lock", "redis expand 0001"]
    )  # fmt: skip


def test_expand_with_nothing_pending_does_nothing(rproject: Project, client: redis.Redis) -> None:
    seed_sessions(client, 100, cache_docs=0)
    settings = settings_of(rproject)
    rmig.up(settings)  # standalone: moved already
    result = phases.expand(settings)
    assert result.did_nothing and result.before == result.after == "0001"
    assert phases.catch_up(settings).did_nothing
    assert phases.contract(settings).did_nothing
    assert phases.undo(settings, promoted=True).did_nothing
    assert client.get(VERSION_KEY) == b"0001"


# -- catch-up ------------------------------------------------------------------------------


def play_old_version(client: redis.Redis, n: int, rng: random.Random) -> dict[str, int]:
    """Creates, changes (value, or only TTL) and deletes sess:* keys; returns how many."""
    sids = [sid for sid, _v, _t in iter_sessions(n)]
    rng.shuffle(sids)
    changed, refreshed, deleted = sids[:20], sids[20:30], sids[30:45]
    for sid in changed:
        value = json.loads(client.get(f"sess:{sid}") or b"")
        client.set(f"sess:{sid}", encode({**value, "lastSeen": "2026-01-01T00:00:00"}),
                   keepttl=True)  # fmt: skip
    for sid in refreshed:
        client.expire(f"sess:{sid}", 7200 + rng.randrange(1000))
    client.delete(*[f"sess:{sid}" for sid in deleted])
    for i in range(30):
        value = {"userId": i, "createdAt": "x", "lastSeen": "y", "userAgent": "z"}
        client.set(f"sess:new-{i}", encode(value), ex=3600 if i % 2 else None)
    return {"created": 30, "changed": 30, "deleted": 15}


def test_catch_up_brings_over_created_changed_and_deleted_keys(
    rproject: Project, client: redis.Redis
) -> None:
    n = 1000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)
    old_before = snapshot(client, "sess:*")
    expected = play_old_version(client, n, random.Random(1))

    result = phases.catch_up(settings)
    assert (result.copied, result.changed, result.deleted) == (
        expected["created"], expected["changed"], expected["deleted"]
    )  # fmt: skip
    assert result.conflicts == 0 and result.before == result.after == "0001"
    assert result.to_dict()["unchanged"] == n - 45
    assert assert_in_step(client) == n + 15
    assert snapshot(client, "sess:*") != old_before  # the old version's writes stay put

    again = phases.catch_up(settings)
    assert (again.copied, again.changed, again.deleted) == (0, 0, 0)
    state = phases.expanded_state(settings)
    assert state is not None and state["catch_ups"] == 2
    steps = release_steps(rproject)
    assert [s[0] for s in steps] == ["expand", "catch-up", "catch-up"]
    assert steps[1][4] == ["lock", "redis catch-up 0001"]


def test_a_crashed_catch_up_resumes_without_duplicates(
    project: Project, redis_url: str, client: redis.Redis
) -> None:
    rproject = make_project(project, redis_url, batch_size=50)
    n, changed = 3000, 2000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)
    for sid, value, _ttl in list(iter_sessions(n))[:changed]:
        client.set(f"sess:{sid}", encode({**value, "userAgent": "changed"}), keepttl=True)

    at_crash: dict[str, int] = {}

    def crash_after_ten_batches(stats: Any) -> None:
        if stats.batches == 10:
            at_crash.update(updated=stats.updated, batches=stats.batches)
            raise RuntimeError("injected crash")

    with pytest.raises(MigrationFailed, match=r"injected crash.*run it again"):
        phases.catch_up(settings, on_progress=crash_after_ten_batches)
    assert 0 < at_crash["updated"] < changed

    resumed = phases.catch_up(settings)
    # Every change written exactly once across both runs, none twice.
    assert resumed.changed == changed - at_crash["updated"] and resumed.copied == 0
    assert assert_in_step(client) == n
    for sid, _v, _t in list(iter_sessions(n))[:changed]:
        assert json.loads(client.get(f"session:{sid}") or b"")["user_agent"] == "changed"
    failed = release_steps(rproject)[1]
    assert failed[0] == "catch-up" and failed[3] == Outcome.FAILED
    with Ledger.open(rproject.url) as ledger:
        event = ledger.releases(rproject.service, with_events=True)[1].events[-1]
    assert event.status == StepStatus.FAILED and "injected crash" in event.detail["error"]


SUBPROCESS_CATCH_UP = """
import sys, time
from releasegate.config import load_config
from releasegate.migrations.redis import phases, watch
from releasegate.migrations.redis.moves import read_expansion


def progress(stats):
    print(stats.updated, flush=True)
    time.sleep(0.02)  # slow enough to be killed in the middle


phases.catch_up(load_config(sys.argv[1]), on_progress=progress)
"""


def test_a_killed_catch_up_resumes_without_duplicates(
    project: Project, redis_url: str, client: redis.Redis
) -> None:
    import os
    import signal

    rproject = make_project(project, redis_url, batch_size=50)
    n, changed = 3000, 2000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)
    for sid, value, _ttl in list(iter_sessions(n))[:changed]:
        client.set(f"sess:{sid}", encode({**value, "userAgent": "changed"}), keepttl=True)
    env = {**rproject.env, "NOTES_REDIS_URL": redis_url}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    runner = subprocess.Popen(
        [sys.executable, "-c", SUBPROCESS_CATCH_UP, str(rproject.config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None
    for line in runner.stdout:
        if int(line) >= 300:
            break
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    twins = snapshot(client, "session:*")
    done = sum(json.loads(raw)["user_agent"] == "changed" for raw, _ in twins.values())
    assert 300 <= done < changed

    resumed = phases.catch_up(settings)
    assert resumed.changed == changed - done and resumed.copied == 0
    assert assert_in_step(client) == n


def test_a_crashed_expand_resumes_or_undoes(rproject: Project, client: redis.Redis) -> None:
    n = 2000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    copied_at_crash = 0

    def crash(stats: Any) -> None:
        nonlocal copied_at_crash
        if stats.batches == 4:
            copied_at_crash = stats.copied
            raise RuntimeError("injected crash")

    with pytest.raises(MigrationFailed):
        phases.expand(settings, on_progress=crash)
    assert client.get(VERSION_KEY) is None  # the old version's data version still
    state = phases.expanded_state(settings)
    assert state is not None and state["state"] == "expanding"
    assert state["tracked"]["0001:0"] == copied_at_crash
    with pytest.raises(StateError, match="expanding"):
        phases.catch_up(settings)

    resumed = phases.expand(settings)
    assert resumed.copied == n - copied_at_crash and resumed.after == "0001"
    assert assert_in_step(client) == n

    undone = phases.undo(settings, promoted=False)
    assert undone.removed == n and undone.after is None
    assert not list(client.scan_iter(match="session:*"))


# -- undo ----------------------------------------------------------------------------------


def assert_no_expansion_left(client: redis.Redis) -> None:
    assert not list(client.scan_iter(match=f"{VERSION_KEY}:*"))


def test_undo_before_promotion_deletes_only_the_copies(
    rproject: Project, client: redis.Redis
) -> None:
    n = 800
    seed_sessions(client, n, cache_docs=10)
    settings = settings_of(rproject)
    phases.expand(settings)
    play_old_version(client, n, random.Random(2))
    old_now = snapshot(client, "sess:*")
    client.set("session:smoke-test", b'{"user_id":1}')  # written by the new color's smoke test

    result = phases.undo(settings, promoted=False)
    assert result.phase == "undo" and result.removed == n and result.carried_back == 0
    assert result.before == "0001" and result.after is None
    assert client.get(VERSION_KEY) is None
    assert snapshot(client, "sess:*") == old_now
    assert [k for k in client.scan_iter(match="session:*")] == [b"session:smoke-test"]
    assert_no_expansion_left(client)
    assert rmig.status(settings).state is rmig.RedisState.NEVER_MIGRATED
    assert release_steps(rproject)[-1][4] == ["lock", "redis undo 0001"]


def test_undo_after_promotion_carries_the_new_versions_writes_back(
    rproject: Project, client: redis.Redis
) -> None:
    n = 1000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)
    phases.catch_up(settings)
    sids = [sid for sid, _v, _t in iter_sessions(n)]
    old_before = snapshot(client, "sess:*")
    # The new version, live: changes 25 sessions, logs 10 out, creates 15.
    for sid in sids[:25]:
        value = json.loads(client.get(f"session:{sid}") or b"")
        client.set(f"session:{sid}", json.dumps({**value, "last_seen": "2026-02-02",
                                                   "theme": "dark"}), keepttl=True)  # fmt: skip
    client.delete(*[f"session:{sid}" for sid in sids[25:35]])
    for i in range(15):
        new = {"user_id": i, "created_at": "c", "last_seen": "l", "user_agent": "u",
               "theme": "dark"}  # fmt: skip
        client.set(f"session:green-{i}", json.dumps(new), ex=1800)

    result = phases.undo(settings, promoted=True)
    assert result.phase == "carry-back"
    assert result.carried_back == 40 and result.old_deleted == 10 and result.conflicts == 0
    assert result.after is None and client.get(VERSION_KEY) is None
    assert not list(client.scan_iter(match="session:*"))
    assert_no_expansion_left(client)
    old_now = snapshot(client, "sess:*")
    assert len(old_now) == n - 10 + 15
    for sid in sids[:25]:
        raw, _expiry = old_now[f"sess:{sid}".encode()]
        assert json.loads(raw)["lastSeen"] == "2026-02-02" and "theme" not in json.loads(raw)
    for sid in sids[25:35]:
        assert f"sess:{sid}".encode() not in old_now
    for sid in sids[35:]:
        key = f"sess:{sid}".encode()
        assert old_now[key] == old_before[key]  # untouched, byte for byte
    raw, expiry = old_now[b"sess:green-3"]
    assert json.loads(raw) == v1({"user_id": 3, "created_at": "c", "last_seen": "l",
                                  "user_agent": "u"})  # fmt: skip
    assert expiry == client.pexpiretime("sess:green-3") and expiry > 0


# -- contract ------------------------------------------------------------------------------


def test_contract_keeps_the_new_versions_writes_and_drops_the_old_layout(
    rproject: Project, client: redis.Redis
) -> None:
    n = 600
    seed_sessions(client, n, cache_docs=20)
    settings = settings_of(rproject)
    phases.expand(settings)
    sids = [sid for sid, _v, _t in iter_sessions(n)]
    # After the switch: the new version changes session 0; the old one, late, changes
    # sessions 0 (a conflict: the new version's write wins) and 1.
    value = json.loads(client.get(f"session:{sids[0]}") or b"")
    client.set(f"session:{sids[0]}", json.dumps({**value, "theme": "dark"}), keepttl=True)
    for sid in sids[:2]:
        old = json.loads(client.get(f"sess:{sid}") or b"")
        client.set(f"sess:{sid}", encode({**old, "userAgent": "late"}), keepttl=True)
    new_before = snapshot(client, "session:*")

    result = phases.contract(settings)
    assert result.conflicts == 1 and result.changed == 1
    assert result.old_deleted == n and result.before == result.after == "0001"
    assert not list(client.scan_iter(match="sess:*"))
    assert_no_expansion_left(client)
    assert client.get(VERSION_KEY) == b"0001"
    new_now = snapshot(client, "session:*")
    assert json.loads(new_now[f"session:{sids[0]}".encode()][0])["theme"] == "dark"
    assert json.loads(new_now[f"session:{sids[1]}".encode()][0])["user_agent"] == "late"
    for sid in sids[2:]:
        key = f"session:{sid}".encode()
        assert new_now[key] == new_before[key]
    assert len(list(client.scan_iter(match="cache:*"))) == 20
    assert rmig.status(settings).state is rmig.RedisState.UP_TO_DATE
    assert [s[0] for s in release_steps(rproject)] == ["expand", "contract"]
    assert phases.contract(settings).did_nothing
    assert phases.undo(settings, promoted=False).did_nothing  # too late: nothing to undo


@pytest.fixture
def notifying_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of the test's own that sends keyspace notifications."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--notify-keyspace-events", "KA"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_catch_up_takes_only_the_notified_keys(project: Project, notifying_redis_url: str) -> None:
    rproject = make_project(project, notifying_redis_url)
    client = redis.Redis.from_url(notifying_redis_url)
    n = 2000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)  # starts listening before it scans
    expected = play_old_version(client, n, random.Random(4))

    result = phases.catch_up(settings)
    assert result.scan == "notified"
    assert (result.copied, result.changed, result.deleted) == (
        expected["created"], expected["changed"], expected["deleted"]
    )  # fmt: skip
    assert result.counts()["scanned"] < 100  # the written keys, not the 2,000
    assert assert_in_step(client) == n + 15

    # A lost subscription: the next catch-up scans everything, and listens again.
    client.client_kill_filter(_type="pubsub")
    play_old_version(client, n, random.Random(5))
    full = phases.catch_up(settings)
    assert full.scan == "full" and full.counts()["scanned"] >= n
    assert assert_in_step(client) > 0
    client.set("sess:late", encode({"userId": 9, "createdAt": "c", "lastSeen": "l",
                                    "userAgent": "u"}))  # fmt: skip
    again = phases.catch_up(settings)
    assert again.scan == "notified" and again.copied == 1
    assert assert_in_step(client) > 0
    phases.contract(settings)
    client.close()


def test_a_crashed_notified_catch_up_keeps_its_keys(
    project: Project, notifying_redis_url: str
) -> None:
    rproject = make_project(project, notifying_redis_url, batch_size=100)
    client = redis.Redis.from_url(notifying_redis_url)
    n, changed = 1000, 500
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)
    for sid, value, _ttl in list(iter_sessions(n))[:changed]:
        client.set(f"sess:{sid}", encode({**value, "userAgent": "changed"}), keepttl=True)
    at_crash: dict[str, int] = {}

    def crash(stats: Any) -> None:
        if stats.batches == 2:
            at_crash["updated"] = stats.updated
            raise RuntimeError("injected crash")

    with pytest.raises(MigrationFailed, match="injected crash"):
        phases.catch_up(settings, on_progress=crash)
    assert 0 < at_crash["updated"] < changed
    resumed = phases.catch_up(settings)
    assert resumed.scan == "notified"
    assert resumed.changed == changed - at_crash["updated"]
    assert assert_in_step(client) == n

    # A full scan that fails leaves keys unchecked: the next catch-up scans in full too.
    record = read_expansion(client, VERSION_KEY)
    assert record is not None
    watch.stop(client, VERSION_KEY, record.started_at)  # as in another process
    for sid, value, _ttl in list(iter_sessions(n))[:changed]:
        client.set(f"sess:{sid}", encode({**value, "userAgent": "again"}), keepttl=True)
    at_crash.clear()
    with pytest.raises(MigrationFailed, match="injected crash"):
        phases.catch_up(settings, on_progress=crash)
    full = phases.catch_up(settings)
    assert full.scan == "full" and full.changed == changed - at_crash["updated"]
    assert assert_in_step(client) == n
    phases.undo(settings, promoted=False)
    client.close()


@pytest.mark.parametrize("notifications", [False, True], ids=["scan", "notified"])
def test_a_concurrent_writer_is_caught_up(
    project: Project, request: pytest.FixtureRequest, notifications: bool
) -> None:
    """The old version writes all along the expand; the catch-ups leave nothing behind."""
    fixture = "notifying_redis_url" if notifications else "redis_url"
    redis_url = request.getfixturevalue(fixture)
    client = redis.Redis.from_url(redis_url)
    rproject = make_project(project, redis_url, batch_size=100)
    n = 5000
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    sids = [sid for sid, _v, _t in iter_sessions(n)]
    stop = threading.Event()
    writes = 0

    def old_version() -> None:
        nonlocal writes
        writer = redis.Redis.from_url(redis_url)
        rng = random.Random(3)
        while not stop.is_set():
            sid = rng.choice(sids)
            action = rng.randrange(3)
            if action == 0:
                writer.delete(f"sess:{sid}")
            else:
                value = {"userId": writes, "createdAt": "c", "lastSeen": str(time.time()),
                         "userAgent": "ua"}  # fmt: skip
                writer.set(f"sess:{sid}", encode(value), ex=600 + action)
            writes += 1
        writer.close()

    thread = threading.Thread(target=old_version)
    thread.start()
    try:
        phases.expand(settings)
        phases.catch_up(settings)
    finally:
        stop.set()
        thread.join()
    assert writes > 100
    last = phases.catch_up(settings)  # the last one, after the writer stopped
    assert last.scan == ("notified" if notifications else "full")
    assert assert_in_step(client) > 0
    phases.undo(settings, promoted=False)


# -- what cannot expand, and standalone runs --------------------------------------------------

CODE_MIGRATION = '''"""In-place code."""


def up(ctx):
    ctx.transform_json("session:*", lambda v: v)


def down(ctx):
    pass
'''

NO_DOWN_MIGRATION = '''"""A move without a way back."""
from releasegate.migrations.redis import KeyMove

MOVES = [KeyMove("cart:*", "cart:", "basket:", up=dict)]
'''

CHAINED_MIGRATION = '''"""Moves what 0001 writes."""
from releasegate.migrations.redis import KeyMove

MOVES = [KeyMove("session:*", "session:", "s2:", up=dict, down=dict)]
'''


def test_expand_problems_name_what_cannot_run_in_expand_form(
    rproject: Project, client: redis.Redis
) -> None:
    folder = rproject.root / "migrations" / "redis"
    settings = settings_of(rproject)
    (folder / "0002_chained.py").write_text(CHAINED_MIGRATION)
    problems = phases.expand_problems(settings)
    assert len(problems) == 1 and "0002 (chained)" in problems[0]
    assert "release them one at a time" in problems[0]
    (folder / "0002_chained.py").unlink()
    (folder / "0002_no_down.py").write_text(NO_DOWN_MIGRATION)
    (folder / "0003_code.py").write_text(CODE_MIGRATION)
    problems = phases.expand_problems(settings_of(rproject))
    assert len(problems) == 2
    assert "0002 (no_down)" in problems[0] and "no down transform" in problems[0]
    assert "0003 (code)" in problems[1] and "not MOVES" in problems[1]
    seed_sessions(client, 10, cache_docs=0)
    with pytest.raises(StateError, match="cannot expand"):
        phases.expand(settings_of(rproject))
    assert client.get(VERSION_KEY) is None and not list(client.scan_iter(match="session:*"))


def test_standalone_migrate_refuses_an_open_expansion(
    rproject: Project, client: redis.Redis
) -> None:
    n = 300
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)
    phases.expand(settings)
    with pytest.raises(StateError, match="is expanded"):
        rmig.down(settings, "base")
    assert rmig.up(settings).steps == []  # nothing pending: nothing to refuse
    assert assert_in_step(client) == n
    phases.undo(settings, promoted=False)
    rmig.up(settings)  # the standalone form: rename + transform at once
    assert not list(client.scan_iter(match="sess:*"))
    assert len(list(client.scan_iter(match="session:*"))) == n
