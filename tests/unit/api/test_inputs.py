"""The input rules: what can be stored exactly, what is refused, and how refusals quote input."""

from __future__ import annotations

import json

import pytest

from delivery.api.inputs import MAX_SEQUENCE, parse_resume_point, storable_text, unstorable, validation_error
from delivery.errors import InvalidRequestError, InvalidResumePointError, shown


@pytest.mark.parametrize(
    "text", ["", "plain", "\x01\x1b\x7f", "\u2028\u2029", "\ufeff\uffff", "\U0010ffff", "😀", "开发", "\r\n\t"]
)
def test_every_character_that_is_text_is_storable(text):
    assert unstorable(text) is None
    assert storable_text("feedback", text) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a\x00b", "NUL character"), ("\ud800", "unpaired surrogate (\\ud800)"), ("x\udfff", "(\\udfff)")],
)
def test_nul_and_unpaired_surrogates_are_refused_naming_the_field(text, problem):
    assert problem in (unstorable(text) or "")
    with pytest.raises(ValueError, match=r"^feedback contains .*remove it and send the request again$"):
        storable_text("feedback", text)


@pytest.mark.parametrize(
    ("last_event_id", "after", "start"),
    [
        (None, None, 0),
        ("", "", 0),
        (" 7 ", None, 7),
        ("7", "3", 7),
        (None, "3", 3),
        (str(MAX_SEQUENCE), None, MAX_SEQUENCE),
    ],
)
def test_resume_points(last_event_id, after, start):
    assert parse_resume_point(last_event_id, after) == start


@pytest.mark.parametrize("value", ["-1", "1.5", "²", "١٢", "0x10", "1e3", str(MAX_SEQUENCE + 1), "9" * 5000, "\x00"])
def test_a_resume_point_that_is_not_a_sequence_is_refused_naming_the_field(value):
    with pytest.raises(InvalidResumePointError, match=r"^Last-Event-ID must be"):
        parse_resume_point(value, None)
    with pytest.raises(InvalidRequestError, match=r"^after must be"):
        parse_resume_point(None, value)


def test_quoted_input_is_short_ascii_whatever_it_contained():
    assert shown("abc") == "'abc'"
    assert shown("\ud800\x00é") == "'\\ud800\\x00\\xe9'"
    assert shown("x" * 100) == "'" + "x" * 40 + "'..."


def test_validation_errors_never_echo_the_input_and_can_always_be_sent():
    error = {
        "loc": ("body", "budget", "\ud800" * 3, 0),
        "msg": "bad \ud800",
        "type": "extra_forbidden",
        "input": "secret \ud800",
    }
    reported = validation_error(error)
    assert reported == {
        "loc": ["body", "budget", "'\\ud800\\ud800\\ud800'", 0],
        "msg": "'bad \\ud800'",
        "type": "extra_forbidden",
    }
    json.dumps(reported, ensure_ascii=False).encode("utf-8")  # a response body, whatever came in
