"""The one event type: what a task publishes, what viewers receive and what the store archives."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from enum import Enum
from json.encoder import encode_basestring
from typing import Any


class EventType(str, Enum):
    start = "start"
    agent_start = "agent_start"
    thought = "thought"
    action = "action"
    output = "output"
    step_end = "step_end"
    check = "check"  # the code's check of a document: its gaps, and the fix round that follows
    awaiting_confirmation = "awaiting_confirmation"
    confirmed = "confirmed"
    resumed = "resumed"  # the process running a phase was lost; an agent starts again elsewhere
    # A model call's attempt failed (its stream may have broken off mid-answer) and the call is
    # tried again: the text streamed since the call's last `action` is void; the next attempt's
    # `action` and `thought`s follow, its answer from the start.
    model_retry = "model_retry"
    end = "end"
    error = "error"
    cancelled = "cancelled"


# The `agent_name` of events the service itself publishes (start, the terminal event, ...).
SYSTEM_AGENT = "System"

# Plain strings: compared on the event path, where an Enum lookup would cost more.
TERMINAL_EVENT_TYPES = frozenset({EventType.end.value, EventType.error.value, EventType.cancelled.value})

_second_cache: tuple[int, str] = (-1, "")
# An Event with its eight slots (96), its pointer in a log's list (8), its own float time (24)
# and sequence number (28).
_EVENT_BYTES = 156
# An SSE frame's bytes object (33) and what it holds besides the content and metadata: the id,
# event and data lines, the task id, field names, agent, type and timestamp (about 200).
_SSE_FRAME_BYTES = 233
_quote = encode_basestring  # a JSON string literal, non-ASCII kept (json's ensure_ascii=False)
# Line breaks to Python's str.splitlines, so to line readers built on it (httpx's and requests'
# iter_lines), though not to SSE: JSON keeps them raw, and such a reader would cut an event's
# `data` line in two. Escaped in the frame, the JSON means the same to every parser.
_SPLITLINES_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_METADATA_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# Model text is input too (docs/architecture.md, "Model text"): the one rule for what a model
# sends. Every character that some part cannot carry becomes U+FFFD, so nothing is dropped and
# nothing breaks a stream, the archive or a replay: NUL (PostgreSQL refuses it) and surrogate code
# points (an unpaired "\ud800" in a JSON stream decodes to one; no encoding can write it, so the
# SSE encoder, Redis and the database would all raise). Everything else is kept as sent.
REPLACEMENT_CHARACTER = "\ufffd"
_UNCARRIABLE = re.compile("[\x00\ud800-\udfff]")


def carriable(text: str) -> str:
    """`text` as every part can carry it (the rule above); the same object when it needs nothing."""
    if text.isascii():  # the common case, ~50 ns: only NUL can be wrong
        return text.replace("\x00", REPLACEMENT_CHARACTER) if "\x00" in text else text
    return _UNCARRIABLE.sub(REPLACEMENT_CHARACTER, text)


def carriable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata with every string in it (keys, values, nested) made carriable, and every
    value JSON cannot carry replaced by its text."""
    return {carriable(str(k)): _carriable_value(v) for k, v in metadata.items()}


def _carriable_value(value: Any) -> Any:
    if isinstance(value, str):
        return carriable(value)
    if isinstance(value, dict):
        return carriable_metadata(value)
    if isinstance(value, list | tuple):
        return [_carriable_value(v) for v in value]
    if value is None or isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    # What JSON cannot say (an object a handler put there, NaN): its text, so that the archive,
    # Redis and every viewer's JSON.parse can carry it.
    return carriable(str(value))


def format_timestamp(ts: float) -> str:
    """UTC ISO-8601 with milliseconds; the part up to the second is cached (events come in bursts)."""
    global _second_cache
    second = int(ts)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)
    return f"{prefix}.{int(ts * 1000) % 1000:03d}Z"


