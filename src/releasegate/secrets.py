"""Keeping secrets out of logs and reports.

Store URLs reach releasegate through environment variables; every value resolved
from one is registered here, and everything the CLI prints or a report writes goes
through :func:`redact`. URLs shown on purpose (``config check``, error messages) are
masked with :func:`mask_url` first.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

from releasegate.errors import ConfigError

MASK = "***"
# What a user must do for a URL whose credentials cannot be told apart from the rest.
URL_RULE = "percent-encode @ : / % ? # in the password (e.g. %40 for @, %25 for %)"

_registered: set[str] = set()

# user:password@ in any URL-ish string, for text we did not build ourselves.
_USERINFO_RE = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"
)
# A value ends at "&", blanks and quotes: in JSON or a quoted message, the closing quote stays.
_SECRET_QUERY_RE = re.compile(r"(?i)\b(password|passwd|token|api[_-]?key|secret)=([^&\s'\"\\<>]+)")


_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def url_ambiguity(url: str) -> str | None:
    """Why ``url``'s credentials cannot be parsed unambiguously, or None when they can.

    Parsers disagree on a raw ``@``, ``/``, ``?``, ``#`` or second ``:`` in a password
    (``urlsplit`` splits at the first ``/``, libpq and others at the last ``@``), and a raw
    ``%`` is an invalid escape: any of them can put a piece of the password in a host
    name, a path or an error message. The reason never quotes the URL.
    """
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    ats = rest.count("@")
    if ats > 1:
        return "it holds more than one '@'"
    if ats == 1:
        at = rest.index("@")
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        if end < at:
            return f"a '{rest[end]}' comes before the '@'"
        if rest[:at].count(":") > 1:
            return "the part before the '@' holds more than one ':'"
    if _BAD_PERCENT_RE.search(rest):
        return "it holds a '%' that does not start a %XX escape"
    return None


def check_url(url: str, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` and the rule when :func:`url_ambiguity`
    finds a problem; register the URL's secrets otherwise."""
    why = url_ambiguity(url)
    if why is not None:
        raise ConfigError(f"{source} is malformed: {why}; {URL_RULE}")
    register_url(url)


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` removes it wherever it appears."""
    if value and len(value) >= 3:
        _registered.add(value)


def mask_url(url: str) -> str:
    """The URL with its password (and secret-looking query values) replaced by ``***``.

    A URL that :func:`url_ambiguity` refuses keeps only its user name and what follows
    its last ``@``: any piece of the password lies in between.
    """
    if url_ambiguity(url) is not None:
        scheme, _, rest = url.partition("://")
        if "@" not in rest:
            return redact(url)
        user, sep, _ = rest.partition(":")
        shown = f"{user}:" if sep and not any(c in user for c in "@/?#%") else ""
        return f"{scheme}://{shown}{MASK}@{rest.rpartition('@')[2]}"
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
    values = [parts.password or ""]
    values += [match.group(2) for match in _SECRET_QUERY_RE.finditer(parts.query)]
    for value in values:
        # Both spellings: libraries quote the decoded value, URLs the encoded one.
        register_secret(value)
        register_secret(unquote(value))
