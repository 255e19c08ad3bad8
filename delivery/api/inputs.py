"""What a client may put on the wire, and what the service does with the odd cases.

Every string a JSON body can express reaches us, including ones that are not text (an unpaired
surrogate such as "\\ud800") or that no database can keep (NUL, which PostgreSQL refuses). Each
input is either stored and replayed exactly or refused with a 4xx that names the field; these
are the rules, in one place, for the models in schemas.py and the headers and query values the
routes read themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from delivery.errors import InvalidRequestError, InvalidResumePointError, shown

# The largest sequence a client may name: a signed 64-bit integer, what every store can compare.
MAX_SEQUENCE = 2**63 - 1
MAX_SEQUENCE_DIGITS = len(str(MAX_SEQUENCE))
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(value: str) -> str | None:
    """Why `value` cannot be stored and replayed exactly, or None when it can.

    Every other character, control characters and the private-use and unassigned planes
    included, is kept as sent."""
    if "\x00" in value:
        return "a NUL character (\\u0000), which the database cannot store"
    found = _SURROGATE.search(value)
    if found:
        return f"an unpaired surrogate (\\u{ord(found.group()):04x}), which is not text in any encoding"
    return None


def storable_text(field: str, value: str) -> str:
    """For pydantic validators: the value itself, or a ValueError that names the field."""
    problem = unstorable(value)
    if problem:
        raise ValueError(f"{field} contains {problem}; remove it and send the request again")
    return value


def validation_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """One of pydantic's errors as the API reports it: where (`loc`, naming the field), what
    (`msg`) and its `type`; never the input itself, which may be a secret or not text at all."""
    loc = [
        part if isinstance(part, int) or (len(part) <= 80 and not unstorable(part)) else shown(part)
        for part in error["loc"]
    ]
    msg = str(error["msg"])
    return {"loc": loc, "msg": msg if unstorable(msg) is None else shown(msg, 500), "type": error["type"]}


def _sequence(value: str) -> int | None:
    text = value.strip()
    # isdigit() alone also accepts "²" and Arabic-Indic digits; only ASCII digits are sequences.
    if text.isascii() and text.isdigit() and len(text) <= MAX_SEQUENCE_DIGITS and int(text) <= MAX_SEQUENCE:
        return int(text)
    return None


def parse_resume_point(last_event_id: str | None, after: str | None) -> int:
    """Where a viewer resumes: Last-Event-ID (sent by a reconnecting EventSource) wins over
    ?after=; both name the sequence of the last event received."""
    start = 0
    if after is not None and after != "":
        value = _sequence(after)
        if value is None:
            raise InvalidRequestError(
                "after must be the sequence number of the last event received (an integer from 0 to "
                f"{MAX_SEQUENCE} in ASCII digits), got {shown(after)}."
            )
        start = value
    if last_event_id is not None and last_event_id.strip():
        value = _sequence(last_event_id)
        if value is None:
            raise InvalidResumePointError(
                "Last-Event-ID must be the sequence number of the last event received (an integer "
                f"from 0 to {MAX_SEQUENCE} in ASCII digits), got {shown(last_event_id)}."
            )
        start = value
    return start
