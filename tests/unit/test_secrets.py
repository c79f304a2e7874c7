"""Masking URLs and redacting secrets from text releasegate prints or records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from releasegate import secrets
from releasegate.secrets import MASK, mask_url, redact, register_secret, register_url


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Each test starts with no registered secrets and leaves none behind."""
    registry: set[str] = set()
    monkeypatch.setattr(secrets, "_registered", registry)
    yield registry


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://app:hunter2@db:5432/notes",
            "postgresql://app:***@db:5432/notes",
        ),
        ("postgresql://app@db:5432/notes", "postgresql://app@db:5432/notes"),
        ("postgresql://db:5432/notes", "postgresql://db:5432/notes"),
        ("postgresql://app:@db/notes", "postgresql://app:***@db/notes"),
        (
            "postgresql://app:p@ss@db/notes",
            "postgresql://app:***@db/notes",
        ),
        (
            "postgresql://db/notes?user=app&password=hunter2&sslmode=require",
            "postgresql://db/notes?user=app&password=***&sslmode=require",
        ),
        (
            "postgresql://app:hunter2@db/notes?PASSWORD=x1&api_key=k2",
            "postgresql://app:***@db/notes?PASSWORD=***&api_key=***",
        ),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_of_unparsable_text_still_redacts() -> None:
    # An unbalanced IPv6 bracket makes urlsplit raise.
    assert mask_url("postgresql://app:hunter2@[::1/notes") == "postgresql://app:***@[::1/notes"


def test_redact_registered_secret_anywhere_in_text() -> None:
    register_secret("s3cr3t-token")
    assert redact("header: Bearer s3cr3t-token; again s3cr3t-token") == (
        f"header: Bearer {MASK}; again {MASK}"
    )


def test_redact_longest_secret_first() -> None:
    register_secret("abc")
    register_secret("abcdef")
    assert redact("value=abcdef") == "value=***"
    assert redact("x abcdef y") == f"x {MASK} y"


def test_short_and_empty_secrets_are_not_registered(isolated_registry: set[str]) -> None:
    register_secret("ab")
    register_secret("")
    register_secret(None)
    assert isolated_registry == set()
    assert redact("ab is fine") == "ab is fine"


def test_redact_urls_in_free_text_without_registration() -> None:
    text = "could not connect to postgresql://app:hunter2@db:5432/notes: refused"
    assert redact(text) == "could not connect to postgresql://app:***@db:5432/notes: refused"


def test_redact_several_urls_and_query_secrets() -> None:
    text = "from redis://:pw1@a:6379 to https://u:pw2@b/x?token=t0k3n&x=1"
    redacted = redact(text)
    assert redacted == "from redis://:***@a:6379 to https://u:***@b/x?token=***&x=1"
    for secret in ("pw1", "pw2", "t0k3n"):
        assert secret not in redacted


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "upgrade 0003 ok in 12 ms (user@host: alice@example.com)"
    assert redact(text) == text


def test_register_url_registers_password_and_query_secrets() -> None:
    register_url("postgresql://app:Zq9pw@db/notes?password=Other1&sslmode=require")
    text = "libpq said: password Zq9pw rejected, also Other1; sslmode require"
    assert redact(text) == "libpq said: password *** rejected, also ***; sslmode require"


def test_register_url_without_password_registers_nothing(isolated_registry: set[str]) -> None:
    register_url("postgresql://app@db/notes")
    assert isolated_registry == set()
