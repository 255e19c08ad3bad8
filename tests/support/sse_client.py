"""A small, strict SSE reader for tests (follows the WHATWG parsing rules we rely on)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Message:
    id: str | None
    event: str | None
    data: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    closed_by_server: bool = False
    cut: bool = False  # the connection broke mid-stream (allow_cut=True)
    body: str = ""

    @property
    def events(self) -> list[dict[str, Any]]:
        return [m.json for m in self.messages]

    @property
    def sequences(self) -> list[int]:
        return [e["sequence"] for e in self.events]


def parse_lines(lines, result: StreamResult, max_messages: int | None = None, until_type: str | None = None) -> bool:
    """Feed lines into result; return True when max_messages or an `until_type` event arrived."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                result.messages.append(Message(fields.get("id"), fields.get("event"), "\n".join(data)))
                if max_messages is not None and len(result.messages) >= max_messages:
                    return True
                if until_type is not None and fields.get("event") == until_type:
                    return True
            fields, data = {}, []
            continue
        if line.startswith(":"):
            result.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "retry":
            result.retry = int(value)
        else:
            fields[name] = value
    return False


def read_stream(
    base_url: str,
    task_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    timeout: float = 60.0,
    max_messages: int | None = None,
    until_type: str | None = None,
    allow_cut: bool = False,
) -> StreamResult:
    """Read /api/stream/{task_id} until the server closes it (or max_messages arrive). With
    `allow_cut`, a connection that breaks mid-stream ends the read (result.cut) instead of raising."""
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout)) as client,
        client.stream("GET", f"/api/stream/{task_id}", headers=headers, params=params) as r,
    ):
        result = StreamResult(status=r.status_code, headers=r.headers)
        if r.status_code != 200:
            r.read()
            result.body = r.text
            return result
        try:
            stopped = parse_lines(r.iter_lines(), result, max_messages, until_type)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            if not allow_cut:
                raise
            result.cut = True
            return result
        result.closed_by_server = not stopped
        return result
