"""The rollback verification's comparison of Redis with a backup, against a real Redis."""

from __future__ import annotations

from pathlib import Path

import redis

from releasegate.backup import redis as rb
from releasegate.config import Settings, load_config
from releasegate.pipeline.undo import EXPIRY_MARGIN_S, _check, redis_counts_now


def _settings(tmp_path: Path, url: str) -> Settings:
    config = tmp_path / "releasegate.toml"
    config.write_text('[service]\nname = "undo"\n\n[redis]\nurl_env = "R"\npatterns = ["k:*"]\n')
    return load_config(config, {"R": url})


def test_keys_near_their_expiry_may_or_may_not_be_counted(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("k:forever", "1")
    client.set("k:hour", "1", ex=3600)
    client.set("k:soon", "1", px=int(EXPIRY_MARGIN_S * 1000 / 2))  # inside the margin
    client.hset("k:hash", "f", "v")
    entry = rb.backup(_settings(tmp_path, redis_url), tmp_path / "set")

    counts = redis_counts_now(tmp_path / "set", entry.to_dict())

    assert counts["keys"] == (3, 4)
    assert counts["types"] == {"string": (2, 3), "hash": (1, 1)}
    # Either way the soon-expiring key goes, the check holds; a key more or less does not.
    assert _check("redis", "keys", counts["keys"], 3)["ok"]
    assert _check("redis", "keys", counts["keys"], 4)["ok"]
    assert not _check("redis", "keys", counts["keys"], 5)["ok"]
    assert not _check("redis", "keys", counts["keys"], 2)["ok"]
    assert _check("redis", "keys", counts["keys"], 3)["expected"] == "3..4"
    assert _check("redis", "hash keys", (1, 1), 1)["expected"] == 1
