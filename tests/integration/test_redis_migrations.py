"""Redis data migrations on a real Redis, with the ledger and lock in a real Postgres.

Each test gets the example project (with ``migrations/redis/``) in a temporary folder, an
empty logical Redis database and a fresh Postgres database. Sessions come from
``notes_app.seed_redis``, which regenerates every value, so the tests check each key after
a migration without keeping a copy. Tests that must tell "transformed once" from
"transformed twice" use a migration whose transform counts its own applications
(``hops``), which an idempotent field map cannot show.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import free_port

from releasegate.errors import (
    ConfigError,
    LockNotObtained,
    MigrationFailed,
    MigrationScriptError,
    StateError,
)
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import release_lock
from releasegate.migrations import redis as rmig
from releasegate.migrations.redis.checkpoint import Checkpoint, checkpoint_key
from releasegate.migrations.redis.helpers import Helpers

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

# A migration whose transform is not idempotent: a value transformed twice has hops == 2.
COUNTED_MIGRATION = '''\
"""Sessions to snake_case, counting how often each value was transformed."""

from releasegate.migrations.redis import field_map

to_v2 = field_map(
    {"userId": "user_id", "createdAt": "created_at", "lastSeen": "last_seen",
     "userAgent": "user_agent"},
    defaults={"theme": "light"},
)


def up(ctx):
    ctx.rename_and_transform(
        "sess:*", "sess:", "session:", lambda v: {**to_v2(v), "hops": v.get("hops", 0) + 1}
    )


def down(ctx):
    raise NotImplementedError("test migration")
'''


def v2(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": value["userId"],
        "created_at": value["createdAt"],
        "last_seen": value["lastSeen"],
        "user_agent": value["userAgent"],
        "theme": "light",
    }


@pytest.fixture
def rproject(project: Project, redis_url: str) -> Project:
    """The example project with a [redis] section, pointed at an empty logical DB."""
    shutil.copytree(
        REPO_ROOT / "migrations" / "redis",
        project.root / "migrations" / "redis",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    project.write_config(project.config_path.read_text() + REDIS_SECTION.format(batch_size=200))
    project.redis_url = redis_url
    return project


def settings_of(project: Project, **overrides: str) -> Any:
    return project.settings(NOTES_REDIS_URL=project.redis_url, **overrides)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def use_counted_migration(project: Project) -> None:
    folder = project.root / "migrations" / "redis"
    for old in folder.glob("0*.py"):
        old.unlink()
    (folder / "0001_sessions_counted.py").write_text(COUNTED_MIGRATION)


def check_sessions_v2(client: redis.Redis, n: int, *, hops: bool = False) -> None:
    """Every seeded session is under session:{id}, transformed exactly once, TTL kept."""
    assert not list(client.scan_iter(match="sess:*", count=1000))
    pipe = client.pipeline(transaction=False)
    expected = list(iter_sessions(n))
    for sid, _value, _ttl in expected:
        pipe.get(f"session:{sid}")
        pipe.pttl(f"session:{sid}")
    replies = pipe.execute()
    for i, (_sid, value, ttl) in enumerate(expected):
        raw, pttl = replies[2 * i], replies[2 * i + 1]
        assert raw is not None
        want = v2(value) | ({"hops": 1} if hops else {})
        assert json.loads(raw) == want
        assert (ttl - 120) * 1000 < pttl <= ttl * 1000
    assert sum(1 for _ in client.scan_iter(match="session:*", count=1000)) == n


# -- status, up, down -----------------------------------------------------------------------


def test_status_up_down_of_the_example(rproject: Project, client: redis.Redis) -> None:
    n = 1500
    seed_sessions(client, n, cache_docs=40)
    cache_before = {k: client.get(k) for k in client.scan_iter(match="cache:*")}
    settings = settings_of(rproject)

    before = rmig.status(settings)
    assert before.state is rmig.RedisState.NEVER_MIGRATED
    assert [m.version for m in before.pending] == ["0001"]
    assert before.to_dict()["current"] == "base"

    seen: list[rmig.RedisStepResult] = []
    result = rmig.up(settings, on_step=seen.append)
    assert result.to_dict()["before"] == "base" and result.after == "0001"
    assert [s.version for s in seen] == ["0001"]
    assert seen[0].keys["changed"] == n and seen[0].keys["conflicts"] == 0
    assert client.get(VERSION_KEY) == b"0001"
    check_sessions_v2(client, n)
    assert {k: client.get(k) for k in client.scan_iter(match="cache:*")} == cache_before
    assert not list(client.scan_iter(match=f"{VERSION_KEY}:checkpoint:*"))
    assert rmig.status(settings).state is rmig.RedisState.UP_TO_DATE

    down = rmig.down(settings, "base")
    assert down.after is None and client.get(VERSION_KEY) is None
    assert not list(client.scan_iter(match="session:*"))
    for sid, value, ttl in iter_sessions(n):
        assert client.get(f"sess:{sid}") == encode(value)  # byte for byte, theme dropped
        assert (ttl - 120) * 1000 < client.pttl(f"sess:{sid}") <= ttl * 1000

    with Ledger.open(rproject.url) as ledger:
        releases = ledger.releases(rproject.service, with_events=True)
    assert [(r.kind, r.redis_before, r.redis_after, r.outcome) for r in releases] == [
        ("migrate", "0001", "base", Outcome.SUCCEEDED),
        ("migrate", "base", "0001", Outcome.SUCCEEDED),
    ]
    steps = [(e.step, e.status) for e in releases[1].events]
    assert steps == [("lock", StepStatus.OK), ("redis upgrade 0001", StepStatus.OK)]
    event = releases[1].events[1]
    assert event.duration_ms is not None and event.detail["keys"]["changed"] == n
    assert releases[0].events[1].step == "redis downgrade 0001"
    assert releases[1].summary["versions"] == ["0001"]


def test_up_again_is_a_no_op(rproject: Project, client: redis.Redis) -> None:
    seed_sessions(client, 300, cache_docs=0)
    settings = settings_of(rproject)
    rmig.up(settings)
    again = rmig.up(settings)
    assert again.steps == [] and again.before == again.after == "0001"
    check_sessions_v2(client, 300)


def test_interrupted_run_resumes_from_its_checkpoint(
    rproject: Project, client: redis.Redis
) -> None:
    n = 3000
    use_counted_migration(rproject)
    seed_sessions(client, n, cache_docs=500)
    settings = settings_of(rproject)
    batches = 0

    def crash_after_five(progress: rmig.Progress) -> None:
        nonlocal batches
        batches += 1
        if batches == 5:
            raise RuntimeError("injected crash")

    with pytest.raises(MigrationFailed, match=r"injected crash.*run the same command again"):
        rmig.up(settings, on_progress=crash_after_five)
    moved = sum(1 for _ in client.scan_iter(match="session:*", count=1000))
    assert 0 < moved < n
    assert client.get(VERSION_KEY) is None
    ckpt = client.hgetall(checkpoint_key(VERSION_KEY, "0001", "up"))
    assert int(ckpt[b"1:changed"]) == moved and ckpt[b"1:cursor"] != b"0"
    status = rmig.status(settings)
    assert status.current is None and "0001:up" in status.interrupted

    result = rmig.up(settings)
    step = result.steps[0]
    assert step.resumed and step.steps[0].resumed
    assert step.steps[0].changed == n  # counted across both runs, from the checkpoint
    check_sessions_v2(client, n, hops=True)

    with Ledger.open(rproject.url) as ledger:
        failed, succeeded = ledger.releases(rproject.service, with_events=True)[::-1]
    assert failed.outcome == Outcome.FAILED and failed.redis_after == "base"
    assert failed.events[-1].status == StepStatus.FAILED
    assert "injected crash" in failed.events[-1].detail["error"]
    assert succeeded.outcome == Outcome.SUCCEEDED and succeeded.events[-1].detail["resumed"]


def test_rerun_without_its_checkpoint_transforms_nothing_twice(
    rproject: Project, client: redis.Redis
) -> None:
    """Losing the checkpoint costs a rescan, never a second transformation."""
    n = 2000
    use_counted_migration(rproject)
    seed_sessions(client, n, cache_docs=0)
    settings = settings_of(rproject)

    def crash(progress: rmig.Progress) -> None:
        if progress.stats.batches == 3:
            raise RuntimeError("injected crash")

    with pytest.raises(MigrationFailed):
        rmig.up(settings, on_progress=crash)
    client.delete(checkpoint_key(VERSION_KEY, "0001", "up"))
    result = rmig.up(settings)
    assert not result.steps[0].resumed
    check_sessions_v2(client, n, hops=True)


def test_a_rename_never_overwrites_an_existing_key(rproject: Project, client: redis.Redis) -> None:
    seed_sessions(client, 50, cache_docs=0)
    sid = next(iter_sessions(1))[0]
    client.set(f"session:{sid}", b'{"written":"by v2"}')
    with pytest.raises(
        MigrationFailed, match=r"1 keys matching sess:\* could not be renamed"
    ) as exc:
        rmig.up(settings_of(rproject))
    assert f"e.g. sess:{sid})" in str(exc.value)
    assert client.get(f"session:{sid}") == b'{"written":"by v2"}'
    assert client.exists(f"sess:{sid}")
    assert client.get(VERSION_KEY) is None


def test_unknown_version_and_bad_targets(rproject: Project, client: redis.Redis) -> None:
    settings = settings_of(rproject)
    with pytest.raises(ConfigError, match="unknown redis data version '0042'"):
        rmig.up(settings, to="0042")
    client.set(VERSION_KEY, "0099")
    status = rmig.status(settings)
    assert status.state is rmig.RedisState.UNKNOWN_VERSION and not status.ok
    with pytest.raises(StateError, match=r"data version 0099.*ahead of the code"):
        rmig.up(settings)


def test_bad_migration_files_are_config_errors(rproject: Project) -> None:
    folder = rproject.root / "migrations" / "redis"
    (folder / "0002-bad name.py").write_text('"""Bad."""\n')
    with pytest.raises(MigrationScriptError, match=r"name it NNNN_name\.py"):
        rmig.status(settings_of(rproject))
    (folder / "0002-bad name.py").unlink()
    (folder / "0002_no_down.py").write_text('"""No down."""\n\ndef up(ctx):\n    pass\n')
    with pytest.raises(MigrationScriptError, match="defines neither MOVES nor down"):
        rmig.status(settings_of(rproject))
    (folder / "0002_no_down.py").unlink()
    bad_moves = {
        "MOVES = []": "MOVES must be a non-empty list of KeyMove",
        "MOVES = [KeyMove('sess:*', 'sess:', 'sess:x:', up=dict)]": "would match",
        "MOVES = [KeyMove('cache:*', 'sess:', 'session:', up=dict)]": "must start with",
        "MOVES = [KeyMove('a:*', 'a:', 'b:', up=dict)]\ndef up(ctx):\n    pass": "keep one",
    }
    for body, message in bad_moves.items():
        text = f'"""Bad moves."""\nfrom releasegate.migrations.redis import KeyMove\n{body}\n'
        (folder / "0002_bad_moves.py").write_text(text)
        with pytest.raises(MigrationScriptError, match=message):
            rmig.status(settings_of(rproject))


def test_release_lock_held_elsewhere(rproject: Project, client: redis.Redis) -> None:
    settings = settings_of(rproject)
    with (
        release_lock(rproject.url, rproject.service, "test", wait=1),
        pytest.raises(LockNotObtained, match="held by releasegate/lock test"),
    ):
        rmig.up(settings)
    assert client.get(VERSION_KEY) is None


# -- the helpers on their own ---------------------------------------------------------------


def helpers(client: redis.Redis, batch_size: int = 100) -> Helpers:
    run_id = str(client.info("server")["run_id"])
    ckpt = Checkpoint(client, checkpoint_key(VERSION_KEY, "0009", "up"), run_id)
    return Helpers(
        client,
        version="0009",
        direction="up",
        checkpoint=ckpt,
        batch_size=batch_size,
        protected_prefix=VERSION_KEY.encode(),
    )


def test_rename_keys_moves_any_type_with_its_ttl(client: redis.Redis) -> None:
    for i in range(250):
        client.hset(f"user:{i}", mapping={"name": f"u{i}"})
        if i % 2:
            client.expire(f"user:{i}", 3600)
    client.set("other", "x")
    stats = helpers(client).rename_keys("user:*", "user:", "account:")
    assert stats.changed == 250 and stats.passes == 2  # the sweep found nothing left
    assert client.hget("account:7", "name") == b"u7"
    assert 3500_000 < client.pttl("account:7") <= 3600_000 and client.ttl("account:8") == -1
    assert not client.exists("user:7") and client.get("other") == b"x"
    with pytest.raises(ConfigError, match="would match"):
        helpers(client).rename_keys("account:*", "account:", "account:v2:")


def test_transform_json_in_place_keeps_ttl_and_skips_done(client: redis.Redis) -> None:
    for i in range(120):
        client.set(f"pref:{i}", json.dumps({"darkMode": bool(i % 2)}), ex=600)
    client.set("pref:done", json.dumps({"dark_mode": True}))
    client.set("pref:bad", "not json")
    h = helpers(client, batch_size=50)
    with pytest.raises(MigrationFailed, match="1 keys matching pref:\\* hold no JSON object"):
        h.transform_json(
            "pref:*",
            lambda v: {"dark_mode": v["darkMode"]},
            is_done=lambda v: "dark_mode" in v,
        )
    stats = h.steps[0]
    assert stats.changed == 120 and stats.unchanged == 1 and stats.invalid == 1
    assert json.loads(client.get("pref:3") or b"") == {"dark_mode": True}
    assert 500_000 < client.pttl("pref:3") <= 600_000
    assert client.get("pref:bad") == b"not json"


def test_set_ttl_fixed_function_and_only_missing(client: redis.Redis) -> None:
    for i in range(60):
        client.set(f"tmp:{i}", "x", ex=30 if i < 10 else None)
    h = helpers(client, batch_size=25)
    only = h.set_ttl("tmp:*", 900, only_missing=True)
    assert only.changed == 50 and only.unchanged == 10
    assert client.ttl("tmp:0") <= 30 and 890 < client.ttl("tmp:20") <= 900
    doubled = h.set_ttl("tmp:*", lambda key, ttl: (ttl or 0) * 2)
    assert doubled.changed == 60 and 1790 < client.ttl("tmp:20") <= 1800
    gone = h.set_ttl("tmp:*", None)
    assert gone.changed == 60 and client.ttl("tmp:0") == -1


def test_field_map_and_case_helpers() -> None:
    fn = rmig.field_map({"userId": "user_id"}, defaults={"theme": "light"}, drop=["tmp"])
    assert fn({"userId": 1, "tmp": 2, "keep": 3}) == {"user_id": 1, "keep": 3, "theme": "light"}
    assert fn(fn({"userId": 1})) == fn({"userId": 1})
    assert rmig.camel_to_snake("userAgent") == "user_agent"
    assert rmig.camel_to_snake("HTTPCode") == "http_code"
    assert rmig.snake_to_camel("last_seen_at") == "lastSeenAt"


def test_example_migration_folder_loads() -> None:
    migrations = rmig.load_migrations(Path(REPO_ROOT / "migrations" / "redis"))
    assert [(m.version, m.name) for m in migrations] == [("0001", "sessions_snake_case")]
    assert migrations[0].doc.startswith("Sessions move from")


# -- fault: Redis killed in the middle of a migration ----------------------------------------

SUBPROCESS_UP = """
import sys, time
from releasegate.config import load_config
from releasegate.migrations.redis import up
# Slow the batches down a little so the test can kill Redis in the middle.
up(load_config(sys.argv[1]), on_progress=lambda progress: time.sleep(0.01))
"""


class RedisServer:
    """A redis-server of the test's own, persisting every write (AOF, fsync always)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: Any = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess
        import time

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.directory / "redis.log")],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def test_redis_killed_in_the_middle_of_a_migration(project: Project, tmp_path: Path) -> None:
    import os
    import subprocess
    import time

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    n = 20_000
    server = RedisServer(tmp_path / "redis-data")
    server.start()
    try:
        shutil.copytree(REPO_ROOT / "migrations" / "redis", project.root / "migrations" / "redis")
        use_counted_migration(project)
        project.write_config(project.config_path.read_text() + REDIS_SECTION.format(batch_size=100))
        client = redis.Redis.from_url(server.url)
        seed_sessions(client, n, cache_docs=1000)
        env = {**project.env, "NOTES_REDIS_URL": server.url}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
        runner = subprocess.Popen(
            [sys.executable, "-c", SUBPROCESS_UP, str(project.config_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ckpt_key = checkpoint_key(VERSION_KEY, "0001", "up")
        deadline = time.monotonic() + 120
        changed = 0
        while changed < n // 5:
            assert runner.poll() is None, f"migration ended before the kill: {runner.stderr}"
            assert time.monotonic() < deadline, "no progress in the checkpoint"
            changed = int(client.hget(ckpt_key, "1:changed") or 0)
            time.sleep(0.005)
        server.kill()
        _out, err = runner.communicate(timeout=120)
        assert runner.returncode != 0, "the migration should fail when Redis dies"
        assert "redis migration 0001 (up) failed" in err

        server.start()  # same port, same folder: the AOF brings the data back
        client = redis.Redis.from_url(server.url)
        moved = sum(1 for _ in client.scan_iter(match="session:*", count=1000))
        left = sum(1 for _ in client.scan_iter(match="sess:*", count=1000))
        assert moved + left == n and 0 < moved < n  # nothing lost, nothing doubled
        assert client.get(VERSION_KEY) is None

        settings = project.settings(NOTES_REDIS_URL=server.url)
        result = rmig.up(settings)
        assert result.after == "0001" and result.steps[0].resumed
        check_sessions_v2(client, n, hops=True)
        assert sum(1 for _ in client.scan_iter(match="cache:doc:*", count=1000)) == 1000
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
