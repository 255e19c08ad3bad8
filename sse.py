"""Serving one Server-Sent Events connection, lean enough for 10,000 idle viewers per worker.

What an idle connection keeps alive is paid 10,000 times, so the design is counted in objects
(measured with tracemalloc; see docs/benchmarks.md):
- one extra task per connection, the disconnect listener; sse-starlette runs four;
- one future per wait: the subscription's own, resolved by a publish, by the heartbeat timer,
  by the disconnect listener or by shutdown (`asyncio.wait` over several futures cost ~2 KB);
- headers built once for the process.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from starlette.types import Receive, Scope, Send

from stream_manager import Subscription

log = logging.getLogger(__name__)
PING = b": ping\n\n"
SHUTDOWN_EVENT = (b'event: shutdown\ndata: {"reason": "The server is shutting down.", '
                  b'"resume": "Reconnect with Last-Event-ID to continue where you left off."}\n\n')
SHUTDOWN_SEND_TIMEOUT_S = 2.0
MEDIA_TYPE = "text/event-stream"
RAW_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]  # the last one tells Nginx not to buffer


class _LoopStreams:
    """The open streams of one event loop, so that shutdown can end them all."""

    __slots__ = ("open", "stopping")

    def __init__(self) -> None:
        self.open: set[Subscription] = set()
        self.stopping = False


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


class SendTimeout(Exception):
    pass


async def _send_body(send: Send, body: bytes, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await send({"type": "http.response.body", "body": body, "more_body": True})
    except TimeoutError:
        raise SendTimeout from None


async def serve_events(sub: Subscription, scope: Scope, receive: Receive, send: Send, *,
                       heartbeat_s: float, send_timeout_s: float, retry_ms: int) -> None:
    """Stream `sub` as SSE until its log ends, the client leaves, or the server shuts down."""
    loop = asyncio.get_running_loop()
    streams = _streams_of(loop)
    gone = False

    async def listen() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        sub.notify()

    listener = loop.create_task(listen())
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
                await _send_body(send, PING, send_timeout_s)
                next_ping = clock() + heartbeat_s
            batch = sub.take()
            if batch:
                await _send_body(send, batch[0].sse if len(batch) == 1 else b"".join(e.sse for e in batch),
                                 send_timeout_s)
                continue
            if gone:
                return
            if sub.finished:
                break
            if streams.stopping:
                # No id: a reconnecting client's Last-Event-ID stays at the last task event.
                await _send_body(send, SHUTDOWN_EVENT, min(send_timeout_s, SHUTDOWN_SEND_TIMEOUT_S))
                break
            # No await between the checks above and taking the waiter: a publish, disconnect or
            # shutdown that happens from here on resolves it.
            waiter = sub.waiter()
            timer = loop.call_at(next_ping, sub.notify)
            try:
                await waiter
            finally:
                timer.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except SendTimeout:
        # The client stopped reading: nothing more can reach it, so the connection is
        # dropped; it resumes from the log with Last-Event-ID when it reconnects.
        log.warning("SSE viewer of %s stopped reading for %ss; disconnected", scope.get("path"), send_timeout_s)
    except OSError:  # the client went away mid-send
        pass
    finally:
        streams.open.discard(sub)
        sub.close()
        listener.cancel()
