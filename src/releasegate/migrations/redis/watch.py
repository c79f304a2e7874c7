"""Which old-layout keys changed: keyspace notifications, when the server sends them.

A catch-up that knows the keys written since the last pass needs to look at those only.
When the server has keyspace notifications on (``notify-keyspace-events`` with ``K`` and
the classes ``g$xe``, or ``KA``), :func:`start` subscribes a :class:`ChangeWatcher`
thread to the old patterns before a pass begins, and the next catch-up in the same
process takes the keys it collected (:meth:`ChangeWatcher.drain`) instead of scanning.

Pub/sub delivers nothing while nobody listens, so the watcher is only an accelerator:
a catch-up scans the whole layout (digests, see :mod:`.sync`) whenever no watcher has
listened without a break since the last pass started (another process, a lost
connection, a subscriber dropped by ``client-output-buffer-limit pubsub``, notifications
off). releasegate never changes the server's configuration itself.

The drain is exact: it publishes a marker on a channel of its own and waits for the
watcher to receive it. Notifications are queued to the subscriber in the order of the
writes, so every write that completed before the drain has been collected by then.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from releasegate.stores import redis as stores

log = logging.getLogger("releasegate.redis.migrations")

_NEEDED = set("g$xe")


def notifications_on(client: redis.Redis) -> bool:
    """Whether the server sends the keyspace notifications a watcher needs."""
    try:
        value = client.config_get("notify-keyspace-events")
    except redis.RedisError:  # CONFIG refused (managed Redis): assume off
        return False
    raw = next(iter(value.values()), b"") if value else b""
    flags = set(raw.decode() if isinstance(raw, bytes) else str(raw or ""))
    return "K" in flags and ("A" in flags or flags >= _NEEDED)


class ChangeWatcher:
    """Collects the names of keys written under ``patterns`` until stopped."""

    def __init__(self, client: redis.Redis, patterns: list[str]) -> None:
        kwargs = client.connection_pool.connection_kwargs
        self.db = int(kwargs.get("db", 0))
        self.prefix = f"__keyspace@{self.db}__:".encode()
        self.patterns = patterns
        self.barrier = f"releasegate:barrier:{uuid.uuid4().hex}".encode()
        self.name = f"releasegate/change-watcher-{uuid.uuid4().hex[:12]}"
        # No silent reconnection: writes made while it was away would be missed.
        kwargs = {**kwargs, "client_name": self.name, "retry": Retry(NoBackoff(), 0)}
        self.client = redis.Redis(connection_pool=redis.ConnectionPool(**kwargs))
        self.client_id: int | None = None
        self.pubsub = self.client.pubsub()
        self.keys: set[bytes] = set()
        self.lock = threading.Lock()
        self.marks: set[bytes] = set()
        self.marked = threading.Condition(self.lock)
        self.broken = False
        self.stopping = False
        self.thread = threading.Thread(target=self._listen, name="redis-change-watcher")
        self.thread.daemon = True

    def start(self) -> None:
        """Subscribe (confirmed by the server) and start collecting."""
        self.pubsub.psubscribe(*[self.prefix + p.encode() for p in self.patterns])
        self.pubsub.subscribe(self.barrier)
        confirmed = 0
        while confirmed < len(self.patterns) + 1:  # acknowledged: writes from now on count
            reply: Any = self.pubsub.get_message(timeout=10)
            if reply is None:
                raise redis.ConnectionError("no subscription confirmation from Redis")
            confirmed += reply["type"] in ("subscribe", "psubscribe")
        self.client_id = self._connection_id(self.client)
        self.thread.start()

    def _connection_id(self, client: redis.Redis) -> int | None:
        """The server's id of the subscribed connection (a new one after a reconnect)."""
        try:
            listing: Any = client.client_list(_type="pubsub")
        except redis.RedisError:
            return None
        for entry in listing:
            name = entry.get("name")
            name = name.decode() if isinstance(name, bytes) else name
            if name == self.name:
                return int(entry["id"])
        return None

    @property
    def alive(self) -> bool:
        return not self.broken and self.thread.is_alive()

    def _listen(self) -> None:
        try:
            while not self.stopping:
                message: Any = self.pubsub.get_message(timeout=0.2)
                if message is None or message["type"] not in ("message", "pmessage"):
                    continue
                channel = bytes(message["channel"])
                if channel == self.barrier:
                    with self.lock:
                        self.marks.add(bytes(message["data"]))
                        self.marked.notify_all()
                elif channel.startswith(self.prefix):
                    key = channel[len(self.prefix) :]
                    with self.lock:
                        self.keys.add(key)
        except (redis.RedisError, OSError, ValueError) as exc:
            if not self.stopping:
                log.info("redis change watcher stopped: %s", stores.first_line(exc))
        finally:
            self.broken = True
            with self.lock:
                self.marked.notify_all()

    def drain(self, client: redis.Redis, timeout: float = 10.0) -> set[bytes] | None:
        """The keys written since the last drain (or the start); None if the watcher broke
        (some writes may be missing: scan instead)."""
        mark = uuid.uuid4().hex.encode()
        client.publish(self.barrier, mark)
        with self.lock:
            arrived = self.marked.wait_for(lambda: mark in self.marks or self.broken, timeout)
            if not arrived or self.broken:
                return None
        # Still the very connection that subscribed before the last pass, and still sent
        # notifications: otherwise some writes may have gone unseen.
        same = self.client_id is not None and self._connection_id(client) == self.client_id
        if not same or not notifications_on(client):
            self.broken = True
            return None
        with self.lock:
            self.marks.discard(mark)
            keys, self.keys = self.keys, set()
        return keys

    def give_back(self, keys: set[bytes]) -> None:
        """Keys a drain handed out but a failed pass did not finish: the next drain has them."""
        with self.lock:
            self.keys |= keys

    def stop(self) -> None:
        self.stopping = True
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        try:
            self.pubsub.close()
            self.client.close()
        except redis.RedisError:
            pass


