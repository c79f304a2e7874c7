"""Redis connections: URL checks, named clients, errors a user can act on, key globs.

Every client carries a ``CLIENT SETNAME`` of the form ``releasegate/<purpose>:<performer>``
(the Redis twin of :func:`releasegate.db.application_name`), so ``CLIENT LIST`` shows who
is doing what. Clients speak bytes (no response decoding): keys and values are binary.

Key patterns follow Redis' own glob syntax (``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``);
:func:`compile_glob` turns one into a regular expression that matches exactly what
``SCAN MATCH`` would, so a keyspace can be scanned once and split by pattern client-side.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from releasegate.errors import ConfigError, InfraError
from releasegate.runinfo import performer
from releasegate.secrets import redact

_SCHEMES = {"redis", "rediss", "unix"}
# CLIENT SETNAME refuses spaces and anything outside printable ASCII.
_NAME_UNSAFE_RE = re.compile(r"[^!-~]")


def check_url(url: str, source: str = "redis URL") -> str:
    """Validate a Redis URL (``redis://``, ``rediss://`` or ``unix://``); return it unchanged."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{source} is malformed: {redact(str(exc))}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"{source} is malformed: expected a redis://, rediss:// or unix:// URL"
            " with host, port and database number"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{source} is malformed: it names no host")
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    if db and not db.isdigit():
        raise ConfigError(f"{source} is malformed: database {db!r} is not a number")
    return url


def database_index(url: str) -> int:
    """The logical database a URL names (``/3`` or ``?db=3``); 0 by default."""
    parts = urlsplit(url)
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if name == "db" and value.isdigit():
            return int(value)
    path = parts.path.strip("/") if parts.scheme != "unix" else ""
    return int(path) if path.isdigit() else 0


def describe_target(url: str) -> str:
    """``host:port/db`` for messages: never the credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}/{database_index(url)}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{database_index(url)}"


def client_name(purpose: str) -> str:
    """``releasegate/<purpose>:<performer>`` with what CLIENT SETNAME refuses replaced."""
    return _NAME_UNSAFE_RE.sub("-", f"releasegate/{purpose}:{performer()}")[:120]


def first_line(exc: BaseException) -> str:
    """The first line of an exception message, secrets removed."""
    text = str(exc).strip() or type(exc).__name__
    return redact(text.splitlines()[0].strip())


def connect(
    url: str,
    *,
    purpose: str = "redis",
    timeout: float = 5.0,
    command_timeout: float = 120.0,
    db: int | None = None,
    source: str = "redis URL",
) -> redis.Redis:
    """A bytes-speaking client named after ``purpose``, checked with PING.

    ``timeout`` bounds the connection attempt, ``command_timeout`` each reply; ``db``
    selects another logical database on the same server. A malformed URL raises
    :class:`ConfigError`; an unreachable server, refused credentials or a database index
    the server does not have raise :class:`InfraError` (``cannot reach Redis at ...``).
    """
    check_url(url, source)
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, command_timeout),
        "client_name": client_name(purpose),
    }
    if db is not None:
        url = with_db(url, db)
    try:
        client = redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{source} is malformed: {first_line(exc)}") from None
    target = describe_target(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise InfraError(f"cannot reach Redis at {target}: {first_line(exc)}") from None
    return client


def with_db(url: str, db: int) -> str:
    """The same server and credentials, another logical database."""
    parts = urlsplit(url)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
    if parts.scheme == "unix":
        query = "&".join(filter(None, [query, f"db={db}"]))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", query, parts.fragment))


def infra_error(client: redis.Redis, exc: BaseException, doing: str) -> InfraError:
    """An :class:`InfraError` for a Redis failure in the middle of an operation."""
    kwargs = client.connection_pool.connection_kwargs
    where = f"{kwargs.get('host', 'unix')}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"
    return InfraError(f"Redis at {where} failed while {doing}: {first_line(exc)}")


def server_info(client: redis.Redis) -> dict[str, str]:
    """``INFO server`` as text: version and run id (which changes on every restart)."""
    info = client.info("server")
    return {
        "redis_version": str(info.get("redis_version", "")),
        "run_id": str(info.get("run_id", "")),
    }


def pack_command(args: Sequence[bytes]) -> bytes:
    """One command in RESP, built directly: for hot loops that send thousands of commands
    on a connection of their own (much cheaper than redis-py's generic packer)."""
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


# -- key patterns ---------------------------------------------------------------------


def glob_escape(text: str) -> str:
    """``text`` as a glob matching only itself (for prefixes in SCAN MATCH)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def compile_glob(pattern: str) -> re.Pattern[bytes]:
    """A regex (on bytes) matching exactly the keys Redis' ``stringmatchlen`` would."""
    src = pattern.encode()
    out: list[bytes] = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i : i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(src[i : i + 1]))
        elif c == b"[":
            end, cls = _glob_class(src, i + 1)
            if end < 0:  # no closing bracket: a literal '['
                out.append(re.escape(c))
            else:
                out.append(cls)
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out) + rb"\Z", re.DOTALL)


