"""The one credential masker: every form a secret takes in a URL, DSN or message."""

from __future__ import annotations

import pytest

from leadperf._core.redact import mask_dsn, mask_text, mask_url, secrets_of


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("memory://", "memory://"),
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
        ("rediss://h/0?db=1&PASSWORD=s3cret&ssl=1", "rediss://h/0?db=1&PASSWORD=***&ssl=1"),
        (
            "postgresql://h/db?sslpassword=k&pass=a&pwd=b",
            "postgresql://h/db?sslpassword=***&pass=***&pwd=***",
        ),
        (
            "https://api.example/x?token=t&secret=s&q=1",
            "https://api.example/x?token=***&secret=***&q=1",
        ),
        ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
        ("mongodb://u:p@ss@w0rd@h/db", "mongodb://u:***@h/db"),
        ("amqp://user@h/", "amqp://user@h/"),
        ("https://h/x?db_password=z", "https://h/x?db_password=***"),
        ("https://h/x?passage=1&keyword=2", "https://h/x?passage=1&keyword=2"),
        ("https://h/x?pass%77ord=1", "https://h/x?pass%77ord=***"),
    ],
)
def test_mask_url_hides_every_credential(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_mask_url_edge_values() -> None:
    assert mask_url(None) is None
    assert mask_url("") == ""
    assert mask_url("http://[::1") == "<invalid url>"
    # A port that does not parse must not make the masker give up and echo the password.
    assert mask_url("redis://:pw@h:notaport/0") == "redis://:***@h:notaport/0"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("host=x password=secret dbname=d", "host=x password=*** dbname=d"),
        ("host=x password = 'with space' user=u", "host=x password = *** user=u"),
        ("host=x password='it\\'s' user=u", "host=x password=*** user=u"),
        ("host=x sslpassword=k", "host=x sslpassword=***"),
        ("postgresql://u:pw@h/db?sslpassword=k", "postgresql://u:***@h/db?sslpassword=***"),
        ("host=x dbname=d", "host=x dbname=d"),
    ],
)
def test_mask_dsn_handles_urls_and_libpq_strings(dsn: str, expected: str) -> None:
    assert mask_dsn(dsn) == expected


def test_secrets_of_returns_raw_values() -> None:
    assert secrets_of("postgresql://u:p%40ss@h/db?sslpassword=k2") == ["p@ss", "k2"]
    assert secrets_of("host=x password='a b\\'c'") == ["a b'c"]
    assert secrets_of("redis://h/0") == []
    assert secrets_of(None) == []


def test_mask_text_scrubs_known_secrets_urls_and_pairs() -> None:
    message = (
        "connection to redis://:hunter2@db:6379/0?password=hunter3 failed: "
        "FATAL password authentication failed (password=hunter4), user sent hunter5 / hunter%405"
    )
    masked = mask_text(message, ["hunter5", "hunter@5", None, ""])
    for secret in ("hunter2", "hunter3", "hunter4", "hunter5", "hunter%405"):
        assert secret not in masked
    assert "redis://:***@db:6379/0?password=***" in masked


def test_old_entry_points_delegate() -> None:
    from leadperf._util import mask_url as util_mask_url
    from leadperf.optimize._sql import mask_dsn as sql_mask_dsn

    assert util_mask_url("redis://h/0?password=x") == "redis://h/0?password=***"
    assert sql_mask_dsn("host=h password=x") == "host=h password=***"
    assert sql_mask_dsn("postgresql://h/d?password=x") == "postgresql://h/d?password=***"
