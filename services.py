"""The objects one API process is made of, built from settings and shared by the routes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import Depends, Request

import sse
from auth import Auth
from event_archive import EventArchiver
from event_backend import Event
from llm_providers import describe_model, make_llm_factory
from models import TaskStatus
from rate_limits import RateLimits
from redis_event_backend import RedisEventBackend
from settings import EventBackendKind, Settings, database_url
from stream_manager import StreamManager
from task_runner import TaskRunner
from task_store import SqlTaskStore, TaskStore

log = logging.getLogger("multi_agent")


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: TaskStore = SqlTaskStore(database_url(settings))
        self.archiver = EventArchiver(self.store)
        self.streams = StreamManager.instance()
        if settings.event_backend is EventBackendKind.redis:
            self.streams.backend = RedisEventBackend(settings.redis_url, maxlen=settings.redis_stream_maxlen,
                                                     ttl_s=settings.stream_ttl_s)
        self.streams.attach_archive(self.archiver.queue)
        self.model_label = describe_model(settings)
        self.auth = Auth(settings)
        self.rate_limits = RateLimits(settings)
        self.runner = TaskRunner.for_settings(settings, self.store, self.streams,
                                              make_llm_factory(settings), self.model_label)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        recovered = self.runner.recover_interrupted()
        if recovered:
            log.warning("marked %d tasks interrupted by the restart", len(recovered))
        self.streams.bind_loop(loop)
        self.archiver.start()
        self.reopen_waiting()

    def reopen_waiting(self) -> None:
        """Tasks awaiting confirmation outlive a restart; their logs go on where they stopped."""
        for record in self.store.unfinished():
            if record.status is TaskStatus.awaiting_confirmation and not self.streams.holds(record.task_id) \
                    and not self.streams.load(record.task_id):
                self.streams.restore(record.task_id, self.store.load_events(record.task_id), closed=False)

    def stop(self) -> None:
        self.runner.shutdown()
        self.streams.bind_loop(None)
        self.archiver.stop()
        self.store.close()

    def ensure_stream(self, task_id: str) -> None:
        """Make a task's log replayable: live, still in memory, or reloaded from the store."""
        if not self.streams.holds(task_id) and not self.streams.load(task_id):
            self.store.get(task_id)  # TaskNotFoundError for unknown ids
            self.archiver.flush()
            self.streams.restore(task_id, self.store.load_events(task_id))

    def event_log(self, task_id: str) -> list[dict]:
        if self.streams.holds(task_id):
            return [e.to_dict() for e in self.streams.events(task_id)]
        return [Event(e.task_id, e.sequence, e.agent_name, e.event_type, e.content, e.ts,
                      e.metadata).to_dict() for e in self.store.load_events(task_id)]

    def last_sequence(self, task_id: str) -> int:
        if self.streams.holds(task_id):
            return self.streams.snapshot(task_id).last_sequence
        return self.store.last_sequence(task_id)

    async def maintain(self) -> None:
        """Shutdown and deadlines every half second; eviction and retention about once a minute."""
        s = self.settings
        next_sweep = next_lease = 0.0
        while True:
            await asyncio.sleep(0.5)
            if sse.server_exiting():
                interrupted = await asyncio.to_thread(self.runner.interrupt_all)
                if interrupted:
                    log.warning("shutting down: %d running tasks interrupted", len(interrupted))
                sse.begin_shutdown()  # after the error events, which their viewers drain first
                return
            await asyncio.to_thread(self.runner.check_deadlines)
            if time.monotonic() >= next_lease:
                next_lease = time.monotonic() + s.task_lease_s / 3
                await asyncio.to_thread(self.runner.heartbeat)
                await asyncio.to_thread(self.runner.reap_lost)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + min(60.0, max(s.stream_ttl_s / 4, 0.5))
                evicted = self.streams.evict_expired(s.stream_ttl_s)
                purged = await asyncio.to_thread(
                    self.store.purge_finished_before, time.time() - s.task_retention_days * 86400)
                if evicted or purged:
                    log.info("evicted %d streams from memory, purged %d old tasks", len(evicted), purged)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
