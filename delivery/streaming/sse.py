"""Serving one Server-Sent Events connection, lean enough for 10,000 idle viewers per worker.

What an idle connection keeps alive is paid 10,000 times, so the design is counted in objects
(measured with tracemalloc; see docs/benchmarks.md):
- no extra task per connection (sse-starlette runs four): whether the client left is asked at
  each heartbeat;
- one future per wait: the subscription's own, resolved by a publish, by the loop's heartbeat
  ticker or by shutdown (`asyncio.wait` over several futures and a
  timeout cost ~2 KB, a timer per viewer ~0.6 KB);
- headers built once for the process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time

from starlette.types import Receive, Scope, Send

from delivery.observability.metrics import EVENT_DELIVERY_SECONDS, EVENTS_SENT
from delivery.streaming.backend import Subscription

log = logging.getLogger(__name__)
PING = b": ping\n\n"
SHUTDOWN_EVENT = (
    b'event: shutdown\ndata: {"reason": "The server is shutting down.", '
    b'"resume": "Reconnect with Last-Event-ID to continue where you left off."}\n\n'
)
SHUTDOWN_SEND_TIMEOUT_S = 2.0
TICK_S = 0.25  # heartbeat resolution
DISCONNECT_PROBE_S = 0.005
MEDIA_TYPE = "text/event-stream"
RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]  # the last one tells Nginx not to buffer


class _LoopStreams:
    """The open streams of one event loop: so that shutdown can end them all, and so that one
    ticker wakes the viewers whose heartbeat is due (a timer per viewer cost ~0.6 KB each)."""

    __slots__ = ("due", "open", "stopping", "ticker")

    def __init__(self) -> None:
        self.open: set[Subscription] = set()
        self.stopping = False
        self.due: dict[int, set[Subscription]] = {}  # tick number -> viewers to wake then
        self.ticker: asyncio.Task[None] | None = None

    def wake_at(self, sub: Subscription, when: float, loop: asyncio.AbstractEventLoop) -> None:
        """Notify `sub` at the first tick at or after loop time `when`. An entry left behind by
        a viewer woken earlier only causes one harmless extra wake-up."""
        tick = math.ceil(when / TICK_S)
        bucket = self.due.get(tick)
        if bucket is None:
            bucket = self.due[tick] = set()
        bucket.add(sub)
        if self.ticker is None or self.ticker.done():
            self.ticker = loop.create_task(self._tick(loop))

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        while self.due:
            await asyncio.sleep(TICK_S)
            now = math.floor(loop.time() / TICK_S)
            for tick in [t for t in self.due if t <= now]:
                for sub in self.due.pop(tick):
                    sub.notify()


_loops: dict[asyncio.AbstractEventLoop, _LoopStreams] = {}


def _streams_of(loop: asyncio.AbstractEventLoop) -> _LoopStreams:
    streams = _loops.get(loop)
    if streams is None:
        streams = _loops[loop] = _LoopStreams()
    return streams


def server_exiting() -> bool:
    """True once uvicorn has been asked to stop. uvicorn waits for open responses before it
    exits, and SSE responses never end on their own, so they must be told."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


def begin_shutdown() -> None:
    """End every open stream of the running event loop (called by the maintenance loop)."""
    streams = _streams_of(asyncio.get_running_loop())
    streams.stopping = True
    for sub in list(streams.open):
        sub.notify()


class ClientStalledError(Exception):
    pass


async def _send_body(send: Send, body: bytes, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await send({"type": "http.response.body", "body": body, "more_body": True})
    except TimeoutError:
        raise ClientStalledError from None


async def _client_left(receive: Receive) -> bool:
    """Has the client disconnected? Asked once per heartbeat instead of keeping a listener task
    and its pending receive() per viewer (~2.4 KB of an idle connection): a viewer that leaves
    is forgotten within one heartbeat (uvicorn drops what is sent to a closed connection)."""
    try:
        message = await asyncio.wait_for(receive(), DISCONNECT_PROBE_S)
    except TimeoutError:
        return False
    return message["type"] == "http.disconnect"


async def serve_events(
    sub: Subscription,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    heartbeat_s: float,
    send_timeout_s: float,
    retry_ms: int,
) -> None:
    """Stream `sub` as SSE until its log ends, the client leaves, or the server shuts down."""
    loop = asyncio.get_running_loop()
    streams = _streams_of(loop)
    streams.open.add(sub)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": RAW_HEADERS})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _send_body(send, b"retry: %d\n\n" % retry_ms, send_timeout_s)
        clock = loop.time
        next_ping = clock() + heartbeat_s
        while True:
            if clock() >= next_ping:  # a comment every interval, busy or not
                if await _client_left(receive):
                    return
                await _send_body(send, PING, send_timeout_s)
                next_ping = clock() + heartbeat_s
            batch = sub.take()
            if batch:
                await _send_body(
                    send, batch[0].sse if len(batch) == 1 else b"".join(e.sse for e in batch), send_timeout_s
                )
                # Counted per write, not per event: one integer add and one latency sample (the
                # batch's oldest event) per write, whatever the batch size.
                EVENTS_SENT.value += len(batch)
                EVENT_DELIVERY_SECONDS.observe(time.time() - batch[0].ts)
                continue
            if sub.finished:
                break
            if streams.stopping:
                # No id: a reconnecting client's Last-Event-ID stays at the last task event.
                await _send_body(send, SHUTDOWN_EVENT, min(send_timeout_s, SHUTDOWN_SEND_TIMEOUT_S))
                break
            # No await between the checks above and taking the waiter: a publish, disconnect or
            # shutdown that happens from here on resolves it.
            waiter = sub.waiter()
            streams.wake_at(sub, next_ping, loop)
            await waiter
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except ClientStalledError:
        # The client stopped reading: nothing more can reach it, so the connection is
        # dropped; it resumes from the log with Last-Event-ID when it reconnects.
        log.warning("SSE viewer of %s stopped reading for %ss; disconnected", scope.get("path"), send_timeout_s)
    except OSError:  # the client went away mid-send
        pass
    finally:
        streams.open.discard(sub)
        sub.close()