def _glob_class(src: bytes, i: int) -> tuple[int, bytes]:
    """Parse ``[...]`` from just after ``[``; (index of ``]``, regex class) or (-1, b"")."""
    negate = src[i : i + 1] == b"^"
    if negate:
        i += 1
    items: list[bytes] = []
    n = len(src)
    while i < n and src[i : i + 1] != b"]":
        if src[i : i + 1] == b"\\" and i + 1 < n:
            i += 1
            items.append(re.escape(src[i : i + 1]))
        elif i + 2 < n and src[i + 1 : i + 2] == b"-" and src[i + 2 : i + 3] != b"]":
            lo, hi = sorted((src[i], src[i + 2]))
            items.append(re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi])))
            i += 2
        else:
            items.append(re.escape(src[i : i + 1]))
        i += 1
    if i >= n:
        return -1, b""
    if not items:  # "[]" matches nothing, "[^]" anything
        return i, b"." if negate else b"(?!)"
    return i, b"[" + (b"^" if negate else b"") + b"".join(items) + b"]"


class PatternSet:
    """Several globs scanned as one: the ``MATCH`` to send and the client-side filter."""

    def __init__(self, patterns: Sequence[str], exclude_prefixes: Iterable[bytes] = ()) -> None:
        if not patterns:
            raise ConfigError("no key patterns given")
        self.patterns = list(dict.fromkeys(patterns))
        self.regexes = [compile_glob(p) for p in self.patterns]
        self.exclude = tuple(exclude_prefixes)
        # One pattern: let the server filter. Several: scan everything once, filter here, so
        # a key that several patterns match is seen (and exported) once.
        self.match = self.patterns[0] if len(self.patterns) == 1 else "*"
        self.needs_filter = len(self.patterns) > 1 or bool(self.exclude)

    def matching(self, key: bytes) -> list[int]:
        """Indexes of the patterns ``key`` matches (empty when excluded)."""
        if self.exclude and key.startswith(self.exclude):
            return []
        return [i for i, rx in enumerate(self.regexes) if rx.match(key)]

    def wanted(self, key: bytes) -> bool:
        if self.exclude and key.startswith(self.exclude):
            return False
        return not self.needs_filter or any(rx.match(key) for rx in self.regexes)


def scan_pages(
    client: redis.Redis, match: str, count: int, cursor: int = 0
) -> Iterator[tuple[int, list[bytes]]]:
    """``SCAN`` page by page from ``cursor``: (next cursor, keys); the last has cursor 0.

    SCAN returns every key present for the whole iteration at least once; a key may come
    twice when the keyspace is resized meanwhile. Empty pages are yielded too, so callers
    can checkpoint the cursor.
    """
    while True:
        cursor, keys = client.scan(cursor=cursor, match=match, count=count)
        cursor = int(cursor)
        yield cursor, [bytes(k) if isinstance(k, bytes) else k.encode() for k in keys]
        if cursor == 0:
            return
