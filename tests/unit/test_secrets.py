"""Masking URLs and redacting secrets from text releasegate prints or records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from releasegate import secrets
from releasegate.backup.postgres_tools import libpq_target
from releasegate.db import split_password
from releasegate.errors import ConfigError
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


# -- URLs whose credentials cannot be parsed unambiguously ------------------------------

AMBIGUOUS_PASSWORDS = ["tk9m/Wv8q", "tk9m@Wv8q", "tk9m%Wv8q", "tk9m?Wv8q", "tk9m#Wv8q", "tk9m:Wv8q"]


@pytest.mark.parametrize("password", AMBIGUOUS_PASSWORDS)
@pytest.mark.parametrize("scheme", ["postgresql", "redis", "http"])
def test_raw_special_characters_in_a_password_are_refused_with_the_rule(
    password: str, scheme: str
) -> None:
    url = f"{scheme}://app:{password}@db.internal:5432/notes"
    assert secrets.url_ambiguity(url) is not None
    with pytest.raises(ConfigError) as info:
        secrets.check_url(url, "$DATABASE_URL")
    message = str(info.value)
    assert message.startswith("$DATABASE_URL is malformed: ")
    assert "percent-encode @ : / % ? # in the password" in message
    for fragment in password.replace("/", " ").replace("@", " ").split():
        assert fragment[:4] not in message


@pytest.mark.parametrize("password", AMBIGUOUS_PASSWORDS)
def test_mask_url_of_an_ambiguous_url_shows_no_fragment_of_the_password(password: str) -> None:
    masked = mask_url(f"postgresql://app:{password}@db:5432/notes")
    for fragment in ("tk9m", "Wv8q"):
        assert fragment not in masked
    assert masked.endswith("db:5432/notes")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:p%40ss%2Fw%25rd%3A%3F%23@db:5432/notes",
        "postgresql://app@db/notes?password=p%40ss&sslmode=require",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/notes",
        "postgresql://app:pw@[::1]:5432/notes",
        "redis://:pw@cache:6379/0",
        "redis://cache:6379/0",
        "http://qdrant:6333",
        "notaurl",
    ],
)
def test_well_formed_urls_pass(url: str) -> None:
    assert secrets.url_ambiguity(url) is None


def test_check_url_registers_both_spellings_of_the_password() -> None:
    secrets.check_url("postgresql://app:p%40ss%2Fword@db/notes", "$URL")
    assert redact("got p%40ss%2Fword and p@ss/word") == "got *** and ***"


# -- the password handed to client programs ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "without", "password"),
    [
        (
            "postgresql://app:p%40ss%2Fw%25rd@db:5432/notes",
            "postgresql://app@db:5432/notes",
            "p@ss/w%rd",
        ),
        (
            "postgresql://app@db:5432/notes?sslmode=require&password=s%26cret",
            "postgresql://app@db:5432/notes?sslmode=require",
            "s&cret",
        ),
        (
            "postgres://app:first@db/notes?password=second",
            "postgresql://app@db/notes",
            "second",
        ),
        ("postgresql://app@db/notes", "postgresql://app@db/notes", None),
        ("postgresql://app:@db/notes", "postgresql://app@db/notes", ""),
    ],
)
def test_split_password_decodes_and_removes_it(
    url: str, without: str, password: str | None
) -> None:
    assert split_password(url) == (without, password)


def test_client_programs_get_the_decoded_password_in_their_environment_only() -> None:
    libpq_url, env = libpq_target("postgresql://app@db/notes?password=p%40ss%3Fx", "backup")
    assert "p%40ss" not in libpq_url and "password" not in libpq_url
    assert env["PGPASSWORD"] == "p@ss?x"


def test_redacting_a_query_secret_keeps_the_closing_quote_of_json() -> None:
    text = '{"url": "postgresql://db/notes?password=***", "next": 1}'
    assert redact(text) == text
    assert redact("'postgresql://db/notes?token=t0k3n' given") == (
        "'postgresql://db/notes?token=***' given"
    )
