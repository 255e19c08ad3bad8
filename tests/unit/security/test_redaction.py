"""Credentials in URLs, wherever in a text they appear, are replaced by *** and nothing else is."""

from __future__ import annotations

import pytest

from delivery.security.redaction import redacted_text, redacted_url


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
        ("redis://default:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
        ("postgresql+psycopg://app:p@ss@db:5432/delivery", "postgresql+psycopg://***@db:5432/delivery"),
        ("amqp://guest:guest@rabbit//", "amqp://***@rabbit//"),
        (
            "at http://alice:pw@127.0.0.1:9/v1 refused a format (Error code: 400)",
            "at http://***@127.0.0.1:9/v1 refused a format (Error code: 400)",
        ),
        ("Engine('postgresql://u:pw@h/db')", "Engine('postgresql://***@h/db')"),
        ('{"url": "https://u:pw@h/x"}', '{"url": "https://***@h/x"}'),
        ("POST https://hooks.example/h?token=abc&x=1 gave up", "POST https://hooks.example/h?token=***&x=1 gave up"),
        ("GET /api/stream/t?after=3&token=17.sig HTTP/1.1", "GET /api/stream/t?after=3&token=*** HTTP/1.1"),
        ("http://h/v1?api_key=k1&model=m", "http://h/v1?api_key=***&model=m"),
        # Nothing to hide: left exactly as it was.
        ("write to ops@example.com about http://host:8000/v1", "write to ops@example.com about http://host:8000/v1"),
        ("a Markdown link [x](https://example.com/a?b=c)", "a Markdown link [x](https://example.com/a?b=c)"),
        ("no url at all: 50% done & going", "no url at all: 50% done & going"),
    ],
)
def test_redacted_text_hides_credentials_and_only_them(text: str, shown: str) -> None:
    assert redacted_text(text) == shown


def test_redacted_url_and_redacted_text_agree_on_a_url() -> None:
    for url in ("http://u:p@h:1/v1?secret=x&a=b", "redis://:p@h/0", "https://h/v1"):
        assert redacted_text(url) == redacted_url(url)