# The watchers of this process, by (server and database, version key, expansion start).
_watchers: dict[tuple[str, str, float], ChangeWatcher] = {}
_registry_lock = threading.Lock()


def _key(client: redis.Redis, version_key: str, started_at: float) -> tuple[str, str, float]:
    kwargs = client.connection_pool.connection_kwargs
    where = f"{kwargs.get('host', kwargs.get('path', ''))}:{kwargs.get('port', '')}"
    return (f"{where}/{kwargs.get('db', 0)}", version_key, started_at)


def start(
    client: redis.Redis, version_key: str, started_at: float, patterns: list[str]
) -> ChangeWatcher | None:
    """A watcher of ``patterns`` for the next pass (replacing any broken one); None when
    the server sends no keyspace notifications."""
    key = _key(client, version_key, started_at)
    with _registry_lock:
        current = _watchers.get(key)
        if current is not None and current.alive:
            return current
        if current is not None:
            current.stop()
            del _watchers[key]
        if not notifications_on(client):
            return None
        watcher = ChangeWatcher(client, patterns)
        try:
            watcher.start()
        except redis.RedisError as exc:
            log.info("no redis change watcher: %s", stores.first_line(exc))
            watcher.stop()
            return None
        _watchers[key] = watcher
        return watcher


def find(client: redis.Redis, version_key: str, started_at: float) -> ChangeWatcher | None:
    """The live watcher of this expansion in this process, if any."""
    with _registry_lock:
        watcher = _watchers.get(_key(client, version_key, started_at))
    return watcher if watcher is not None and watcher.alive else None


def stop(client: redis.Redis, version_key: str, started_at: float) -> None:
    """Stop watching this expansion (contract, undo)."""
    with _registry_lock:
        watcher = _watchers.pop(_key(client, version_key, started_at), None)
    if watcher is not None:
        watcher.stop()