class Event:
    """One published event. Encoded to SSE bytes at most once, lazily, on the loop thread.

    `event_type` is the plain string value of an `EventType` (cheaper to compare and store).
    """

    __slots__ = ("_sse", "agent_name", "content", "event_type", "metadata", "sequence", "task_id", "ts")

    def __init__(
        self,
        task_id: str,
        sequence: int,
        agent_name: str,
        event_type: str,
        content: str,
        ts: float,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.task_id = task_id
        self.sequence = sequence
        self.agent_name = agent_name
        self.event_type = event_type
        self.content = content
        self.ts = ts
        self.metadata = metadata
        self._sse: bytes | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.as_tuple()[:7] == other.as_tuple()[:7]  # the fields; not the cached SSE frame

    __hash__ = None  # type: ignore[assignment]  # mutable metadata: not hashable

    def __repr__(self) -> str:
        return f"Event({self.task_id!r}, {self.sequence}, {self.agent_name!r}, {self.event_type!r})"

    def held_bytes(self) -> int:
        """About what holding this event in memory costs: the object, its place in a log, its
        content, metadata and SSE frame — counted as encoded even before a viewer has read it,
        since replay encodes it then (bench "stream memory" compares it with tracemalloc)."""
        size = _EVENT_BYTES + sys.getsizeof(self.content)
        meta = len(_METADATA_ENCODER.encode(self.metadata)) if self.metadata else 0
        if meta:
            size += sys.getsizeof(self.metadata) + 2 * meta
        if self._sse is not None:
            return size + sys.getsizeof(self._sse)
        content = self.content
        text = len(content) if not isinstance(content, str) or content.isascii() else 3 * len(content)
        return size + _SSE_FRAME_BYTES + text + meta

    @property
    def terminal(self) -> bool:
        return self.event_type in TERMINAL_EVENT_TYPES

    def as_tuple(self) -> tuple[Any, ...]:
        """The event as a plain tuple, which the cyclic garbage collector stops tracking (when its
        metadata is None, as for tokens): how a finished log is held (memory.py, _FinishedLog)."""
        return (
            self.task_id,
            self.sequence,
            self.agent_name,
            self.event_type,
            self.content,
            self.ts,
            self.metadata,
            self._sse,
        )

    @classmethod
    def from_tuple(cls, fields: tuple[Any, ...]) -> Event:
        event = cls.__new__(cls)
        (
            event.task_id,
            event.sequence,
            event.agent_name,
            event.event_type,
            event.content,
            event.ts,
            event.metadata,
            event._sse,
        ) = fields
        return event

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "sequence": self.sequence,
            "agent_name": self.agent_name,
            "event_type": self.event_type,
            "content": self.content,
            "timestamp": format_timestamp(self.ts),
        }
        if self.metadata:
            data["metadata"] = self.metadata
        return data

    @property
    def sse(self) -> bytes:
        """The SSE frame; its `data` is exactly `json.dumps(self.to_dict(), ensure_ascii=False,
        separators=(",", ":"))` (but for U+0085, U+2028 and U+2029, escaped), written out field by
        field: 1.3 µs instead of 8.5 µs per event on the loop thread (each string is escaped by
        json's own C function)."""
        if self._sse is None:
            try:
                payload = (
                    f'{{"task_id":{_quote(self.task_id)},"sequence":{self.sequence},'
                    f'"agent_name":{_quote(self.agent_name)},"event_type":{_quote(self.event_type)},'
                    f'"content":{_quote(self.content)},"timestamp":"{format_timestamp(self.ts)}"'
                )
            except TypeError:  # a custom handler published something other than text: as json would
                payload = _METADATA_ENCODER.encode(self.to_dict())[:-1]
            else:
                payload += f',"metadata":{_METADATA_ENCODER.encode(self.metadata)}' if self.metadata else ""
            payload += "}"
            if not payload.isascii() and ("\u2028" in payload or "\u2029" in payload or "\x85" in payload):
                payload = payload.translate(_SPLITLINES_ESCAPES)  # rare: three scans cost less than a regex
            self._sse = f"id: {self.sequence}\nevent: {self.event_type}\ndata: {payload}\n\n".encode()
        return self._sse
