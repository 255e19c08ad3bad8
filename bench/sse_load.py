"""Lean asyncio SSE clients for load measurements: raw sockets and minimal parsing, so the
client is not the bottleneck. (uvicorn answers even HTTP/1.0 requests with chunked encoding,
so the body is de-chunked here; Nginx sends it plain.)"""

from __future__ import annotations

import asyncio
import calendar
import time
from dataclasses import dataclass, field

TERMINAL = (b"\nevent: end\n", b"\nevent: error\n", b"\nevent: cancelled\n")
_minute_cache: dict[bytes, float] = {}


def parse_ts(raw: bytes) -> float:
    """'2026-11-21T10:00:00.123Z' -> epoch seconds, cheaply (the minute part is cached)."""
    minute = raw[:16]
    base = _minute_cache.get(minute)
    if base is None:
        base = calendar.timegm(time.strptime(minute.decode(), "%Y-%m-%dT%H:%M"))
        _minute_cache[minute] = base
    return base + float(raw[17:23])


class Dechunker:
    def __init__(self) -> None:
        self.raw = b""

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        out = []
        while True:
            line_end = self.raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.raw[:line_end], 16)
            start = line_end + 2
            if len(self.raw) < start + size + 2:
                break
            out.append(self.raw[start : start + size])
            self.raw = self.raw[start + size + 2 :]
        return b"".join(out)


class Passthrough:
    """A body without chunked encoding (Nginx answers HTTP/1.0 with a plain body to the close)."""

    def feed(self, data: bytes) -> bytes:
        return data


@dataclass
class Subscriber:
    task_id: str
    sequences: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)  # receipt time of each latency's event
    thoughts: int = 0
    first_event_at: float | None = None
    last_event_at: float | None = None
    terminal: bool = False
    status: int | None = None
    received_bytes: int = 0  # as read from the socket: headers, chunk framing and all


async def subscribe(
    host: str, port: int, sub: Subscriber, *, stop: asyncio.Event | None = None, first_only: bool = False
) -> Subscriber:
    requested_at = time.time()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /api/stream/{sub.task_id} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
    buffer = b""
    head = b""
    body: Dechunker | Passthrough | None = None
    try:
        while True:
            read = asyncio.ensure_future(reader.read(262144))
            if stop is not None:
                waiter = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({read, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    return sub
                waiter.cancel()
            chunk = await read
            if not chunk:
                return sub
            now = time.time()
            sub.received_bytes += len(chunk)
            if body is None:
                head += chunk
                headers, sep, chunk = head.partition(b"\r\n\r\n")
                if not sep:
                    continue
                sub.status = int(headers.split(b" ", 2)[1])
                body = Dechunker() if b"chunked" in headers.lower() else Passthrough()
            buffer += body.feed(chunk).replace(b"\r\n", b"\n")
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if not block.startswith(b"id: "):
                    continue
                sub.sequences.append(int(block[4 : block.index(b"\n")]))
                i = block.find(b'"timestamp":"')
                # An event published before this viewer asked for the stream waited for the viewer,
                # not for the server: count from the request (from the publish otherwise).
                sub.latencies.append(now - max(parse_ts(block[i + 13 : i + 37]), requested_at))
                sub.received.append(now)
                if sub.first_event_at is None:
                    sub.first_event_at = now
                    if first_only:
                        return sub
                sub.last_event_at = now
                if b"\nevent: thought\n" in block:
                    sub.thoughts += 1
                if any(t in block for t in TERMINAL):
                    sub.terminal = True
    finally:
        writer.close()


async def hold_idle(
    host: str,
    port: int,
    task_id: str,
    connected: asyncio.Event,
    release: asyncio.Event,
    last_event_id: int = 0,
    local_host: str | None = None,
) -> bool:
    """Open one SSE connection at the live tail, read its headers, hold it open until released.
    `local_host`: the source address to connect from (127.0.0.x: more than one port range)."""
    local_addr = (local_host, 0) if local_host else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
    writer.write(
        f"GET /api/stream/{task_id} HTTP/1.0\r\nHost: bench\r\nLast-Event-ID: {last_event_id}\r\n\r\n".encode()
    )
    ok = (await reader.read(4096)).startswith(b"HTTP/1.1 200")
    connected.set()
    await release.wait()
    writer.close()
    return ok
