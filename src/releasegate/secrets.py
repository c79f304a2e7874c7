"""Keeping secrets out of logs and reports.

Store URLs reach releasegate through environment variables; every value resolved
from one is registered here, and everything the CLI prints or a report writes goes
through :func:`redact`. URLs shown on purpose (``config check``, error messages) are
masked with :func:`mask_url` first.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

_registered: set[str] = set()

# user:password@ in any URL-ish string, for text we did not build ourselves.
_USERINFO_RE = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"
)
_SECRET_QUERY_RE = re.compile(r"(?i)\b(password|passwd|token|api[_-]?key|secret)=([^&\s]+)")


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` removes it wherever it appears."""
    if value and len(value) >= 3:
        _registered.add(value)


def mask_url(url: str) -> str:
    """The URL with its password (and secret-looking query values) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            userinfo = f"{user}:{MASK}"
        netloc = f"{userinfo}@{hostport}"
    query = _SECRET_QUERY_RE.sub(lambda m: f"{m.group(1)}={MASK}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """Remove registered secrets and URL passwords from free text."""
    for secret in sorted(_registered, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    return _SECRET_QUERY_RE.sub(lambda m: f"{m.group(1)}={MASK}", text)


def register_url(url: str) -> None:
    """Register the password and any secret query values inside a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        register_secret(url)
        return
    if parts.password:
        register_secret(parts.password)
    for match in _SECRET_QUERY_RE.finditer(parts.query):
        register_secret(match.group(2))
