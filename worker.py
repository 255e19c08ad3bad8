"""Celery workers for EXECUTOR=celery: `celery -A worker worker -P threads -c 4`.

API processes only accept, stream and answer; they send each crew phase here through the broker
(Redis). A worker reads the same settings as the API (environment and .env), the same task store
(DATABASE_URL) and publishes to the same Redis event streams, so viewers on any API replica see
its events live. While it runs phases it renews their lease; if it dies, any process resumes the
task on a live worker from its first unfinished agent once the lease runs out (TASK_LEASE_S), and
the phases it had not started stay in the broker (acks late, no prefetch beyond its threads).

Importing this module builds the Celery app and nothing else; the rest of the worker (store,
event streams, crews) is built at its first task, after Celery has forked its pool.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.exceptions import Reject
from dotenv import load_dotenv

load_dotenv()  # the same .env as the API, before the settings are read

from delivery.settings import get_settings  # noqa: E402
from delivery.tasks.celery_app import make_celery  # noqa: E402
from delivery.tasks.executors import RUN_PHASE  # noqa: E402
from delivery.tasks.records import Phase  # noqa: E402

if TYPE_CHECKING:
    from delivery.runtime import Runtime

log = logging.getLogger("multi_agent.worker")

app = make_celery(get_settings())

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def _worker_runtime() -> Runtime:
    """This process's Runtime: built when the process that runs tasks starts (below), or at its
    first task."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from delivery.observability.logs import configure_logging  # noqa: PLC0415 - after the fork
            from delivery.runtime import Runtime, freeze_startup_heap  # noqa: PLC0415 - after the fork

            settings = get_settings()
            configure_logging(settings.log_level, settings.log_format)
            name = settings.instance_id or f"worker-{socket.gethostname()}-{os.getpid()}"
            runtime = Runtime(settings, role="worker", name=name, celery_app=app)
            runtime.start()
            runtime.watch_in_thread()
            freeze_startup_heap()
            log.info("worker %s ready (%s)", runtime.runs.instance_id, runtime.model_label)
            _runtime = runtime
        return _runtime


@signals.worker_init.connect
def _start_in_the_main_process(sender: Any = None, **_: Any) -> None:
    """Threads and solo pools run tasks in the main process: start now, so that leases, the
    watchdog and METRICS_PORT are up before the first task. (The prefork pool's children start
    their own, below.)"""
    if "prefork" not in str(getattr(sender, "pool_cls", "")).lower():
        _worker_runtime()


@signals.worker_process_init.connect
def _start_in_a_pool_child(**_: Any) -> None:
    _worker_runtime()


@signals.worker_shutting_down.connect
def _hand_back(**_: Any) -> None:
    """A warm shutdown (SIGTERM) waits for running tasks: stop their crews at their next event
    and hand their phases back (Runtime.hand_back), so they end in seconds and any process resumes
    them, instead of the worker waiting out whole crews. Off the signal handler's thread."""
    runtime = _runtime
    if runtime is not None:
        threading.Thread(target=runtime.hand_back, name="hand-back").start()


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _stop(**_: Any) -> None:
    """Write out what is buffered (events to the database, spans to the collector) before exiting."""
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.stop()


@app.task(name=RUN_PHASE)
def run_phase(task_id: str, phase: str, attempt: int | None = None) -> None:
    from delivery.tasks.phases import PhaseNotStartedError  # noqa: PLC0415 - built after the fork, like the runtime

    try:
        _worker_runtime().phases.run(task_id, Phase(phase), attempt)
    except PhaseNotStartedError as exc:
        # Nothing ran and nothing was claimed: give the message back (after a pause, so a database
        # or Redis that is away is not hammered) instead of acknowledging it into oblivion.
        log.warning("%s; the message goes back to the queue", exc)
        time.sleep(1.0)
        raise Reject(str(exc), requeue=True) from exc
