"""A loopback proxy in front of the real Redis that fails one command on demand, as a Redis that
dies or hangs at exactly that moment: `cut` aborts every connection that sends it (the client sees
a reset), `stall` holds such a connection unanswered until `heal()`. Every other command passes,
so a test can fail one step of a request (opening a task's log) and nothing before it."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Literal

from tests.support.real_services import REDIS_PORT, ensure_redis
from tests.support.server_process import free_port

Fault = Literal["cut", "stall"]


class RedisFaults:
    def __init__(self) -> None:
        ensure_redis()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.hits = 0  # commands failed so far
        self._command: re.Pattern[bytes] | None = None
        self._fault: Fault = "cut"
        self._stalled: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def fail(self, command: str, fault: Fault) -> None:
        """From now on, fail every connection that sends `command` (as redis-py spells it)."""
        # A command is a RESP array of bulk strings, its name first: *<n>\r\n$<len>\r\n<NAME>\r\n
        self._command = re.compile(rb"\*\d+\r\n\$\d+\r\n" + re.escape(command.encode()) + rb"\r\n")
        self._fault = fault

    def heal(self) -> None:
        """Pass everything again; stalled connections are aborted (their clients see a reset)."""
        self._command = None

        async def abort() -> None:
            for writer in self._stalled:
                writer.transport.abort()
            self._stalled.clear()

        asyncio.run_coroutine_threadsafe(abort(), self._loop).result(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", REDIS_PORT)

        async def to_redis() -> None:
            try:
                while data := await reader.read(65536):
                    if self._command is not None and self._command.search(data):
                        self.hits += 1
                        if self._fault == "cut":
                            writer.transport.abort()
                            up_writer.transport.abort()
                        else:
                            self._stalled.append(writer)
                            up_writer.transport.abort()
                        return
                    up_writer.write(data)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        async def to_client() -> None:
            try:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if writer not in self._stalled:
                    writer.close()

        await asyncio.gather(to_redis(), to_client())

    def close(self) -> None:
        self.heal()

        async def shut() -> None:
            self._server.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
