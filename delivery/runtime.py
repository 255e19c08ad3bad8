"""The objects one process is made of (an API server or a Celery worker), built from settings.

    store ─► StreamManager (backend + archive) ─► Runs ─┬─► PhaseRunner ─► Executor
                                                        ├─► TaskCommands
                                                        └─► Watchdog
An API process serves viewers on its event loop and runs the watchdog in `maintain()`; a worker
has no loop and runs it on a thread (`watch_in_thread()`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import TYPE_CHECKING

from crew_factory import CrewEventsHandler, load_events_handler
from delivery.crew.compat import version_warning
from delivery.llm.providers import describe_model, make_llm_factory, usage_policy
from delivery.observability import metrics, tracing
from delivery.security.auth import Auth
from delivery.settings import Settings, database_url, instance_id
from delivery.streaming import sse
from delivery.streaming.backend import EventBackend
from delivery.tasks.commands import TaskCommands
from delivery.tasks.executors import make_executor
from delivery.tasks.phases import PhaseRunner
from delivery.tasks.runs import Runs
from delivery.tasks.store import SqlTaskStore
from delivery.tasks.watchdog import Watchdog
from delivery.webhooks.outbox import Webhooks, WebhookSender
from stream_manager import StreamManager

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("multi_agent")
WATCHDOG_INTERVAL_S = 0.5


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        role: str = "api",
        name: str | None = None,
        event_backend: EventBackend | None = None,
        celery_app: Celery | None = None,
        handler_class: type[CrewEventsHandler] | None = None,
    ) -> None:
        """`role` ("api" or "worker") names the process in traces; `name` is its instance id
        (default: INSTANCE_ID or host:port); `event_backend` replaces the one EVENT_BACKEND names
        (benchmarks); a worker passes its `celery_app`; `handler_class` replaces the one
        EVENTS_HANDLER names."""
        self.settings = settings
        self.role = role
        self.model_label = describe_model(settings)
        tracing.configure(settings, service_name=f"multi-agent-delivery-{role}")
        llm_factory = make_llm_factory(settings)  # fails now, with what to set, if misconfigured
        handler = handler_class or load_events_handler(settings.events_handler)
        self.store = SqlTaskStore(database_url(settings))
        self.streams = StreamManager.create(settings, self.store, backend=event_backend)
        self.webhooks = Webhooks(settings, self.store)
        self.runs = Runs(settings, self.store, self.streams, name or instance_id(settings), self.webhooks)
        self.phases = PhaseRunner(self.runs, llm_factory, handler, self.model_label, usage_policy(settings))
        self.executor = make_executor(settings, self.phases.run, celery_app)
        self.phases._executor_local = self.executor.local
        self.commands = TaskCommands(self.runs, self.executor)
        # Phases lost with their process (this one before a restart, or another whose lease ran
        # out) go on from their first unfinished agent (docs/architecture.md, "Recovery").
        self.watchdog = Watchdog(self.runs, self.commands.resume)
        self._stopping = threading.Event()
        self._collector: metrics.RuntimeCollector | None = None
        self._metrics_server: metrics.MetricsServer | None = None
        self._webhook_sender: WebhookSender | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start serving (`loop`: the event loop viewers are served on; None in a worker)."""
        warning = version_warning()
        if warning:
            log.warning(warning)
        self.streams.start(loop)
        self.watchdog.recover_at_start()
        self._collector = metrics.register(self)
        if self.role == "api" and self.webhooks.enabled:  # workers only queue notifications
            self._webhook_sender = WebhookSender(self.settings, self.store)
            self._webhook_sender.start()
        if self.role == "worker" and self.settings.metrics_port:  # API processes serve GET /metrics
            try:
                self._metrics_server = metrics.MetricsServer(
                    self.settings.metrics_host, self.settings.metrics_port, Auth(self.settings)
                )
            except OSError as exc:
                log.warning(
                    "no metrics from this worker process: %s:%d is taken (%s). With Celery's prefork "
                    "pool only one child can serve METRICS_PORT; run workers with -P threads.",
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                    exc,
                )
            else:
                self._metrics_server.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._webhook_sender is not None:
            self._webhook_sender.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if self._collector is not None:
            metrics.unregister(self._collector)
        tracing.shutdown()
        self.executor.shutdown()
        self.streams.close()
        self.store.close()

    async def maintain(self) -> None:
        """The API process's watchdog loop; on shutdown it ends running tasks, then open streams."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if sse.server_exiting():
                interrupted = await asyncio.to_thread(self._interrupt_all)
                if interrupted:
                    log.warning("shutting down: %d running tasks interrupted", len(interrupted))
                sse.begin_shutdown()  # after the error events, which their viewers drain first
                return
            try:
                await asyncio.to_thread(self.watchdog.tick)
            except Exception:
                log.exception("watchdog pass failed")

    def _interrupt_all(self) -> list[str]:
        interrupted = self.watchdog.interrupt_all()
        self.streams.flush()  # their error events are shown once stored: store them now
        return interrupted

    def watch_in_thread(self) -> None:
        """A worker's watchdog: renew leases, enforce deadlines, reap and expire, until stop()."""

        def watch() -> None:
            while not self._stopping.wait(WATCHDOG_INTERVAL_S):
                try:
                    self.watchdog.tick()
                except Exception:
                    log.exception("watchdog pass failed")

        threading.Thread(target=watch, name="watchdog", daemon=True).start()


def freeze_startup_heap() -> None:
    """Move every object alive once a process has started (its imports: ~330,000 objects, mostly
    CrewAI's and its dependencies') out of the cyclic garbage collector's sight.

    CPython's full collections walk every tracked object while holding the GIL; with the import
    heap in view each took 0.2 s and more, stopping every thread, the SSE loop included, so all
    viewers stalled together (docs/benchmarks.md). Frozen objects are still freed when their last
    reference goes; only a cycle among them would never be collected, and start-up objects live
    as long as the process. Called by the processes' entry points (main.py, worker.py), not per
    Runtime: tests build many."""
    gc.collect()
    gc.freeze()
