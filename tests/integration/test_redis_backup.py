"""Redis restore points against a real Redis: export, restore, verify, counts.

Each test gets an empty logical database (``redis_url``) and a config naming it; backup
sets are written under ``tmp_path``. Verification claims a scratch logical DB of its own;
the tests check that it is emptied afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from releasegate.backup import redis as rb
from releasegate.backup import (
    redis_counts,
    redis_export,
    redis_format,
    redis_restore,
    redis_scratch,
)
from releasegate.backup.base import StoreBackup
from releasegate.config import Settings, load_config
from releasegate.errors import CheckFailed, StateError

CONFIG = """
[service]
name = "notes"

[redis]
url_env = "NOTES_REDIS_URL"
patterns = {patterns}
batch_size = 7
"""


def make_settings(tmp_path: Path, url: str, patterns: list[str] | None = None) -> Settings:
    path = tmp_path / "releasegate.toml"
    path.write_text(CONFIG.format(patterns=str(patterns or ["*"]).replace("'", '"')))
    return load_config(path, {"NOTES_REDIS_URL": url})


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def fill(client: redis.Redis) -> None:
    """Every type, some keys with a TTL, binary keys and values, a key of 200 kB."""
    for i in range(30):
        client.set(f"str:{i}", f"value {i}", ex=3600 if i % 3 == 0 else None)
    client.set(b"bin:\x00\xff", b"\x00\x01\xfe\xff")
    client.set("big", b"x" * 200_000)
    client.hset("hash:1", mapping={"a": "1", "b": "2"})
    client.expire("hash:1", 7200)
    client.rpush("list:1", "a", "b", "c")
    client.sadd("set:1", "x", "y")
    client.zadd("zset:1", {"a": 1.5, "b": 2.5})
    client.xadd("stream:1", {"event": "created"})
    client.xadd("stream:1", {"event": "updated"})
    client.xgroup_create("stream:1", "workers", id="0")


def snapshot(client: redis.Redis) -> dict[bytes, tuple[str, Any]]:
    """Each key's type and contents, readably (DUMP bytes may differ between encodings)."""
    out: dict[bytes, tuple[str, Any]] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = [(i, f) for i, f in client.xrange(key)], client.xinfo_groups(key)[0]["name"]
        out[key] = (kind, value)
    return out


def ttls(client: redis.Redis) -> dict[bytes, int]:
    return {key: client.pttl(key) for key in client.scan_iter(count=1000)}


