"""The rule for model text (delivery/events.py): what no part can carry becomes U+FFFD."""

from __future__ import annotations

import json

from delivery.events import carriable, carriable_metadata


def test_nul_and_surrogates_become_replacement_characters_and_the_rest_is_kept():
    text = json.loads('"a\\u0000b\\ud800c\\udfffd \\u202e \\u0007 \\ud83d\\ude00"')  # as a JSON stream decodes it
    assert carriable(text) == "a\ufffdb\ufffdc\ufffdd \u202e \x07 \U0001f600"
    assert carriable(text).encode("utf-8")  # now every encoder can write it
    plain = "plain ASCII text"
    assert carriable(plain) is plain  # nothing to do: the same object, no copy on the hot path


def test_metadata_is_cleaned_in_keys_values_and_nested_containers():
    metadata = {"k\x00": "v\ud800", "n": 3, "nested": {"list": ["x\x00", 1, ("\udc00",)], "none": None}}
    assert carriable_metadata(metadata) == {
        "k\ufffd": "v\ufffd",
        "n": 3,
        "nested": {"list": ["x\ufffd", 1, ["\ufffd"]], "none": None},
    }


def test_metadata_values_json_cannot_carry_become_their_text():
    """A handler's own object or a NaN in metadata would kill the archiver or a viewer's
    JSON.parse: the crew's publish turns them into text (JSON numbers and booleans stay)."""

    class Handle:
        def __str__(self) -> str:
            return "handle\x00"

    cleaned = carriable_metadata({"h": Handle(), "nan": float("nan"), "x": 1.5, "ok": True})
    assert cleaned == {"h": "handle\ufffd", "nan": "nan", "x": 1.5, "ok": True}
    assert json.loads(json.dumps(cleaned, allow_nan=False)) == cleaned
