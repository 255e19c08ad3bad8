"""Task events in Redis Streams, shared by every API and worker process.

Writes: `publish` only appends to an in-process outbox (the agent thread never waits for the
network). One writer thread drains it and, per task, runs a Lua script that assigns the next
sequences and appends the events in one atomic step, so sequences stay gap-free however many
processes write. Each event's stream entry id is `<sequence>-0`, so "after N" is a plain XREAD.

Reads: one reader thread per process tails, with a single blocking XREAD, every task this process
holds, and replicates what it reads into a local `MemoryEventBackend`. Viewers subscribe to that
mirror exactly as with the memory backend: one Redis connection per process, not per viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import TERMINAL_EVENT_TYPES, Event
from delivery.observability import metrics
from delivery.streaming.backend import EventBackend, StreamSnapshot, Subscription
from delivery.streaming.memory import MemoryEventBackend, missing_marker

log = logging.getLogger(__name__)
_METADATA = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# Each event is one stream entry whose fields are the event's own: a(gent), t(ype), c(ontent),
# ts and, when there is metadata, m (JSON). No JSON around the text, so neither the writer nor
# every reading process encodes or decodes it (the flood benchmark's largest cost after the
# RESP parsing, which hiredis does in C).
#
# KEYS: events stream, meta hash. ARGV: maxlen, ttl_s, then per event six values: terminal flag,
# agent, type, content, ts, metadata ('' for none). Returns {first, last} sequence appended,
# {-1, -1} when the stream had already ended and {-2, -2} when there is no such stream (never
# opened, or expired).
_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {-2, -2} end
if redis.call('HGET', KEYS[2], 'closed') == '1' then return {-1, -1} end
local first = -1
local seq = -1
for i = 3, #ARGV, 6 do
  seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  if first == -1 then first = seq end
  if ARGV[i + 5] == '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-0',
      'a', ARGV[i + 1], 't', ARGV[i + 2], 'c', ARGV[i + 3], 'ts', ARGV[i + 4])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-0',
      'a', ARGV[i + 1], 't', ARGV[i + 2], 'c', ARGV[i + 3], 'ts', ARGV[i + 4], 'm', ARGV[i + 5])
  end
  if ARGV[i] == '1' then
    redis.call('HSET', KEYS[2], 'closed', '1')
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[2])
    break
  end
end
return {first, seq}
"""
# Put back a log that vanished from Redis (lost with a Redis that kept no data), so the task can
# go on: KEYS as above; ARGV: last sequence, maxlen, then per event six values: sequence, agent,
# type, content, ts, metadata ('' for none). 0 when the log exists (another process put it back
# first), else 1.
_RESEED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'seq', ARGV[1])
for i = 3, #ARGV, 6 do
  if ARGV[i + 5] == '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-0',
      'a', ARGV[i + 1], 't', ARGV[i + 2], 'c', ARGV[i + 3], 'ts', ARGV[i + 4])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-0',
      'a', ARGV[i + 1], 't', ARGV[i + 2], 'c', ARGV[i + 3], 'ts', ARGV[i + 4], 'm', ARGV[i + 5])
  end
end
return 1
"""
WRITE_BATCH = 2000
# Events the outbox holds before crew threads wait for the writer (Redis down): memory stays bounded
# (about this many events, a few hundred bytes each) and crews pause instead of piling up.
OUTBOX_LIMIT = 50_000
READ_BLOCK_MS = 100

# What redis-py returns (bytes: the client does not decode): entries of one stream, and XREAD's
# replies per stream key.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_FlatEntries = list[tuple[bytes, list[bytes]]]  # XREAD's entries, unparsed: fields and values alternating
_Replies = Iterable[tuple[bytes, _FlatEntries]]

# An event waiting in the outbox: (task_id, agent_name, event_type, content, ts, metadata).
_Pending = tuple[str, str, str, str, float, dict[str, Any] | None]


def _events_key(task_id: str) -> str:
    return f"mad:task:{task_id}:events"


def _meta_key(task_id: str) -> str:
    return f"mad:task:{task_id}:meta"


def _fields(agent: str, event_type: str, content: str, ts: float, metadata: dict[str, Any] | None) -> list[Any]:
    """An event's agent, type, content, ts and metadata ('' for none) as the Lua scripts take them.
    Content that is not text (a custom handler's) is stored as its JSON text."""
    if not isinstance(content, str):
        content = _METADATA.encode(content)
    return [agent, event_type, content, repr(ts), _METADATA.encode(metadata) if metadata else ""]


def _decode_flat(task_id: str, entry_id: bytes, flat: list[bytes]) -> Event:
    """An entry as XREAD sends it, fields and values alternating: read by position when it is
    in the order the Lua scripts write (the reader's hot path: no dict per entry)."""
    if len(flat) >= 8 and flat[0] == b"a" and flat[2] == b"t" and flat[4] == b"c" and flat[6] == b"ts":
        return Event(
            task_id,
            int(entry_id.split(b"-", 1)[0]),
            flat[1].decode(),
            flat[3].decode(),
            flat[5].decode(),
            float(flat[7]),
            json.loads(flat[9]) if len(flat) == 10 else None,
        )
    return _decode(task_id, entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))