def test_backup_restore_round_trip_keeps_types_and_ttls(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    fill(client)
    settings = make_settings(tmp_path, redis_url)
    before, ttl_before = snapshot(client), ttls(client)

    entry = rb.backup(settings, tmp_path / "set")
    assert entry.store == "redis" and entry.method == "scan+dump"
    assert [f.name for f in entry.files] == ["redis.rgdump"] and len(entry.files[0].sha256) == 64
    counts = entry.counts
    assert counts["keys"] == len(before) == 37
    assert counts["types"] == {
        "hash": 1, "list": 1, "set": 1, "stream": 1, "string": 32, "zset": 1,
    }  # fmt: skip
    assert counts["with_ttl"] == 11 and counts["patterns"]["*"]["keys"] == 37
    assert rb.counts(settings) == counts

    client.flushdb()
    result = rb.restore(settings, tmp_path / "set", StoreBackup.from_dict(entry.to_dict()))
    assert result["restored"] == 37 and result["expired"] == 0 and result["duplicates"] == 0
    assert snapshot(client) == before
    for key, pttl in ttls(client).items():
        if ttl_before[key] < 0:
            assert pttl == -1
        else:
            assert ttl_before[key] - 60_000 < pttl <= ttl_before[key]


def test_restore_refuses_a_non_empty_target_unless_forced(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    fill(client)
    settings = make_settings(tmp_path, redis_url, ["str:*", "hash:*"])
    entry = rb.backup(settings, tmp_path / "set")
    assert entry.counts["keys"] == 31
    client.set("str:0", "changed since")
    client.delete("hash:1")
    client.set("str:new-since-backup", "x")
    with pytest.raises(StateError, match="refusing to restore into a non-empty Redis"):
        rb.restore(settings, tmp_path / "set", entry)
    assert client.get("str:0") == b"changed since" and not client.exists("hash:1")

    result = rb.restore(settings, tmp_path / "set", entry, force=True)
    assert result["restored"] == 31
    assert client.get("str:0") == b"value 0" and client.hget("hash:1", "a") == b"1"
    # A forced restore ends exactly as backed up: keys created since are gone.
    assert not client.exists("str:new-since-backup")
    # Keys outside the patterns were neither exported nor touched.
    assert client.lrange("list:1", 0, -1) == [b"a", b"b", b"c"]


def test_overlapping_patterns_export_each_key_once(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    for i in range(20):
        client.set(f"sess:{i}", "s")
        client.set(f"cache:{i}", "c")
    client.set("other", "o")
    settings = make_settings(tmp_path, redis_url, ["sess:*", "s*", "cache:1?"])
    entry = rb.backup(settings, tmp_path / "set")
    counts = entry.counts
    assert counts["keys"] == 30  # 20 sessions + cache:10..cache:19
    assert {p: c["keys"] for p, c in counts["patterns"].items()} == {
        "sess:*": 20, "s*": 20, "cache:1?": 10,
    }  # fmt: skip
    meta, n = redis_format.check_file(tmp_path / "set" / "redis.rgdump")
    assert n == 30 and meta["patterns"] == ["sess:*", "s*", "cache:1?"]


def test_keys_that_expired_since_the_backup_are_skipped_and_counted(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    client.set("short", "gone soon", px=300)
    client.set("long", "stays", ex=3600)
    settings = make_settings(tmp_path, redis_url)
    entry = rb.backup(settings, tmp_path / "set")
    client.flushdb()
    time.sleep(0.4)
    result = rb.restore(settings, tmp_path / "set", entry)
    assert (result["restored"], result["expired"]) == (1, 1)
    assert client.exists("long") and not client.exists("short")


def test_verify_restores_into_a_scratch_db_and_cleans_it(
    tmp_path: Path, redis_url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(client)
    client.set("soon", "expires", px=200)  # verify gives TTLs a floor: still counted
    settings = make_settings(tmp_path, redis_url)
    entry = rb.backup(settings, tmp_path / "set")
    time.sleep(0.3)

    used: list[redis_scratch.ScratchTarget] = []
    real = redis_scratch.scratch_target

    def spy(*args: Any, **kwargs: Any) -> Any:
        context = real(*args, **kwargs)
        target = context.__enter__()
        used.append(target)

        class Wrapped:
            def __enter__(self) -> redis_scratch.ScratchTarget:
                return target

            def __exit__(self, *exc: Any) -> Any:
                return context.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(rb, "scratch_target", spy)
    assert rb.verify(settings, tmp_path / "set", entry) == []
    (target,) = used
    assert target.db is not None and target.db != client.connection_pool.connection_kwargs["db"]
    scratch = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{target.db}")
    assert scratch.dbsize() == 0  # emptied afterwards

    tampered = StoreBackup.from_dict(entry.to_dict())
    tampered.counts["types"]["hash"] = 2
    tampered.counts["patterns"]["*"]["with_ttl"] -= 1
    differences = rb.verify(settings, tmp_path / "set", tampered)
    assert sorted(d.describe() for d in differences) == [
        "redis: keys (hash): expected 2, found 1",
        "redis: keys * with a TTL: expected 11, found 12",
    ]


def test_a_corrupt_file_fails_and_restores_nothing(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    fill(client)
    settings = make_settings(tmp_path, redis_url)
    entry = rb.backup(settings, tmp_path / "set")
    client.flushdb()
    path = tmp_path / "set" / "redis.rgdump"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckFailed, match=r"redis\.rgdump is corrupt or truncated"):
        rb.restore(settings, tmp_path / "set", entry)
    assert client.dbsize() == 0
    with pytest.raises(CheckFailed, match="corrupt or truncated"):
        rb.verify(settings, tmp_path / "set", entry)

    path.write_bytes(bytes(data[: len(data) - 10]))
    with pytest.raises(CheckFailed, match="corrupt or truncated"):
        rb.restore(settings, tmp_path / "set", entry)
    assert client.dbsize() == 0


def test_restore_under_a_prefix_counts_as_the_original(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    """The fallback of verify when only DB 0 exists: a copy under a key prefix."""
    fill(client)
    path = tmp_path / "dump.rgdump"
    exported = redis_export.export_keys(client, path, ["str:*", "*:1"], batch_size=5)
    prefix = b"releasegate:verify:t0:"
    result = redis_restore.restore_file(client, path, key_prefix=prefix, ttl_floor_ms=60_000)
    assert result.restored == exported.keys == 35
    copy = redis_counts.count_keys(client, ["str:*", "*:1"], key_prefix=prefix)
    assert copy == exported.counts
    assert client.get(prefix + b"str:5") == b"value 5"


def test_the_exporter_streams_in_bounded_batches(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    """A byte budget smaller than one key still exports every key, one per call."""
    for i in range(5):
        client.set(f"k:{i}", b"y" * 10_000)
    result = redis_export.export_keys(client, tmp_path / "d.rgdump", ["*"], batch_bytes=1)
    assert result.keys == 5 and redis_format.check_file(tmp_path / "d.rgdump")[1] == 5


def test_a_payload_this_server_cannot_read_fails_before_any_write(
    tmp_path: Path, client: redis.Redis
) -> None:
    """A dump from a newer Redis (a higher RDB version in each payload) is refused upfront."""
    client.set("a", "1")
    payload = client.dump("a")
    assert payload is not None
    newer = payload[:-10] + b"\x63\x00" + payload[-8:]  # RDB version 99, same CRC bytes
    path = tmp_path / "newer.rgdump"
    writer = redis_format.DumpWriter(path, {"patterns": ["*"]})
    writer.add(b"first", 0, 0, newer)
    writer.add(b"second", 0, 0, payload)
    writer.close()
    client.flushdb()
    with pytest.raises(CheckFailed, match=r"cannot restore newer\.rgdump.*newer Redis version"):
        redis_restore.restore_file(client, path)
    assert client.dbsize() == 0
