"""Postgres connections: URL checks, named sessions, and errors a user can act on.

Every connection carries an ``application_name`` (``releasegate/<purpose> <performer>``)
so that ``pg_stat_activity`` — and a runner waiting for the release lock — can say who
is doing what.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from releasegate import secrets
from releasegate.errors import ConfigError, InfraError
from releasegate.runinfo import performer
from releasegate.secrets import redact

_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}


def check_url(url: str, source: str = "postgres URL") -> str:
    """Validate a Postgres URL and return it in libpq form (``postgresql://``).

    A URL whose password holds a raw ``@ : / % ? #`` is refused with the rule
    (:func:`releasegate.secrets.check_url`): parsed one way or another, a piece of the
    password would end up in a host name or an error message.
    """
    secrets.check_url(url, source)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{source} is malformed: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            # No user:password@ example here: redaction would mangle it into user:***@.
            f"{source} is malformed: expected a postgresql:// URL with user, password,"
            " host, port and database name"
        )
    if not parts.path.strip("/"):
        raise ConfigError(f"{source} is malformed: it names no database")
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The URL with the psycopg 3 driver that SQLAlchemy needs."""
    return "postgresql+psycopg" + check_url(url)[len("postgresql") :]


def split_password(url: str) -> tuple[str, str | None]:
    """The libpq URL without any password, and the password, percent-decoded.

    The password may sit in the user info (``user:pw@``) or in the query
    (``?password=pw``); the query's wins, as in libpq. Client programs get the URL in
    their arguments and the password in ``PGPASSWORD``: arguments are visible to every
    local user in ``/proc/*/cmdline``, a process's environment is not.
    """
    parts = urlsplit(check_url(url))
    netloc, password = parts.netloc, None
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, encoded = userinfo.partition(":")
        netloc = f"{user}@{hostport}"
        password = encoded if sep else None
    kept = []
    for item in parts.query.split("&") if parts.query else []:
        key, _, value = item.partition("=")
        if unquote(key) == "password":
            password = value
        else:
            kept.append(item)
    query = "&".join(kept)
    decoded = None if password is None else os.fsdecode(unquote_to_bytes(password))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), decoded


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(check_url(url))
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))


def describe_target(url: str) -> str:
    """``host:port/dbname`` for messages: never the credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}/{parts.path.lstrip('/')}"


def application_name(purpose: str) -> str:
    # Postgres truncates to 63 bytes; keep the purpose first so it survives.
    return f"releasegate/{purpose} {performer()}"[:63]


def connect(
    url: str,
    purpose: str,
    *,
    autocommit: bool = True,
    connect_timeout: float = 5.0,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """Open a psycopg connection named after ``purpose``; unreachable servers raise InfraError."""
    libpq_url = check_url(url)
    try:
        return psycopg.connect(
            libpq_url,
            autocommit=autocommit,
            application_name=application_name(purpose),
            connect_timeout=max(1, round(connect_timeout)),
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise InfraError(
            f"cannot reach Postgres at {describe_target(libpq_url)}: {first_line(exc)}"
        ) from None


def first_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message, secrets removed."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # libpq puts the useful part after "connection failed:"; keep it short.
    message = lines[-1] if lines and lines[0].endswith("failed:") else lines[0]
    return redact(message)


@contextmanager
def scratch_database(
    url: str, maintenance_db: str, prefix: str, *, connect_timeout: float = 5.0
) -> Iterator[str]:
    """Create a throwaway database on the server of ``url``; yield its URL; drop it after.

    Used wherever releasegate must build something to compare against (``migrate test``,
    ``migrate verify``, backup verification) without touching the real database.
    """
    name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{uuid.uuid4().hex[:10]}"
    admin_url = with_database(url, maintenance_db)
    with connect(admin_url, "scratch", connect_timeout=connect_timeout) as admin:
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            raise ConfigError(
                f"the role in the database URL may not create scratch databases on"
                f" {describe_target(admin_url)}: grant it CREATEDB"
            ) from None
    try:
        yield with_database(url, name)
    finally:
        with connect(admin_url, "scratch", connect_timeout=connect_timeout) as admin:
            drop_database(admin, name)


def drop_database(admin: psycopg.Connection[Any], name: str, attempts: int = 20) -> None:
    """Drop a database, waiting out sessions that are about to leave.

    A plain DROP is tried first: it also stops an autovacuum worker in the database,
    which ``WITH (FORCE)`` refuses to terminate for a role that is not a superuser.
    """
    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    for _ in range(attempts):
        try:
            admin.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1)
    admin.execute(statement + sql.SQL(" WITH (FORCE)"))
