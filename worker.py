"""Celery workers for EXECUTOR=celery: `celery -A worker worker -P threads -c 4`.

API processes only accept, stream and answer; they send each crew phase here through the broker
(Redis). A worker reads the same settings as the API (environment and .env), the same task store
(DATABASE_URL) and publishes to the same Redis event streams, so viewers on any API replica see
its events live. While it runs phases it renews their lease; if it dies, any process fails the
task with an `error` event once the lease runs out (TASK_LEASE_S).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path

from dotenv import load_dotenv

# The project's modules sit next to this file. `celery -A worker` finds this module from the
# current directory, but the pool's child processes do not have that directory on their path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
load_dotenv()

import crewai_env  # noqa: E402,F401  (telemetry off before CrewAI is imported)
from celery import Celery  # noqa: E402

from executors import Phase  # noqa: E402
from settings import Settings, get_settings  # noqa: E402

log = logging.getLogger("multi_agent.worker")


def make_celery(settings: Settings) -> Celery:
    app = Celery("worker", broker=settings.celery_broker_url or settings.redis_url)
    app.conf.update(
        task_default_queue="crew-phases",
        task_acks_late=False,  # a phase lost with its worker is failed by the lease, not re-run
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )
    return app


app = make_celery(get_settings())


class _WorkerContext:
    """What one worker process needs to run phases; built at its first task (after a fork)."""

    def __init__(self, settings: Settings) -> None:
        from event_archive import EventArchiver
        from executors import CeleryExecutor
        from llm_providers import describe_model, make_llm_factory
        from redis_event_backend import RedisEventBackend
        from settings import database_url
        from stream_manager import StreamManager
        from task_runner import TaskRunner
        from task_store import SqlTaskStore

        if not settings.instance_id:
            settings = settings.model_copy(update={"instance_id": f"worker-{socket.gethostname()}-{os.getpid()}"})
        self.settings = settings
        self.store = SqlTaskStore(database_url(settings))
        self.archiver = EventArchiver(self.store)
        backend = RedisEventBackend(settings.redis_url, maxlen=settings.redis_stream_maxlen,
                                    ttl_s=settings.stream_ttl_s)
        self.streams = StreamManager(backend)
        self.streams.attach_archive(self.archiver.queue)
        backend.start()
        self.archiver.start()
        self.runner = TaskRunner(settings, self.store, self.streams, make_llm_factory(settings),
                                 describe_model(settings), executor=CeleryExecutor(settings))
        threading.Thread(target=self._watch, name="lease-keeper", daemon=True).start()
        log.info("worker %s ready (%s)", settings.instance_id, describe_model(settings))

    def _watch(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.settings.task_lease_s / 3):
            try:
                self.runner.heartbeat()
                self.runner.check_deadlines()
                self.runner.reap_lost()
            except Exception:  # noqa: BLE001 - keep renewing leases whatever one pass hit
                log.exception("lease keeper pass failed")


_context: _WorkerContext | None = None
_context_lock = threading.Lock()


def _ctx() -> _WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            _context = _WorkerContext(get_settings())
        return _context


@app.task(name="worker.run_phase")
def run_phase(task_id: str, phase: str) -> None:
    _ctx().runner.run_phase(task_id, Phase(phase))