def _decodable(
    task_id: str, entries: Iterable[tuple[bytes, Any]], decode: Callable[[str, bytes, Any], Event]
) -> list[Event]:
    """Each entry as an event; one that cannot be read (written by something other than this
    code) is logged with its task, counted, and held by the marker of a missing event, so the
    sequences after it keep their meaning and the reader goes on."""
    events = []
    for entry_id, fields in entries:
        try:
            events.append(decode(task_id, entry_id, fields))
        except Exception:  # one entry of its own kind: the others are read
            metrics.BACKGROUND_ERRORS.labels("redis-reader").inc()
            log.exception(
                "task %s: Redis entry %r cannot be read as an event; a marker holds its place", task_id, entry_id
            )
            events.append(missing_marker(task_id, int(entry_id.split(b"-", 1)[0]), time.time()))
    return events


def _as_is(response: Any, **_: Any) -> Any:
    return response


def _decode(task_id: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    sequence = int(entry_id.split(b"-", 1)[0])
    if b"e" in fields:  # written by an earlier version: the event as one JSON object
        d = json.loads(fields[b"e"])
        return Event(task_id, sequence, d["a"], d["t"], d["c"], d["ts"], d.get("m"))
    metadata = fields.get(b"m")
    return Event(
        task_id,
        sequence,
        fields[b"a"].decode(),
        fields[b"t"].decode(),
        fields[b"c"].decode(),
        float(fields[b"ts"]),
        None if metadata is None else json.loads(metadata),
    )


class RedisEventBackend(EventBackend):
    shared = True

    def __init__(
        self,
        url: str,
        *,
        maxlen: int = 100_000,
        ttl_s: float = 3600.0,
        memory_limit_bytes: int = 0,
        outbox_limit: int = OUTBOX_LIMIT,
    ) -> None:
        self._url = url
        self._outbox_limit = outbox_limit
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._append = self._redis.register_script(_APPEND)
        self._reseed = self._redis.register_script(_RESEED)
        self._maxlen = maxlen
        self._ttl_s = max(1, int(ttl_s))
        self._mirror = MemoryEventBackend(memory_limit_bytes=memory_limit_bytes)
        self._stored_events: Callable[[str], list[Event]] | None = None
        self._outbox: deque[_Pending] = deque()
        self._outbox_ready = threading.Event()
        self._ended_here: set[str] = set()
        self._tailed: dict[str, int] = {}  # task_id -> last sequence replicated
        self._tail_lock = threading.Lock()
        # The reader blocks in XREAD on the logs it tails; a log tailed meanwhile (a new task, a
        # viewer loading one) wakes it through an entry in this process's own wake stream, so its
        # first events do not wait out the block (READ_BLOCK_MS).
        self._wake_key = f"mad:reader:{uuid.uuid4().hex}"
        self._wake_seen: bytes | str = "0-0"
        self._reader_blocked = False
        self._tail_added = threading.Event()
        self._running = False
        self._threads: list[threading.Thread] = []
        self._published = 0  # events this process's writer appended (only that thread changes it)

    # -- lifecycle --------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._mirror.bind_loop(loop)

    def start(self) -> None:
        """Start the writer and reader threads."""
        if self._running:
            return
        self._redis.ping()  # fail at start-up, with the URL in the error, not at the first event
        self._running = True
        self._threads = [
            threading.Thread(target=self._write_loop, name="redis-events-writer", daemon=True),
            threading.Thread(target=self._read_loop, name="redis-events-reader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Write what is still in the outbox, then stop both threads."""
        if not self._running:
            return
        self._running = False
        self._outbox_ready.set()
        self._wake_reader()
        for thread in self._threads:
            thread.join(timeout=15)
        with contextlib.suppress(redis.RedisError):
            self._redis.delete(self._wake_key)
        self._redis.close()
        if "_probe" in self.__dict__:  # made by a readiness probe
            self._probe.close()

    def problem(self) -> str | None:
        dead = [t.name for t in self._threads if not t.is_alive()]
        if self._running and dead:
            return f"the {' and '.join(dead)} thread stopped; restart this process (its log says why)"
        try:
            self._probe.ping()
        except redis.RedisError as exc:
            log.warning("readiness: Redis unreachable: %s", exc)
            return f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL and that Redis runs"
        return None

    @functools.cached_property
    def _probe(self) -> redis.Redis:
        """A client of its own for readiness probes: a short timeout, no queueing behind the writer."""
        return redis.Redis.from_url(self._url, socket_timeout=2, socket_connect_timeout=2)

    # -- writing ----------------------------------------------------------------------------

    def open(self, task_id: str) -> None:
        if not self._redis.hsetnx(_meta_key(task_id), "seq", 0):
            raise ValueError(f"stream {task_id} already exists")
        self._mirror.open(task_id)
        self._tail(task_id, 0)

    def publish(
        self, task_id: str, agent_name: str, event_type: str, content: str, metadata: dict[str, Any] | None = None
    ) -> None:
        if task_id in self._ended_here:
            raise StreamClosedError(f"stream {task_id} already ended")
        if event_type in TERMINAL_EVENT_TYPES:
            self._ended_here.add(task_id)
        if len(self._outbox) >= self._outbox_limit:
            self._wait_for_room(task_id)
        self._outbox.append((task_id, agent_name, event_type, content, time.time(), metadata))
        if not self._outbox_ready.is_set():
            self._outbox_ready.set()

    def _wait_for_room(self, task_id: str) -> None:
        """A full outbox (Redis unreachable for a while): a crew's thread waits here until the
        writer has room again, so the crew pauses rather than filling memory. The event loop's own
        few events (cancel, confirmation) are taken at once: the loop never waits on Redis."""
        try:
            asyncio.get_running_loop()
            return
        except RuntimeError:
            pass
        log.warning("task %s: %d events wait for Redis; the crew pauses until it is back", task_id, len(self._outbox))
        while self._running and len(self._outbox) >= self._outbox_limit:
            time.sleep(0.05)

    def _write_loop(self) -> None:
        pending: list[_Pending] = []
        while self._running or self._outbox or pending:
            if not pending:
                # Wait only when there is nothing to write: publishers set the flag only when it
                # is clear, so after a burst it stays clear while the outbox still holds batches.
                if not self._outbox:
                    self._outbox_ready.wait(0.5)
                self._outbox_ready.clear()
                while self._outbox and len(pending) < WRITE_BATCH:
                    pending.append(self._outbox.popleft())
                if not pending:
                    continue
            try:
                self._write(pending)
                pending = []
            except redis.RedisError as exc:  # keep the batch and retry: nothing is dropped
                log.error("Redis write failed (%s); retrying in 1 s. Check REDIS_URL and that Redis is up.", exc)
                time.sleep(1.0)
            except Exception:  # noqa: BLE001 - an item Redis cannot take: the others must not wait on it
                pending = self._set_aside_unwritable(pending)

    def _set_aside_unwritable(self, items: list[_Pending]) -> list[_Pending]:
        """Write the items one by one; an event that cannot be written at all (not a Redis
        outage: that is retried) is set aside, logged with its task and counted. Returns what is
        left to retry (the items from a Redis error on)."""
        for n, item in enumerate(items):
            try:
                self._write([item])
            except redis.RedisError:
                return items[n:]
            except Exception:
                metrics.BACKGROUND_ERRORS.labels("redis-writer").inc()
                log.exception("task %s: an event (%s) could not be written to Redis; set aside", item[0], item[2])
        return []

    def _write(self, items: list[_Pending]) -> None:
        runs: list[tuple[str, list[_Pending]]] = []  # consecutive events of one task, in publish order
        for item in items:
            if runs and runs[-1][0] == item[0]:
                runs[-1][1].append(item)
            else:
                runs.append((item[0], [item]))
        pipe = self._redis.pipeline(transaction=False)
        for task_id, run in runs:
            args: list[Any] = [self._maxlen, self._ttl_s]
            for _, agent, etype, content, ts, meta in run:
                args.append("1" if etype in TERMINAL_EVENT_TYPES else "0")
                args += _fields(agent, etype, content, ts, meta)
            self._append(keys=[_events_key(task_id), _meta_key(task_id)], args=args, client=pipe)
        results = pipe.execute()
        archive = self.archive
        for (task_id, run), (first, _last) in zip(runs, results, strict=True):
            if first < 0:
                log.info(
                    "dropped %d events for %s: %s",
                    len(run),
                    task_id,
                    "its stream had already ended" if first == -1 else "no such stream in Redis",
                )
                continue
            self._published += len(run)
            if archive is not None:
                for offset, (_, agent, etype, content, ts, meta) in enumerate(run):
                    archive.append(Event(task_id, first + offset, agent, etype, content, ts, meta))
                self.archive_wake.set()

    # -- reading ----------------------------------------------------------------------------

    def load(self, task_id: str) -> bool:
        entries = cast(_Entries, self._redis.xrange(_events_key(task_id)))
        if not entries and not self._redis.exists(_meta_key(task_id)):
            return False
        events = self._with_stored_start(task_id, 0, _decodable(task_id, entries, _decode))
        if events is None:
            return False  # the store is missing part of it too: the caller serves the store's log
        try:
            self._mirror.open(task_id)
        except ValueError:  # another viewer loaded it first
            return True
        self._mirror.replicate(task_id, events)
        if not (events and events[-1].event_type in TERMINAL_EVENT_TYPES):
            self._tail(task_id, events[-1].sequence if events else 0)
        return True

    def attach_store(self, stored_events: Callable[[str], list[Event]]) -> None:
        self._stored_events = stored_events

    def _with_stored_start(self, task_id: str, held: int, events: list[Event]) -> list[Event] | None:
        """`events` read from Redis, preceded by the stored ones after `held` that Redis no longer
        keeps (trimmed to REDIS_STREAM_MAXLEN); None when the store does not have them (yet)."""
        if not events or events[0].sequence == held + 1:
            return events
        first = events[0].sequence
        stored = self._stored_events(task_id) if self._stored_events is not None else []
        earlier = [e for e in stored if held < e.sequence < first]
        if [e.sequence for e in earlier] != list(range(held + 1, first)):
            log.error(
                "%s: Redis keeps its log from %d on, and the store has %d of the %d events after %d before it",
                task_id,
                first,
                len(earlier),
                first - held - 1,
                held,
            )
            return None
        return earlier + events

    def shared_events_after(self, task_id: str, sequence: int) -> list[Event]:
        entries = cast(_Entries, self._redis.xrange(_events_key(task_id), min=f"{sequence + 1}-0"))
        return _decodable(task_id, entries, _decode)

    def _tail(self, task_id: str, sequence: int) -> None:
        """Mirror the task's log from Redis after `sequence`, starting now."""
        with self._tail_lock:
            self._tailed[task_id] = sequence
        self._wake_reader()

    def _wake_reader(self) -> None:
        """End the reader's wait now, so it reads the logs it tails as they are now."""
        self._tail_added.set()
        with self._tail_lock:
            if not self._reader_blocked:
                return
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
            pipe.expire(self._wake_key, 3600)
            pipe.execute()
        except redis.RedisError as exc:  # it still looks again after READ_BLOCK_MS
            log.warning("could not wake the Redis reader (%s)", exc)

    def _read_loop(self) -> None:
        reader = redis.Redis(connection_pool=self._redis.connection_pool)
        # XREAD's reply as the parser (hiredis) built it: redis-py's own callback makes a dict
        # per entry in Python, the reader's largest cost after the network.
        reader.set_response_callback("XREAD", _as_is)
        wake_key = self._wake_key.encode()
        while self._running:
            self._tail_added.clear()
            with self._tail_lock:
                streams: dict[Any, Any] = {_events_key(t): f"{seq}-0" for t, seq in self._tailed.items()}
                self._reader_blocked = bool(streams)
            if not streams:
                self._tail_added.wait(READ_BLOCK_MS / 1000)
                continue
            streams[self._wake_key] = self._wake_seen
            try:
                replies = reader.xread(streams, count=WRITE_BATCH, block=READ_BLOCK_MS)
            except redis.RedisError as exc:
                log.error("Redis read failed (%s); retrying in 1 s", exc)
                time.sleep(1.0)
                continue
            finally:
                with self._tail_lock:
                    self._reader_blocked = False
            # RESP3 (redis-py's default) sends {key: entries}, RESP2 [[key, entries], ...].
            for key, entries in cast(_Replies, replies.items() if isinstance(replies, dict) else replies or []):
                if key == wake_key:
                    self._wake_seen = entries[-1][0]
                    continue
                try:
                    self._take(key.decode().split(":")[2], entries)
                except Exception:  # the reader serves every task's viewers: it goes on
                    metrics.BACKGROUND_ERRORS.labels("redis-reader").inc()
                    log.exception("reading %r from Redis failed; retrying in 1 s", key)
                    time.sleep(1.0)

    def _take(self, task_id: str, entries: list[tuple[bytes, list[bytes]]]) -> None:
        """Replicate what the reader read of one task's log into the mirror."""
        with self._tail_lock:
            held = self._tailed.get(task_id)
        if held is None:
            return
        try:
            decoded = [_decode_flat(task_id, entry_id, flat) for entry_id, flat in entries]
        except Exception:  # noqa: BLE001 - one bad entry must not stop the task's viewers
            decoded = _decodable(task_id, entries, _decode_flat)
        events = self._with_stored_start(task_id, held, decoded)
        if events is None:  # fell behind the trimming; the archive will have them: retry
            time.sleep(READ_BLOCK_MS / 1000)
            return
        if not events:
            return
        with contextlib.suppress(TaskNotFoundError):  # evicted meanwhile
            self._mirror.replicate(task_id, events)
        with self._tail_lock:
            if events[-1].event_type in TERMINAL_EVENT_TYPES:
                self._tailed.pop(task_id, None)
            elif task_id in self._tailed:
                self._tailed[task_id] = events[-1].sequence

    # -- the local mirror ---------------------------------------------------------------------

    def holds(self, task_id: str) -> bool:
        return self._mirror.holds(task_id)

    def subscription(self, task_id: str, after: int = 0) -> Subscription:
        return self._mirror.subscription(task_id, after)

    def restore(self, task_id: str, events: list[Event], closed: bool = True) -> None:
        """Hold a log reloaded from the store. One that goes on (`closed=False`) but had vanished
        from Redis is put back there first, so that every process's events continue it."""
        last = events[-1].sequence if events else 0
        if not closed:
            args: list[Any] = [last, self._maxlen]
            for e in events:
                args.append(e.sequence)
                args += _fields(e.agent_name, e.event_type, e.content, e.ts, e.metadata)
            if self._reseed(keys=[_events_key(task_id), _meta_key(task_id)], args=args):
                log.warning("%s: its log had vanished from Redis; put back from the store (%d events)", task_id, last)
        self._mirror.restore(task_id, events, closed)
        if not closed:
            self._ended_here.discard(task_id)
            self._tail(task_id, last)

    def is_closed(self, task_id: str) -> bool:
        return task_id in self._ended_here or self._mirror.is_closed(task_id)

    def snapshot(self, task_id: str) -> StreamSnapshot:
        return self._mirror.snapshot(task_id)

    def snapshots(self) -> list[StreamSnapshot]:
        return self._mirror.snapshots()

    def events(self, task_id: str) -> list[Event]:
        return self._mirror.events(task_id)

    def published_count(self) -> int:
        return self._published

    def evict_closed_before(self, deadline: float) -> list[str]:
        evicted = self._mirror.evict_closed_before(deadline)
        # Also forget the endings of logs the mirror let go of earlier (STREAM_MEMORY_MB).
        self._ended_here = {task_id for task_id in self._ended_here if self._mirror.holds(task_id)}
        return evicted
