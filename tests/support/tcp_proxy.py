"""A loopback TCP proxy whose connections can be cut, to drop a browser's stream for real. It
also records the SSE ids each connection carried and where its request asked to resume, so a test
can see what the server sent and why."""

from __future__ import annotations

import asyncio
import re
import threading

from tests.support.server_process import free_port

_ID = re.compile(rb"^id: (\d+)\r?$")
_RESUME = re.compile(rb"(?:^last-event-id: *(\d+)\r?$|^GET [^ ]*[?&]after=(\d+))", re.IGNORECASE | re.MULTILINE)


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.sse_ids: list[list[int]] = []  # per connection that carried SSE events, in order
        self.resumed_after: list[int] = []  # per such connection: the id its request resumed after (0: none)
        self._writers: set[asyncio.StreamWriter] = set()
        self.refusing = False
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:  # the service behind is "down": every connection ends at once
            writer.transport.abort()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))

        seen: list[int] = []
        partial = b""
        request = b""
        registered = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool = False) -> None:
            nonlocal partial, request, registered
            try:
                while data := await src.read(65536):
                    if not record and len(request) < 16384:
                        request += data
                    if record:  # ids are whole lines; a read may end mid-line
                        lines = (partial + data).split(b"\n")
                        partial = lines.pop()
                        seen.extend(int(m.group(1)) for line in lines if (m := _ID.match(line)))
                        if seen and not registered:
                            self.sse_ids.append(seen)
                            resume = _RESUME.search(request)
                            self.resumed_after.append(int(resume.group(1) or resume.group(2)) if resume else 0)
                            registered = True
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, record=True))
        self._writers.difference_update((writer, up_writer))

    def cut(self) -> int:
        """Abort every open connection (both sides, no orderly close); returns how many."""

        async def abort() -> int:
            writers = list(self._writers)
            for w in writers:
                w.transport.abort()
            return len(writers)

        return asyncio.run_coroutine_threadsafe(abort(), self._loop).result(10)

    def down(self) -> None:
        """The service behind goes away: open connections are cut, new ones are dropped."""
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    def close(self) -> None:
        async def shut() -> None:
            self._server.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.cut()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
