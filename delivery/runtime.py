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
import time
from typing import TYPE_CHECKING

from crew_factory import CrewEventsHandler, load_events_handler
from delivery.api.a2a_push import A2aPushes
from delivery.crew.compat import version_warning
from delivery.llm.providers import describe_model, make_llm_factory, usage_policy
from delivery.observability import metrics, tracing
from delivery.security.gate import Gate
from delivery.settings import Settings, database_url
from delivery.streaming import sse
from delivery.streaming.backend import EventBackend
from delivery.tasks.commands import TaskCommands
from delivery.tasks.executors import make_executor
from delivery.tasks.instances import instance_id
from delivery.tasks.phases import PhaseRunner
from delivery.tasks.runs import Runs
from delivery.tasks.store import TaskStore
from delivery.tasks.watchdog import Watchdog
from delivery.webhooks.outbox import Webhooks, WebhookSender
from stream_manager import StreamManager

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("multi_agent")
WATCHDOG_INTERVAL_S = 0.5
# How long a stopping process waits for its crews to reach their next event (compose gives
# api and worker containers 30 s between SIGTERM and SIGKILL; Kubernetes 30 s by default).
HAND_BACK_GRACE_S = 10.0
# A watchdog that has not finished a pass for this long is stuck or dead (a pass waits out a
# database restart for up to 30 s).
WATCHDOG_STALE_S = 60.0


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
        (default: INSTANCE_ID, else one unique to this process: delivery/tasks/instances.py);
        `event_backend` replaces the one EVENT_BACKEND names (benchmarks); a worker passes its
        `celery_app`; `handler_class` replaces the one EVENTS_HANDLER names."""
        self.settings = settings
        self.role = role
        self.model_label = describe_model(settings)
        tracing.configure(settings, service_name=f"multi-agent-delivery-{role}")
        llm_factory = make_llm_factory(settings)  # fails now, with what to set, if misconfigured
        handler = handler_class or load_events_handler(settings.events_handler)
        self.store = TaskStore(database_url(settings))
        self.streams = StreamManager.create(settings, self.store, backend=event_backend)
        self.webhooks = Webhooks(settings, self.store)
        self.a2a_pushes: A2aPushes | None = None
        if self.webhooks.enabled:  # A2A pushes are signed webhooks: none without WEBHOOK_SECRET
            self.a2a_pushes = A2aPushes(settings, self.store)
            self.streams.on_archived(self.a2a_pushes.queue)
        self.runs = Runs(settings, self.store, self.streams, name or instance_id(settings), self.webhooks)
        self.phases = PhaseRunner(self.runs, llm_factory, handler, self.model_label, usage_policy(settings))
        self.executor = make_executor(settings, self.phases.run, celery_app)
        self.phases._executor_local = self.executor.local
        self.commands = TaskCommands(self.runs, self.executor)
        # Phases lost with their process (this one before a restart, or another whose lease ran
        # out) go on from their first unfinished agent (docs/architecture.md, "Recovery").
        self.watchdog = Watchdog(self.runs, self.commands.resume)
        self._stopping = threading.Event()
        self._hand_back_lock = threading.Lock()
        self._watchdog_ran_at = time.monotonic()  # its last pass, failed or not (readiness)
        self._handed_back = False
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
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                    Gate.from_settings(self.settings),
                    self.readiness,
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
        """Hand the tasks back (if not done yet), then write out what is buffered and close."""
        self.hand_back()
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

    def hand_back(self, grace_s: float = HAND_BACK_GRACE_S) -> list[str]:
        """A graceful stop (SIGTERM; a Celery worker's warm shutdown) that keeps every task
        (PhaseRunner.hand_back). Returns the ids handed back (by the first call: later ones wait
        for it and return [])."""
        with self._hand_back_lock:
            if self._handed_back:
                return []
            self._handed_back = True
            return self._hand_back(grace_s)

    def _hand_back(self, grace_s: float) -> list[str]:
        self._stopping.set()  # a worker's watchdog thread stops: it must not resume them here
        self.executor.shutdown()
        return self.phases.hand_back(grace_s)

    def readiness(self) -> dict[str, str | None]:
        """Every part this process needs, and what is wrong with each (None: fine): the database,
        the event path (Redis and its threads, the archiver), the broker, the webhook sender, the
        watchdog. A stopping process is not ready, so balancers send it nothing new."""
        if self._stopping.is_set():
            return {"process": "stopping: it hands its tasks back to the other processes"}
        parts: dict[str, str | None] = {"database": self._database_problem(), **self.streams.problems()}
        parts["executor"] = self.executor.problem()
        if self._webhook_sender is not None:
            parts["webhooks"] = self._webhook_sender.problem()
        silent = time.monotonic() - self._watchdog_ran_at
        parts["watchdog"] = (
            f"the watchdog has not run for {silent:.0f} s; restart this process (its log says why)"
            if silent > WATCHDOG_STALE_S
            else None
        )
        return parts

    def _database_problem(self) -> str | None:
        try:
            self.store.ping()
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the database is not usable
            log.warning("readiness: the database is unreachable: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return f"the task database is unreachable ({type(exc).__name__}); check DATABASE_URL and the database"
        return None

    async def maintain(self) -> None:
        """The API process's watchdog loop; on shutdown it hands the tasks back, then ends open streams."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if sse.server_exiting():
                await asyncio.to_thread(self.hand_back)
                sse.begin_shutdown()  # viewers get `shutdown` and reconnect to the next process
                return
            try:
                await asyncio.to_thread(self.watchdog.tick)
            except Exception:
                log.exception("watchdog pass failed")
            self._watchdog_ran_at = time.monotonic()

    def watch_in_thread(self) -> None:
        """A worker's watchdog: renew leases, enforce deadlines, reap and expire, until stop()."""

        def watch() -> None:
            while not self._stopping.wait(WATCHDOG_INTERVAL_S):
                try:
                    self.watchdog.tick()
                except Exception:
                    log.exception("watchdog pass failed")
                self._watchdog_ran_at = time.monotonic()

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
