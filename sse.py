"""A lean Server-Sent Events response: one extra task per connection.

sse-starlette's EventSourceResponse runs a task group of four tasks per connection (stream, ping,
disconnect listener, shutdown watcher); with 10,000 idle viewers that is ~48 KB each. Here the
heartbeat is the timeout of the wait for the next event, the shutdown signal is one future for
the whole process, and only the disconnect listener is a task of its own (~18 KB per idle
connection measured under the same load; see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stream_manager import Subscription

log = logging.getLogger(__name__)
PING = b": ping\n\n"
_shutdown: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}


def shutdown_future() -> asyncio.Future[None]:
    loop = asyncio.get_running_loop()
    future = _shutdown.get(loop)
    if future is None:
        future = _shutdown[loop] = loop.create_future()
    return future


def server_exiting() -> bool:
    """True once uvicorn has been asked to stop. uvicorn waits for open responses before it
    exits, and SSE responses never end on their own, so they must be told."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


def begin_shutdown() -> None:
    """End every open stream of this event loop (called by the maintenance loop)."""
    future = shutdown_future()
    if not future.done():
        future.set_result(None)


class SendTimeout(Exception):
    pass


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, subscription: Subscription, *, heartbeat_s: float, send_timeout_s: float,
                 retry_ms: int, headers: Mapping[str, str] | None = None) -> None:
        self.subscription = subscription
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self.retry_ms = retry_ms
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def _send(self, send: Send, body: bytes) -> None:
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            raise SendTimeout from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.subscription
        gone = asyncio.get_running_loop().create_future()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not gone.done():
                gone.set_result(None)

        listener = asyncio.create_task(listen())
        stops = (gone, shutdown_future())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._send(send, f"retry: {self.retry_ms}\n\n".encode())
            clock = asyncio.get_running_loop().time
            next_ping = clock() + self.heartbeat_s
            while True:
                if clock() >= next_ping:  # a comment every interval, busy or not
                    await self._send(send, PING)
                    next_ping = clock() + self.heartbeat_s
                batch = sub.take()
                if batch:
                    await self._send(send, batch[0].sse if len(batch) == 1 else b"".join(e.sse for e in batch))
                    continue
                if sub.finished:
                    break
                await asyncio.wait((sub.waiter(), *stops), timeout=max(0.0, next_ping - clock()),
                                   return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    return
                if stops[1].done():
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except SendTimeout:
            # The client stopped reading: nothing more can reach it, so the connection is
            # dropped; it resumes from the log with Last-Event-ID when it reconnects.
            log.info("SSE viewer of %s stopped reading for %ss; disconnected",
                     scope.get("path"), self.send_timeout_s)
        except OSError:  # the client went away mid-send
            pass
        finally:
            sub.close()
            listener.cancel()
