"""The Celery application for EXECUTOR=celery. Building it has no other effect: worker.py
registers the task that runs phases, and API processes only send to it by name."""

from __future__ import annotations

from celery import Celery

from delivery.settings import Settings


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
