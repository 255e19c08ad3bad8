"""Real HTTP receivers of webhooks. `WebhookReceiver` verifies each one as a Standard Webhooks
consumer does (standardwebhooks' own verify), and can be told to fail, redirect, answer slowly,
hold its answer until released, or stream a huge body. `TrickleReceiver` answers one byte a
second, forever."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.server_process import free_port
from tests.support.waiting import wait_for

CHUNK = b"x" * 65536  # a huge body is this, sent again and again: generated, never held


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    path: str = "/hook"
    at: float = field(default_factory=time.time)  # when it arrived (epoch seconds, as payload timestamps)


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.received: list[Received] = []  # verified notifications answered 2xx, in arrival order
        self.refused = 0  # requests whose signature did not verify
        self.arrived = 0  # verified requests, before their answer (held ones too)
        self.answers: list[int] = []  # status codes to answer next, one per request; then 204
        self.delay_s = 0.0
        self.gate: threading.Event | None = None  # when set up: every answer waits until it is set
        self.huge_body_bytes = 0  # when > 0: each answer streams a body this long
        self.streamed = 0  # bytes of huge bodies handed to the server so far
        self.streaming = 0  # huge bodies being sent now (until done, or the client hung up)
        self._verifier = Webhook(secret)
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"  # also /hook/<anything>: more endpoints, one receiver
        app = Starlette(routes=[Route("/hook{rest:path}", self._hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, 10, message="the webhook receiver to start")

    async def _hook(self, request: Request) -> Response:
        raw = await request.body()
        headers = dict(request.headers)
        try:
            body = self._verifier.verify(raw, headers)
        except WebhookVerificationError:
            with self._lock:
                self.refused += 1
            return Response(status_code=400)
        with self._lock:
            self.arrived += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.02)
        with self._lock:
            status = self.answers.pop(0) if self.answers else 204
            if status < 300:
                self.received.append(Received(headers, body, request.url.path))
        headers_out = {"location": "http://127.0.0.1:9/elsewhere"} if 300 <= status < 400 else {}
        if self.huge_body_bytes:
            body_out = self._huge_body(request, self.huge_body_bytes)
            return StreamingResponse(body_out, status_code=status, headers=headers_out)
        return Response(status_code=status, headers=headers_out)

    async def _huge_body(self, request: Request, length: int) -> AsyncIterator[bytes]:
        """`length` bytes, until the client hangs up (uvicorn would take the rest and drop it)."""
        sent = 0
        with self._lock:
            self.streaming += 1
        try:
            while sent < length and not await request.is_disconnected():
                chunk = CHUNK[: length - sent]
                yield chunk
                sent += len(chunk)
                with self._lock:
                    self.streamed += len(chunk)
        finally:
            with self._lock:
                self.streaming -= 1

    def types(self, task_id: str) -> list[str]:
        with self._lock:
            return [r.body["type"] for r in self.received if r.body["data"]["task_id"] == task_id]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@dataclass
class Connection:
    opened: float  # time.monotonic()
    closed: float | None = None  # when the client hung up; None while it listens


class TrickleReceiver:
    """Reads each request, then answers one byte a second, forever: its status line and headers
    never end. Records when each connection opened and when the client hung up."""

    ANSWER = b"HTTP/1.1 200 OK\r\nx-trickle: "  # then "a", a second at a time

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(time.monotonic())
        self.connections.append(connection)
        self._writers.add(writer)
        trickling: asyncio.Task[None] | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            trickling = asyncio.create_task(self._trickle(writer))
            await reader.read(1)  # b"" once the client hangs up
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            connection.closed = time.monotonic()
            if trickling is not None:
                trickling.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            for byte in self.ANSWER:
                writer.write(bytes([byte]))
                await asyncio.sleep(1)
            while True:
                writer.write(b"a")
                await asyncio.sleep(1)

    async def _close(self) -> None:
        self._server.close()
        for writer in self._writers:  # each handler then sees its connection end, and returns
            writer.close()
        await asyncio.sleep(0.1)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
